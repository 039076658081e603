"""QA round 16 (dcm2niix's dcm_qa data): a DICOMDIR, the index a DICOM media export (CD, DVD,
USB, dcm_qa_philips_dwi's `In/cl/DICOMDIR`) carries beside its images, is refused as having no
pixel data; the reason named its SOP class and modality as None, since a DICOMDIR's data set
has no SOP Class UID (only its file meta has one). The reason now names the class and says to
send the image files the DICOMDIR lists (the service's 422 no-pixel-data and `radlens inspect`
quote it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from radlens.cli.main import main
from radlens.models.errors import NoPixelDataError
from radlens.models.preprocessing import preprocess

DICOMDIR = Path(str(get_testdata_file("DICOMDIR")))  # pydicom's own test DICOMDIR


def test_a_dicomdir_is_named_with_what_to_send_instead() -> None:
    with pytest.raises(NoPixelDataError) as caught:
        preprocess(DICOMDIR.read_bytes())
    detail = caught.value.detail
    assert "Received SOP class 'Media Storage Directory Storage'" in detail
    assert "DICOMDIR" in detail and "send the image files it lists" in detail
    assert "None, modality" not in detail
    # another instance without pixels keeps its own class, and no DICOMDIR hint
    report = Path(str(get_testdata_file("test-SR.dcm")))
    with pytest.raises(NoPixelDataError) as caught:
        preprocess(report.read_bytes())
    assert "DICOMDIR" not in caught.value.detail
    assert "Received SOP class 'Comprehensive SR Storage'" in caught.value.detail


def test_inspect_says_it_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(DICOMDIR)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("radlens: error: "), err
    assert "Media Storage Directory Storage" in lines[0]
    assert "send the image files it lists" in lines[0]

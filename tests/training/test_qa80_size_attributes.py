"""QA round 80: a DICOM image without Rows (or Columns) in a class folder.

dwv's test file dwv-test_no-number-rows.dcm (a 32-column image whose header has no Rows) was
skipped by `radlens data-check` as "DICOM image has zero size (0x32)": a size the file never
stated. The service refuses the same bytes saying what is wrong ("The DICOM header lacks an
attribute needed to read the pixels ... Rows/Columns. Received Rows=None"). The scan now says
so too, in the same kind as the service's refusal, so the two count it alike. The fixture is
pydicom's real CT_small.dcm with Rows, or Columns, removed; a stated size of 0 stays "zero size".
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from radlens.models import preprocessing
from radlens.models.errors import RadlensError
from radlens.training.data.sources import open_source, skip_kind


def _source_with(tmp_path: Path, **header: int | None) -> tuple[str, bytes]:
    """The skip reason for CT_small.dcm with ``header`` applied (None: element removed),
    beside two good images so the folder is a data set; and the file's bytes."""
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    for cls in ("normal", "abnormal"):
        (tmp_path / cls).mkdir()
        good = pydicom.dcmread(path)
        good.SOPInstanceUID = pydicom.uid.generate_uid()
        good.save_as(tmp_path / cls / "good.dcm")
    ds = pydicom.dcmread(path)
    for keyword, value in header.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    target = tmp_path / "abnormal" / "odd.dcm"
    ds.save_as(target)
    source = open_source(tmp_path)
    reasons = {Path(s.path).name: s.reason for s in source.skipped}
    assert set(reasons) == {"odd.dcm"}, reasons
    return reasons["odd.dcm"], target.read_bytes()


def _service_kind(data: bytes) -> str:
    with pytest.raises(RadlensError) as caught:
        preprocessing.preprocess(data, size=(8, 8))
    return skip_kind(str(caught.value))


@pytest.mark.parametrize(("keyword", "tag"), [("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")])
def test_an_absent_size_is_named_as_the_service_names_it(
    tmp_path: Path, keyword: str, tag: str
) -> None:
    reason, data = _source_with(tmp_path, **{keyword: None})
    assert "zero size" not in reason  # was "DICOM image has zero size (0x128)"
    assert f"{keyword} {tag} absent or empty" in reason
    assert "re-export the image with its Image Pixel attributes" in reason
    assert skip_kind(reason) == _service_kind(data)


def test_a_stated_size_of_zero_is_still_zero_size(tmp_path: Path) -> None:
    reason, _ = _source_with(tmp_path, Rows=0)
    assert reason == "DICOM image has zero size (0x128)"

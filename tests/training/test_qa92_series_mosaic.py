"""A Siemens mosaic in a series-labelled CSV (QA 92): training's series loader never reads one
as a picture. The header scan lists it as a slice (its header is a readable MR image); the
decode check every run and `radlens data-check` make (sources.drop_undecodable ->
models.preprocessing.check_not_mosaic) skips it with the reason the service refuses it for,
and a series of mosaics alone is refused in one line naming the series and why."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import check_decodable, drop_undecodable, open_data
from tests.models.test_qa75_mosaic import mosaic_bytes
from tests.training.series_fixtures import read_rows, series_dataset, uid, write_rows, write_slice

MOSAIC_WORDS = ("Siemens mosaic", "separate instances")


def _write_mosaic(path: Path, series_uid: str, instance: int) -> Path:
    """nibabel-style 2x2 mosaic of 8x8 slices (16x16, tests/models/test_qa75_mosaic.py) in
    ``series_uid``."""
    ds = pydicom.dcmread(io.BytesIO(mosaic_bytes()))
    ds.SeriesInstanceUID = series_uid
    sop = pydicom.uid.UID(uid("mosaic", series_uid, instance))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID = "SYNMOSAIC"
    ds.InstanceNumber = instance
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _add_series(csv_path: Path, folder: str, row: dict[str, str]) -> int:
    """Append a row for ``folder`` (relative to the CSV); returns its CSV line number."""
    rows = read_rows(csv_path)
    rows.append({**{key: "" for key in rows[0]}, "series_path": folder, **row})
    write_rows(csv_path, rows)
    return len(rows) + 1  # the header is line 1


def test_a_series_of_mosaics_is_refused_in_one_line(tmp_path: Path) -> None:
    csv_path = series_dataset(tmp_path / "ds", patients=3, slices=2)
    series_uid = uid("mosaic-series")
    for i in range(3):
        _write_mosaic(tmp_path / "ds" / "dicom" / "mosaic" / f"{i}.dcm", series_uid, i + 1)
    line = _add_series(csv_path, "dicom/mosaic", {"patient_id": "SYNMOSAIC", "label": "nodule"})

    opened = open_data(csv_path)
    mosaics = [e for e in opened.examples if "/mosaic/" in e.key]
    assert len(mosaics) == 3 and {e.series for e in mosaics} == {f"series.csv:{line}"}
    decoded = drop_undecodable(opened)
    assert not any("/mosaic/" in e.key for e in decoded.examples)  # never one picture
    reasons = [s.reason for s in decoded.skipped if "/mosaic/" in s.path]
    assert len(reasons) == 3
    assert all(all(word in reason for word in MOSAIC_WORDS) for reason in reasons)
    assert len(decoded.examples) == 12  # the 6 ordinary series' 2 slices each
    with pytest.raises(ConfigurationError) as caught:
        check_decodable(opened, decoded)
    message = str(caught.value)
    assert "\n" not in message
    assert f"series series.csv:{line} has no slice that decodes (3 skipped;" in message
    assert all(word in message for word in MOSAIC_WORDS)


def test_a_mosaic_among_a_series_slices_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    csv_path = series_dataset(tmp_path / "ds", patients=3, slices=2)
    series_uid = uid("mixed-series")
    folder = tmp_path / "ds" / "dicom" / "mixed"
    rng = np.random.default_rng(92)
    for i in range(3):  # ordinary MR slices of the mosaic's size
        pixels = rng.integers(0, 4096, (16, 16)).astype(np.uint16)
        write_slice(
            folder / f"slice{i}.dcm",
            pixels,
            patient_id="SYNMOSAIC",
            series_uid=series_uid,
            instance=i + 1,
            modality="MR",
        )
    _write_mosaic(folder / "mosaic.dcm", series_uid, 4)
    line = _add_series(csv_path, "dicom/mixed", {"patient_id": "SYNMOSAIC", "label": "nodule"})

    opened = open_data(csv_path)
    decoded = drop_undecodable(opened)
    check_decodable(opened, decoded)  # the series keeps slices that decode
    kept = sorted(Path(e.key).name for e in decoded.examples if e.series == f"series.csv:{line}")
    assert kept == ["slice0.dcm", "slice1.dcm", "slice2.dcm"]
    (skip,) = [s for s in decoded.skipped if s.path.endswith("mosaic.dcm")]
    assert all(word in skip.reason for word in MOSAIC_WORDS)


def test_data_check_refuses_a_mosaic_series_in_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.cli.main import main
    from tests.cli.test_imaging import one_error_line

    csv_path = series_dataset(tmp_path / "ds", patients=3, slices=2)
    series_uid = uid("mosaic-series")
    for i in range(2):
        _write_mosaic(tmp_path / "ds" / "dicom" / "mosaic" / f"{i}.dcm", series_uid, i + 1)
    line = _add_series(csv_path, "dicom/mosaic", {"patient_id": "SYNMOSAIC", "label": "nodule"})
    assert main(["data-check", str(csv_path)]) != 0
    error = one_error_line(capsys.readouterr().err)
    assert f"series series.csv:{line} has no slice that decodes" in error
    assert all(word in error for word in MOSAIC_WORDS)

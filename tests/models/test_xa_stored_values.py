"""Preprocessing "5": an X-ray angiography or fluoroscopy image (XA, XRF, the retired XA
Bi-plane SOP classes) is windowed on its stored values. Its Modality LUT (or rescale) maps
stored values to X-ray beam intensity and is not a display step; its windows are in stored
values, and dcmtk skips the transform for exactly these SOP classes. Up to "4" the transform
was applied (an XA with an inverting table came out inverted, a real Philips INTEGRIS table
white under its own window), and a model recorded with "4" still gets that. Every other SOP
class keeps its Modality LUT and rescale. The fixtures are synthetic; dcmtk's dcm2pnm, when
installed, is the independent reading."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from radlens.models.preprocessing import (
    PREPROCESSING_VERSION,
    displays_stored_values,
    preprocess,
)

XA = "1.2.840.10008.5.1.4.1.1.12.1"
XRF = "1.2.840.10008.5.1.4.1.1.12.2"
XA_BIPLANE = "1.2.840.10008.5.1.4.1.1.12.3"
ENHANCED_XA = "1.2.840.10008.5.1.4.1.1.12.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
ROWS, COLUMNS = 12, 20
INVERTING = [255 - i for i in range(256)]  # fits its 8-bit descriptor: pydicom applies it


def _file(
    sop_class: str,
    modality: str,
    *,
    table: list[int] | None = None,
    rescale: tuple[str, str] | None = None,
    window: tuple[int, int] | None = (100, 160),
) -> tuple[bytes, np.ndarray]:
    """An 8-bit MONOCHROME2 image with a Modality LUT Sequence (``table``) or a rescale;
    returns the file and its stored values."""
    stored = (np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS) * 3 % 256).astype(np.uint8)
    uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, uid, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if table is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(table), 0, 8])  # LUT Descriptor
        item.ModalityLUTType = "US"
        item.add_new(0x00283006, "US", table)  # LUT Data
        ds.ModalityLUTSequence = [item]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = stored.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), stored


def _windowed(values: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """The file's window as DICOM's LINEAR function defines it (PS3.3 C.11.2.1.2.1), to [0, 1]."""
    center, width = window
    scaled = (values.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def test_this_radlens_writes_version_5() -> None:
    assert int(PREPROCESSING_VERSION) >= 5  # later versions keep XA/XRF on stored values


@pytest.mark.parametrize(("sop_class", "modality"), [(XA, "XA"), (XRF, "RF"), (XA_BIPLANE, "XA")])
def test_an_xray_intensity_table_is_not_a_display_step(sop_class: str, modality: str) -> None:
    data, stored = _file(sop_class, modality, table=INVERTING)
    image = preprocess(data)
    assert image.metadata.window == "file:100/160"
    np.testing.assert_allclose(image.pixels, _windowed(stored, (100, 160)), atol=1e-6)
    # the same image without its table: identical
    plain, _ = _file(sop_class, modality)
    np.testing.assert_array_equal(image.pixels, preprocess(plain).pixels)


def test_an_xrf_rescale_is_not_applied_before_its_window() -> None:
    data, stored = _file(XRF, "RF", rescale=("4", "-300"))
    image = preprocess(data)
    np.testing.assert_allclose(image.pixels, _windowed(stored, (100, 160)), atol=1e-6)
    # rescaled, only stored values 95-135 would fall inside the window: a different image
    rescaled = _windowed(stored.astype(np.float64) * 4 - 300, (100, 160))
    assert np.abs(image.pixels - rescaled).max() > 0.3


def test_without_a_window_min_max_runs_on_the_stored_values() -> None:
    data, stored = _file(XA, "XA", table=INVERTING, window=None)
    image = preprocess(data)
    assert image.metadata.window == "minmax"
    expected = (stored - stored.min()) / float(stored.max() - stored.min())
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)  # not inverted


@pytest.mark.parametrize(("sop_class", "modality"), [(CR, "CR"), (DX, "DX"), (ENHANCED_XA, "XA")])
def test_other_sop_classes_keep_their_modality_lut(sop_class: str, modality: str) -> None:
    data, stored = _file(sop_class, modality, table=INVERTING)
    ds = pydicom.dcmread(io.BytesIO(data))
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    np.testing.assert_allclose(preprocess(data).pixels, _windowed(values, (100, 160)), atol=1e-6)


def test_a_model_recorded_with_version_4_still_gets_the_table_applied() -> None:
    data, stored = _file(XA, "XA", table=INVERTING)
    ds = pydicom.dcmread(io.BytesIO(data))
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    old = preprocess(data, version="4").pixels
    np.testing.assert_allclose(old, _windowed(values, (100, 160)), atol=1e-6)
    assert np.abs(old - preprocess(data).pixels).max() > 0.5


def test_displays_stored_values_names_the_three_sop_classes_from_version_5() -> None:
    for sop_class, expected in ((XA, True), (XRF, True), (XA_BIPLANE, True), (CR, False)):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        assert displays_stored_values(ds) is expected
        assert displays_stored_values(ds, version="4") is False
    assert displays_stored_values(Dataset()) is False  # no SOP Class UID: the transform applies


@pytest.mark.skipif(shutil.which("dcm2pnm") is None, reason="dcmtk's dcm2pnm is not installed")
@pytest.mark.parametrize("sop_class", [XA, CR])
def test_dcmtk_reads_them_the_same_way(sop_class: str, tmp_path: Path) -> None:
    data, _ = _file(sop_class, "XA" if sop_class == XA else "CR", table=INVERTING)
    source, out = tmp_path / "in.dcm", tmp_path / "out.pgm"
    source.write_bytes(data)
    # +Wi 1: the file's first window; +on: 8-bit PGM
    subprocess.run(["dcm2pnm", "+Wi", "1", "+on", str(source), str(out)], check=True)
    from PIL import Image

    with Image.open(out) as pgm:
        dcmtk = np.asarray(pgm, dtype=np.float64)
    ours = preprocess(data).pixels.astype(np.float64) * 255.0
    assert np.abs(ours - dcmtk).max() <= 1.0

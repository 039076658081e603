"""The value-table path of DICOM preprocessing gives bit-identical pixels to the per-pixel path.

``models.preprocessing._value_table`` runs the per-value steps (modality LUT, VOI, presets,
MONOCHROME1 inversion, clip) once per distinct stored value and then looks every pixel up.
Each case here preprocesses the same bytes twice, once with the table and once with it turned
off, and requires ``np.array_equal``: the table is a speed-up, never a change of output (a
change would need a new PREPROCESSING_VERSION).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import radlens.models.preprocessing as pp
from tests.conftest import SHARED_DICOM

# (file, why it is here)
PYDICOM_FILES = [
    ("CT_small.dcm", "CT, signed, rescale to HU"),
    ("MR_small.dcm", "MR, no rescale, min-max"),
    ("RG1_UNCR.dcm", "CR, MONOCHROME1, 15-bit, file window"),
    ("vlut_04.dcm", "VOI LUT Sequence"),
    ("mlut_18.dcm", "Modality LUT Sequence"),
    ("liver.dcm", "multi-frame CT"),
    ("emri_small.dcm", "multi-frame MR"),
]
SHARED_FILES = [
    "CT1_JLSN.dcm",
    "TOSHIBA_J2K_OpenJPEGv2Regression.dcm",
    "ct_image.dcm",
    "dx_image.dcm",
    "rsna_chest_cr_tagged_monochrome1.dcm",
]
OPTIONS = [
    {},
    {"size": (64, 64)},
    {"window": "lung"},
    {"window": "bone", "size": (48, 32)},
]


def both_ways(data: bytes, monkeypatch: pytest.MonkeyPatch, **options: object) -> tuple:
    with_table = pp.preprocess(data, **options)  # type: ignore[arg-type]
    calls: list[np.ndarray] = []
    real = pp._value_table

    def spy(arr: np.ndarray) -> pp._ValueTable | None:
        table = real(arr)
        calls.append(arr)
        return table

    with monkeypatch.context() as m:
        m.setattr(pp, "_value_table", spy)
        spied = pp.preprocess(data, **options)  # type: ignore[arg-type]
        m.setattr(pp, "_value_table", lambda arr: None)
        without = pp.preprocess(data, **options)  # type: ignore[arg-type]
    assert np.array_equal(spied.pixels, with_table.pixels)
    return with_table, without, calls


def assert_same(with_table: pp.PreprocessedImage, without: pp.PreprocessedImage) -> None:
    assert with_table.pixels.dtype == without.pixels.dtype == np.float32
    assert with_table.pixels.shape == without.pixels.shape
    assert np.array_equal(with_table.pixels, without.pixels)
    assert with_table.metadata == without.metadata


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("name", [n for n, _ in PYDICOM_FILES])
def test_pydicom_files_identical(name: str, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    data = Path(str(get_testdata_file(name))).read_bytes()
    with_table, without, _ = both_ways(data, monkeypatch, **options)
    assert_same(with_table, without)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("name", SHARED_FILES)
def test_shared_files_identical(name: str, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    path = SHARED_DICOM / name
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    with_table, without, _ = both_ways(path.read_bytes(), monkeypatch, **options)
    assert_same(with_table, without)


def synthetic(pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


SYNTHETIC = {
    "signed, rescale, min-max": (np.int16, {"RescaleSlope": 0.37, "RescaleIntercept": -1024}),
    "unsigned, window": (np.uint16, {"WindowCenter": 900, "WindowWidth": 700}),
    "CT, rescale": (np.int16, {"Modality": "CT", "RescaleSlope": 1, "RescaleIntercept": -1024}),
    "sigmoid window": (
        np.uint16,
        {"WindowCenter": 500, "WindowWidth": 400, "VOILUTFunction": "SIGMOID"},
    ),
}


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("case", list(SYNTHETIC))
def test_synthetic_sparse_values_identical(
    case: str, photometric: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few distinct values spread over a wide range: min-max must use only the values that
    occur, and entries that never occur must not leak into the result."""
    dtype, tags = SYNTHETIC[case]
    rng = np.random.default_rng(7)
    lo = -2000 if dtype == np.int16 else 0
    values = rng.choice(np.arange(lo, lo + 4000), size=37, replace=False)
    pixels = rng.choice(values, size=(200, 180)).astype(dtype)
    pixels[0, 0], pixels[-1, -1] = lo + 5, lo + 3995  # the range ends occur once each
    data = synthetic(pixels, photometric, **tags)
    for options in OPTIONS:
        with_table, without, calls = both_ways(data, monkeypatch, **options)
        assert_same(with_table, without)
        assert calls and pp._value_table(calls[0]) is not None  # the table path really ran


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_non_monotonic_modality_lut_identical(
    photometric: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Modality LUT Sequence that is not monotonic: values that never occur in the frame
    map below and above the ones that do, so min-max must take its range from the values
    present only (the table's ``present``), not from the whole table."""
    first, entries = 0, 4096
    stored = np.arange(entries)
    lut = np.where(stored % 2 == 0, 100 + stored // 8, 3000 - stored // 8)  # zig-zag
    lut[1000], lut[1001] = 0, 4095  # extremes at values that never occur in the frame
    item = Dataset()
    item.LUTDescriptor = [entries, first, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [int(v) for v in lut]
    item["LUTData"].VR = "US"
    rng = np.random.default_rng(11)
    occurring = rng.choice(np.setdiff1d(stored, [1000, 1001]), size=300, replace=False)
    pixels = rng.choice(occurring, size=(160, 160)).astype(np.uint16)
    pixels[0, 0], pixels[-1, -1] = 0, entries - 1
    data = synthetic(pixels, photometric, ModalityLUTSequence=[item])
    for options in ({}, {"size": (64, 64)}):
        with_table, without, calls = both_ways(data, monkeypatch, **options)
        assert with_table.metadata.window == "minmax"
        assert_same(with_table, without)
        assert calls and pp._value_table(calls[0]) is not None


def test_table_is_skipped_when_it_would_not_pay() -> None:
    wide = np.arange(0, 64 * 64 * 8, 8, dtype=np.uint16).reshape(64, 64)  # 4096 values, 8x range
    assert pp._value_table(wide) is None
    assert pp._value_table(np.zeros((16, 16), np.uint16)) is None  # too few pixels
    assert pp._value_table(np.zeros((64, 64), np.float32)) is None  # not integers
    table = pp._value_table(np.full((64, 64), 7, np.int16))
    assert table is not None
    assert table.domain.tolist() == [7] and table.present.tolist() == [True]
    assert table.offsets.shape == (64, 64) and not table.offsets.any()


def test_table_keeps_byte_order() -> None:
    """Big-endian stored values (pydicom returns '>i2' for Explicit VR Big Endian): the
    table's domain keeps the frame's dtype, and looking the pixels up gives the frame back."""
    arr = (np.arange(128 * 128).reshape(128, 128) % 700 - 300).astype(">i2")
    table = pp._value_table(arr)
    assert table is not None
    assert table.domain.dtype == arr.dtype
    assert np.array_equal(table.lookup(table.domain), arr)
    assert table.present.all()


def test_big_endian_file_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    assert ds.pixel_array.dtype.byteorder == ">"
    data = Path(str(get_testdata_file("MR_small_bigendian.dcm"))).read_bytes()
    with_table, without, _ = both_ways(data, monkeypatch)
    assert_same(with_table, without)

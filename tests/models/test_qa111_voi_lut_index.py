"""QA 111: a VOI LUT is applied with each value's index clipped to the LUT (version "6").

pydicom 3.0's ``apply_voi`` builds the LUT index in the LUT entries' own type, so it wraps: an
8-bit VOI LUT of more than 256 entries (a 12-bit image's 4096-entry LUT with 8-bit output)
maps the value ``first + 256`` to entry 0, a 16-bit LUT maps ``first + 65536`` to entry 0.
PS3.3 C.11.2.1.1 maps a value below the first value mapped to the first entry and one above
the last to the last. From "6" radlens applies the LUT itself with numpy, clipped
(:data:`VOI_LUT_CLIPPED_VERSIONS`); versions "1"-"5" keep pydicom's result.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from radlens.models.preprocessing import VOI_LUT_CLIPPED_VERSIONS, preprocess


def lut_dicom(
    pixels: np.ndarray,
    entries: int,
    first: int,
    bits: int,
    lut: list[int],
    ow: bool = False,
    slope: int | None = None,
) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    item = Dataset()
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = 0
    item.LUTDescriptor = [entries % 65536, first, bits]
    if ow:
        item.add_new(0x00283006, "OW", np.asarray(lut, "<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", lut)
    ds.VOILUTSequence = Sequence([item])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# a 12-bit ramp image under an 8-bit LUT of 4096 entries (out = in // 16)
RAMP = np.arange(4096, dtype=np.uint16).reshape(64, 64)
LUT8 = [i // 16 for i in range(4096)]


def test_version_6_is_the_one_clipping() -> None:
    assert frozenset({"6"}) == VOI_LUT_CLIPPED_VERSIONS


@pytest.mark.parametrize("ow", [False, True])
def test_8bit_lut_beyond_256_entries_is_monotonic_in_6(ow: bool) -> None:
    data = lut_dicom(RAMP, 4096, 0, 8, LUT8, ow=ow)
    result = preprocess(data, version="6")
    assert result.metadata.window == "voi-lut"
    expected = (np.asarray(LUT8, np.float64) / 255.0).reshape(64, 64)
    np.testing.assert_allclose(result.pixels, expected, atol=1e-6)
    # the brightest value gets the LUT's last entry (it wrapped to entry 4095 % 256)
    assert result.pixels[-1, -1] == pytest.approx(1.0)


def test_8bit_lut_wraps_in_5_as_before() -> None:
    data = lut_dicom(RAMP, 4096, 0, 8, LUT8)
    old = preprocess(data, version="5").pixels
    # pydicom's wrapped index: value v -> entry v % 256, scaled by the wrapped probe's range
    wrapped = np.asarray(LUT8, np.float64)[np.arange(4096) % 256].reshape(64, 64)
    np.testing.assert_allclose(old, (wrapped - wrapped.min()) / np.ptp(wrapped), atol=1e-6)


def test_16bit_lut_index_beyond_65535_clips_in_6() -> None:
    # Rescale Slope 2 over 16-bit stored values: modality values up to 131070, a 16-bit LUT
    # from 0; pydicom's uint16 index wraps 65536 to entry 0
    pixels = np.array([[0, 1000, 32767, 32768], [40000, 65535, 100, 2047]], np.uint16)
    lut = [i * 16 for i in range(4096)]
    data = lut_dicom(pixels, 4096, 0, 16, lut, slope=2)
    new = preprocess(data, version="6").pixels
    table = np.asarray(lut, np.float64)
    index = np.clip(pixels.astype(np.int64) * 2, 0, 4095)
    np.testing.assert_allclose(new, table[index] / table.max(), atol=1e-6)
    np.testing.assert_allclose([*new[0, 2:], *new[1, :2]], 1.0, atol=1e-6)  # the last entry
    old = preprocess(data, version="5").pixels
    assert old[0, 3] == pytest.approx(0.0)  # 65536 wrapped to entry 0: pydicom's, kept in "5"


def test_values_below_first_get_first_entry_in_6() -> None:
    pixels = np.array([[0, 50, 100, 4195]], np.uint16)
    data = lut_dicom(pixels, 4096, 100, 16, [i * 16 for i in range(4096)])
    new = preprocess(data, version="6").pixels
    np.testing.assert_allclose(new[0], [0.0, 0.0, 0.0, 1.0], atol=1e-6)  # 0, 50: entry 0


def test_lut_within_range_is_the_same_in_5_and_6() -> None:
    # an 8-bit LUT of 256 entries and a 16-bit one: no index wraps, pydicom's array is kept
    small = np.arange(256, dtype=np.uint16).reshape(16, 16)
    for data in (
        lut_dicom(small, 256, 0, 8, [255 - i for i in range(256)]),
        lut_dicom(RAMP, 4096, 0, 16, [i * 7 for i in range(4096)], ow=True),
    ):
        np.testing.assert_array_equal(
            preprocess(data, version="6").pixels, preprocess(data, version="5").pixels
        )


def test_pydicom_voi_lut_files_are_the_same_in_5_and_6() -> None:
    names = ["vlut_04.dcm", "MR_small.dcm", "CT_small.dcm"]
    seen = 0
    for name in names:
        path = get_testdata_file(name)
        if path is None:
            continue
        data = Path(path).read_bytes()
        ds = pydicom.dcmread(path)
        if "VOILUTSequence" in ds:
            seen += 1
        np.testing.assert_array_equal(
            preprocess(data, version="6").pixels, preprocess(data, version="5").pixels
        )
    if not seen:
        pytest.skip("pydicom's vlut_04.dcm (a real VOI LUT file) is not installed")

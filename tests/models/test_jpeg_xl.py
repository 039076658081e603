"""DICOM JPEG XL (transfer syntaxes 1.2.840.10008.1.2.4.110-112, Supplement 232): newer than the
pinned pydicom, which has no decoder for them. models.preprocessing splits the frames with
pydicom and decodes them with imagecodecs' libjxl (models.codecs.decode_jpeg_xl): a lossless
JPEG XL file reads exactly as the same image uncompressed; what does not fit the header, is
cut short or is signed is refused with what is wrong. The frames here are encoded by
imagecodecs in the test; a real one (dcm4che's will-jxl.dcm, a 27-frame ultrasound in JPEG XL
JPEG Recompression) read as an echocardiogram when the change was made."""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radlens.models.errors import (
    CodestreamMismatchError,
    TruncatedDataError,
    UnsupportedTransferSyntaxError,
)
from radlens.models.preprocessing import preprocess, preprocess_frames

pytestmark = pytest.mark.skipif(
    not imagecodecs.JPEGXL.available, reason="imagecodecs was built without JPEG XL"
)

JXL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JXL = "1.2.840.10008.1.2.4.112"


def _dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 12) -> Dataset:
    """A DX image of ``pixels`` (frames, rows, columns[, 3]), uncompressed."""
    frames, rows, columns = pixels.shape[:3]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel = 3 if pixels.ndim == 4 else 1
    if pixels.ndim == 4:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _as_jpeg_xl(ds: Dataset, pixels: np.ndarray, syntax: str = JXL_LOSSLESS, **options) -> bytes:
    """``ds`` with its frames JPEG XL coded (lossless unless ``options`` say otherwise)."""
    from radlens.models.codecs import register_jpeg_xl_names

    register_jpeg_xl_names()  # pydicom writes no transfer syntax it does not know
    coded = [
        imagecodecs.jpegxl_encode(frame, **(options or {"lossless": True})) for frame in pixels
    ]
    jxl = pydicom.dcmread(io.BytesIO(_bytes(ds)))
    jxl.PixelData = encapsulate(coded)
    jxl["PixelData"].is_undefined_length = True
    jxl.file_meta.TransferSyntaxUID = syntax
    return _bytes(jxl)


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.integers(0, 4096, (3, 40, 56), dtype=np.uint16)


def test_lossless_gray_reads_as_the_uncompressed_file(gray: np.ndarray) -> None:
    ds = _dataset(gray)
    plain, jxl = _bytes(ds), _as_jpeg_xl(ds, gray)
    for frame in range(3):
        expected = preprocess(plain, frame=frame)
        got = preprocess(jxl, frame=frame)
        np.testing.assert_array_equal(got.pixels, expected.pixels)
    assert got.metadata.transfer_syntax_uid == JXL_LOSSLESS
    assert got.metadata.transfer_syntax_name == "JPEG XL Lossless"
    # every frame at once, as the service predicts a multi-frame image
    frames = list(preprocess_frames(jxl, size=(32, 32)))
    assert len(frames) == 3


def test_monochrome1_is_inverted(gray: np.ndarray) -> None:
    ds = _dataset(gray, photometric="MONOCHROME1")
    plain = preprocess(_bytes(_dataset(gray)))
    got = preprocess(_as_jpeg_xl(ds, gray))
    np.testing.assert_allclose(got.pixels, 1.0 - plain.pixels, atol=1e-6)


def test_colour_reads_as_the_uncompressed_file() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (1, 24, 30, 3), dtype=np.uint8)
    ds = _dataset(rgb, photometric="RGB", bits=8)
    expected = preprocess(_bytes(ds))
    got = preprocess(_as_jpeg_xl(ds, rgb))
    np.testing.assert_array_equal(got.pixels, expected.pixels)


def test_lossy_values_stay_within_bits_stored() -> None:
    """A lossy frame may ring past the top of a 12-bit range in its 16-bit container: kept
    within Bits Stored, as for lossy JPEG 2000, so the image matches the uncompressed one
    closely instead of being rescaled by an overshoot."""
    ramp = np.tile(np.linspace(0, 4095, 64), (48, 1)).astype(np.uint16)
    ramp[:, 30:34] = 4095  # a saturated edge: where ringing overshoots
    pixels = ramp[np.newaxis]
    ds = _dataset(pixels)
    coded = _as_jpeg_xl(ds, pixels, JXL, distance=2.0)
    (frame,) = generate_frames(pydicom.dcmread(io.BytesIO(coded)).PixelData, number_of_frames=1)
    raw = imagecodecs.jpegxl_decode(frame)
    assert int(raw.max()) > 4095  # the decoder overshoots the 12-bit range here
    got = preprocess(coded).pixels
    expected = preprocess(_bytes(ds)).pixels
    assert float(np.abs(got - expected).max()) < 0.1


def test_a_frame_of_another_size_is_refused(gray: np.ndarray) -> None:
    ds = _dataset(gray)
    data = _as_jpeg_xl(ds, gray)
    wrong = pydicom.dcmread(io.BytesIO(data))
    wrong.Rows = 41
    with pytest.raises(CodestreamMismatchError, match=r"40x56 uint16.*Rows=41"):
        preprocess(_bytes(wrong))


def test_a_codestream_cut_short_is_truncated(gray: np.ndarray) -> None:
    frame = imagecodecs.jpegxl_encode(gray[0], lossless=True)
    ds = pydicom.dcmread(io.BytesIO(_as_jpeg_xl(_dataset(gray[:1]), gray[:1])))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    with pytest.raises(TruncatedDataError, match="JPEG XL Lossless"):
        preprocess(_bytes(ds))


def test_signed_pixel_data_is_refused(gray: np.ndarray) -> None:
    ds = _dataset(gray)
    ds.PixelRepresentation = 1
    with pytest.raises(UnsupportedTransferSyntaxError, match="Pixel Representation 1"):
        preprocess(_as_jpeg_xl(ds, gray))

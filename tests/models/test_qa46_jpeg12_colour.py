"""QA 46: a 12-bit colour JPEG Extended DICOM frame (YBR_FULL_422) decodes to its picture.

Found by wrapping imagecodecs' own 12-bit colour test JPEGs (``rgb.u2.jpg``,
``words.jpeg12.bin``) with dcmtk's img2dcm: every such file was refused as undecodable
("Invalid ndarray.dtype 'uint16' for color space conversion": pydicom 3.0 converts YCbCr to
RGB for 8-bit samples only). models/jpeg_checked.py now converts 12-bit YBR_FULL samples itself.
The fixture is made here: a 12-bit RGB gradient encoded by libjpeg-turbo (imagecodecs, a
project dependency), which stores it as YCbCr, in a JPEG Extended (Process 2 and 4) DICOM.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

ROWS, COLUMNS = 48, 64


def _rgb12() -> np.ndarray:
    """A 12-bit RGB picture with distinct channels (a colour gradient)."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    return np.stack([x * 60, y * 80, (x + y) * 35], axis=-1).astype(np.uint16)


def _jpeg12_dicom(photometric: str = "YBR_FULL_422") -> bytes:
    import imagecodecs
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGExtended12Bit, SecondaryCaptureImageStorage, generate_uid

    codestream = imagecodecs.jpeg8_encode(_rgb12(), level=95, bitspersample=12)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class TestTwelveBitColourJpeg:
    def test_decodes_to_the_picture(self) -> None:
        from radlens.models.preprocessing import preprocess

        image = preprocess(_jpeg12_dicom())
        expected = (_rgb12().astype(np.float64) @ [0.299, 0.587, 0.114]) / 4095.0
        assert image.pixels.shape == (ROWS, COLUMNS)
        assert image.metadata.window == "full-range"
        # lossy coding at quality 95: a few 12-bit levels; YCbCr read as RGB is far off
        assert float(np.abs(image.pixels - expected).max()) < 0.01
        assert float(np.abs(image.pixels - expected).mean()) < 0.002

    def test_ybr_full_also_decodes(self) -> None:
        from radlens.models.preprocessing import preprocess

        image = preprocess(_jpeg12_dicom("YBR_FULL"), size=(32, 32))
        assert image.pixels.shape == (32, 32)
        assert 0.0 < float(image.pixels.mean()) < 1.0


class TestYbrFullToRgb:
    def test_8_bit_as_pydicom_converts(self) -> None:
        from pydicom.pixels.processing import convert_color_space

        from radlens.models.jpeg_checked import ybr_full_to_rgb

        rng = np.random.default_rng(46)
        ybr = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
        expected = convert_color_space(ybr.copy(), "YBR_FULL", "RGB")
        np.testing.assert_array_equal(ybr_full_to_rgb(ybr, 8), expected)

    @pytest.mark.parametrize("precision", [12, 16])
    def test_gray_stays_gray(self, precision: int) -> None:
        from radlens.models.jpeg_checked import ybr_full_to_rgb

        half = 1 << (precision - 1)
        levels = np.arange(0, 1 << precision, 257, dtype=np.uint16)
        ybr = np.stack([levels, np.full_like(levels, half), np.full_like(levels, half)], -1)
        rgb = ybr_full_to_rgb(ybr, precision)
        np.testing.assert_array_equal(rgb, np.stack([levels] * 3, axis=-1))

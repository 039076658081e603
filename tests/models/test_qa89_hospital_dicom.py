"""QA 89: hospital DICOM that was refused or decoded slowly.

- 8-bit colour JPEG 2000 (RGB, YBR_RCT, YBR_ICT) can be decoded at a reduced resolution for
  the model's size, as grayscale JPEG 2000 is, and as close to the full decode; it changes
  those files' arrays, so it waits for a new preprocessing version
  (``COLOUR_J2K_REDUCED_VERSIONS`` is empty): version "5" still decodes them in full.
- The retired non-hierarchical JPEG syntaxes (.53 spectral selection, .55 full progression)
  decode when their frame is Huffman DCT (sequential or progressive); hierarchical JPEG and
  other codings are refused with a message naming the process and what to do.
"""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, JPEG2000Lossless, generate_uid

from radlens.models.errors import UnsupportedTransferSyntaxError
from radlens.models.preprocessing import preprocess

# --- colour JPEG 2000 at reduced resolution -------------------------------------------------


def _colour_j2k_file(rgb: np.ndarray, photometric: str = "YBR_RCT") -> bytes:
    """A secondary capture holding ``rgb`` as one lossless JPEG 2000 frame (RCT for
    YBR_RCT, no component transform for RGB)."""
    code = imagecodecs.jpeg2k_encode(
        rgb, level=0, codecformat="J2K", reversible=True, mct=photometric != "RGB"
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([code])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _smooth_rgb(rows: int, columns: int) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    red = 128 + 100 * np.sin(x / 90.0) * np.cos(y / 130.0)
    green = 255 * x / columns
    blue = 255 * (1 - y / rows)
    return np.rint(np.dstack([red, green, blue])).clip(0, 255).astype(np.uint8)


class TestColourJpeg2000Reduced:
    @pytest.mark.parametrize("photometric", ["YBR_RCT", "RGB"])
    def test_a_large_colour_frame_is_reduced_and_close(
        self, photometric: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import radlens.models.preprocessing as pp
        from radlens.models.preprocessing import _frame_codestream, _reduced_decode

        data = _colour_j2k_file(_smooth_rgb(900, 1000), photometric)
        ds = pydicom.dcmread(io.BytesIO(data))
        codestream = _frame_codestream(ds, JPEG2000Lossless, 0, 1)
        assert codestream is not None
        reduced = _reduced_decode(
            codestream, ds, JPEG2000Lossless, 900, 1000, (224, 224), colour=True
        )
        assert reduced is not None, "a colour JPEG 2000 frame is decoded in full"
        arr, photometric_out = reduced
        assert arr.shape == (225, 250, 3) and photometric_out == "RGB"  # 1/4
        old = preprocess(data, size=(224, 224), version="1")  # full decode, then resize
        # version "5" decodes it in full: its arrays do not change within a version
        np.testing.assert_array_equal(
            preprocess(data, size=(224, 224), version="5").pixels, old.pixels
        )
        monkeypatch.setattr(
            pp, "COLOUR_J2K_REDUCED_VERSIONS", frozenset({pp.PREPROCESSING_VERSION})
        )
        new = preprocess(data, size=(224, 224))
        assert new.metadata.window == old.metadata.window == "full-range"
        difference = np.abs(new.pixels - old.pixels)
        # the grayscale reduced path's bounds (tests/models/test_decode.py)
        assert 0 < difference.mean() < 0.01
        assert difference.max() < 0.2

    @pytest.mark.parametrize("name", ["US1_J2KR.dcm", "US1_J2KI.dcm"])
    def test_real_ultrasound_reduces_to_the_full_decodes_rgb(self, name: str) -> None:
        """Real YBR_RCT / YBR_ICT ultrasound (pydicom-data): at reduction 0 the reduced path
        gives the full decode's RGB exactly; at 1/4 it is taken."""
        from radlens.models.preprocessing import (
            _decode_frame,
            _decode_j2k_reduced,
            _frame_codestream,
            _reduced_decode,
        )

        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"{name} absent: pydicom-data is not installed")
        ds = pydicom.dcmread(path)
        tsyntax = ds.file_meta.TransferSyntaxUID
        codestream = _frame_codestream(ds, tsyntax, 0, 1)
        assert codestream is not None
        assert _reduced_decode(codestream, ds, tsyntax, 480, 640, (64, 64)) is None
        reduced = _reduced_decode(codestream, ds, tsyntax, 480, 640, (64, 64), colour=True)
        assert reduced is not None and reduced[0].shape == (120, 160, 3)
        full, photometric = _decode_frame(ds, tsyntax, 0, rows=480, columns=640)
        assert photometric == "RGB"
        np.testing.assert_array_equal(_decode_j2k_reduced(codestream, 0, 480, 640, 8), full)


# --- retired and hierarchical JPEG ----------------------------------------------------------


def _jpeg_file(codestream: bytes, tsyntax: str, rows: int, columns: int) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(tsyntax)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _jpeg(progressive: bool) -> bytes:
    y, x = np.mgrid[0:96, 0:128]
    out = io.BytesIO()
    Image.fromarray(((x * 2 + y) % 256).astype(np.uint8)).save(
        out, format="JPEG", quality=90, progressive=progressive
    )
    return out.getvalue()


class TestRetiredJpeg:
    @pytest.mark.parametrize("tsyntax", ["1.2.840.10008.1.2.4.53", "1.2.840.10008.1.2.4.55"])
    @pytest.mark.parametrize("progressive", [False, True])
    def test_huffman_dct_frames_decode_as_jpeg_extended_does(
        self, tsyntax: str, progressive: bool
    ) -> None:
        codestream = _jpeg(progressive)
        expected = preprocess(_jpeg_file(codestream, "1.2.840.10008.1.2.4.51", 96, 128))
        got = preprocess(_jpeg_file(codestream, tsyntax, 96, 128))
        np.testing.assert_array_equal(got.pixels, expected.pixels)
        assert got.metadata.transfer_syntax_uid == tsyntax  # the file's own, as received

    @pytest.mark.parametrize(
        ("tsyntax", "process"),
        [
            ("1.2.840.10008.1.2.4.61", "Spectral Selection, Hierarchical"),
            ("1.2.840.10008.1.2.4.63", "Full Progression, Hierarchical"),
            ("1.2.840.10008.1.2.4.65", "Lossless, Hierarchical"),
        ],
    )
    def test_hierarchical_jpeg_is_named_with_what_to_do(self, tsyntax: str, process: str) -> None:
        data = _jpeg_file(_jpeg(False), tsyntax, 96, 128)
        with pytest.raises(UnsupportedTransferSyntaxError) as info:
            preprocess(data)
        message = str(info.value)
        assert process in message and "hierarchical JPEG process" in message
        assert "re-export the image as JPEG Baseline" in message and "\n" not in message

    def test_an_arithmetic_coded_frame_is_named(self) -> None:
        codestream = bytearray(_jpeg(True))
        at = codestream.index(b"\xff\xc2")
        codestream[at + 1] = 0xCA  # SOF10: progressive DCT, arithmetic coding
        data = _jpeg_file(bytes(codestream), "1.2.840.10008.1.2.4.55", 96, 128)
        with pytest.raises(UnsupportedTransferSyntaxError, match=r"holds a SOF10 frame, not"):
            preprocess(data)

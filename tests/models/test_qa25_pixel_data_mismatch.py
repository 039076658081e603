"""QA round 25: two real files whose pixel data do not fit their header, and the advice they got.

- wearemothership/dicom-test-files' ``20-wrong-transfer-syntax.dcm`` (a GE CT relayed by
  Orthanc): uncompressed samples of defined length under the JPEG-LS Lossless transfer syntax.
  radlens answered "cannot be decoded; re-encode it" quoting pydicom's "unexpected tag
  (F830,F830) instead of (FFFE,E000)", though no tool can re-encode it (dcmtk refuses to read
  it): the header is wrong. Now the reverse of EncapsulatedUnderNativeSyntaxError, same code.
- Brigid-DICOM's TCIA TCGA secondary captures: RGB, 3 samples per pixel in the header, one byte
  per pixel in the data. radlens said "The file is truncated; send the complete file": the
  file is complete, sending it again gives the same. Now an invalid image naming the header.

Fixtures are synthetic datasets written with pydicom.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from radlens.models.errors import (
    InvalidImageError,
    NativeUnderEncapsulatedSyntaxError,
    TruncatedDataError,
    UnsupportedTransferSyntaxError,
)
from radlens.models.preprocessing import preprocess


def _image(rows: int, columns: int, *, samples: int, bits: int, data: bytes) -> Dataset:
    ds = Dataset()
    uid = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _file(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    """The dataset in Explicit VR Little Endian, its file meta naming ``transfer_syntax``
    (pydicom refuses to write the mismatch itself, so the parts are written one by one)."""
    if transfer_syntax is None:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = transfer_syntax
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return fp.getvalue() + body.getvalue()


def _gray16(rows: int = 32, columns: int = 32) -> Dataset:
    values = (np.arange(rows * columns, dtype=np.uint16) * 7 % 4096).reshape(rows, columns)
    return _image(rows, columns, samples=1, bits=16, data=values.tobytes())


class TestUncompressedDataUnderACompressedSyntax:
    @pytest.mark.parametrize(
        "syntax", [JPEGLSLossless, JPEGBaseline8Bit, JPEG2000Lossless, RLELossless]
    )
    def test_refused_as_a_header_mismatch(self, syntax: str) -> None:
        data = native_under(syntax)
        with pytest.raises(NativeUnderEncapsulatedSyntaxError) as info:
            preprocess(data)
        error = info.value
        assert error.code == "transfer-syntax-mismatch"
        assert "uncompressed (not encapsulated)" in error.title
        assert "re-export" in error.title
        assert str(syntax) in str(error)  # quotes what the file says
        assert "2048 bytes" in str(error)  # and what it holds
        assert "F830" not in str(error) and "re-encode" not in error.title
        assert not isinstance(error, UnsupportedTransferSyntaxError)
        assert len(error.comment) <= 64  # a DICOM Error Comment

    def test_same_file_under_its_own_syntax_still_reads(self) -> None:
        image = preprocess(_file(_gray16()))
        assert image.pixels.shape == (32, 32)

    def test_every_version_refuses_it_the_same_way(self) -> None:
        data = _file(_gray16(), JPEGLSLossless)
        for version in ("1", "4", "5"):
            with pytest.raises(NativeUnderEncapsulatedSyntaxError):
                preprocess(data, version=version)

    def test_encapsulated_data_written_with_a_defined_length_still_reads(self) -> None:
        # some writers give encapsulated Pixel Data a defined length; its items are all there
        import struct
        from pathlib import Path

        from pydicom.data import get_testdata_file

        data = Path(str(get_testdata_file("JPEG2000.dcm"))).read_bytes()
        undefined = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
        at = data.index(undefined)
        items = data[at + len(undefined) : -8]  # without the Sequence Delimitation Item
        assert data[-8:] == b"\xfe\xff\xdd\xe0" + bytes(4)
        defined = data[:at] + undefined[:8] + struct.pack("<I", len(items)) + items
        np.testing.assert_array_equal(preprocess(defined).pixels, preprocess(data).pixels)


def rgb_header_gray_data(rows: int, columns: int) -> bytes:
    """A colour (RGB) header over one byte per pixel."""
    gray = (np.arange(rows * columns) % 251).astype(np.uint8).tobytes()
    return _file(_image(rows, columns, samples=3, bits=8, data=gray))


def native_under(syntax: str) -> bytes:
    """A 32x32 16-bit gray image stored uncompressed under ``syntax``'s file meta."""
    return _file(_gray16(), syntax)


class TestGrayDataUnderAColourHeader:
    def test_not_called_truncated(self) -> None:
        data = rgb_header_gray_data(23, 76)
        with pytest.raises(InvalidImageError) as info:
            preprocess(data)
        message = str(info.value)
        assert not isinstance(info.value, TruncatedDataError)
        assert "SamplesPerPixel=3" in message and "'RGB'" in message
        assert "1748 bytes" in message and "needs 5244" in message
        assert "one sample per pixel" in message
        assert "send the complete file" not in message

    def test_odd_pixel_count_padded_to_even(self) -> None:
        # 5 x 7 = 35 bytes, written padded to 36
        data = rgb_header_gray_data(5, 7)
        with pytest.raises(InvalidImageError, match="one sample per pixel"):
            preprocess(data)

    def test_colour_data_cut_short_is_still_truncated(self) -> None:
        rows, columns = 23, 76
        cut = bytes(rows * columns * 2)  # two thirds of an RGB image: a cut file
        data = _file(_image(rows, columns, samples=3, bits=8, data=cut))
        with pytest.raises(TruncatedDataError, match="need 5244"):
            preprocess(data)

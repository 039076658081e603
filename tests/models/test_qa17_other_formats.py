"""Files of another format than DICOM, PNG or JPEG, and JPEGs of a coding Pillow cannot read,
are refused with a message that names what was received and says what to send (QA round 17).

Before, a TIFF, GIF, BMP, WebP, JPEG 2000, HEIC/AVIF, PDF, ZIP or NIfTI upload was refused as
"Not a DICOM, PNG or JPEG file; send one of those: received N bytes starting <hex>", and a
JPEG-LS, lossless or 12-bit JPEG as "The image is invalid; check its size, pixel values and
the options given: the JPEG header could not be parsed": the user had to decode the hex, or
was told to check the size of a valid image.
"""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image, features

from radlens.models.errors import NotAnImageError, UnsupportedJpegError
from radlens.models.preprocessing import other_format, preprocess


def _gray(size: tuple[int, int] = (24, 32)) -> Image.Image:
    rng = np.random.default_rng(17)
    return Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8))


def _saved(fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    _gray().save(buffer, fmt, **options)
    return buffer.getvalue()


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("chest.dcm", b"\x00" * 200)
    return buffer.getvalue()


def _nifti1() -> bytes:
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)  # sizeof_hdr
    header[344:348] = b"n+1\x00"
    return bytes(header) + bytes(64)


# (id, bytes, a word the message must contain)
OTHER_FORMATS = [
    ("gif", lambda: _saved("GIF"), "GIF"),
    ("tiff", lambda: _saved("TIFF"), "TIFF"),
    ("tiff-big-endian", lambda: b"MM\x00*\x00\x00\x00\x08" + bytes(64), "TIFF"),
    ("bmp", lambda: _saved("BMP"), "BMP"),
    ("pgm", lambda: _saved("PPM"), "PNM"),
    ("psd", lambda: b"8BPS\x00\x01" + bytes(64), "Photoshop"),
    ("webp", lambda: b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(64), "WebP"),
    ("jp2", lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64), "JPEG 2000"),
    ("j2k", lambda: b"\xff\x4f\xff\x51\x00\x29" + bytes(64), "JPEG 2000"),
    ("jxl", lambda: b"\xff\x0a\xfa\x7f" + bytes(64), "JPEG XL"),
    ("heic", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC"),
    ("avif", lambda: b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00" + bytes(64), "AVIF"),
    ("pdf", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(64), "PDF"),
    ("zip", _zip, "ZIP"),
    ("gzip", lambda: b"\x1f\x8b\x08\x00" + bytes(64), "gzip"),
    ("nifti", _nifti1, "NIfTI"),
]


@pytest.mark.parametrize(
    ("make", "word"), [c[1:] for c in OTHER_FORMATS], ids=[c[0] for c in OTHER_FORMATS]
)
def test_another_format_is_named_with_what_to_do(make, word) -> None:
    data = make()
    with pytest.raises(NotAnImageError) as info:
        preprocess(data)
    message = str(info.value)
    assert word in message, message
    assert f"{len(data)} bytes" in message and data[:4].hex(" ") in message  # still quoted
    assert "send" in message or "convert" in message
    assert info.value.code == "not-an-image"


def test_unknown_bytes_are_not_named() -> None:
    assert other_format(b"patient,label\n1,0\n") is None
    assert other_format(b"") is None
    assert other_format(b"P") is None and other_format(b"BM") is None


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow built without OpenJPEG")
def test_a_real_jpeg_2000_file_is_named() -> None:
    with pytest.raises(NotAnImageError, match="JPEG 2000"):
        preprocess(_saved("JPEG2000"))


def _baseline_jpeg() -> bytes:
    return _saved("JPEG", quality=90)


def _sof(data: bytes) -> int:
    at = data.index(b"\xff\xc0")
    return at


def test_a_12_bit_jpeg_is_refused_as_unsupported_coding_not_as_invalid() -> None:
    data = bytearray(_baseline_jpeg())
    data[_sof(bytes(data)) + 4] = 12  # SOF0 precision: 12 bits
    with pytest.raises(UnsupportedJpegError) as info:
        preprocess(bytes(data))
    message = str(info.value)
    assert "12-bit" in message and "PNG" in message and f"{len(data)} bytes" in message
    assert "check its size" not in message
    assert info.value.code == "not-an-image"


def test_a_jpeg_ls_file_is_refused_as_unsupported_coding() -> None:
    data = bytearray(_baseline_jpeg())
    data[_sof(bytes(data)) + 1] = 0xF7  # SOF55: JPEG-LS
    with pytest.raises(UnsupportedJpegError, match="JPEG-LS"):
        preprocess(bytes(data))


def test_a_lossless_jpeg_is_refused_as_unsupported_coding() -> None:
    data = bytearray(_baseline_jpeg())
    at = _sof(bytes(data))
    data[at + 1] = 0xC3  # SOF3: lossless (process 14)
    data[at + 4] = 16
    with pytest.raises(UnsupportedJpegError, match="lossless"):
        preprocess(bytes(data))


def test_the_frame_header_search_is_bounded() -> None:
    """The marker walk that names a JPEG's coding runs only after Pillow failed, on bytes of
    up to the upload limit: it stops after a bounded number of markers (a file of empty
    markers is not walked to its end; review), and an 8-bit frame gets "an 8-bit"."""
    from radlens.models import preprocessing

    sof3 = b"\xff\xc3\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00"
    near = b"\xff\xd8" + b"\xff\x01" * 100 + sof3
    assert preprocessing._unsupported_jpeg_coding(near) == "an 8-bit lossless JPEG (SOF3)"
    far = b"\xff\xd8" + b"\xff\x01" * (preprocessing._JPEG_HEADER_STEPS + 1) + sof3
    assert preprocessing._unsupported_jpeg_coding(far) is None

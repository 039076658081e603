"""Formats people send by mistake that the refusal did not name (QA 105): QOI, DDS, PCX, a TGA
without the TGA 2.0 footer, OpenEXR, Radiance HDR, NumPy arrays, HDF5, NRRD and MetaImage
volumes, 7-Zip, RAR, bzip2, xz and Zstandard files, old Office documents, videos, and DICOM
JSON metadata sent instead of the instance. Each was "Not a DICOM, PNG or JPEG file; send one
of those: received N bytes starting <hex>"; the refusal now says what the file is and what to
send, as it did for GIF, TIFF, WebP, AVIF, HEIC, PSD, ... (QA round 17). A text file's first
bytes are still not quoted (a header or JSON may name the patient)."""

from __future__ import annotations

import bz2
import io
import lzma
import struct
from collections.abc import Callable

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from radlens.models.errors import NotAnImageError
from radlens.models.preprocessing import other_format, preprocess, sniff_format


def _gray() -> np.ndarray:
    return np.random.default_rng(105).integers(0, 256, (24, 32), dtype=np.uint8)


def _pillow(fmt: str, mode: str = "L", **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_gray()).convert(mode).save(buf, fmt, **options)
    return buf.getvalue()


def _tga_1(**options: object) -> bytes:
    """A TGA 1.0 file: Pillow's TGA without the 26-byte TGA 2.0 footer."""
    data = _pillow("TGA", **options)
    assert data.endswith(b"TRUEVISION-XFILE.\x00")
    return data[:-26]


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, _gray())
    return buf.getvalue()


def _box(kind: bytes, content: bytes) -> bytes:
    return struct.pack(">I", 8 + len(content)) + kind + content


# (id, bytes, what the refusal calls it)
NEWLY_NAMED: list[tuple[str, Callable[[], bytes], str]] = [
    ("qoi", lambda: imagecodecs.qoi_encode(np.stack([_gray()] * 3, axis=-1)), "a QOI image"),
    ("dds", lambda: _pillow("DDS", "RGB"), "a DirectDraw Surface (DDS) texture"),
    ("pcx", lambda: _pillow("PCX"), "a PCX image"),
    ("pcx-rgb", lambda: _pillow("PCX", "RGB"), "a PCX image"),
    ("tga1", _tga_1, "a TGA image"),
    ("tga1-rle", lambda: _tga_1(compression="tga_rle"), "a TGA image"),
    ("exr", lambda: b"\x76\x2f\x31\x01\x02\x00\x00\x00channels\x00" + bytes(64), "OpenEXR"),
    ("hdr", lambda: b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 24 +X 32\n", "Radiance HDR"),
    ("npy", _npy, "a NumPy array (.npy)"),
    ("hdf5", lambda: b"\x89HDF\r\n\x1a\n\x00\x00\x00\x00" + bytes(64), "an HDF5 file"),
    ("nrrd", lambda: b"NRRD0004\ntype: uint8\ndimension: 3\n", "a NRRD or MetaImage volume"),
    ("mha", lambda: b"ObjectType = Image\nNDims = 3\n", "a NRRD or MetaImage volume"),
    ("7z", lambda: b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(64), "a 7-Zip archive"),
    ("rar", lambda: b"Rar!\x1a\x07\x01\x00" + bytes(64), "a RAR archive"),
    ("bz2", lambda: bz2.compress(b"chest" * 40), "a bzip2-compressed file"),
    ("xz", lambda: lzma.compress(b"chest" * 40), "an xz-compressed file"),
    ("zst", lambda: b"\x28\xb5\x2f\xfd\x24\x04\x21\x00" + bytes(64), "a Zstandard-compressed"),
    ("doc", lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "Microsoft Office"),
    ("mp4", lambda: _box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41") + bytes(64), "a video"),
    ("mov", lambda: _box(b"ftyp", b"qt  \x00\x00\x00\x00qt  ") + bytes(64), "a video"),
    ("avi", lambda: b"RIFF\x24\x00\x00\x00AVI LIST" + bytes(64), "a video"),
    (
        "dicom-json",
        lambda: (
            b'[{"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}, '
            b'"00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}}]'
        ),
        "DICOM JSON metadata",
    ),
]
TEXT = {"hdr", "nrrd", "mha", "dicom-json"}


@pytest.mark.parametrize(
    ("kind", "make", "named"), NEWLY_NAMED, ids=[case[0] for case in NEWLY_NAMED]
)
def test_another_format_is_named_with_what_to_do(
    kind: str, make: Callable[[], bytes], named: str
) -> None:
    data = make()
    assert other_format(data) is not None
    with pytest.raises(NotAnImageError) as raised:
        preprocess(data)
    message = str(raised.value)
    assert named in message, message
    assert "send" in message or "convert" in message or "export" in message, message
    assert f"received {len(data)} bytes" in message
    if kind in TEXT:  # its text is not quoted
        assert "with text (not shown)" in message and "DOE" not in message, message
    else:
        assert data[:4].hex(" ") in message, message


def test_a_tga_1_header_needs_its_fields_to_agree() -> None:
    data = _tga_1()
    assert other_format(data) is not None
    for at, value in ((1, 2), (2, 7), (16, 12), (17, 0xC0)):  # map type, image type, depth...
        broken = bytearray(data)
        broken[at] = value
        assert other_format(bytes(broken)) is None, at
    assert other_format(data[:17]) is None


def test_named_files_are_not_read_as_dicom_and_nothing_else_is_named() -> None:
    for _kind, make, _named in NEWLY_NAMED:
        with pytest.raises(NotAnImageError):
            sniff_format(make())
    rng = np.random.default_rng(7)
    named = sum(other_format(rng.bytes(200)) is not None for _ in range(2000))
    assert named == 0
    assert other_format(b"patient,label\n1,0\n") is None
    assert other_format(b'{"name": "DOE^JANE"}') is None  # JSON, but not DICOM's
    assert other_format(b"\x0a\x05\x01\x08" + bytes(10)) is None  # too short for a PCX header

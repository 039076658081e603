"""QA 111: a 16-bit RGB or RGBA PNG is read at its full 16 bits (version "6").

Pillow reads such a PNG at 8 bits, each sample's high byte (Pillow issues #1888, #7723): a
12-bit radiograph exported as 16-bit RGB was refused (``DeepColourPngError``), a full-range one
kept 256 of its 65536 levels. From "6" its exact samples (imagecodecs) go to gray by BT.601
luma and are scaled by their depth, as a 16-bit gray PNG's are (an RGB copy of a gray PNG
gives that PNG's array); its EXIF orientation is applied as to any PNG. Versions "1"-"5" read
it at 8 bits as before (:data:`PNG_DEEP_COLOUR_VERSIONS`).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from radlens.models.errors import DeepColourPngError
from radlens.models.preprocessing import PNG_DEEP_COLOUR_VERSIONS, preprocess


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png16(samples: np.ndarray, colour_type: int, *extra: bytes, after: bytes = b"") -> bytes:
    """A 16-bit PNG of ``samples`` (H, W, channels) uint16; ``extra`` chunks before IDAT,
    ``after`` chunks after it."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + b"".join(extra)
        + _chunk(b"IDAT", zlib.compress(raw))
        + after
        + _chunk(b"IEND", b"")
    )


def exif_chunk(orientation: int) -> bytes:
    """An eXIf chunk (big-endian TIFF header, one IFD entry: Orientation)."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 274, 3, 1, orientation, 0) + b"\0" * 4
    return _chunk(b"eXIf", b"MM\x00\x2a" + struct.pack(">I", 8) + ifd)


def gray12() -> np.ndarray:
    y, x = np.mgrid[0:40, 0:48]
    return ((x * 83 + y * 37) % 4096).astype(np.uint16)


def rgb(r: np.ndarray, g: np.ndarray, b: np.ndarray, alpha: bool = False) -> np.ndarray:
    planes = [r, g, b] + ([np.full_like(r, 65535)] if alpha else [])
    return np.stack(planes, axis=-1)


def test_version_6_is_the_one_reading_16_bits() -> None:
    assert frozenset({"6"}) == PNG_DEEP_COLOUR_VERSIONS


@pytest.mark.parametrize("alpha", [False, True], ids=["rgb", "rgba"])
def test_an_rgb_copy_of_a_16_bit_gray_png_gives_the_gray_array(alpha: bool) -> None:
    gray = gray12()
    colour = png16(rgb(gray, gray, gray, alpha), 6 if alpha else 2)
    with pytest.raises(DeepColourPngError):  # before: refused (12-bit data read at 8 bits)
        preprocess(colour, version="5")
    new = preprocess(colour, version="6")
    same = preprocess(png16(gray[..., None], 0), version="6")
    np.testing.assert_array_equal(new.pixels, same.pixels)
    assert new.metadata.bits_stored == 12 and new.metadata.colour_fraction == 0.0


def test_full_range_16_bit_colour_keeps_its_low_bytes() -> None:
    y, x = np.mgrid[0:32, 0:64]
    r = (x * 1021 + y * 7).astype(np.uint16)  # low bytes differ from their high bytes
    g = (65535 - r).astype(np.uint16)
    b = ((x * 523 + y * 977) % 65536).astype(np.uint16)
    data = png16(rgb(r, g, b), 2)
    new = preprocess(data, version="6")
    luma = (0.299 * r + 0.587 * g + 0.114 * b) / 65535.0
    np.testing.assert_allclose(new.pixels, luma, atol=2e-6)
    assert new.metadata.bits_stored == 16
    old = preprocess(data, version="5")  # Pillow's high bytes
    assert old.metadata.bits_stored == 8
    assert np.abs(old.pixels - luma).max() > 1e-3
    assert np.abs(old.pixels - luma).max() < 2 / 255


def test_sbit_states_the_colour_depth() -> None:
    # 12-bit data scaled up to 16 bits (PNG 11.3.2.4, left-shifted): sBIT 12 12 12 is its depth
    gray = gray12()
    up = (gray << 4).astype(np.uint16)
    sbit = _chunk(b"sBIT", bytes([12, 12, 12]))
    new = preprocess(png16(rgb(up, up, up), 2, sbit), version="6")
    np.testing.assert_allclose(new.pixels, gray / 4095.0, atol=1e-6)
    assert new.metadata.bits_stored == 12
    # an unscaled one under the same sBIT: read as 12-bit too (as a 16-bit gray PNG is)
    same = preprocess(png16(rgb(gray, gray, gray), 2, sbit), version="6")
    np.testing.assert_array_equal(same.pixels, new.pixels)
    # RGBA: the fourth value (alpha's) is not the image's depth
    sbit4 = _chunk(b"sBIT", bytes([12, 12, 12, 16]))
    rgba = preprocess(png16(rgb(up, up, up, alpha=True), 6, sbit4), version="6")
    np.testing.assert_array_equal(rgba.pixels, new.pixels)


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_as_to_an_8_bit_png(orientation: int, where: str) -> None:
    y, x = np.mgrid[0:24, 0:40]
    r = (x * 1600 + y).astype(np.uint16)
    g = (y * 2700).astype(np.uint16)
    b = ((x + y) * 800).astype(np.uint16)
    plain = png16(rgb(r, g, b), 2)
    exif = exif_chunk(orientation)
    data = png16(rgb(r, g, b), 2, exif) if where == "before" else png16(rgb(r, g, b), 2, after=exif)
    new = preprocess(data, version="6")
    upright = preprocess(plain, version="6").pixels
    turn = {3: np.rot90(upright, 2), 6: np.rot90(upright, -1), 8: np.rot90(upright, 1)}
    old = preprocess(data, version="5")
    # the 8-bit read of the same file turns (or not) the same way
    assert new.metadata.exif_orientation == old.metadata.exif_orientation
    expected = turn[orientation] if old.metadata.exif_orientation else upright
    np.testing.assert_array_equal(new.pixels, expected)
    assert new.pixels.shape == old.pixels.shape


def test_8_bit_and_gray_pngs_are_unchanged_in_6() -> None:
    from PIL import Image

    y, x = np.mgrid[0:20, 0:30]
    arr = np.stack([x * 8, y * 12, (x + y) * 4], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    eight = buffer.getvalue()
    np.testing.assert_array_equal(
        preprocess(eight, version="6").pixels, preprocess(eight, version="5").pixels
    )
    gray = png16(gray12()[..., None], 0)
    np.testing.assert_array_equal(
        preprocess(gray, version="6").pixels, preprocess(gray, version="5").pixels
    )


def test_a_transparent_16_bit_rgba_png_is_still_refused() -> None:
    from radlens.models.errors import TransparentImageError

    gray = gray12() * 16
    samples = rgb(gray, gray, gray, alpha=True)
    samples[0, 0, 3] = 0
    with pytest.raises(TransparentImageError):
        preprocess(png16(samples, 6), version="6")

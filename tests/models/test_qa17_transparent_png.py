"""A PNG with transparent pixels is refused with what to do, instead of being read as the
colour stored under its transparency (QA round 17).

A viewer shows a transparent pixel as the background behind it (a page, a dark viewer);
preprocessing ignored alpha and read the stored colour, which nobody sees: a PNG whose
burned-in name was hidden by making its box transparent was scored on the name, and the
Grad-CAM overlay the service stores and serves (GET /v1/predictions/{id}/heatmap, the /ui
detail page) showed the hidden name in plain view. Which background the sender meant is not
in the file, so the file is refused: flatten it and send it again. An alpha channel that is
opaque everywhere (e.g. the RGBA radiographs of ../shared/data/nih1000) changes nothing.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from radlens.models.errors import TransparentImageError
from radlens.models.preprocessing import preprocess


def _png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _gray() -> np.ndarray:
    y, x = np.mgrid[0:32, 0:40]
    return ((x * 5 + y * 3) % 256).astype(np.uint8)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def test_a_name_hidden_by_transparency_is_not_read() -> None:
    rgb = np.stack([_gray()] * 3, axis=-1)
    rgb[4:12, 4:30] = 255  # the "burned-in text" ...
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[4:12, 4:30] = 0  # ... hidden by a transparent box
    data = _png(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    with pytest.raises(TransparentImageError) as info:
        preprocess(data)
    message = str(info.value)
    assert "208 of its 1280 pixels" in message and "40x32" in message, message
    assert "flatten" in message and info.value.code == "invalid-image"
    # the same image with an opaque alpha channel: read as before
    opaque = _png(Image.fromarray(np.dstack([rgb, np.full_like(alpha, 255)]), "RGBA"))
    np.testing.assert_allclose(preprocess(opaque).pixels, rgb[..., 0] / 255.0, atol=1e-6)


def test_semi_transparent_gray_with_alpha_is_refused() -> None:
    alpha = np.full((32, 40), 255, np.uint8)
    alpha[0, 0] = 128
    data = _png(Image.fromarray(np.dstack([_gray(), alpha]), "LA"))
    with pytest.raises(TransparentImageError, match=r"1 of its 1280 pixels .*down to 128"):
        preprocess(data)


def test_a_palette_png_refused_only_when_a_transparent_entry_is_used() -> None:
    indices = (_gray() // 64).astype(np.uint8)  # entries 0-3
    image = Image.fromarray(indices, "P")
    image.putpalette([0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255, 9, 9, 9])
    with pytest.raises(TransparentImageError):
        preprocess(_png(image, transparency=2))  # entry 2 is used
    assert not preprocess(_png(image, transparency=4)).metadata.blank  # entry 4 is not


@pytest.mark.parametrize(("mode", "key"), [("L", 60), ("RGB", (60, 60, 60)), ("I;16", 60)])
def test_a_trns_colour_key_that_pixels_use_is_refused(mode: str, key: object) -> None:
    gray = _gray()
    image = Image.fromarray(gray.astype(np.uint16) if mode == "I;16" else gray)
    if mode == "RGB":
        image = image.convert("RGB")
    with pytest.raises(TransparentImageError):
        preprocess(_png(image, transparency=key))


def test_a_4_bit_gray_png_with_trns_is_refused() -> None:
    """Pillow scales a 4-bit gray PNG's samples to 0-255 but leaves its tRNS value at 0-15,
    so its own conversion to RGBA misses the transparent pixels (PngSuite tbbn1g04.png)."""
    rows = [bytes([0]) + bytes([(v << 4) | v for v in range(8)]) for _ in range(4)]  # 16 px
    header = struct.pack(">IIBBBBB", 16, 4, 4, 0, 0, 0, 0)  # 16x4, 4-bit gray
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"tRNS", struct.pack(">H", 7))
        + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + _chunk(b"IEND", b"")
    )
    with pytest.raises(TransparentImageError, match=r"8 of its 64 pixels"):
        preprocess(data)


def _gray_png(width: int, height: int, depth: int, packed_rows: list[bytes], key: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"tRNS", struct.pack(">H", key))
        + _chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in packed_rows)))
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("key", [0, 1])
def test_a_1_bit_gray_png_with_trns_is_refused_for_either_value(key: int) -> None:
    """Pillow stores a 1-bit PNG's tRNS value as 0 or 255 already (mode "1"): scaling it
    again made tRNS = 1 match nothing (review)."""
    rows = [bytes([0b11110000]) for _ in range(4)]  # 8x4: half white, half black
    with pytest.raises(TransparentImageError, match=r"16 of its 32 pixels"):
        preprocess(_gray_png(8, 4, 1, rows, key))


def test_a_16_bit_rgb_trns_colour_is_matched_on_the_exact_samples() -> None:
    """Pillow reads 16-bit RGB at the high bytes; a tRNS colour (0, 0, 0) no pixel holds
    exactly must not match pixels whose high bytes are 0 (value 100): read, not refused; one
    pixel that holds it exactly is transparent (review)."""
    from tests.models.test_qa17_deep_colour_png import png16

    samples = np.full((8, 8, 3), 40000, np.uint16)
    samples[:2] = 100  # high byte 0, not the key
    trns = _chunk(b"tRNS", struct.pack(">HHH", 0, 0, 0))

    def with_trns(png: bytes) -> bytes:
        at = png.index(b"IDAT") - 4  # before the IDAT chunk's length
        return png[:at] + trns + png[at:]

    assert preprocess(with_trns(png16(samples, 2))).pixels.shape == (8, 8)
    samples[0, 0] = 0
    with pytest.raises(TransparentImageError, match=r"1 of its 64 pixels"):
        preprocess(with_trns(png16(samples, 2)))

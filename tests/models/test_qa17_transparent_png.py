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


def test_an_rgba_array_is_refused_as_its_png_is() -> None:
    """preprocess_array (MedMNIST-style .npz sources) promises the result of the array's PNG:
    an RGBA array with transparent pixels is refused the same way, an opaque one is read."""
    from radlens.models.preprocessing import preprocess_array

    def png_bytes_of(array: np.ndarray) -> bytes:
        return _png(Image.fromarray(array))

    rgba = np.dstack([np.stack([_gray()] * 3, axis=-1), np.full((32, 40), 255, np.uint8)])
    rgba[0, 0, 3] = 17
    with pytest.raises(TransparentImageError, match="1 of its 1280 pixels"):
        preprocess_array(rgba)
    with pytest.raises(TransparentImageError):
        preprocess(png_bytes_of(rgba))
    rgba[0, 0, 3] = 255
    np.testing.assert_array_equal(preprocess_array(rgba), preprocess(png_bytes_of(rgba)).pixels)

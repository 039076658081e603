"""A 16-bit RGB, RGBA or gray-with-alpha PNG whose samples need fewer than 15 bits (a
detector's 10- to 14-bit values stored unscaled, as in a 16-bit gray PNG, but in a colour or
alpha container) is refused with what to send instead (QA round 17).

Pillow reads such a PNG at 8 bits, each sample's high byte; a 16-bit gray PNG is read whole
and scaled by the depth of its data (``scale_16bit``). Before, a 12-bit radiograph saved as
16-bit RGB came out in [0, 0.06] with 16 gray levels (near black, posterised) and was scored,
while the same pixels as a 16-bit gray PNG came out in [0, 1] with 4096 levels.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from radlens.models.errors import DeepColourPngError
from radlens.models.preprocessing import preprocess


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG of ``samples`` (H, W, channels) uint16, filter type 0 on every row."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def _gray12() -> np.ndarray:
    y, x = np.mgrid[0:40, 0:48]
    return ((x * 83 + y * 37) % 4096).astype(np.uint16)  # every 12-bit value range


def _as(gray: np.ndarray, colour_type: int) -> np.ndarray:
    opaque = np.full_like(gray, 65535)
    planes = {2: [gray] * 3, 4: [gray, opaque], 6: [gray] * 3 + [opaque]}[colour_type]
    return np.stack(planes, axis=-1)


@pytest.mark.parametrize("colour_type", [2, 4, 6], ids=["rgb", "gray-alpha", "rgba"])
def test_unscaled_deep_data_in_a_colour_png_is_refused(colour_type: int) -> None:
    gray = _gray12()
    data = png16(_as(gray, colour_type), colour_type)
    with pytest.raises(DeepColourPngError) as info:
        preprocess(data, version="5")  # from "6" a 16-bit RGB/RGBA PNG is read at 16 bits
    message = str(info.value)
    assert "16-bit gray PNG" in message and "48x40" in message, message
    assert info.value.code == "invalid-image"
    # the same pixels as a 16-bit gray PNG: read whole, by the depth of the data
    image = preprocess(png16(gray[..., None], 0))
    assert image.metadata.bits_stored == 12 and image.pixels.max() > 0.99


def test_a_full_range_16_bit_rgb_png_is_still_read_at_8_bits() -> None:
    gray = _gray12()
    with pytest.raises(DeepColourPngError):  # (the unscaled one: refused)
        preprocess(png16(_as(gray, 2), 2), version="5")  # "6": read at 16 bits (QA 111)
    scaled = (gray.astype(np.uint32) * 16).astype(np.uint16)  # the range of 16 bits
    image = preprocess(png16(_as(scaled, 2), 2), version="5")
    np.testing.assert_allclose(image.pixels, (scaled >> 8) / 255.0, atol=1e-6)
    assert image.metadata.bits_stored == 8


@pytest.mark.parametrize("colour_type", [2, 4, 6], ids=["rgb", "gray-alpha", "rgba"])
def test_a_dark_8_bit_image_widened_to_16_bits_is_read(colour_type: int) -> None:
    """8-bit values stored at 16 bits (v * 257, each low byte equal to its high byte) lose
    nothing at 8 bits: a dark one (every value below 64) is read, not refused (review)."""
    y, x = np.mgrid[0:40, 0:48]
    dark = ((x + y) % 60).astype(np.uint16) * 257
    image = preprocess(png16(_as(dark, colour_type), colour_type), version="5")
    np.testing.assert_allclose(image.pixels, (dark >> 8) / 255.0, atol=1e-6)

"""A PNG of more chunks than any encoder writes is refused before Pillow reads them one by one
(63 MiB of empty chunks took 17 s to open, 13 MiB of 1-byte IDATs 2.3 s): at most
PNG_MAX_OTHER_CHUNKS chunks besides the image data (libpng's default) and PNG_MAX_DATA_CHUNKS
image-data chunks. Files at the limits still read, pixel for pixel."""

from __future__ import annotations

import io
import itertools
import struct
import zlib

import numpy as np
import pytest

from radlens.models.errors import InvalidImageError
from radlens.models.preprocessing import (
    PNG_MAX_DATA_CHUNKS,
    PNG_MAX_OTHER_CHUNKS,
    preprocess,
)
from tests.app.conftest import Service, assert_problem, png_bytes

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(pixels: np.ndarray, *, extra: int = 0, data_chunks: int = 1) -> bytes:
    """A gray 8-bit PNG of ``pixels`` with ``extra`` private ancillary chunks before its image
    data, the compressed data split into ``data_chunks`` IDAT chunks (as even as it goes)."""
    rows, columns = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(rows))
    compressed = zlib.compress(raw, 0)  # stored: long enough to split into many chunks
    assert len(compressed) >= data_chunks
    bounds = np.linspace(0, len(compressed), data_chunks + 1).astype(int)
    header = struct.pack(">IIBBBBB", columns, rows, 8, 0, 0, 0, 0)
    return b"".join(
        [
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"prIv") * extra,
            *(_chunk(b"IDAT", compressed[a:b]) for a, b in itertools.pairwise(bounds)),
            _chunk(b"IEND"),
        ]
    )


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (260, 260), dtype=np.uint8)


def _read(data: bytes) -> np.ndarray:
    return np.asarray(preprocess(data).pixels)


def test_at_the_limits_the_pixels_are_read(pixels: np.ndarray) -> None:
    expected = pixels.astype(np.float32) / 255
    # IHDR is one of the chunks besides the image data
    at_limit = _png(pixels, extra=PNG_MAX_OTHER_CHUNKS - 1, data_chunks=PNG_MAX_DATA_CHUNKS)
    np.testing.assert_allclose(_read(at_limit), expected, atol=1e-6)


def test_one_chunk_too_many_besides_the_image_data(pixels: np.ndarray) -> None:
    with pytest.raises(InvalidImageError, match=r"more than 1000 chunks besides its image data"):
        preprocess(_png(pixels, extra=PNG_MAX_OTHER_CHUNKS))


def test_image_data_in_too_many_chunks(pixels: np.ndarray) -> None:
    with pytest.raises(InvalidImageError, match=r"split into more than 65536 chunks"):
        preprocess(_png(pixels, data_chunks=PNG_MAX_DATA_CHUNKS + 1))


def test_chunks_after_iend_are_not_counted(pixels: np.ndarray) -> None:
    """Bytes after IEND (a trailer some tools append) are not chunks of the image."""
    data = _png(pixels) + _chunk(b"prIv") * (PNG_MAX_OTHER_CHUNKS + 5)
    np.testing.assert_allclose(_read(data), pixels.astype(np.float32) / 255, atol=1e-6)


def test_the_service_answers_422_and_keeps_serving(service: Service, pixels: np.ndarray) -> None:
    before = service.count()
    response = service.post(_png(pixels, extra=50_000), "many-chunks.png")
    problem = assert_problem(response, 422, code="invalid-image")
    assert "optipng" in problem["detail"]
    assert service.count() == before
    assert service.post(png_bytes(seed=3), "ordinary.png").status_code == 201


def test_a_png_saved_by_pillow_is_untouched(pixels: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    np.testing.assert_allclose(_read(buffer.getvalue()), pixels.astype(np.float32) / 255)

"""An upload of another image format (TIFF, GIF, ...) or of a JPEG whose coding radlens cannot
read (12-bit, lossless, JPEG-LS) is a 415 problem that names what was received and says what
to send; a 16-bit gray-with-alpha PNG holding unscaled 12-bit data is a 422 that says to send
a 16-bit gray PNG (a 16-bit RGB one is read at 16 bits from preprocessing version "6").
Nothing is stored (QA round 17; the decoding side is
tests/models/test_qa17_other_formats.py and tests/models/test_qa17_deep_colour_png.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.app.conftest import Service, assert_problem


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(17).integers(0, 256, (24, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def test_a_tiff_upload_is_named_in_the_problem(service: Service) -> None:
    before = service.count()
    body = assert_problem(service.post(_image_bytes("TIFF"), "chest.png"), 415, code="not-an-image")
    assert "a TIFF image" in body["detail"] and "convert it to PNG" in body["detail"], body
    assert service.count() == before


def test_a_12_bit_jpeg_upload_is_a_415_that_says_what_to_send(service: Service) -> None:
    data = bytearray(_image_bytes("JPEG"))
    data[data.index(b"\xff\xc0") + 4] = 12  # SOF0 precision: 12 bits
    before = service.count()
    body = assert_problem(service.post(bytes(data), "chest.jpg"), 415, code="not-an-image")
    assert "12-bit JPEG" in body["detail"], body
    assert "convert it to PNG" in body["title"] and "check its size" not in body["title"], body
    assert service.count() == before


def test_a_12_bit_radiograph_in_a_16_bit_gray_alpha_png_is_a_422_not_a_dark_prediction(
    service: Service,
) -> None:
    # (a 16-bit RGB or RGBA PNG is read at its 16 bits from preprocessing version "6", QA 111;
    # a 16-bit gray-with-alpha one is still read at 8 bits, and refused when that posterises it)
    from tests.models.test_qa17_deep_colour_png import png16

    y, x = np.mgrid[0:40, 0:48]
    gray = ((x * 83 + y * 37) % 4096).astype(np.uint16)
    before = service.count()
    response = service.post(png16(np.stack([gray, gray * 0 + 65535], axis=-1), 4), "chest.png")
    body = assert_problem(response, 422, code="invalid-image")
    assert "16-bit gray PNG" in body["title"] and "gray-with-alpha PNG of 48x40" in body["detail"]
    assert service.count() == before


def test_a_12_bit_radiograph_in_a_16_bit_rgb_png_is_predicted(service: Service) -> None:
    from tests.models.test_qa17_deep_colour_png import png16

    y, x = np.mgrid[0:40, 0:48]
    gray = ((x * 83 + y * 37) % 4096).astype(np.uint16)
    before = service.count()
    response = service.post(png16(np.stack([gray] * 3, axis=-1), 2), "chest.png")
    assert response.status_code == 201, response.text
    assert service.count() == before + 1

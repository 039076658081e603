"""Uploads as users send them (QA round 100; the decoding side is
tests/models/test_qa100_pillow_uploads.py): a phone's JPEG photo of a film above the pixel
limit is predicted, decoded at a reduced scale, instead of refused; an HTML page saved instead
of the image is a 415 that says so and what to do. Nothing is stored for the refusal."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.app.conftest import TEST_MAX_PIXELS, Service, assert_problem
from tests.conftest import shared_data_path


def test_a_phone_jpeg_over_the_pixel_limit_is_predicted_at_a_reduced_scale(
    service: Service,
) -> None:
    import pydicom

    ds = pydicom.dcmread(shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm"))
    film = Image.fromarray(ds.pixel_array.astype(np.uint8)).convert("RGB").resize((2400, 2000))
    assert TEST_MAX_PIXELS < 2400 * 2000
    exif = Image.Exif()
    exif[0x0112] = 6  # held sideways: the viewer turns it to 2000 wide, 2400 high
    buffer = io.BytesIO()
    film.save(buffer, "JPEG", quality=85, exif=exif.tobytes())
    response = service.post(buffer.getvalue(), "IMG_0042.JPG")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["rows"], body["columns"]) == (1200, 1000), body  # decoded at 1/2, turned


def test_an_html_page_saved_instead_of_the_image_is_a_415_that_says_so(service: Service) -> None:
    page = b"<!DOCTYPE html>\n<html lang=en><head><title>chest.png</title></head><body></body>"
    before = service.count()
    body = assert_problem(service.post(page, "chest.png"), 415, code="not-an-image")
    assert "a web page (HTML), not an image" in body["detail"], body
    assert "save the image itself" in body["detail"], body
    assert service.count() == before

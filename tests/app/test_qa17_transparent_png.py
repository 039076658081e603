"""A PNG whose burned-in text is hidden by a transparent box is refused (422) and nothing is
stored: before, it was scored on the hidden text and the stored Grad-CAM overlay showed the
text (QA round 17; the decoding side is tests/models/test_qa17_transparent_png.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.app.conftest import Service, assert_problem


def test_a_png_with_a_transparent_box_is_refused_and_nothing_is_stored(service: Service) -> None:
    y, x = np.mgrid[0:48, 0:48]
    rgb = np.stack([((x * 5 + y * 3) % 256).astype(np.uint8)] * 3, axis=-1)
    rgb[4:12, 4:40] = 255  # the text ...
    alpha = np.full((48, 48), 255, np.uint8)
    alpha[4:12, 4:40] = 0  # ... hidden by a transparent box
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(buffer, "PNG")
    before = service.count()
    response = service.post(buffer.getvalue(), "chest.png", params={"explain": "true"})
    body = assert_problem(response, 422, code="invalid-image")
    assert "transparent" in body["title"] and "288 of its 2304 pixels" in body["detail"], body
    assert service.count() == before

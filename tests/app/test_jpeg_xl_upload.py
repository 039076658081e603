"""A DICOM JPEG XL upload is predicted (tests/models/test_jpeg_xl.py: how it is read)."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from pydicom.uid import generate_uid

from tests.app.conftest import Service
from tests.models.test_jpeg_xl import _as_jpeg_xl, _dataset


@pytest.mark.skipif(not imagecodecs.JPEGXL.available, reason="imagecodecs without JPEG XL")
def test_the_service_predicts_a_jpeg_xl_upload(service: Service) -> None:
    pixels = np.random.default_rng(5).integers(0, 4096, (1, 48, 40), dtype=np.uint16)
    ds = _dataset(pixels)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    response = service.post(_as_jpeg_xl(ds, pixels), "jxl.dcm")
    assert response.status_code == 201, response.text
    assert response.json()["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.110"

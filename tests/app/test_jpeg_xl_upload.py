"""A DICOM JPEG XL instance is predicted, uploaded or sent by C-STORE (tests/models/
test_jpeg_xl.py: how it is read)."""

from __future__ import annotations

import io
from typing import Any

import imagecodecs
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.app.conftest import Service
from tests.app.test_dimse import node  # noqa: F401  (the DIMSE receiver fixture)
from tests.models.test_jpeg_xl import _as_jpeg_xl, _dataset


@pytest.mark.skipif(not imagecodecs.JPEGXL.available, reason="imagecodecs without JPEG XL")
def test_the_service_predicts_a_jpeg_xl_upload(service: Service) -> None:
    pixels = np.random.default_rng(5).integers(0, 4096, (1, 48, 40), dtype=np.uint16)
    ds = _dataset(pixels)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    response = service.post(_as_jpeg_xl(ds, pixels), "jxl.dcm")
    assert response.status_code == 201, response.text
    assert response.json()["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.110"


@pytest.mark.skipif(not imagecodecs.JPEGXL.available, reason="imagecodecs without JPEG XL")
def test_a_jpeg_xl_c_store_is_predicted(node: Any) -> None:  # noqa: F811
    """By DIMSE, in its own syntax: the receiver accepts every syntax pynetdicom knows,
    JPEG XL among them, and the instance is predicted."""
    from pynetdicom import AE

    pixels = np.random.default_rng(6).integers(0, 4096, (1, 48, 40), dtype=np.uint16)
    ds = _dataset(pixels)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    jxl = dcmread(io.BytesIO(_as_jpeg_xl(ds, pixels)))
    before = node.count("predictions")
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(jxl.SOPClassUID, "1.2.840.10008.1.2.4.110")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="RADLENS")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(jxl)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    assert node.count("predictions") == before + 1

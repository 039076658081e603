"""QA round 36, through the service (tests/models/test_qa36_header_spelling.py has the
preprocessing side): a Photometric Interpretation spelled " MONOCHROME1" is predicted with the
file's window, as `radlens inspect` now reads it; a Rescale Slope with a decimal comma is a 422
invalid-rescale problem naming it, not "The image is invalid; check its size, pixel values and
the options given" with a numpy type error."""

from __future__ import annotations

import io

import pydicom

from tests.app.conftest import Service, assert_problem, dicom_bytes, new_uid


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def _saved(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_a_spaced_photometric_interpretation_is_predicted(service: Service) -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(sop=new_uid(), rows=64, columns=64, seed=5)))
    ds.Modality = "DX"
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter = 1000
    ds.WindowWidth = 2000
    data = _replace_once(_saved(ds), b"MONOCHROME1 ", b" MONOCHROME1")
    response = service.post(data, "spaced.dcm")
    assert response.status_code == 201, response.text
    assert response.json()["photometric_interpretation"] == "MONOCHROME1"


def test_a_decimal_comma_in_the_rescale_is_a_named_422(service: Service) -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(sop=new_uid(), rows=32, columns=32)))
    ds.RescaleSlope = "1234567.89"
    data = _replace_once(_saved(ds), b"1234567.89", b"1,0       ")
    before = service.count()
    body = assert_problem(service.post(data, "comma.dcm"), 422, code="invalid-rescale")
    assert "Rescale Slope (0028,1053) '1,0' is not a decimal number" in body["detail"]
    assert "ufunc" not in body["detail"]
    assert service.count() == before

"""QA 99: a compressed colour DICOM whose header lacks Planar Configuration (0028,0006), as
some ultrasound devices and secondary-capture writers send it, is predicted (it was refused
422 unsupported-transfer-syntax, "re-encode it"); an uncompressed one, which no reader can lay
out, is refused 422 incomplete-pixel-header naming the attribute. Made from pydicom's and
pydicom-data's test files; nothing is committed. See tests/models/test_qa99_hospital_variants.py.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.app.conftest import Service, assert_problem


def _without_planar_configuration(name: str) -> bytes:
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"{name} absent: pydicom-data is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(Path(str(found)))
    del ds.PlanarConfiguration
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "US1_J2KR.dcm"])
def test_a_compressed_colour_file_without_planar_configuration_is_predicted(
    service: Service, name: str
) -> None:
    response = service.post(_without_planar_configuration(name), filename=name)
    assert response.status_code == 201, response.text
    assert response.json()["scores"]


def test_an_uncompressed_colour_file_without_it_is_refused_naming_it(service: Service) -> None:
    response = service.post(_without_planar_configuration("SC_rgb.dcm"), filename="SC_rgb.dcm")
    body = assert_problem(response, 422, code="incomplete-pixel-header")
    assert "Planar Configuration (0028,0006)" in body["detail"]
    assert "AttributeError" not in body["detail"]

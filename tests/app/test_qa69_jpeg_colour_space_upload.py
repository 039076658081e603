"""QA round 69: an upload of a JPEG Baseline DICOM whose codestream stores YCbCr (chroma
subsampled, no JFIF or Adobe marker) under Photometric Interpretation RGB was predicted on
colours read wrong (pydicom 2.x's SC_rgb_jpeg_lossy_gdcm.dcm: gray off by 0.25 on average).
The service now refuses it with a problem naming the header fix, and stores nothing; the same
file with the header pydicom 3 gave it is predicted. tests/models/test_qa69_jpeg_colour_space.py
has the decoding cases."""

from __future__ import annotations

import io

import pydicom
from pydicom.data import get_testdata_file

from tests.app.conftest import Service, assert_problem


def test_ycbcr_under_rgb_is_refused_its_corrected_header_predicted(service: Service) -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_lossy_gdcm.dcm"))
    ds.PhotometricInterpretation = "RGB"  # as pydicom 2.x shipped it
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf)
    before = service.count()
    problem = assert_problem(
        service.post(buf.getvalue(), "sc.dcm"), 422, code="codestream-mismatch"
    )
    assert "stores YCbCr" in problem["detail"], problem
    assert "YBR_FULL_422" in problem["detail"], problem
    assert service.count() == before

    ds.PhotometricInterpretation = "YBR_FULL"  # the header pydicom 3 gave the file
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    response = service.post(buf.getvalue(), "sc.dcm")
    assert response.status_code == 201, response.text

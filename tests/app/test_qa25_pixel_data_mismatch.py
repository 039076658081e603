"""QA round 25 through the service: the two header/data mismatches of
tests/models/test_qa25_pixel_data_mismatch.py answered as 422 problems that name the wrong
header (not "re-encode it" or "truncated"), nothing stored; STOW-RS gives each its failure
reason."""

from __future__ import annotations

from pydicom.uid import JPEGLSLossless

from tests.app.conftest import Service
from tests.app.test_hostile_uploads import assert_refused
from tests.app.test_stowrs import parse, stow
from tests.models.test_qa25_pixel_data_mismatch import native_under, rgb_header_gray_data

CANNOT_UNDERSTAND = 0xC000
DATA_SET_DOES_NOT_MATCH = 0xA900


def test_uncompressed_data_under_jpeg_ls_is_a_header_mismatch(service: Service) -> None:
    body = assert_refused(service, native_under(JPEGLSLossless), "transfer-syntax-mismatch")
    assert "uncompressed (not encapsulated)" in body["title"] and "re-export" in body["title"]
    assert str(JPEGLSLossless) in body["detail"] and "F830" not in body["detail"]


def test_gray_data_under_an_rgb_header_is_not_truncated(service: Service) -> None:
    body = assert_refused(service, rgb_header_gray_data(23, 76), "invalid-image")
    assert "one sample per pixel" in body["detail"] and "SamplesPerPixel=3" in body["detail"]
    assert "truncated" not in body["title"].lower()


def test_stow_failure_reasons(service: Service) -> None:
    response = stow(service, [native_under(JPEGLSLossless), rgb_header_gray_data(23, 76)])
    failed = parse(response).FailedSOPSequence
    assert [item.FailureReason for item in failed] == [
        CANNOT_UNDERSTAND,
        DATA_SET_DOES_NOT_MATCH,
    ]

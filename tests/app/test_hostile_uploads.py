"""Uploads whose DICOM header lies (tests/models/test_hostile_headers.py), through the running
service on SQLite and PostgreSQL: a deflate bomb, a rescale or window that blanks the image,
and compressed pixel data under an uncompressed transfer syntax are each a 422 problem whose
title says what is wrong and what to do; nothing is stored, and the service keeps serving. A
normal deflated file and a VOI LUT item without LUT Data are still predicted.

Every service path that parses the upload's bytes (preprocessing, the intended-use gate, the
STOW-RS study check, the DICOM outputs' source header) bounds a deflated dataset's inflation.
"""

from __future__ import annotations

import tracemalloc
import uuid
from typing import Any

import pytest

from radlens.models.dicomread import max_inflated_bytes
from radlens.models.errors import DeflatedDatasetTooLargeError
from tests.app.conftest import TEST_MAX_PIXELS, Service, assert_problem
from tests.app.test_bad_inputs import Snapshot, assert_good_post
from tests.app.test_stowrs import parse, stow
from tests.models.test_hostile_headers import (
    JPEG_BASELINE,
    MIB,
    dataset,
    deflated_ct,
    lut_item,
    mr_with_voi_lut,
    pydicom_jpeg,
    pydicom_path,
    relabelled,
    rsna_jpeg,
    to_bytes,
    with_values,
)


def service_bomb() -> bytes:
    """~200 KB inflating to 200 MiB: 4x the service's limit under TEST_MAX_PIXELS."""
    assert max_inflated_bytes(TEST_MAX_PIXELS) < 200 * MIB // 4
    return deflated_ct(200 * MIB)


def assert_refused(service: Service, data: bytes, code: str) -> dict[str, Any]:
    snapshot = Snapshot(service)
    response = service.post(data, "upload.dcm")
    body = assert_problem(response, 422, code=code)
    assert "Traceback" not in response.text
    snapshot.check_nothing_stored(422, audited=service.api_key is not None)
    assert_good_post(service)
    return body


class TestDeflateBomb:
    def test_refused_with_nothing_stored_and_never_inflated(self, service: Service) -> None:
        data = service_bomb()
        tracemalloc.start()
        try:
            response = service.post(data, "bomb.dcm")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        body = assert_problem(response, 422, code="image-too-large")
        assert "deflated" in body["title"].lower()
        assert f"more than {max_inflated_bytes(TEST_MAX_PIXELS)} bytes" in body["detail"]
        assert peak < 64 * MIB, f"peak {peak / MIB:.0f} MiB while refusing a 200 MiB bomb"
        assert_refused(service, data, "image-too-large")

    def test_refused_by_the_dicom_sr_route(self, service: Service) -> None:
        before = service.count()
        response = service.client.post(
            "/v1/predictions/dicom-sr",
            files={"file": ("bomb.dcm", service_bomb(), "application/dicom")},
        )
        assert_problem(response, 422, code="image-too-large")
        assert service.count() == before

    def test_stow_into_a_study_refuses_it_at_the_study_check(self, service: Service) -> None:
        before = service.count()
        response = stow(service, [service_bomb()], url="/dicomweb/studies/2.25.1")
        assert response.status_code == 409, response.text
        (failed,) = parse(response).FailedSOPSequence
        assert failed[0x00991004].value == "image-too-large"
        assert failed.FailureReason == 0xA700
        assert service.count() == before
        assert_good_post(service)

    def test_a_normal_deflated_file_is_predicted(self, service: Service) -> None:
        response = service.post(pydicom_path("image_dfl.dcm").read_bytes(), "dfl.dcm")
        assert response.status_code in (200, 201), response.text
        assert response.json()["transfer_syntax_uid"] == "1.2.840.10008.1.2.1.99"

    def test_a_deflated_file_within_the_limit_is_predicted(self, service: Service) -> None:
        response = service.post(deflated_ct(8 * MIB), "dfl-private.dcm")
        assert response.status_code == 201, response.text


class TestEveryReaderOfUploadBytesIsBounded:
    """The header reads outside preprocessing refuse the bomb themselves, counting only."""

    @staticmethod
    def bounded(read: Any) -> None:
        tracemalloc.start()
        try:
            with pytest.raises(DeflatedDatasetTooLargeError):
                read()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 * MIB, f"peak {peak / MIB:.0f} MiB"

    def test_the_intended_use_gate(self) -> None:
        from radlens.app.ingest import gate_upload
        from radlens.models.intended_use import IntendedUse

        accepts = IntendedUse(modalities=("CR", "DX"))
        self.bounded(lambda: gate_upload(service_bomb(), accepts, "flag", TEST_MAX_PIXELS))

    def test_the_stow_uid_read(self) -> None:
        from radlens.app.routes.dicomweb import _uids

        self.bounded(lambda: _uids(service_bomb(), TEST_MAX_PIXELS))

    def test_the_sr_source_header(self) -> None:
        from radlens.app.routes.explanations import _source_of_upload

        self.bounded(lambda: _source_of_upload(service_bomb(), False, TEST_MAX_PIXELS))

    def test_the_outbox_sender_header(self) -> None:
        from radlens.app.ingest import _source_from_header

        self.bounded(
            lambda: _source_from_header(
                service_bomb(), copy_patient=True, max_pixels=TEST_MAX_PIXELS
            )
        )


class TestRescaleOrWindowThatBlanksTheImage:
    @pytest.mark.parametrize(
        "values",
        [
            {"RescaleIntercept": "inf"},
            {"RescaleIntercept": "1e308"},
            {"RescaleSlope": "0"},
            {"RescaleSlope": "1e-308"},
        ],
        ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
    )
    def test_a_blanking_rescale_is_a_422(self, service: Service, values: dict[str, str]) -> None:
        data = to_bytes(with_values(dataset("CT_small.dcm"), **values))
        body = assert_refused(service, data, "invalid-rescale")
        assert "Rescale Slope/Intercept" in body["title"]
        ((_, value),) = values.items()
        assert repr(value) in body["detail"], body["detail"]

    def test_a_saturating_file_window_is_predicted_on_min_max(self, service: Service) -> None:
        data = to_bytes(with_values(dataset("MR_small.dcm"), WindowCenter="40", WindowWidth="1"))
        response = service.post(data, "mr-40-1.dcm")
        assert response.status_code in (200, 201), response.text
        assert stored_input_std(service, response.json()["id"]) > 0.05  # not a blank


def stored_input_std(service: Service, prediction_id: str) -> float:
    """The model input's standard deviation the prediction row recorded (0 for a blank)."""
    from radlens.app.tables import Prediction

    with service.app.state.resources.sessionmaker() as session:
        row = session.get(Prediction, uuid.UUID(prediction_id))
        assert row is not None
        return float(row.input_std_intensity)


class TestVoiLutWithoutData:
    def test_predicted_with_the_file_window_not_on_a_blank(self, service: Service) -> None:
        data = mr_with_voi_lut(lut_item([16, 0, 16], None))
        response = service.post(data, "voi.dcm")
        assert response.status_code in (200, 201), response.text
        plain = service.post(mr_with_voi_lut(None), "mr.dcm")
        assert plain.status_code in (200, 201), plain.text
        std = stored_input_std(service, response.json()["id"])
        assert std > 0.05  # the blank the VOI LUT item made had 0
        assert std == pytest.approx(stored_input_std(service, plain.json()["id"]))


class TestEncapsulatedUnderNativeSyntax:
    @pytest.mark.parametrize("source", [rsna_jpeg, pydicom_jpeg], ids=["rsna-cr", "sc-rgb"])
    def test_a_422_that_says_the_header_is_wrong(self, service: Service, source: Any) -> None:
        data = relabelled(source(), JPEG_BASELINE, "1.2.840.10008.1.2.1")
        body = assert_refused(service, data, "transfer-syntax-mismatch")
        assert "re-export" in body["title"] and "truncated" not in body["title"].lower()
        assert "1.2.840.10008.1.2.1" in body["detail"]

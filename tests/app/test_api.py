"""API v1 through the real HTTP stack, on SQLite and on PostgreSQL (one app per backend)."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.app.conftest import (
    CLASS_NAMES,
    TEST_MAX_PIXELS,
    TEST_MAX_UPLOAD_BYTES,
    Service,
    assert_problem,
    dicom_bytes,
    new_uid,
    png_bytes,
    prediction_row,
)
from tests.conftest import shared_data_path


def assert_good_post(service: Service) -> None:
    """The server still serves: a valid upload after a failed one is stored (201)."""
    before = service.count()
    response = service.post(png_bytes(), "after.png")
    assert response.status_code == 201, response.text
    assert service.count() == before + 1


# --- successful predictions -----------------------------------------------------------


class TestCreatePrediction:
    def test_png_upload_returns_201_with_provenance(self, service: Service) -> None:
        data = png_bytes(seed=None, size=(50, 60))
        before = service.count()
        response = service.post(data, "chest.png")
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["location"] == f"/v1/predictions/{body['id']}"
        assert service.count() == before + 1
        assert body["model"] == {"name": "tiny", "version": 1}
        assert body["preprocessing_version"]
        assert set(body["scores"]) == set(CLASS_NAMES)
        assert math.isclose(sum(body["scores"].values()), 1.0, rel_tol=1e-4)
        expected = "abnormal" if body["scores"]["abnormal"] >= 0.5 else "normal"
        assert body["label"] == expected
        assert body["threshold"] == 0.5
        assert (body["rows"], body["columns"], body["input_format"]) == (50, 60, "png")
        assert body["input_sha256"] == hashlib.sha256(data).hexdigest()
        assert body["study_instance_uid"] is None and body["sop_instance_uid"] is None
        assert body["inference_ms"] > 0 and body["batch_size"] >= 1
        assert body["notice"].startswith("Not for clinical use:")
        created = datetime.fromisoformat(body["created_at"])
        assert created.tzinfo is not None
        assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)

    def test_generated_dicom_records_uids_and_geometry(self, service: Service) -> None:
        study, series, sop = new_uid(), new_uid(), new_uid()
        response = service.post(
            dicom_bytes(study=study, series=series, sop=sop, rows=20, columns=24)
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["study_instance_uid"], body["series_instance_uid"]) == (study, series)
        assert body["sop_instance_uid"] == sop
        assert (body["modality"], body["rows"], body["columns"]) == ("CT", 20, 24)
        assert body["input_format"] == "dicom"
        assert body["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
        stored = service.client.get(response.headers["location"])
        assert stored.status_code == 200
        assert stored.json() == body

    @pytest.mark.shared_data
    def test_real_ct_file_from_shared_data(self, service: Service) -> None:
        import pydicom

        path = shared_data_path("dicom", "ct_image.dcm")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        response = service.post(path.read_bytes(), "ct_image.dcm")
        assert response.status_code in (200, 201), response.text
        body = response.json()
        assert body["sop_instance_uid"] == ds.SOPInstanceUID
        assert body["study_instance_uid"] == ds.StudyInstanceUID
        assert (body["modality"], body["rows"], body["columns"]) == ("CT", 128, 128)

    @pytest.mark.shared_data
    def test_real_compressed_chest_cr(self, service: Service) -> None:
        import io

        import pydicom
        from pydicom.uid import generate_uid

        path = shared_data_path("dicom", "rsna_chest_cr_tagged_monochrome1.dcm")
        # a fresh SOP Instance UID: the same instance tagged MONOCHROME2 (the baseline file)
        # may have been predicted by another test of this session, and de-duplication would
        # answer with that stored row
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer)
        response = service.post(buffer.getvalue(), path.name)
        assert response.status_code in (200, 201), response.text
        body = response.json()
        assert (body["rows"], body["columns"]) == (1024, 1024)
        assert body["photometric_interpretation"] == "MONOCHROME1"

    @pytest.mark.shared_data
    def test_real_chest_png_from_shared_data(self, service: Service) -> None:
        folder = shared_data_path("nih1000", "test", "1_abnormal")
        path = sorted(folder.glob("*.png"))[0]
        response = service.post(path.read_bytes(), path.name)
        assert response.status_code in (200, 201), response.text
        body = response.json()
        assert (body["input_format"], body["rows"], body["columns"]) == ("png", 64, 64)
        assert body["modality"] is None and body["sop_instance_uid"] is None

    def test_pydicom_example_file(self, service: Service) -> None:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("CT_small.dcm")
        assert path is not None
        with open(path, "rb") as fh:
            response = service.post(fh.read(), "CT_small.dcm")
        assert response.status_code in (200, 201), response.text
        assert response.json()["modality"] == "CT"

    def test_jpeg_upload(self, service: Service) -> None:
        import io

        import numpy as np
        from PIL import Image

        buf = io.BytesIO()
        rgb = np.random.default_rng(3).integers(0, 256, (30, 30, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(buf, format="JPEG")
        response = service.post(buf.getvalue(), "photo.jpg")
        assert response.status_code in (200, 201), response.text
        assert response.json()["input_format"] == "jpeg"


class TestDedupe:
    def test_same_sop_instance_returns_existing_prediction(self, service: Service) -> None:
        sop = new_uid()
        first = service.post(dicom_bytes(sop=sop, seed=1))
        assert first.status_code == 201
        count = service.count()
        # same instance UID, different bytes (e.g. re-encoded): still the same instance
        again = service.post(dicom_bytes(sop=sop, seed=2))
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == first.headers["location"]
        assert service.count() == count

    def test_same_png_bytes_return_existing_prediction(self, service: Service) -> None:
        data = png_bytes()
        first = service.post(data)
        count = service.count()
        again = service.post(data, "renamed.png")
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == first.json()
        assert service.count() == count

    def test_concurrent_posts_of_one_instance_store_one_row(self, service: Service) -> None:
        from concurrent.futures import ThreadPoolExecutor

        data = dicom_bytes(seed=77)
        before = service.count()
        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(pool.map(lambda _: service.post(data), range(6)))
        assert sorted(r.status_code for r in responses) == [200] * 5 + [201], [
            r.text for r in responses
        ]
        assert len({r.json()["id"] for r in responses}) == 1
        assert service.count() == before + 1

    def test_concurrent_posts_of_different_images_all_stored(self, service: Service) -> None:
        from concurrent.futures import ThreadPoolExecutor

        images = [png_bytes() for _ in range(8)]
        before = service.count()
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(service.post, images))
        assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
        assert service.count() == before + 8

    def test_race_on_insert_returns_the_winner(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another request inserts the same instance between our lookup and our insert:
        the unique constraint fires and the stored row is returned, not an error."""
        from radlens.app import services
        from radlens.app.tables import Prediction

        sessionmaker = service.app.state.resources.sessionmaker
        key = f"sop:{new_uid()}"

        def row() -> Prediction:
            return prediction_row(key)

        winner = row()
        with sessionmaker() as other:
            other.add(winner)
            other.commit()

        real_find = services.find_existing
        calls = {"n": 0}

        def stale_find(*args: object, **kwargs: object) -> Prediction | None:
            calls["n"] += 1
            return None if calls["n"] == 1 else real_find(*args, **kwargs)  # type: ignore[arg-type]

        # SQLite / PostgreSQL: one INSERT ... ON CONFLICT DO NOTHING, no lookup before it
        with sessionmaker() as session:
            stored, created = services.record_prediction(session, row())
            session.commit()  # the transaction is still usable after the ignored insert
        assert created is False
        assert stored.id == winner.id

        # the portable path (other databases): lookup, then insert in a savepoint
        monkeypatch.setattr(services, "find_existing", stale_find)
        with sessionmaker() as session:
            stored, created = services._record_portable(session, row())
            session.commit()  # the transaction is still usable after the failed savepoint
        assert created is False
        assert stored.id == winner.id
        assert calls["n"] == 2


# --- reading ----------------------------------------------------------------------------


class TestRead:
    def test_get_unknown_id_is_404_problem(self, service: Service) -> None:
        missing = uuid.uuid4()
        body = assert_problem(
            service.client.get(f"/v1/predictions/{missing}"), 404, code="not-found"
        )
        assert str(missing) in body["detail"]

    def test_get_malformed_id_is_422_problem(self, service: Service) -> None:
        body = assert_problem(
            service.client.get("/v1/predictions/not-a-uuid"), 422, code="invalid-request"
        )
        assert "not-a-uuid" in body["detail"]

    def test_unknown_route_and_method_are_problems(self, service: Service) -> None:
        assert_problem(service.client.get("/v2/nothing"), 404)
        assert_problem(service.client.delete("/v1/predictions"), 405, code="method-not-allowed")

    def test_pagination_with_equal_timestamps_breaks_ties_by_id(self, service: Service) -> None:
        """Rows created in the same instant (a batch, a coarse clock) are neither skipped nor
        repeated across pages: the cursor carries (created_at, id) and the order is both,
        newest first."""
        import uuid

        from sqlalchemy import update

        from radlens.app.tables import Prediction

        study = new_uid()
        ids = [service.post(dicom_bytes(study=study, seed=300 + i)).json()["id"] for i in range(5)]
        with service.app.state.resources.engine.begin() as conn:
            conn.execute(
                update(Prediction)
                .where(Prediction.study_instance_uid == study)
                .values(created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
            )
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"study_instance_uid": study, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            body = service.client.get("/v1/predictions", params=params).json()
            seen.extend(item["id"] for item in body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(ids, key=uuid.UUID, reverse=True)

    def test_filters_and_cursor_pagination(self, service: Service) -> None:
        study = new_uid()
        ids = []
        for i in range(5):
            response = service.post(dicom_bytes(study=study, seed=100 + i))
            assert response.status_code == 201
            ids.append(response.json()["id"])
        other = service.post(dicom_bytes(seed=200))  # another study: must not appear
        assert other.status_code == 201

        seen: list[str] = []
        pages = 0
        cursor = None
        while True:
            params: dict[str, str | int] = {"study_instance_uid": study, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = service.client.get("/v1/predictions", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            pages += 1
            seen.extend(item["id"] for item in body["items"])
            assert len(body["items"]) <= 2
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
        # newest first
        assert seen == list(reversed(ids))

        items = service.client.get("/v1/predictions", params={"study_instance_uid": study}).json()[
            "items"
        ]
        labels = {item["label"] for item in items}
        for label in labels:
            filtered = service.client.get(
                "/v1/predictions", params={"study_instance_uid": study, "label": label}
            ).json()["items"]
            assert {i["id"] for i in filtered} == {i["id"] for i in items if i["label"] == label}
        none = service.client.get(
            "/v1/predictions", params={"study_instance_uid": study, "label": "no-such-label"}
        ).json()
        assert none == {"items": [], "next_cursor": None}

        by_model = service.client.get(
            "/v1/predictions",
            params={"study_instance_uid": study, "model_name": "tiny", "model_version": 1},
        ).json()["items"]
        assert len(by_model) == 5
        other_version = service.client.get(
            "/v1/predictions", params={"study_instance_uid": study, "model_version": 2}
        ).json()["items"]
        assert other_version == []

        middle = datetime.fromisoformat(items[2]["created_at"])  # items are newest first
        after = service.client.get(
            "/v1/predictions",
            params={"study_instance_uid": study, "created_after": middle.isoformat()},
        ).json()["items"]
        before = service.client.get(
            "/v1/predictions",
            params={"study_instance_uid": study, "created_before": middle.isoformat()},
        ).json()["items"]
        assert [i["id"] for i in after] == [i["id"] for i in items[:2]]
        assert [i["id"] for i in before] == [i["id"] for i in items[3:]]

    def test_bad_list_parameters_are_422_problems(self, service: Service) -> None:
        assert_problem(service.client.get("/v1/predictions", params={"limit": 0}), 422)
        assert_problem(service.client.get("/v1/predictions", params={"limit": 101}), 422)
        body = assert_problem(
            service.client.get("/v1/predictions", params={"cursor": "garbage!!"}),
            422,
            code="invalid-cursor",
        )
        assert "garbage!!" in body["detail"]
        assert_problem(
            service.client.get("/v1/predictions", params={"created_after": "yesterday"}), 422
        )


# --- errors: status, problem+json, nothing written, the server keeps serving -----------


class TestUploadErrors:
    @pytest.mark.parametrize(
        ("make", "status", "code"),
        [
            (lambda: b"%PDF-1.7 not an image at all", 415, "not-an-image"),
            (lambda: b"", 415, "not-an-image"),
            (lambda: dicom_bytes(pixels=False), 422, "no-pixel-data"),
            (
                lambda: dicom_bytes(transfer_syntax="1.2.3.4.5.6.7.8.9.1"),
                422,
                "unsupported-transfer-syntax",
            ),
            (lambda: dicom_bytes(rows=64, columns=64)[:-3000], 422, "truncated"),
            (lambda: png_bytes(size=(8, 8))[:60], 422, "truncated"),
            (lambda: png_bytes(size=(2001, 2001)), 422, "image-too-large"),
            (lambda: dicom_bytes(rows=0, columns=0), 422, "invalid-image"),
        ],
        ids=[
            "pdf",
            "empty",
            "no-pixels",
            "bad-syntax",
            "truncated-dicom",
            "truncated-png",
            "too-many-pixels",
            "zero-size",
        ],
    )
    def test_bad_image(
        self, service: Service, make: Callable[[], bytes], status: int, code: str | None
    ) -> None:
        before = service.count()
        body = assert_problem(service.post(make()), status, code=code)
        assert service.count() == before
        assert "Traceback" not in body["detail"]
        assert_good_post(service)

    def test_too_many_pixels_names_the_limit(self, service: Service) -> None:
        assert TEST_MAX_PIXELS < 2001 * 2001
        body = assert_problem(
            service.post(png_bytes(size=(2001, 2001))), 422, code="image-too-large"
        )
        assert "2001" in body["detail"]

    def test_wrong_content_type_is_415(self, service: Service) -> None:
        before = service.count()
        body = assert_problem(
            service.client.post("/v1/predictions", json={"file": "x"}),
            415,
            code="unsupported-media-type",
        )
        assert "application/json" in body["detail"]
        assert_problem(
            service.client.post(
                "/v1/predictions", content=png_bytes(), headers={"content-type": "image/png"}
            ),
            415,
        )
        assert service.count() == before
        assert_good_post(service)

    def test_missing_file_field_is_422(self, service: Service) -> None:
        before = service.count()
        body = assert_problem(
            service.client.post(
                "/v1/predictions", files={"image": ("a.png", png_bytes(), "image/png")}
            ),
            422,
            code="invalid-request",
        )
        assert "file" in body["detail"]
        assert body["errors"][0]["loc"] == "body.file"
        assert service.count() == before
        assert_good_post(service)

    @pytest.mark.parametrize(
        ("content_type", "detail"),
        [
            ("multipart/form-data; boundary=b", "Invalid multipart"),
            ("multipart/form-data", "boundary"),
        ],
    )
    def test_malformed_multipart_is_400(
        self, service: Service, content_type: str, detail: str
    ) -> None:
        before = service.count()
        response = service.client.post(
            "/v1/predictions", content=b"garbage", headers={"content-type": content_type}
        )
        body = assert_problem(response, 400, code="bad-request")
        assert detail in body["detail"]
        assert service.count() == before
        assert_good_post(service)

    def test_file_sent_as_text_field_is_422(self, service: Service) -> None:
        before = service.count()
        response = service.client.post(
            "/v1/predictions", data={"file": "just text"}, files={"other": ("a", b"1")}
        )
        body = assert_problem(response, 422, code="invalid-request")
        assert "no filename" in body["detail"]
        assert body["errors"][0]["loc"] == "body.file"
        assert service.count() == before
        assert_good_post(service)

    def test_declared_body_over_limit_is_413_before_reading(self, service: Service) -> None:
        before = service.count()
        body = assert_problem(
            service.client.post(
                "/v1/predictions",
                content=b"x" * 10,
                headers={
                    "content-type": "multipart/form-data; boundary=b",
                    "content-length": str(TEST_MAX_UPLOAD_BYTES + 1),
                },
            ),
            413,
            code="payload-too-large",
        )
        assert str(TEST_MAX_UPLOAD_BYTES) in body["detail"]
        assert service.count() == before
        assert_good_post(service)

    def test_streamed_body_over_limit_is_413(self, service: Service) -> None:
        before = service.count()
        chunk = b"0" * (1024 * 1024)
        sent = {"chunks": 0}

        def body() -> Iterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            for _ in range(TEST_MAX_UPLOAD_BYTES // len(chunk) + 4):
                sent["chunks"] += 1
                yield chunk

        response = service.client.post(
            "/v1/predictions",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        problem = assert_problem(response, 413, code="payload-too-large")
        assert "streaming" in problem["detail"]
        assert service.count() == before
        assert_good_post(service)

    def test_unexpected_error_is_500_problem_without_the_message(
        self, service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        from radlens.app import services

        secret = "SECRET-MESSAGE-" + str(4700 + 11)  # built at run time: not in any source line

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError(secret)

        monkeypatch.setattr(services, "record_prediction", broken)
        before = service.count()
        caplog.set_level("DEBUG")
        body = assert_problem(service.post(png_bytes()), 500, code="internal-error")
        assert "RuntimeError" in body["detail"]
        assert "SECRET-MESSAGE-4711" not in str(body)
        assert "SECRET-MESSAGE-4711" not in caplog.text
        assert "RuntimeError" in caplog.text
        monkeypatch.undo()
        assert service.count() == before
        assert_good_post(service)

    @pytest.mark.parametrize(
        ("error_name", "status", "code"),
        [
            ("InferenceError", 500, "inference-failed"),
            ("PredictorUnavailableError", 503, "predictor-unavailable"),
        ],
    )
    def test_predictor_failures_are_problems(
        self, service: Service, error_name: str, status: int, code: str
    ) -> None:
        import radlens.app.predictor as predictor_module

        real = service.app.state.resources.predictor
        error = getattr(predictor_module, error_name)

        class FailingPredictor:
            manifest = real.manifest
            device = real.device
            input_size = real.input_size
            streams = real.streams
            ready = True

            def check_capacity(self) -> None:
                pass  # room in the queue

            async def predict(self, model_input: object) -> object:
                raise error("the model call failed (test)")

            async def predict_prepared(self, prepare: Callable[[], object]) -> object:
                prepare()
                raise error("the model call failed (test)")

        resources = service.app.state.resources
        resources.predictor = FailingPredictor()
        before = service.count()
        try:
            body = assert_problem(service.post(png_bytes()), status, code=code)
        finally:
            resources.predictor = real
        assert "(test)" in body["detail"]
        assert service.count() == before
        assert_good_post(service)

    def test_database_failure_is_503_without_the_statement(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from sqlalchemy.exc import OperationalError

        from radlens.app import services

        def locked(*args: object, **kwargs: object) -> None:
            raise OperationalError(
                "INSERT INTO predictions ...", {"uid": "1.2.3"}, Exception("database is locked")
            )

        monkeypatch.setattr(services, "record_prediction", locked)
        before = service.count()
        body = assert_problem(service.post(png_bytes()), 503, code="database-unavailable")
        assert body["detail"] == "Exception: database is locked"
        monkeypatch.undo()
        assert service.count() == before
        assert_good_post(service)

    def test_not_ready_is_503(self, service: Service) -> None:
        predictor = service.app.state.resources.predictor
        before = service.count()
        predictor.ready = False
        try:
            assert_problem(service.client.get("/readyz"), 503, code="model-not-ready")
            assert_problem(service.post(png_bytes()), 503, code="model-not-ready")
        finally:
            predictor.ready = True
        assert service.count() == before
        assert service.client.get("/readyz").status_code == 200
        assert_good_post(service)


# --- models, health, metrics, docs ------------------------------------------------------


class TestOperations:
    def test_models(self, service: Service) -> None:
        body = service.client.get("/v1/models").json()
        (model,) = body["models"]
        assert (model["name"], model["version"]) == ("tiny", 1)
        assert model["class_names"] == CLASS_NAMES
        assert model["threshold"] == 0.5
        assert model["metrics"] == {"val": {"auc": 0.5}}
        assert model["validated_for_clinical_use"] is False
        assert model["notice"].startswith("Not for clinical use")
        assert model["ready"] is True and model["device"] == "/CPU:0"

    def test_health_and_readiness(self, service: Service) -> None:
        from radlens.app.migrate import head_revision

        assert service.client.get("/healthz").json() == {"status": "ok"}
        ready = service.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "model": {"name": "tiny", "version": 1},
            "device": "/CPU:0",
            "database": "ok",
            "schema_revision": head_revision(),
            "batch_limit": 4,  # the test settings' max_batch_size, tuning off
            # the fixture model has no converted runtime: RADLENS_RUNTIME=auto keeps TensorFlow
            "runtime": "tensorflow",
            "precision": "fp32",
            "runtime_reason": "auto: OpenVINO not used: model tiny:1 has no converted openvino "
            "runtime (run `radlens models convert tiny:1`)",
            "parity": None,
        }

    def test_readiness_fails_when_the_database_is_unreachable(self, service: Service) -> None:
        from radlens.app.db import make_engine

        resources = service.app.state.resources
        real_engine = resources.engine
        resources.engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
        try:
            body = assert_problem(service.client.get("/readyz"), 503, code="database-unavailable")
            assert "SELECT 1" in body["detail"]
        finally:
            resources.engine.dispose()
            resources.engine = real_engine
        assert service.client.get("/readyz").status_code == 200

    def test_metrics_by_route_template_status_and_label(self, service: Service) -> None:
        created = service.post(png_bytes())
        assert created.status_code == 201
        service.client.get(f"/v1/predictions/{uuid.uuid4()}")  # a 404 on the templated route
        text = service.client.get("/metrics").text
        assert (
            'radlens_http_requests_total{method="POST",route="/v1/predictions",status="201"}'
            in text
        )
        assert 'route="/v1/predictions/{prediction_id}",status="404"' in text
        assert "radlens_http_request_duration_seconds_bucket" in text
        label = created.json()["label"]
        assert f'radlens_predictions_total{{label="{label}",model="tiny:1"}}' in text
        count_line = next(
            line
            for line in text.splitlines()
            if line.startswith("radlens_inference_batch_size_count")
        )
        assert float(count_line.split()[-1]) >= 1
        assert "radlens_inference_duration_seconds_sum" in text
        # both bounded queues (the predictor's through Predictor.queue_depth), idle now
        assert 'radlens_queue_depth{queue="predictions"} 0.0' in text
        assert 'radlens_queue_depth{queue="writes"} 0.0' in text

    def test_openapi_documents_routes_upload_and_errors(self, service: Service) -> None:
        schema = service.client.get("/openapi.json").json()
        assert "Not for clinical use" in schema["info"]["description"]
        for path, methods in schema["paths"].items():
            for method, operation in methods.items():
                assert operation.get("description"), f"{method.upper()} {path} has no description"
                problem = operation["responses"]["500"]["content"]["application/problem+json"]
                assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
        post = schema["paths"]["/v1/predictions"]["post"]
        content = post["requestBody"]["content"]["multipart/form-data"]["schema"]
        ref = content["$ref"].rsplit("/", 1)[-1]
        file_schema = schema["components"]["schemas"][ref]["properties"]["file"]
        assert file_schema.get("format") == "binary" or file_schema.get("contentMediaType")
        for status in ("413", "415", "422", "503"):
            assert "application/problem+json" in post["responses"][status]["content"]
        assert "Problem" in schema["components"]["schemas"]
        assert "example" in schema["components"]["schemas"]["PredictionPublic"]
        get_one = schema["paths"]["/v1/predictions/{prediction_id}"]["get"]
        assert "application/problem+json" in get_one["responses"]["404"]["content"]
        docs = service.client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


# --- no patient identifiers anywhere --------------------------------------------------


MARKERS = {
    "PatientName": "Zyxwvut^Phimarkername",
    "PatientID": "PHIMARKERID93817",
    "PatientBirthDate": "19030405",
    "PatientAddress": "PHIMARKERADDRESS 12 Nowhere Lane",
}


def test_no_patient_identifiers_in_database_logs_or_response(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    for name in (
        "",
        "uvicorn",
        "uvicorn.access",
        "uvicorn.error",
        "fastapi",
        "radlens",
        "sqlalchemy",
    ):
        caplog.set_level(logging.DEBUG, logger=name)
    data = dicom_bytes(patient=MARKERS, seed=42)
    for marker in MARKERS.values():
        assert marker.encode() in data  # the file really carries them
    first = service.post(data, "patient.dcm")
    assert first.status_code == 201, first.text
    again = service.post(data, "patient.dcm")
    assert again.status_code == 200
    listing = service.client.get(
        "/v1/predictions", params={"study_instance_uid": first.json()["study_instance_uid"]}
    )

    dump = repr(service.rows())
    texts = {
        "database": dump,
        "logs": caplog.text + repr([r.args for r in caplog.records]),
        "response": first.text + again.text + listing.text,
    }
    for where, text in texts.items():
        for keyword, marker in MARKERS.items():
            for fragment in (marker, marker.split("^")[0], "PHIMARKER", "Phimarker"):
                assert fragment not in text, f"{keyword} found in {where}"
    assert first.json()["sop_instance_uid"] in dump  # the dump really holds the row
    assert any(
        r.name.startswith("radlens.app.") for r in caplog.records
    )  # the service's logs were read

"""The one upload path (app/ingest.py): its dependencies, its transactions, its audit rows,
the key checked before the body, and backpressure (issues #14 and #18)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from tests.app.conftest import (
    Service,
    assert_problem,
    create_api_key,
    dicom_bytes,
    make_settings,
    png_bytes,
)
from tests.app.test_stowrs import multipart_related


def audit_rows(service: Service, since: datetime) -> list[Any]:
    from radlens.app.security_tables import AuditEvent

    with service.app.state.resources.sessionmaker() as session:
        stmt = select(AuditEvent).where(AuditEvent.at >= since).order_by(AuditEvent.id)
        return list(session.scalars(stmt))


# --- the route's dependencies -------------------------------------------------------------


def test_the_upload_route_takes_its_ingestor_from_a_dependency(service: Service) -> None:
    from radlens.app.deps import get_ingestor
    from radlens.app.errors import ModelNotReadyError

    async def overridden() -> Any:
        raise ModelNotReadyError("the overridden ingestor refuses (test)")

    before = service.count()
    service.app.dependency_overrides[get_ingestor] = overridden
    try:
        for path in ("/v1/predictions", "/v1/predictions/dicom-sr"):
            response = service.client.post(
                path, files={"file": ("a.dcm", dicom_bytes(), "application/octet-stream")}
            )
            body = assert_problem(response, 503, code="model-not-ready")
            assert "overridden ingestor refuses (test)" in body["detail"]
    finally:
        service.app.dependency_overrides.pop(get_ingestor)
    assert service.count() == before


# --- no long work inside a transaction ----------------------------------------------------


def _sqlite_path(service: Service) -> str:
    if service.backend != "sqlite":
        pytest.skip("the write lock checked here is SQLite's")
    path = make_url(service.database_url).database
    assert path and Path(path).is_file()
    return path


def _write_lock_free(path: str) -> bool:
    """Whether another connection can take SQLite's write lock right now (without waiting)."""
    conn = sqlite3.connect(path, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        conn.close()


def test_grad_cam_runs_with_no_write_lock_held(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app import explain

    path = _sqlite_path(service)
    real = explain.Explainer.explain
    seen: list[bool] = []

    def explain_and_check(self: Any, model_input: Any, display: Any = None, **kw: Any) -> Any:
        seen.append(_write_lock_free(path))
        return real(self, model_input, display, **kw)

    monkeypatch.setattr(explain.Explainer, "explain", explain_and_check)
    response = service.post(png_bytes(), params={"explain": "true"})
    assert response.status_code == 201, response.text
    assert seen == [True]
    heatmap = service.client.get(f"/v1/predictions/{response.json()['id']}/heatmap")
    assert heatmap.status_code == 200  # stored with the prediction


def test_the_structured_report_is_built_with_no_write_lock_held(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app.routes import explanations

    path = _sqlite_path(service)
    real = explanations.build_sr
    seen: list[bool] = []

    def build_and_check(*args: Any, **kwargs: Any) -> bytes:
        seen.append(_write_lock_free(path))
        return real(*args, **kwargs)

    monkeypatch.setattr(explanations, "build_sr", build_and_check)
    response = service.client.post(
        "/v1/predictions/dicom-sr",
        files={"file": ("a.dcm", dicom_bytes(), "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    assert seen == [True]


# --- audit: one prediction.create row per prediction ----------------------------------------


def test_stow_writes_one_audit_row_per_prediction(service: Service) -> None:
    from radlens.app.audit import PREDICTION_CREATE

    since = datetime.now(UTC)
    body, content_type = multipart_related([dicom_bytes(), dicom_bytes(), dicom_bytes()])
    response = service.client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    ids = sorted(item["00991001"]["Value"][0] for item in response.json()["00081199"]["Value"])
    assert len(ids) == 3
    rows = [r for r in audit_rows(service, since) if r.target in ids or r.action.startswith("POST")]
    assert sorted(r.target for r in rows) == ids
    assert {(r.action, r.status, r.actor) for r in rows} == {
        (PREDICTION_CREATE, 201, service.api_key.split("_")[1] if service.api_key else None)
    }


# --- the key before the body ----------------------------------------------------------------


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the service did, in order: "auth" (the key checked), "parse" (a multipart
    parser built: FastAPI's form parsing, with its temp files, or radlens's own)."""
    from python_multipart.multipart import MultipartParser

    from radlens.app import auth

    seen: list[str] = []
    real_authenticate = auth.authenticate_bearer
    real_init = MultipartParser.__init__

    async def authenticate(*args: Any, **kwargs: Any) -> Any:
        seen.append("auth")
        return await real_authenticate(*args, **kwargs)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.append("parse")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(auth, "authenticate_bearer", authenticate)
    monkeypatch.setattr(MultipartParser, "__init__", init)
    return seen


def _form(data: bytes) -> dict[str, Any]:
    return {"files": {"file": ("a.dcm", data, "application/octet-stream")}}


def _related(data: bytes) -> dict[str, Any]:
    body, content_type = multipart_related([data])
    return {"content": body, "headers": {"Content-Type": content_type}}


UPLOAD_ROUTES = [
    ("/v1/predictions", _form),
    ("/v1/predictions/dicom-sr", _form),
    ("/dicomweb/studies", _related),
]


@pytest.mark.parametrize(("path", "body"), UPLOAD_ROUTES, ids=["predictions", "dicom-sr", "stow"])
def test_the_key_is_checked_before_the_body_is_read(
    service: Service, events: list[str], path: str, body: Any
) -> None:
    data = dicom_bytes()
    request = body(data)
    headers = {**request.pop("headers", {}), "Authorization": ""}
    unauthenticated = service.client.post(path, headers=headers, **request)
    assert_problem(unauthenticated, 401, code="unauthorized")
    assert events == ["auth"]  # refused before any multipart parsing

    events.clear()  # a body that is not multipart at all: still 401, not 415
    for content_type in ("text/plain", "application/dicom"):
        response = service.client.post(
            path, content=data, headers={"Content-Type": content_type, "Authorization": ""}
        )
        assert_problem(response, 401, code="unauthorized")
    assert events == ["auth", "auth"]

    events.clear()  # with the key: the key first, then the body
    accepted = service.client.post(path, **body(data))
    assert accepted.status_code in (200, 201), accepted.text
    assert events[0] == "auth" and "parse" in events[1:]


# --- backpressure -----------------------------------------------------------------------


def test_bounded_queue_refuses_at_once_and_stop_markers_do_not_count() -> None:
    from radlens.app.errors import ServiceBusyError
    from radlens.app.workqueue import STOP, WorkQueue

    q = WorkQueue(2, "things (test)")
    q.put("a")
    q.put("b")
    assert q.full()
    with pytest.raises(ServiceBusyError, match=r"2 things \(test\) are queued already"):
        q.put("c")
    q.put_stop()  # a stop marker always goes in
    assert q.drain() == ["a", "b", STOP]
    with pytest.raises(ValueError, match=r"max_items should be >= 1\. Received: 0"):
        WorkQueue(0, "things")


def test_the_writer_refuses_beyond_its_queue(tmp_path: Path) -> None:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.errors import ServiceBusyError
    from radlens.app.migrate import upgrade
    from radlens.app.writer import PredictionWriter
    from tests.app.conftest import prediction_row

    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    release = threading.Event()
    entered = threading.Event()

    def slow_sessions() -> Any:
        entered.set()
        release.wait(10)  # the writer's thread is stuck in its first transaction
        return sessions()

    writer = PredictionWriter(slow_sessions, max_queued=2)

    async def main() -> list[Any]:
        writer.start()
        first = asyncio.ensure_future(writer.write(prediction_row(f"sop:{uuid.uuid4()}"), None))
        await asyncio.to_thread(entered.wait, 10)  # taken off the queue: the queue is empty
        queued = [
            asyncio.ensure_future(writer.write(prediction_row(f"sop:{uuid.uuid4()}"), None))
            for _ in range(2)
        ]
        await asyncio.sleep(0)  # both queued
        with pytest.raises(ServiceBusyError):
            await writer.write(prediction_row(f"sop:{uuid.uuid4()}"), None)
        release.set()
        results = await asyncio.gather(first, *queued)
        await writer.stop()
        return results

    try:
        results = asyncio.run(main())
    finally:
        release.set()
        engine.dispose()
    assert [created for _, created in results] == [True, True, True]


@pytest.fixture
def flooded_app(tmp_path: Path, model_store: Path) -> Iterator[Any]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'flood.db'}"
    upgrade(url)
    settings = make_settings(
        url,
        model_store,
        auth="enabled",
        inference_streams=1,
        max_batch_size=1,
        max_queued_predictions=1,
    )
    app = create_app(settings)
    app.state.test_headers = {"Authorization": f"Bearer {create_api_key(url, 'predict,read')}"}
    yield app


def test_a_flood_gets_503_with_retry_after_and_every_accepted_upload_is_stored(
    flooded_app: Any,
) -> None:
    import httpx

    from radlens.app.errors import ServiceBusyError

    app = flooded_app
    uploads = [png_bytes(seed) for seed in range(10)]

    async def main() -> tuple[list[Any], list[str]]:
        async with app.router.lifespan_context(app):
            predictor = app.state.resources.predictor
            real_infer, real_check = predictor._infer, predictor._queue.check
            refused = threading.Event()

            def slow_infer(batch: Any) -> Any:
                refused.wait(10)  # a slow model: uploads pile up behind it until one is refused
                return real_infer(batch)

            def check() -> None:
                try:
                    real_check()
                except ServiceBusyError:
                    refused.set()
                    raise

            predictor._infer = slow_infer
            predictor._queue.check = check
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test", headers=app.state.test_headers
            ) as client:
                responses = await asyncio.gather(
                    *(
                        client.post(
                            "/v1/predictions",
                            files={"file": ("a.png", d, "application/octet-stream")},
                        )
                        for d in uploads
                    )
                )
                stored = []
                for r in responses:
                    if r.status_code == 201:
                        got = await client.get(f"/v1/predictions/{r.json()['id']}")
                        assert got.status_code == 200
                        stored.append(got.json()["id"])
            return list(responses), stored

    responses, stored = asyncio.run(main())
    statuses = sorted(r.status_code for r in responses)
    accepted = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 503]
    assert len(accepted) + len(refused) == len(uploads), statuses
    assert accepted and refused, statuses
    for response in refused:
        assert_problem(response, 503, code="service-busy")
        assert response.headers["Retry-After"] == "1"
    assert sorted(stored) == sorted(r.json()["id"] for r in accepted)


def test_queue_bounds_are_validated_settings(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from radlens.app.settings import describe_validation_error

    settings = make_settings("sqlite://", tmp_path)
    assert (settings.max_queued_predictions, settings.max_queued_writes) == (256, 1024)
    for field in ("max_queued_predictions", "max_queued_writes"):
        with pytest.raises(ValidationError) as info:
            make_settings("sqlite://", tmp_path, **{field: 0})
        assert f"RADLENS_{field.upper()}" in describe_validation_error(info.value)


def test_stow_with_failed_instances_records_the_request_apart(service: Service) -> None:
    from radlens.app.audit import PREDICTION_CREATE

    since = datetime.now(UTC)
    body, content_type = multipart_related([dicom_bytes(), b"not a DICOM file"])
    response = service.client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 202, response.text
    (item,) = response.json()["00081199"]["Value"]
    prediction_id = item["00991001"]["Value"][0]
    rows = [(r.action, r.target, r.status) for r in audit_rows(service, since)]
    assert rows == [
        (PREDICTION_CREATE, prediction_id, 201),
        ("POST /dicomweb/studies", None, 202),
    ]


# --- the model's own preprocessing version -----------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_upload_is_preprocessed_with_the_manifests_version(version: str) -> None:
    """A model trained with preprocessing version 1 (full decode) is fed exactly as it was
    trained, a version-2 model with the reduced JPEG 2000 decode (models.preprocessing)."""
    from pydicom.data import get_testdata_file

    from radlens.app.ingest import _prepare_upload
    from radlens.models.preprocessing import preprocess

    data = Path(str(get_testdata_file("RG1_J2KR.dcm"))).read_bytes()  # 1955x1841 chest CR
    model_input, prepared = _prepare_upload(data, (64, 64), None, 36_000_000, version)
    image, flagged = prepared.image, prepared.flagged
    assert flagged == []  # no intended use stated: nothing to flag
    expected = preprocess(data, size=(64, 64), version=version).pixels
    other = preprocess(data, size=(64, 64), version="2" if version == "1" else "1").pixels
    np.testing.assert_array_equal(image.pixels, expected)
    np.testing.assert_array_equal(model_input[..., 0], expected)
    assert np.abs(expected - other).max() > 0  # the two versions differ on this file


def test_the_ingestor_passes_the_loaded_models_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import radlens.app.ingest as ingest

    seen: list[str] = []

    def spy(data: bytes, size: Any, window: Any, max_pixels: int, version: str) -> Any:
        seen.append(version)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ingest, "preprocess_upload", spy)

    class Predictor:
        input_size = (64, 64)
        manifest = type(
            "M", (), {"window": None, "preprocessing_version": "1", "intended_use": None}
        )()

        async def predict_prepared(self, prepare: Any) -> Any:
            return prepare()

    settings = make_settings("sqlite://", Path("."))
    ingestor = ingest.Ingestor(Predictor(), writer=None, settings=settings, metrics=None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="stop here"):
        asyncio.run(ingestor.prepare(b"bytes"))
    assert seen == ["1"]

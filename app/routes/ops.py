"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from radlens.app.db import READ_ONLY, probe_write, renew_connections
from radlens.app.deps import MetricsDep, Resources, ResourcesDep
from radlens.app.errors import (
    DATABASE_FULL,
    DATABASE_IO_ERROR,
    DATABASE_READ_ONLY,
    AppError,
    DatabaseNotWritableError,
    DatabaseUnavailableError,
    ModelNotReadyError,
    database_problem,
)
from radlens.app.metrics import ServiceMetrics
from radlens.app.schemas import Health, ModelRef, Readiness, problem_responses

if TYPE_CHECKING:
    from radlens.app.writer import PredictionWriter

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness", responses=problem_responses(500))
def healthz() -> Health:
    """The process is up and serving HTTP (says nothing about the model or database)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses=problem_responses(500, 503),
)
def readyz(resources: ResourcesDep, service_metrics: MetricsDep) -> Readiness:
    """Ready when the model is loaded and warmed up, the database answers SELECT 1, and it
    stores predictions: not after a write it refused as a whole (full, read-only) until a
    retry time has passed and a write probe (rolled back) passes."""
    try:
        writes = _check(resources, service_metrics)
    except AppError:
        service_metrics.observe_readiness(False)
        raise
    service_metrics.observe_readiness(True)
    predictor = resources.predictor
    manifest = predictor.manifest
    return Readiness(
        status="ready",
        model=ModelRef(name=manifest.name, version=manifest.version),
        device=predictor.device.name,
        database=writes,
        schema_revision=resources.schema_revision,
        batch_limit=getattr(predictor, "batch_limit", None),
        runtime=predictor.selection.runtime,
        precision=predictor.selection.precision,
        runtime_reason=predictor.selection.reason,
        parity=predictor.selection.parity.to_dict() if predictor.selection.parity else None,
    )


def _check(resources: Resources, service_metrics: ServiceMetrics) -> str:
    """Raise the reason the replica is not ready (a 503 AppError); else return its writes'
    state. GET /readyz only: a scrape never touches the database (QA 51)."""
    predictor = resources.predictor
    if not predictor.ready:
        raise ModelNotReadyError(f"model {predictor.manifest.ref} is loaded but not warmed up")
    try:
        # READ_ONLY: on SQLite a deferred transaction, which neither waits for the write lock
        # (an IMMEDIATE one queued behind any write, past the probe's timeout) nor takes it
        with resources.engine.connect().execution_options(**READ_ONLY) as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(
            f"SELECT 1 failed on {resources.engine.url.render_as_string(hide_password=True)}: "
            f"{type(exc).__name__}"
        ) from exc
    return _writes(resources, service_metrics)


def _writes(resources: Resources, service_metrics: ServiceMetrics) -> str:
    """ "ok", or "ok, retrying after <code>"; raises DatabaseNotWritableError (503) while the
    database refuses writes.

    No write per probe (it is polled every few seconds, and a probe would queue on SQLite's
    write lock behind the uploads): readiness follows the writer's last outcome, and a write
    that stores nothing, rolled back, checks the database once before the first upload. After a
    write the database refused as a whole, 503 for the failure's retry time (15 s, doubling
    with each failure after a retry, up to 4 min); then one write that stores nothing, rolled
    back, per probe: it keeps a database still read-only out (until the probe passes, at the
    next probe after the fix); a full disk shows only in a commit, so the replica is ready
    again and the next upload that fails makes it not ready for longer. A passing probe marks
    the failure probed-OK (writable, no more probes; its streak kept for the back-off); the next
    committed write clears it."""
    writer = resources.writer
    failure = writer.failure
    if failure is None and not writer.write_checked:  # once per process, before any upload
        try:
            probe_write(resources.engine)
        except SQLAlchemyError as exc:
            # not a refusal (another connection holds SQLite's write lock): checked next time
            failure = writer.record_failure(exc)
        else:
            writer.write_checked = True
    service_metrics.database_writable.set(1 if writable(writer) else 0)
    if failure is None:
        return "ok"
    if failure.probed_ok:  # a write probe passed since: not again at every probe
        return f"ok, retrying after {failure.code}"
    problem = (failure.code, _TITLES.get(failure.code, DatabaseUnavailableError.title))
    waited = time.monotonic() - failure.at
    if waited < failure.retry_s:
        raise DatabaseNotWritableError(
            problem,
            f"the last write failed {waited:.0f} s ago ({failure.detail}); "
            f"checked again in {failure.retry_s - waited:.0f} s",
            failure.retry_s - waited,
        )
    try:
        probe_write(resources.engine)
    except SQLAlchemyError as exc:
        # not recorded as a failure: the probe is cheap and says when a read-only database is
        # writable again, so it runs at every probe from now on (no back-off)
        code = (database_problem(exc) or problem)[0]
        raise DatabaseNotWritableError(
            (code, _TITLES.get(code, DatabaseUnavailableError.title)),
            f"a write probe failed ({type(exc).__name__}) after the last write failed "
            f"({failure.detail})",
            PROBE_RETRY_S,
        ) from exc
    renew_connections(resources.engine)  # those opened while it refused writes may still refuse
    # unless the writer replaced it meanwhile (a commit cleared it, or a newer failure); a commit
    # landing between this check and the assignment leaves a probed-OK failure, which reads as
    # writable and ready, and the next commit clears it
    if writer.failure is failure:
        writer.failure = dataclasses.replace(failure, probed_ok=True)
    service_metrics.database_writable.set(1)
    return f"ok, retrying after {failure.code}"


def writable(writer: PredictionWriter) -> bool:
    """radlens_database_writable: no refused write, or a write probe passed since (the
    writer's state in memory, no database access)."""
    failure = writer.failure
    return failure is None or failure.probed_ok


_TITLES = dict([DATABASE_FULL, DATABASE_READ_ONLY, DATABASE_IO_ERROR])
PROBE_RETRY_S = 5  # Retry-After while the write probe fails: the next probe checks again


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition"},
        **problem_responses(500),
    },
)
def metrics(request: Request, service_metrics: MetricsDep) -> Response:
    """Requests and latencies by route and status, inference batch sizes and latency,
    predictions by label, readiness, database errors and writability (Prometheus text
    format)."""
    # No database here (QA 51): a scrape that ran SELECT 1 waited for a database host that
    # does not answer past Prometheus' 10 s scrape timeout, and lost every series (up == 0)
    # during the outage. radlens_ready is GET /readyz's last answer; writability the writer's
    # state in memory.
    resources = getattr(request.app.state, "resources", None)  # None while starting
    if resources is not None:
        service_metrics.database_writable.set(1 if writable(resources.writer) else 0)
    return Response(generate_latest(service_metrics.registry), media_type=CONTENT_TYPE_LATEST)

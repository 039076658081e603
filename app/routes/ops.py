"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from radlens.app.deps import MetricsDep, ResourcesDep
from radlens.app.errors import DatabaseUnavailableError, ModelNotReadyError
from radlens.app.schemas import Health, ModelRef, Readiness, problem_responses

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
def readyz(resources: ResourcesDep) -> Readiness:
    """Ready when the model is loaded and warmed up and the database answers SELECT 1."""
    predictor = resources.predictor
    manifest = predictor.manifest
    if not predictor.ready:
        raise ModelNotReadyError(f"model {manifest.ref} is loaded but not warmed up")
    try:
        with resources.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(
            f"SELECT 1 failed on {resources.engine.url.render_as_string(hide_password=True)}: "
            f"{type(exc).__name__}"
        ) from exc
    return Readiness(
        status="ready",
        model=ModelRef(name=manifest.name, version=manifest.version),
        device=predictor.device.name,
        database="ok",
        schema_revision=resources.schema_revision,
        batch_limit=getattr(predictor, "batch_limit", None),
        runtime=predictor.selection.runtime,
        precision=predictor.selection.precision,
        runtime_reason=predictor.selection.reason,
        parity=predictor.selection.parity.to_dict() if predictor.selection.parity else None,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition"},
        **problem_responses(500),
    },
)
def metrics(service_metrics: MetricsDep) -> Response:
    """Requests and latencies by route and status, inference batch sizes and latency,
    predictions by label (Prometheus text format)."""
    return Response(generate_latest(service_metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""The radlens prediction service: ``create_app()`` builds the FastAPI application.

Start-up (lifespan), in this order, each failure stopping the service with a message that
names what and why:
1. the database: reachable, and at the migration head (SQLite is upgraded automatically,
   PostgreSQL must be upgraded with ``radlens db upgrade``; see app/migrate.py);
2. the model: ``load_predictor`` resolves RADLENS_MODEL (name[:version], default newest),
   checks its sha256 and preprocessing version, places it on the device and warms it up;
3. the micro-batching worker and the prediction writer start, the upload path (app/ingest.py)
   on top of them; /readyz answers 200 from then on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from radlens.app.deps import Resources
from radlens.app.errors import CatchAllMiddleware, install_error_handlers
from radlens.app.keycache import KeyCache
from radlens.app.limits import MaxBodySizeMiddleware
from radlens.app.metrics import MetricsMiddleware, ServiceMetrics
from radlens.app.schemas import Problem, problem_responses
from radlens.app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

API_DESCRIPTION = """
Upload a DICOM, PNG or JPEG image to `POST /v1/predictions` and get the loaded model's
decision with its provenance: model name and version, preprocessing version, score per class,
threshold, DICOM UIDs, modality, image size, input sha256 and inference time. Every
prediction is stored; re-posting the same instance to the same model returns the stored one.
No patient identifiers are stored or logged.

**Not for clinical use**: predictions are research output unless the loaded model's manifest
says `validated_for_clinical_use` (see `GET /v1/models`); they must not be used for diagnosis.

Errors are RFC 9457 `application/problem+json` documents whose `title` says what to fix.
"""

PredictorLoader = Callable[[Settings], Any]


def create_app(settings: Settings | None = None, *, load: PredictorLoader | None = None) -> FastAPI:
    """Build the app. ``settings`` default to the environment; ``load`` to ``load_predictor``."""
    settings = settings if settings is not None else get_settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from radlens.app.memory import keep_freed_memory
        from radlens.models.dicomread import ignore_value_validation

        keep_freed_memory(settings.malloc_keep_mib)  # process-wide: before the model loads
        ignore_value_validation()  # process-wide: pynetdicom reads DIMSE datasets itself
        app.openapi()  # built here, before any worker thread: see _build_route_state
        resources = await run_in_threadpool(_start, settings, load, metrics)
        dimse = None
        outbox = None
        try:
            app.state.resources = resources
            limiter = app.state.rate_limiter
            if hasattr(limiter, "bind"):  # the database rate limiter charges this engine's
                limiter.bind(resources.engine)  # buckets
            await resources.predictor.start()
            resources.writer.start()
            if settings.dimse_port is not None:  # DICOM Storage SCP (app/dimse.py)
                from radlens.app.dimse import StorageSCP

                # an unusable inbox, address, port or TLS file: ConfigurationError naming it
                dimse = StorageSCP(settings, resources.ingestor, resources.sessionmaker)
                dimse.start()
            app.state.dimse = dimse
            outbox = resources.ingestor.outbox  # results sent back by C-STORE (app/outbox.py)
            if outbox is not None:
                outbox.start()
        except BaseException:
            # start-up failed after the model loaded (the failure is reported by the server,
            # one line for a RadlensError): stop what was started, then let it propagate
            with suppress(Exception):
                await _stop(app, resources, dimse, outbox)
            raise
        serving = resources.predictor.selection
        logger.info(
            "ready: model %s on %s, runtime %s %s (%s; parity: %s), database schema %s",
            resources.predictor.manifest.ref,
            resources.predictor.device.name,
            serving.runtime,
            serving.precision,
            serving.reason,
            serving.parity.summary() if serving.parity else "n/a",
            resources.schema_revision,
        )
        try:
            yield
        finally:
            await _stop(app, resources, dimse, outbox)

    app = FastAPI(
        title="radlens",
        version=_version(),
        summary="Medical imaging diagnosis service (research use; not for clinical use)",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc without a CDN: app/docs.py
        redoc_url=None,
    )
    from radlens.app.docs import install_docs

    install_docs(app)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.resources = None
    app.state.rate_limiter = _rate_limiter(settings)
    app.state.key_cache = KeyCache(settings.auth_cache_ttl_s)  # app/auth.py, app/keycache.py
    if settings.auth == "disabled":
        logger.warning(
            "RADLENS_AUTH=disabled: the API accepts requests without a key (development only)"
        )
    install_error_handlers(app)

    from radlens.app.auth import AUDITED, AUTHORIZED, UPLOADS
    from radlens.app.routes import model_info, ops, predictions

    # Every /v1 route needs an API key (app/auth.py); predictions are also audited. The key's
    # refusals (401, 403, 429) are documented on each of those routes.
    keyed = problem_responses(401, 403, 429)
    # Uploads: the key is checked before the body is read; the prediction's audit row is
    # written with it by the writer (app/ingest.py), a failure's by the dependency.
    app.include_router(predictions.upload_router, dependencies=UPLOADS, responses=keyed)
    app.include_router(predictions.router, dependencies=AUDITED, responses=keyed)
    from radlens.app.routes import dicomweb, explanations  # Grad-CAM, SR/SC, STOW-RS

    app.include_router(explanations.upload_router, dependencies=UPLOADS, responses=keyed)
    app.include_router(explanations.router, dependencies=AUDITED, responses=keyed)
    app.include_router(dicomweb.router, dependencies=UPLOADS, responses=keyed)
    from radlens.app.routes import series  # series and study results (app/series.py)

    app.include_router(series.router, dependencies=AUDITED, responses=keyed)
    app.include_router(model_info.router, dependencies=AUTHORIZED, responses=keyed)
    from radlens.app.routes import drift  # recent uploads vs the model's reference

    app.include_router(drift.router, dependencies=AUTHORIZED, responses=keyed)
    from radlens.app.routes import outbox as outbox_routes  # DICOM send-back outbox

    app.include_router(outbox_routes.router, dependencies=AUDITED, responses=keyed)
    from radlens.app.routes import wado  # QIDO-RS/WADO-RS for the SR/SC radlens produced

    app.include_router(wado.router, dependencies=AUDITED, responses=keyed)
    app.include_router(ops.router)
    from radlens.app.ui import install_ui  # /ui pages: login, predictions, upload, model

    install_ui(app)

    # Outermost first when the request comes in: API headers (app/apiheaders.py) -> catch-all
    # -> metrics -> body limit -> HEAD as GET (app/head.py) -> app.
    from radlens.app.head import HeadAsGetMiddleware

    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(
        MaxBodySizeMiddleware,
        max_bytes=settings.max_upload_bytes,
        max_inflight_bytes=settings.max_inflight_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(CatchAllMiddleware)
    from radlens.app.apiheaders import ApiHeadersMiddleware

    app.add_middleware(ApiHeadersMiddleware)  # outermost: every answer, a 500 too
    _register_problem_schema(app)
    _build_route_state(app)
    return app


def _build_route_state(app: FastAPI) -> None:
    """Build FastAPI's per-route state now, in one thread, instead of at the first request.

    FastAPI builds an included router's route fields lazily, the first time a request is
    routed to it or ``url_path_for`` walks it, and builds them inside
    ``warnings.catch_warnings()`` to silence a pydantic warning. That context manager swaps the
    process-wide filter list, so a worker thread leaving its own ``catch_warnings`` at that
    moment (numpy, a codec, TensorFlow) puts the old filters back under FastAPI's feet and the
    silenced warning escapes: a 500 where warnings are errors (CI saw one under 32 concurrent
    uploads). Asking for a name no route has walks, and so builds, every included router.
    The OpenAPI document (read by every 405's ``Allow``) is built the same way, at the start of
    the lifespan, before any worker thread: 65 ms a served app, not paid by apps never served.
    """
    from starlette.routing import NoMatchFound

    with suppress(NoMatchFound):
        app.url_path_for("radlens: no route has this name")


def _rate_limiter(settings: Settings) -> Any:
    if settings.rate_limit_per_minute == 0:
        return None
    from radlens.app.ratelimit import DatabaseRateLimiter, RateLimiter

    if settings.rate_limit_store == "database":  # shared by replicas; bound in the lifespan
        return DatabaseRateLimiter(settings.rate_limit_per_minute)
    return RateLimiter(settings.rate_limit_per_minute)


def _start(settings: Settings, load: PredictorLoader | None, metrics: ServiceMetrics) -> Resources:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.migrate import ensure_schema

    engine = make_engine(
        settings.database_url, connect_timeout_s=settings.database_connect_timeout_s
    )
    try:
        revision = ensure_schema(settings.database_url, engine)
        if load is None:
            from radlens.app.predictor import load_predictor

            load = load_predictor
        predictor = load(settings)
        if settings.explain_warmup:  # trace Grad-CAM now, not in the first ?explain=true request
            from radlens.app.explain import explainer_for

            seconds = explainer_for(predictor).warmup()
            logger.info("Grad-CAM warmed up in %.1f s", seconds)
    except BaseException:
        engine.dispose()
        raise

    def observe(stats: Any) -> None:  # app.predictor.BatchStats, on the worker thread
        if stats.ok:
            metrics.observe_batch(stats.size, stats.inference_ms / 1000.0)

    predictor.observers.append(observe)
    from radlens.app.ingest import Ingestor
    from radlens.app.writer import PredictionWriter

    sessions = make_sessionmaker(engine)
    from radlens.app.drift import DriftMonitor  # the stored window vs the model's reference

    metrics.drift = DriftMonitor(
        predictor.manifest,
        settings.drift_window,
        make_sessionmaker(engine, read_only=True),
        cache_seconds=settings.drift_cache_s,
    )
    writer = PredictionWriter(sessions, max_queued=settings.max_queued_writes)
    metrics.queue_depths = lambda: _queue_depths(predictor, writer)
    ingestor = Ingestor(predictor, writer, settings, metrics)
    if settings.dicom_destinations:
        from radlens.app.outbox import Outbox

        try:  # an unusable RADLENS_DICOM_OUTBOX_DIR: ConfigurationError naming it
            ingestor.outbox = Outbox(settings, sessionmaker=sessions, registry=metrics.registry)
        except BaseException:
            engine.dispose()
            raise
        # highdicom now, not in the first prediction's SR build: imported there it took 3.3 s
        # of an 8.5 s first build on a loaded node, past the CLAIM_WAIT_S (5 s) a re-post on
        # another replica waits for the results' queue row, which then queued them again
        # (QA round 65)
        import highdicom  # noqa: F401
    return Resources(
        engine=engine,
        sessionmaker=sessions,
        schema_revision=revision,
        writer=writer,
        ingestor=ingestor,
    )


async def _stop(app: FastAPI, resources: Resources, dimse: Any, outbox: Any) -> None:
    """Stop what the lifespan started (each stop is a no-op for what did not start)."""
    if dimse is not None:
        await run_in_threadpool(dimse.stop)
        await dimse.drain()
    if outbox is not None:
        await run_in_threadpool(outbox.stop)
    app.state.resources = None
    await resources.predictor.stop()
    await resources.writer.stop()
    resources.engine.dispose()


def _queue_depths(predictor: Any, writer: Any) -> dict[str, int]:
    """Items waiting: uploads for a model call (the predictor's queue), rows to be stored."""
    depths = {"writes": writer.queue.qsize()}
    queue_depth = getattr(predictor, "queue_depth", None)  # absent in a test's stand-in
    if queue_depth is not None:
        depths["predictions"] = queue_depth()
    return depths


def _register_problem_schema(app: FastAPI) -> None:
    """Make sure components/schemas/Problem exists for the problem+json $refs."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("Problem", Problem.model_json_schema())
        from radlens.app.routes.predictions import OPENAPI_SCHEMAS

        for name, model in OPENAPI_SCHEMAS.items():
            components.setdefault(name, model.model_json_schema())
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("radlens")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"

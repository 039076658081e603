"""Request dependencies: the app's resources, as ``Annotated`` aliases routes declare.

The heavy resources (engine, sessionmaker, writer, and the ingestor holding the predictor)
are built once in the lifespan (app/main.py) and kept in ``app.state.resources``; tests swap
any of them with ``app.dependency_overrides[get_...]``, the upload routes' ingestor
(``get_ingestor``) included.

The dependencies that only read ``app.state`` are ``async def``: FastAPI runs a plain ``def``
dependency in the thread pool, and that hop costs more CPU than the function itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from radlens.app.errors import ModelNotReadyError
from radlens.app.metrics import ServiceMetrics
from radlens.app.predictor import Predictor
from radlens.app.settings import Settings
from radlens.app.writer import PredictionWriter

if TYPE_CHECKING:
    from radlens.app.ingest import Ingestor


@dataclass
class Resources:
    """What the lifespan built; present on ``app.state.resources`` once start-up finished."""

    engine: Engine
    sessionmaker: sessionmaker[Session]
    schema_revision: str
    writer: PredictionWriter  # stores the uploads' predictions, grouped (app/writer.py)
    ingestor: Ingestor  # the one upload path: prepare -> explain -> commit (app/ingest.py)

    @property
    def predictor(self) -> Predictor:
        """The loaded model, held by the ingestor (swapping it here swaps it there)."""
        return self.ingestor.predictor

    @predictor.setter
    def predictor(self, predictor: Predictor) -> None:
        self.ingestor.predictor = predictor


def get_resources(request: Request) -> Resources:
    """The lifespan's resources (engine, sessions, writer, ingestor, predictor); 503 until
    start-up has finished. Public: app/auth.py and the /ui pages read them too."""
    resources: Resources | None = getattr(request.app.state, "resources", None)
    if resources is None:
        raise ModelNotReadyError("start-up has not finished (model and database not loaded yet)")
    return resources


_resources = get_resources  # the name this module's dependencies (and older code) use


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session and one transaction per request: commit on success, roll back on error.

    Services only flush. Declared with ``scope="function"`` below so the commit happens
    before the response is sent (a failed commit is an error response, never a 201).

    ``async``: creating a session does no I/O (it connects on first use, in whatever worker
    thread the route uses it), and the commit and close run in ONE thread-pool call, where
    a plain ``def`` generator costs a hop to enter and another to exit. On an error (or a
    cancelled request) the rollback and close run on the event loop: they only release the
    transaction, and must happen even when the task is being cancelled.
    """
    factory = _resources(request).sessionmaker
    session = factory()
    try:
        yield session
    except BaseException:
        _rollback_and_close(session)
        raise
    try:
        await run_in_threadpool(_commit_and_close, session)
    except BaseException:
        _rollback_and_close(session)
        raise


def _commit_and_close(session: Session) -> None:
    session.commit()
    session.close()


def _rollback_and_close(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


async def get_predictor(request: Request) -> Predictor:
    predictor = _resources(request).predictor
    _require_ready(predictor)
    return predictor


async def get_ingestor(request: Request) -> Ingestor:
    """The upload path, once the model is warmed up (503 before)."""
    ingestor = _resources(request).ingestor
    _require_ready(ingestor.predictor)
    return ingestor


def _require_ready(predictor: Predictor) -> None:
    if not predictor.ready:
        raise ModelNotReadyError(
            f"model {predictor.manifest.name}:{predictor.manifest.version} is not warmed up yet"
        )


async def get_engine(request: Request) -> Engine:
    return _resources(request).engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
IngestorDep = Annotated["Ingestor", Depends(get_ingestor)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ResourcesDep = Annotated[Resources, Depends(_resources)]

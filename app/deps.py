"""Request dependencies: the app's resources, as ``Annotated`` aliases routes declare.

The heavy resources (engine, sessionmaker, predictor) are built once in the lifespan
(app/main.py) and kept in ``app.state.resources``; tests swap any of them with
``app.dependency_overrides[get_...]``.

The dependencies that only read ``app.state`` are ``async def``: FastAPI runs a plain ``def``
dependency in the thread pool, and that hop costs more CPU than the function itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ModelNotReadyError
from app.metrics import ServiceMetrics
from app.predictor import Predictor
from app.settings import Settings


@dataclass
class Resources:
    """What the lifespan built; present on ``app.state.resources`` once start-up finished."""

    engine: Engine
    sessionmaker: sessionmaker[Session]
    predictor: Predictor
    schema_revision: str


def _resources(request: Request) -> Resources:
    resources: Resources | None = getattr(request.app.state, "resources", None)
    if resources is None:
        raise ModelNotReadyError("start-up has not finished (model and database not loaded yet)")
    return resources


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


def get_session(request: Request) -> Iterator[Session]:
    """One session and one transaction per request: commit on success, roll back on error.

    Services only flush. Declared with ``scope="function"`` below so the commit happens
    before the response is sent (a failed commit is an error response, never a 201).
    """
    factory = _resources(request).sessionmaker
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


async def get_predictor(request: Request) -> Predictor:
    predictor = _resources(request).predictor
    if not predictor.ready:
        raise ModelNotReadyError(
            f"model {predictor.manifest.name}:{predictor.manifest.version} is not warmed up yet"
        )
    return predictor


async def get_engine(request: Request) -> Engine:
    return _resources(request).engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ResourcesDep = Annotated[Resources, Depends(_resources)]

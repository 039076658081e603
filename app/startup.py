"""Checks run before the server starts, so `radlens serve` fails in one line, not a traceback.

``preflight`` checks what the lifespan will need, cheaply and in the same order: the settings
(already validated), the database (reachable, at head; SQLite upgraded), and the model (it
resolves, its manifest is valid, its sha256 matches, its preprocessing version is ours). Only
Keras deserialisation and warm-up are left to the lifespan, which does them once.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.settings import Settings
from models.manifest import ModelManifest


@dataclass(frozen=True)
class PreflightReport:
    schema_revision: str
    model: ModelManifest


def check_model(settings: Settings) -> ModelManifest:
    """Resolve RADLENS_MODEL in the store and verify the artifact without loading Keras: the
    registry's own checks (``ModelRegistry.verify``, ``check_preprocessing_version``), which
    ``ModelRegistry.load`` runs again in the lifespan.

    Raises:
        ModelNotFoundError, ModelCorruptError, ModelIncompatibleError, ConfigurationError:
            naming the model and the reason.
    """
    from models.registry import ModelRegistry, check_preprocessing_version

    registry = ModelRegistry(settings.model_store)
    manifest = registry.verify(*registry.resolve(settings.model))
    check_preprocessing_version(manifest)
    return manifest


def preflight(settings: Settings) -> PreflightReport:
    """Database at head (SQLite upgraded automatically), then the model artifact verified."""
    from app.db import make_engine
    from app.migrate import ensure_schema

    engine = make_engine(settings.database_url)
    try:
        revision = ensure_schema(settings.database_url, engine)
    finally:
        engine.dispose()
    return PreflightReport(schema_revision=revision, model=check_model(settings))

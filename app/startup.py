"""Checks run before the server starts, so `radlens serve` fails in one line, not a traceback.

``preflight`` checks what the lifespan will need, cheaply and in the same order: the settings
(already validated), the database (reachable, at head; SQLite upgraded), and the model (it
resolves, its manifest is valid, its sha256 matches, its preprocessing version is ours). Only
Keras deserialisation and warm-up are left to the lifespan, which does them once.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.settings import Settings
from models.errors import ModelIncompatibleError
from models.manifest import ModelManifest


@dataclass(frozen=True)
class PreflightReport:
    schema_revision: str
    model: ModelManifest


def check_model(settings: Settings) -> ModelManifest:
    """Resolve RADLENS_MODEL in the store and verify the artifact without loading Keras.

    Raises:
        ModelNotFoundError, ModelCorruptError, ModelIncompatibleError, ConfigurationError:
            naming the model and the reason.
    """
    from models.preprocessing import PREPROCESSING_VERSION
    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.model_store)
    name, version = registry.resolve(settings.model)
    manifest = registry.verify(name, version)  # seal (fields named), then model.keras sha256
    if manifest.preprocessing_version != PREPROCESSING_VERSION:
        raise ModelIncompatibleError(
            f"model {manifest.ref} was trained with preprocessing version "
            f"{manifest.preprocessing_version!r}; this radlens uses {PREPROCESSING_VERSION!r}"
        )
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

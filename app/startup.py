"""Checks run before the server starts, so `radlens serve` fails in one line, not a traceback.

``preflight`` checks what the lifespan will need, cheaply and in the same order: the settings
(already validated), the database (reachable, at head; SQLite upgraded), and the model (it
resolves, its manifest is valid, its sha256 matches, its preprocessing version is ours). Only
Keras deserialisation and warm-up are left to the lifespan, which does them once.

``choose_runtime`` applies RADLENS_RUNTIME / RADLENS_PRECISION (models.runtime.select_runtime)
to the model's converted files and recorded parity and to this CPU; preflight runs it too, so
an explicit runtime that cannot serve (package absent, converted file missing or altered,
bf16 unsupported or out of tolerance) stops `radlens serve` in one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from radlens.app.settings import Settings
from radlens.models.errors import ModelCorruptError, ModelNotFoundError
from radlens.models.manifest import ModelManifest

if TYPE_CHECKING:
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import Selection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreflightReport:
    schema_revision: str
    model: ModelManifest
    runtime: Selection | None = None


def registry_for(settings: Any) -> ModelRegistry:
    """The model store, with the manifest signing key from the settings (else the env)."""
    from radlens.models.registry import ModelRegistry

    return ModelRegistry(
        settings.model_store, signing_key=getattr(settings, "model_signing_key_bytes", None)
    )


def choose_runtime(
    settings: Any, registry: ModelRegistry, manifest: ModelManifest, device_kind: str
) -> Selection:
    """Which runtime and precision serve ``manifest`` here (see models.runtime.select_runtime).

    A fallback of ``auto`` to TensorFlow fp32 is logged as a warning with its reason.

    Raises:
        RuntimeUnavailableError: an explicit setting that cannot be honoured (the reason).
        ConfigurationError: RADLENS_RUNTIME=tensorflow with RADLENS_PRECISION=bf16.
    """
    from radlens.models.runtime import (
        OPENVINO,
        Tolerance,
        bf16_supported,
        openvino_version,
        recorded_parity,
        select_runtime,
    )

    problem: str | None = None
    if openvino_version() is None:
        problem = "the openvino package is not installed (pip install openvino)"
    else:
        try:
            registry.runtime_files(manifest, OPENVINO)
        except (ModelNotFoundError, ModelCorruptError) as exc:
            problem = exc.detail
    selection = select_runtime(
        runtime=getattr(settings, "runtime", "auto"),
        precision=getattr(settings, "precision", "auto"),
        device_kind=device_kind,
        openvino_problem=problem,
        bf16=problem is None and device_kind == "cpu" and bf16_supported(),
        parity={p: recorded_parity(manifest, p) for p in ("fp32", "bf16")},
        tolerance=Tolerance(
            max_auc_difference=getattr(settings, "parity_max_auc_difference", 0.002),
            max_flip_fraction=getattr(settings, "parity_max_flip_fraction", 0.01),
        ),
    )
    if selection.fallback:
        log.warning("serving with TensorFlow fp32: %s", selection.reason)
    return selection


def check_model(settings: Settings) -> ModelManifest:
    """Resolve RADLENS_MODEL in the store and verify the artifact without loading Keras: the
    registry's own checks (``ModelRegistry.verify``, ``check_preprocessing_version``), which
    ``ModelRegistry.load`` runs again in the lifespan, and that the model has the operating
    point RADLENS_OPERATING_POINT names (``models.decision.operating_point``).

    Raises:
        ModelNotFoundError, ModelCorruptError, ModelIncompatibleError, ConfigurationError:
            naming the model and the reason.
    """
    from radlens.models.decision import operating_point
    from radlens.models.registry import check_preprocessing_version

    registry = registry_for(settings)
    name, version = registry.resolve(settings.model)
    manifest = registry.verify(name, version)  # seal (fields named), then model.keras sha256
    check_preprocessing_version(manifest)
    operating_point(manifest, settings.operating_point)
    return manifest


def preflight(settings: Settings) -> PreflightReport:
    """Database at head (SQLite upgraded automatically), the model artifact verified, and the
    runtime settings checked against it."""
    from radlens.app.db import make_engine
    from radlens.app.migrate import ensure_schema

    engine = make_engine(
        settings.database_url, connect_timeout_s=settings.database_connect_timeout_s
    )
    try:
        revision = ensure_schema(settings.database_url, engine)
    finally:
        engine.dispose()
    manifest = check_model(settings)
    # The device is chosen later (TensorFlow); here only RADLENS_DEVICE=gpu is known for sure.
    device_kind = "gpu" if settings.device == "gpu" else "cpu"
    selection = choose_runtime(settings, registry_for(settings), manifest, device_kind)
    return PreflightReport(schema_revision=revision, model=manifest, runtime=selection)

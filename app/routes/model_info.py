"""API v1 models: the loaded model and its manifest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from radlens.app import clinical
from radlens.app.deps import ResourcesDep, SettingsDep
from radlens.app.schemas import NOT_FOR_CLINICAL_USE, ModelPublic, ModelsPublic, problem_responses
from radlens.models.decision import CHOSEN, OperatingPoint
from radlens.models.intended_use import NOT_STATED
from radlens.models.manifest import ModelManifest

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get(
    "",
    response_model=ModelsPublic,
    summary="The loaded model and its manifest",
    responses=problem_responses(500, 503),
)
def list_models(resources: ResourcesDep, settings: SettingsDep) -> ModelsPublic:
    """Classes, decision threshold, metrics and the clinical-validation flag of the model."""
    predictor = resources.predictor
    m = predictor.manifest
    # as every result's notice: the store's sealed manifest decides, not the one loaded at
    # start-up (app/clinical.py; QA 101: an unsealed or since-edited store manifest was
    # listed as validated while the model's results carried the notice)
    validated = clinical.validated(settings, m.name, m.version)
    return ModelsPublic(
        models=[
            ModelPublic(
                name=m.name,
                version=m.version,
                architecture=m.architecture,
                created_at=m.created_at,
                input_shape=list(m.input_shape),
                class_names=list(m.class_names),
                threshold=m.threshold,
                window=m.window,
                preprocessing_version=m.preprocessing_version,
                filters=list(m.filters),
                metrics=m.metrics,
                validated_for_clinical_use=validated,
                description=m.description,
                device=predictor.device.name,
                ready=predictor.ready,
                notice=None if validated else NOT_FOR_CLINICAL_USE,
                operating_point=predictor.operating_point.name,
                decision_threshold=predictor.operating_point.threshold,
                data_split=m.data_split,
                leakage_check=m.leakage_check,
                calibration=_calibration(m),
                label_mode="multi-label" if m.multi_label else "single-label",
                finding_thresholds=m.finding_thresholds or None,
                finding_operating_points=_finding_points(predictor.operating_point, m),
                finding_decision_thresholds=m.decision_thresholds or None,
                intended_use=m.intended_use or NOT_STATED,
                ood={k: v for k, v in m.ood.items() if k != "files"} if m.ood else None,
            )
        ]
    )


def _calibration(manifest: ModelManifest) -> dict[str, Any] | None:
    """The manifest's calibration record, or the one its metrics hold.

    A multi-label run records its per-finding temperatures under ``metrics["calibration"]``
    (as single-label runs did before the manifest field): null here read as "not calibrated"
    to a client checking whether the scores are calibrated probabilities (QA round 21)."""
    if manifest.calibration is not None:
        return manifest.calibration
    record = manifest.metrics.get("calibration")
    return record if isinstance(record, dict) else None


def _finding_points(point: OperatingPoint, manifest: ModelManifest) -> dict[str, str] | None:
    """A multi-label model: the operating point each finding is decided at ('chosen' for
    its trained threshold); None for single-label models."""
    if not manifest.multi_label:
        return None
    points = point.finding_points or {}
    return {name: points.get(name, CHOSEN) for name in manifest.class_names}

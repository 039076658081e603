"""Drift summary: the recent stored predictions of the loaded model vs its training reference
(app/drift.py); the same figures as the radlens_drift_* gauges on /metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from radlens.app.drift import DriftMonitor
from radlens.app.errors import ModelNotReadyError
from radlens.app.schemas import problem_responses

router = APIRouter(prefix="/v1/drift", tags=["monitoring"])


class DriftFeature(BaseModel):
    feature: str = Field(description="score:<class> or input:<statistic>")
    n: int = Field(description="recent values compared")
    psi: float = Field(description="population stability index vs the reference")
    ks: float = Field(description="Kolmogorov-Smirnov statistic (binned) vs the reference")
    drifted: bool = Field(description="psi >= psi_threshold")


class LabelRate(BaseModel):
    recent: float | None = Field(description="fraction in the drift window")
    reference: float | None = Field(description="fraction on the validation split")


class DriftReference(BaseModel):
    split: str
    split_size: int | None


class DriftSummary(BaseModel):
    model: str
    status: Literal["no-reference", "collecting", "stable", "drift"] = Field(
        description="no-reference: the manifest has none (a model exported before radlens "
        "wrote one); collecting: fewer than min_samples stored predictions"
    )
    window: int = Field(
        description="RADLENS_DRIFT_WINDOW: the model's last stored predictions compared"
    )
    n: int = Field(description="stored predictions in the window (every replica's)")
    min_samples: int
    psi_threshold: float
    reference: DriftReference | None
    features: list[DriftFeature]
    label_rates: dict[str, LabelRate]
    drifted: list[str] = Field(description="the features whose PSI is at the threshold or above")


def drift_monitor(request: Request) -> DriftMonitor:
    """The loaded model's monitor (503 before start-up has finished)."""
    monitor: DriftMonitor | None = getattr(request.app.state.metrics, "drift", None)
    if monitor is None:
        raise ModelNotReadyError("start-up has not finished (no model loaded yet)")
    return monitor


@router.get(
    "",
    response_model=DriftSummary,
    summary="Drift of recent inputs and scores from the model's training reference",
    responses=problem_responses(500, 503),
)
def get_drift(request: Request) -> DriftSummary:
    """PSI and KS per score class and input statistic over the model's last
    RADLENS_DRIFT_WINDOW stored predictions (every replica's), and the label rates, against
    the validation reference stored with the model."""
    return DriftSummary.model_validate(drift_monitor(request).summary())

"""The overlay's title prints a score with enough decimals to read it against its threshold:
at 2 decimals a 0.4999 "abnormal" read 0.50 beside a 0.4862 threshold (QA round 73 found it in
the SC); its caption says what the map does not show."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from radlens.models import gradcam
from radlens.models.architectures import build_model
from radlens.models.overlay import _CAPTION


@pytest.mark.parametrize(
    ("score", "threshold", "expected"),
    [
        (0.4999, 0.4862, ("0.4999", "0.4862")),
        (0.486151, 0.486156, ("0.48615", "0.48616")),
        (0.5, 0.5, ("0.50000000", "0.50000000")),
    ],
)
def test_a_score_and_its_threshold_are_printed_apart(
    score: float, threshold: float, expected: tuple[str, str]
) -> None:
    assert gradcam._apart(score, threshold) == expected


def test_the_single_label_title_has_four_decimals(monkeypatch: pytest.MonkeyPatch) -> None:
    titles: list[str] = []

    def render(*args: Any, title: str | None = None, **kwargs: Any) -> bytes:
        titles.append(str(title))
        return b""

    monkeypatch.setattr("radlens.models.overlay.render_overlay", render)
    model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)
    image = np.random.default_rng(0).random((32, 32, 1), dtype=np.float32)
    result, _ = gradcam.explain_image(model, image, class_names=["normal", "abnormal"])
    chosen = int(result.class_indices[0])
    name = ["normal", "abnormal"][chosen]
    assert titles == [f"{name} {result.scores[0, chosen]:.4f} · Grad-CAM {result.layer}"]


def test_the_caption_does_not_claim_to_locate_a_finding() -> None:
    assert "where the evidence" not in _CAPTION
    assert "not a finding's outline" in _CAPTION and "Not for clinical use" in _CAPTION

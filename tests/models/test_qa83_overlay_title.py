"""QA 83: the Grad-CAM overlay's title says the label and how its threshold decided it.

A binary model's map explains its positive class whatever the label, and the title named that
class and its score only: a normal result read "abnormal 0.1000 · Grad-CAM ..." in the PNG the
API serves and in the pixels of the DICOM Secondary Capture, with no label or threshold in the
picture, so a viewer that shows only the picture read it as abnormal. The title is now e.g.
"normal (abnormal score 0.1000 < threshold 0.4862) · Grad-CAM of abnormal", shortened to fit
the width the overlay is drawn at. (Before QA 83 ``overlay_title`` did not exist and
``explain_image`` took no label or threshold.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from radlens.models import gradcam
from radlens.models.architectures import build_model
from radlens.models.overlay import DEFAULT_WIDTH

NAMES = ["normal", "abnormal"]


def _title(score: float, threshold: float, **kwargs: Any) -> str:
    scores = np.array([1.0 - score, score], dtype=np.float32)
    return gradcam.overlay_title(NAMES, 1, scores, "conv", threshold=threshold, **kwargs)


def test_a_normal_result_is_titled_normal_with_its_decision() -> None:
    assert _title(0.1, 0.4862) == (
        "normal (abnormal score 0.1000 < threshold 0.4862) · Grad-CAM of abnormal"
    )


def test_an_abnormal_result_is_titled_abnormal_at_or_above_the_threshold() -> None:
    assert _title(0.4862, 0.4862).startswith("abnormal (abnormal score 0.48620000 ≥ threshold")
    assert _title(0.93, 0.5) == (
        "abnormal (abnormal score 0.9300 ≥ threshold 0.5000) · Grad-CAM of abnormal"
    )


def test_score_and_threshold_get_the_decimals_that_tell_them_apart() -> None:
    # at 4 decimals both read 0.4862 (gradcam._apart)
    assert "abnormal score 0.48615 < threshold 0.48616" in _title(0.486151, 0.486156)


def test_the_callers_label_and_score_are_the_ones_shown() -> None:
    # a multi-frame instance's aggregate decides its label, the map explains the key frame
    title = _title(0.9, 0.5, label="normal", positive_score=0.3)
    assert title == "normal (abnormal score 0.3000 < threshold 0.5000) · Grad-CAM of abnormal"


def test_without_a_threshold_the_title_is_as_before() -> None:
    scores = np.array([0.2, 0.8], dtype=np.float32)
    assert gradcam.overlay_title(NAMES, 1, scores, "conv") == "abnormal 0.8000 · Grad-CAM conv"
    three = np.array([0.2, 0.7, 0.1], dtype=np.float32)
    assert (
        gradcam.overlay_title(["a", "b", "c"], 1, three, "conv", label="a")
        == "a (b score 0.7000) · Grad-CAM of b"
    )


@pytest.mark.parametrize("width", [256, DEFAULT_WIDTH, 2 * DEFAULT_WIDTH, 2048])
@pytest.mark.parametrize(("score", "threshold"), [(0.1, 0.4862), (0.486151, 0.486156)])
def test_the_title_is_shortened_to_fit_the_width(
    width: int, score: float, threshold: float
) -> None:
    title = _title(score, threshold, width=width)
    label = "normal" if score < threshold else "abnormal"
    assert title.startswith(f"{label} (abnormal") or title.startswith(f"{label}: abnormal")
    assert "threshold" in title and "<" in title
    if width >= DEFAULT_WIDTH:  # 256 px: no wording of the decision fits (the last is used)
        assert gradcam._title_width(title) <= width - gradcam._TITLE_MARGIN
    if width >= 2 * DEFAULT_WIDTH:  # the service's overlay (two panels): the whole wording
        assert title.endswith("· Grad-CAM of abnormal")


@pytest.fixture(scope="module")
def model() -> Any:
    return build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)


@pytest.mark.parametrize("display", [None, (64, 48)])
def test_explain_image_titles_the_overlay_with_the_label(
    model: Any, display: tuple[int, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    titles: list[str] = []
    real = __import__("radlens.models.overlay", fromlist=["render_overlay"]).render_overlay

    def render(*args: Any, title: str | None = None, **kwargs: Any) -> bytes:
        titles.append(str(title))
        return bytes(real(*args, title=title, **kwargs))

    monkeypatch.setattr("radlens.models.overlay.render_overlay", render)
    image = np.random.default_rng(83).random((32, 32, 1), dtype=np.float32)
    shown = None if display is None else np.random.default_rng(1).random(display).astype("f4")
    result, png = gradcam.explain_image(
        model, image, class_names=NAMES, class_index=1, display=shown, threshold=0.4862
    )
    assert png.startswith(b"\x89PNG")
    score = float(result.scores[0, 1])
    label = "abnormal" if score >= 0.4862 else "normal"
    relation = "≥" if score >= 0.4862 else "<"
    shown_score, at = gradcam._apart(score, 0.4862)
    (title,) = titles
    assert title.startswith(label) and f"{shown_score} {relation} threshold {at}" in title
    if display is not None:  # 1024 px: the whole wording
        assert title.startswith(f"{label} (abnormal score {shown_score} {relation} threshold")
    width = DEFAULT_WIDTH * (1 if display is None else 2)
    assert gradcam._title_width(title) <= width - gradcam._TITLE_MARGIN

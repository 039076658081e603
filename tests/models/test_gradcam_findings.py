"""Grad-CAM per finding of a multi-label model (models.gradcam.pick_findings/explain_findings)."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
from PIL import Image

from radlens.models.architectures import build_model
from radlens.models.errors import ConfigurationError
from radlens.models.gradcam import explain_findings, gradcam_explain, pick_findings

NAMES = ["a", "b", "c", "d"]
CUTS = {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.9}


class TestPickFindings:
    def test_positive_by_score_at_most_top(self) -> None:
        scores = np.array([0.6, 0.95, 0.7, 0.85])  # d is under its 0.9 threshold
        assert pick_findings(scores, NAMES, CUTS) == [1, 2, 0]
        assert pick_findings(scores, NAMES, CUTS, top=2) == [1, 2]

    def test_none_positive_gives_the_closest(self) -> None:
        assert pick_findings(np.array([0.1, 0.3, 0.2, 0.8]), NAMES, CUTS) == [3]

    def test_requested_in_order_without_repeats(self) -> None:
        assert pick_findings(np.zeros(4), NAMES, CUTS, requested=["d", "a", "d"]) == [3, 0]

    def test_unknown_requested_names_them(self) -> None:
        with pytest.raises(ConfigurationError, match=r"unknown finding\(s\) \['x'\]"):
            pick_findings(np.zeros(4), NAMES, CUTS, requested=["a", "x"])


def test_each_finding_gets_its_own_map() -> None:
    keras.utils.set_random_seed(3)
    model = build_model("simple_cnn", input_shape=(16, 16, 1), num_classes=4, multi_label=True)
    image = np.random.default_rng(0).random((16, 16, 1), dtype=np.float32)
    result, png = explain_findings(
        model, image, finding_names=NAMES, thresholds=CUTS, requested=["b", "c"]
    )
    assert result.class_indices.tolist() == [1, 2]
    for row, index in enumerate((1, 2)):  # the same maps as one finding at a time
        alone = gradcam_explain(model, image, class_index=index)
        np.testing.assert_allclose(result.heatmaps[row], alone.heatmaps[0], atol=1e-5)
    assert not np.allclose(result.heatmaps[0], result.heatmaps[1])
    single = explain_findings(model, image, finding_names=NAMES, thresholds=CUTS, requested=["b"])
    h1 = Image.open(io.BytesIO(single[1])).height
    assert Image.open(io.BytesIO(png)).height == 2 * h1

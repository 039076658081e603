"""radlens.models.decision.operating_point: RADLENS_OPERATING_POINT resolved against the
operating-point table training writes into the manifest, and the label it decides."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from radlens.models.decision import (
    OperatingPoint,
    decide,
    operating_point,
    operating_point_names,
)
from radlens.models.errors import ConfigurationError
from radlens.models.manifest import ModelManifest
from radlens.training.metrics import operating_points
from tests.models.test_registry import valid_manifest_dict


def manifest(
    points: Any = None, classes: list[str] | None = None, threshold: float | None = 0.5
) -> ModelManifest:
    metrics: dict[str, Any] = {"val": {"auc": 0.9}}
    if points is not None:
        metrics["operating_points"] = points
    return ModelManifest.from_dict(
        valid_manifest_dict()
        | {
            "class_names": classes or ["normal", "pneumonia"],
            "threshold": threshold,
            "metrics": metrics,
        }
    )


def trained_points() -> dict[str, Any]:
    """The table training writes (training.metrics.operating_points) on made-up scores."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(labels * 0.3 + rng.random(400) * 0.7, 0, 1)
    return operating_points(labels, scores, labels, scores, 0.5)


class TestResolve:
    def test_every_point_training_writes_can_be_chosen(self) -> None:
        points = trained_points()
        m = manifest(points)
        assert operating_point_names(m) == ["chosen", "youden", "sens90", "sens95", "sens99"]
        for name in operating_point_names(m):
            assert operating_point(m, name) == OperatingPoint(name, points[name]["threshold"])

    def test_unset_is_the_models_own_threshold(self) -> None:
        assert operating_point(manifest(trained_points(), threshold=0.42), None) == (
            OperatingPoint("chosen", 0.42)
        )
        assert operating_point(manifest(None, threshold=None), None) == OperatingPoint(
            "chosen", None
        )

    def test_a_missing_point_names_the_ones_there_are(self) -> None:
        with pytest.raises(
            ConfigurationError,
            match=r"'sens80': model \S+ has no operating point 'sens80'; its operating points "
            r"are chosen, youden, sens90, sens95, sens99\. Choose one",
        ):
            operating_point(manifest(trained_points()), "sens80")

    def test_an_older_model_without_a_table(self) -> None:
        with pytest.raises(ConfigurationError, match=r"records no operating points"):
            operating_point(manifest(None), "sens95")

    @pytest.mark.parametrize("bad", [{"threshold": "0.3"}, {"threshold": 1.5}, {}, [0.3], None])
    def test_a_point_without_a_usable_threshold_is_not_offered(self, bad: Any) -> None:
        m = manifest({"chosen": {"threshold": 0.5}, "odd": bad})
        assert operating_point_names(m) == ["chosen"]
        with pytest.raises(ConfigurationError, match=r"no operating point 'odd'"):
            operating_point(m, "odd")

    def test_multiclass_models_have_no_operating_points(self) -> None:
        m = manifest(None, classes=["a", "b", "c"], threshold=None)
        assert operating_point(m, None) == OperatingPoint(None, None)
        with pytest.raises(ConfigurationError, match=r"3 classes .* not to a multi-class model"):
            operating_point(m, "sens95")


class TestMultiLabel:
    """A multi-label model decides each finding at its own threshold: a named operating
    point is refused with that wording (not the multi-class "highest score" one), and unset
    serves the per-finding thresholds."""

    @staticmethod
    def findings_manifest(names: list[str], rule: str | None = "youden") -> ModelManifest:
        findings: dict[str, Any] = {
            "label_mode": "multi-label",
            "scores": "independent",
            "none_name": "No Finding",
            "thresholds": {name: 0.3 for name in names},
        }
        if rule is not None:
            findings["threshold_rule"] = rule
        return ModelManifest.from_dict(
            valid_manifest_dict() | {"class_names": names, "threshold": None, "findings": findings}
        )

    @pytest.mark.parametrize("names", [["Effusion", "Nodule"], ["Effusion", "Mass", "Nodule"]])
    def test_a_named_point_is_refused_saying_why_and_what_to_do(self, names: list[str]) -> None:
        m = self.findings_manifest(names)
        with pytest.raises(ConfigurationError) as caught:
            operating_point(m, "sens95")
        message = str(caught.value.detail)
        assert re.search(
            rf"RADLENS_OPERATING_POINT='sens95': model \S+ is multi-label: each of its "
            rf"{len(names)} findings is decided at its own threshold, chosen on validation by "
            r"the 'youden' rule \(the manifest's findings\.thresholds",
            message,
        ), message
        assert "Unset RADLENS_OPERATING_POINT to serve it with those thresholds" in message
        assert "--threshold-rule" in message
        assert "highest score" not in message and "classes" not in message

    def test_chosen_is_refused_too(self) -> None:
        """No table to look "chosen" up in: even the trained points' name is refused, so a
        deployment never believes it picked a point that is not applied."""
        with pytest.raises(ConfigurationError, match=r"is multi-label"):
            operating_point(self.findings_manifest(["A", "B", "C"]), "chosen")

    def test_a_manifest_without_its_rule_still_says_why(self) -> None:
        m = self.findings_manifest(["A", "B", "C"], rule=None)
        with pytest.raises(ConfigurationError, match=r"chosen on validation \(the manifest's"):
            operating_point(m, "youden")

    def test_unset_serves_the_per_finding_thresholds(self) -> None:
        m = self.findings_manifest(["Effusion", "Nodule"])
        point = operating_point(m, None)
        assert point == OperatingPoint(None, None)
        assert decide(np.array([0.4, 0.2]), m, point) == "Effusion"


class TestDecide:
    def test_the_points_threshold_decides_not_the_manifests(self) -> None:
        m = manifest({"chosen": {"threshold": 0.5}, "sens99": {"threshold": 0.1}})
        scores = np.array([0.8, 0.2])
        assert decide(scores, m) == "normal"
        assert decide(scores, m, operating_point(m, "chosen")) == "normal"
        assert decide(scores, m, operating_point(m, "sens99")) == "pneumonia"

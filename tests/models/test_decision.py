"""radlens.models.decision: the one rule from scores to a class, shared by training and serving."""

from __future__ import annotations

import numpy as np
import pytest

from radlens.models.decision import DEFAULT_THRESHOLD, decide, decide_indices, is_positive
from radlens.models.manifest import ModelManifest
from radlens.training.metrics import binary_metrics, multiclass_metrics
from tests.models.test_registry import valid_manifest_dict


def _manifest(classes: list[str], threshold: float | None) -> ModelManifest:
    return ModelManifest.from_dict(
        valid_manifest_dict() | {"class_names": classes, "threshold": threshold}
    )


class TestDecideIndices:
    def test_binary_at_and_around_the_threshold(self) -> None:
        p = np.array([[0.7, 0.3], [0.71, 0.29], [0.5, 0.5], [0.1, 0.9]])
        assert decide_indices(p, 0.3).tolist() == [1, 0, 1, 1]
        assert decide_indices(p).tolist() == [0, 0, 1, 1]  # None: DEFAULT_THRESHOLD
        assert DEFAULT_THRESHOLD == 0.5

    def test_multiclass_argmax_first_on_ties(self) -> None:
        p = np.array([[0.2, 0.3, 0.5], [0.4, 0.4, 0.2]])
        assert decide_indices(p, 0.1).tolist() == [2, 0]  # the threshold plays no part

    def test_is_positive_broadcasts_thresholds(self) -> None:
        got = is_positive(np.array([[0.2, 0.5]]), np.array([[0.2], [0.6]]))
        assert got.tolist() == [[True, True], [False, False]]

    def test_bad_shape(self) -> None:
        with pytest.raises(ValueError, match=r"shape \(N, C\). Received shape \(3,\)"):
            decide_indices(np.array([0.2, 0.3, 0.5]))


@pytest.mark.parametrize("threshold", [None, 0.25, 0.5, 0.8])
def test_training_metrics_count_the_labels_the_service_gives(threshold: float | None) -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.uniform(size=200), 2)  # rounded: many scores sit on the threshold
    probabilities = np.stack([1 - scores, scores], axis=1)
    labels = rng.integers(0, 2, size=200)
    manifest = _manifest(["normal", "pneumonia"], threshold)
    served = np.array([manifest.class_names.index(decide(p, manifest)) for p in probabilities])
    cm = np.zeros((2, 2), dtype=int)
    np.add.at(cm, (labels, served), 1)
    assert binary_metrics(labels, scores, manifest.threshold or 0.5)["confusion_matrix"] == (
        cm.tolist()
    )


def test_multiclass_metrics_count_the_labels_the_service_gives() -> None:
    rng = np.random.default_rng(4)
    probabilities = rng.dirichlet(np.ones(3), size=100)
    probabilities[:10, 1] = probabilities[:10, 0]  # ties between two classes
    labels = rng.integers(0, 3, size=100)
    manifest = _manifest(["a", "b", "c"], None)
    served = np.array([manifest.class_names.index(decide(p, manifest)) for p in probabilities])
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (labels, served), 1)
    assert multiclass_metrics(labels, probabilities, ["a", "b", "c"])["confusion_matrix"] == (
        cm.tolist()
    )

"""Drift statistics: the training-time reference distributions a model carries, and how far
a window of recent inputs and scores has moved from them.

The reference (:func:`build_reference`) is computed at export on the validation split, from
the scores the exported (calibrated) model gives and the images as the model saw them, and
stored sealed with the manifest in ``metrics["drift_reference"]``:

- per class, the histogram of its score over :data:`SCORE_EDGES` (ten bins of 0.1);
- the rate of each decided label (:func:`models.decision.decide_indices`, the service's rule);
- per input feature (:func:`input_features`: mean and standard deviation of the model input's
  intensities, in [0, 1]), its histogram over fixed edges.

Fixed edges make the reference independent of the data and comparable between models. The
service bins its recent values the same way and compares (:func:`compare`):

- the population stability index, ``PSI = sum((p - q) * ln(p / q))`` over the bins (``q`` the
  reference fractions, ``p`` the recent ones, both floored at :data:`PSI_EPSILON` so an empty
  bin stays finite). The usual reading: below 0.1 no shift, 0.1-0.2 moderate, above 0.2 a
  shift worth acting on (:data:`PSI_DRIFT`);
- the Kolmogorov-Smirnov statistic on the binned distributions: the largest difference
  between the two cumulative fractions at the bin edges (a lower bound of the exact KS
  statistic, which needs the raw reference values the manifest does not keep).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from radlens.models.errors import InvalidImageError

__all__ = [
    "INPUT_EDGES",
    "PSI_DRIFT",
    "REFERENCE_VERSION",
    "SCORE_EDGES",
    "Comparison",
    "binned_ks",
    "build_reference",
    "compare",
    "histogram",
    "input_features",
    "population_stability_index",
]

REFERENCE_VERSION = 1
SCORE_EDGES: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 6).tolist())
INPUT_EDGES: dict[str, tuple[float, ...]] = {
    "mean_intensity": SCORE_EDGES,
    "std_intensity": tuple(np.round(np.linspace(0.0, 0.5, 11), 6).tolist()),
}
PSI_EPSILON = 1e-4
PSI_DRIFT = 0.2
"""PSI at or above which a feature counts as drifted."""


def input_features(pixels: np.ndarray) -> dict[str, float]:
    """The input statistics the reference keeps for one model input ``(H, W)`` or
    ``(H, W, 1)`` in [0, 1]: ``mean_intensity`` and ``std_intensity``.

    Raises:
        InvalidImageError: not a 2-D (or single-channel 3-D) non-empty array.
    """
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise InvalidImageError(f"pixels must be one (H, W) image. Received shape {array.shape}")
    return {"mean_intensity": float(array.mean()), "std_intensity": float(array.std())}


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the bins of ``edges``; values outside go to the end bins."""
    array = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(array, bins=np.asarray(edges, dtype=np.float64))
    return counts.astype(np.int64)


def _fractions(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(counts, dtype=np.float64)
    total = array.sum()
    return array / total if total > 0 else np.full(array.shape, 1.0 / len(array))


def population_stability_index(
    reference: Sequence[float] | np.ndarray, recent: Sequence[float] | np.ndarray
) -> float:
    """PSI between two binned distributions (counts or fractions, same bins).

    Raises:
        ValueError: the bin counts differ.
    """
    if len(reference) != len(recent):
        raise ValueError(f"bins differ: {len(reference)} reference, {len(recent)} recent")
    q = np.maximum(_fractions(reference), PSI_EPSILON)
    p = np.maximum(_fractions(recent), PSI_EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def binned_ks(
    reference: Sequence[float] | np.ndarray, recent: Sequence[float] | np.ndarray
) -> float:
    """Largest difference of the cumulative fractions at the bin edges, in [0, 1].

    Raises:
        ValueError: the bin counts differ.
    """
    if len(reference) != len(recent):
        raise ValueError(f"bins differ: {len(reference)} reference, {len(recent)} recent")
    diff = np.cumsum(_fractions(reference)) - np.cumsum(_fractions(recent))
    return float(np.max(np.abs(diff)))


def build_reference(
    scores: np.ndarray,
    pixels: np.ndarray,
    class_names: Sequence[str],
    threshold: float | None,
) -> dict[str, Any]:
    """The reference distributions of a validation split, for ``metrics["drift_reference"]``.

    Args:
        scores: ``(N, classes)`` the exported model's scores on the split.
        pixels: ``(N, H, W)`` or ``(N, H, W, 1)``, the split as the model saw it.
        class_names: one per score column.
        threshold: the manifest's threshold (binary models), for the label rates.

    Returns:
        A JSON-ready dict: ``version``, ``split_size``, ``score_edges``, ``scores`` (class ->
        bin fractions), ``label_rates`` (class -> fraction), ``inputs`` (feature ->
        ``{"edges", "fractions"}``).

    Raises:
        ValueError: shapes that do not match or an empty split.
    """
    from radlens.models.decision import decide_indices

    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(class_names) or len(scores) == 0:
        raise ValueError(
            f"scores must be (N >= 1, {len(class_names)}). Received shape {scores.shape}"
        )
    if len(pixels) != len(scores):
        raise ValueError(f"{len(pixels)} images for {len(scores)} score rows")
    labels = decide_indices(scores, threshold)
    features = [input_features(image) for image in pixels]
    return {
        "version": REFERENCE_VERSION,
        "split": "val",
        "split_size": len(scores),
        "score_edges": list(SCORE_EDGES),
        "scores": {
            name: _fractions(histogram(scores[:, i], SCORE_EDGES)).round(6).tolist()
            for i, name in enumerate(class_names)
        },
        "label_rates": {
            name: round(float(np.mean(labels == i)), 6) for i, name in enumerate(class_names)
        },
        "inputs": {
            name: {
                "edges": list(edges),
                "fractions": _fractions(histogram([f[name] for f in features], edges))
                .round(6)
                .tolist(),
            }
            for name, edges in INPUT_EDGES.items()
        },
    }


@dataclass(frozen=True)
class Comparison:
    """One feature's recent distribution against its reference."""

    feature: str  # "score:<class>" or "input:<name>"
    n: int  # recent values compared
    psi: float
    ks: float

    @property
    def drifted(self) -> bool:
        return self.psi >= PSI_DRIFT

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "n": self.n,
            "psi": round(self.psi, 6),
            "ks": round(self.ks, 6),
            "drifted": self.drifted,
        }


def compare(
    reference: Mapping[str, Any],
    recent_scores: np.ndarray,
    recent_features: Sequence[Mapping[str, float]],
) -> list[Comparison]:
    """Each score class and input feature of ``reference`` against the recent values.

    Args:
        reference: a :func:`build_reference` dict.
        recent_scores: ``(n, classes)`` in the reference's class order.
        recent_features: one :func:`input_features` dict per recent input.

    Raises:
        ValueError: ``recent_scores`` has another number of classes than the reference.
    """
    names = list(reference["scores"])
    scores = np.asarray(recent_scores, dtype=np.float64).reshape(-1, len(names))
    edges = reference.get("score_edges", SCORE_EDGES)
    out = []
    for i, name in enumerate(names):
        counts = histogram(scores[:, i], edges)
        ref = reference["scores"][name]
        out.append(
            Comparison(
                f"score:{name}",
                len(scores),
                population_stability_index(ref, counts),
                binned_ks(ref, counts),
            )
        )
    for name, spec in reference.get("inputs", {}).items():
        values = [f[name] for f in recent_features if name in f]
        counts = histogram(values, spec["edges"])
        out.append(
            Comparison(
                f"input:{name}",
                len(values),
                population_stability_index(spec["fractions"], counts),
                binned_ks(spec["fractions"], counts),
            )
        )
    return out

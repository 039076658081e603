"""The decision rule: class scores -> a class, the same in training's metrics and in serving.

Every single-label radlens model ends in a softmax over its classes. Binary models (2
classes) have a positive class, index 1, and a decision threshold on its score (chosen on
validation and saved in the manifest): a score ``>= threshold`` is positive. Models with
more classes take the class with the highest score (the first one on a tie, as
``numpy.argmax``).

``training.metrics`` counts its confusion matrices with :func:`decide_indices` and the
service labels each prediction with :func:`decide`, so a threshold means the same thing in
both.

A deployment may decide by another of the operating points training stored in the
manifest (``metrics["operating_points"]``: ``chosen``, ``youden``, ``sens90``, ``sens95``,
``sens99``, and the run's threshold rule) instead of the model's own threshold:
:func:`operating_point` resolves the name to its threshold (``RADLENS_OPERATING_POINT``).

Multi-label findings models (``manifest.multi_label``) end in a sigmoid per finding instead:
each score is independent and has its own threshold (:func:`decide_findings`); the label is
the positive findings joined by ``|``, or the manifest's no-finding name. They have no
operating-point table to choose from, so ``RADLENS_OPERATING_POINT`` is refused for them with
a message saying so (:func:`operating_point`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from radlens.models.manifest import ModelManifest

DEFAULT_THRESHOLD = 0.5  # a binary model's threshold when it has none (the plain softmax)


def is_positive(
    positive_scores: np.ndarray, threshold: float | np.ndarray | None = None
) -> np.ndarray:
    """Which positive-class scores decide "positive": ``score >= threshold``.

    Args:
        positive_scores: the class-1 scores, any shape.
        threshold: the binary decision threshold (or an array of them, broadcast against the
            scores); None means :data:`DEFAULT_THRESHOLD`.

    Returns:
        A bool array of the broadcast shape.

    Example:
        >>> is_positive(np.array([0.2, 0.5, 0.9]), 0.5)
        array([False,  True,  True])
    """
    cut = np.asarray(DEFAULT_THRESHOLD if threshold is None else threshold, dtype=np.float64)
    return np.asarray(np.asarray(positive_scores, dtype=np.float64) >= cut)


def decide_indices(probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The decided class index of each row of ``probabilities`` (N, C).

    Args:
        probabilities: one score vector per row, one column per class.
        threshold: binary models only (C == 2), see :func:`is_positive`; ignored otherwise.

    Returns:
        int64 (N,): class indices.

    Raises:
        ValueError: ``probabilities`` is not 2-D with at least 1 column (quotes its shape).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"expected scores of shape (N, C). Received shape {p.shape}")
    if p.shape[1] == 2:
        return is_positive(p[:, 1], threshold).astype(np.int64)
    return np.argmax(p, axis=1).astype(np.int64)


def decide(scores: np.ndarray, manifest: ModelManifest, point: OperatingPoint | None = None) -> str:
    """The label for one score vector, by the manifest's classes and threshold.

    Binary models (2 classes): ``class_names[1]`` when its score is >= the threshold of
    ``point`` (from :func:`operating_point`), else the manifest's threshold (0.5 when the
    manifest has none), else ``class_names[0]``. More classes: the class with the highest
    score.

    Raises:
        ValueError: ``scores`` is not a 1-D vector with one score per class.
    """
    vector = np.asarray(scores, dtype=np.float64)
    classes = manifest.class_names
    if vector.shape != (len(classes),):
        raise ValueError(
            f"expected {len(classes)} scores (one per class {classes!r}). "
            f"Received shape {vector.shape}"
        )
    threshold = manifest.threshold if point is None else point.threshold
    if manifest.multi_label:
        return finding_label(decide_findings(vector, manifest), manifest)
    return classes[int(decide_indices(vector[np.newaxis], threshold)[0])]


@dataclass(frozen=True)
class OperatingPoint:
    """Which operating point decides a binary model's labels, and its threshold.

    ``name`` is ``"chosen"`` for the model's own threshold (``threshold`` None: the plain
    0.5 of a model saved without one), a name from the manifest's operating-point table
    otherwise, and None for a multi-class model (argmax, no threshold).
    """

    name: str | None
    threshold: float | None


def operating_point_names(manifest: ModelManifest) -> list[str]:
    """The operating points the manifest's ``metrics["operating_points"]`` table offers.

    Example:
        >>> operating_point_names(manifest)
        ['chosen', 'youden', 'sens90', 'sens95', 'sens99']
    """
    table = manifest.metrics.get("operating_points")
    if not isinstance(table, dict):
        return []
    return [name for name, point in table.items() if _point_threshold(point) is not None]


def operating_point(manifest: ModelManifest, name: str | None) -> OperatingPoint:
    """Resolve ``RADLENS_OPERATING_POINT`` against a model's manifest.

    Args:
        manifest: the model to serve.
        name: an operating point's name (``sens95``, ...), or None for the model's own
            threshold (``chosen``).

    Returns:
        The point's name and threshold, chosen on validation at training time.

    Raises:
        ConfigurationError: ``name`` is set but the model is not binary (a multi-label
            model is told apart: its findings have their own thresholds), or its manifest has
            no such point (the message lists the points it has and what to do).

    Example:
        >>> operating_point(manifest, "sens95")
        OperatingPoint(name='sens95', threshold=0.1734)
    """
    from radlens.models.errors import ConfigurationError

    if name is None:
        if not manifest.is_binary:
            return OperatingPoint(None, None)
        return OperatingPoint("chosen", manifest.threshold)
    if manifest.multi_label:
        raise ConfigurationError(_multi_label_refusal(manifest, name))
    if not manifest.is_binary:
        raise ConfigurationError(
            f"RADLENS_OPERATING_POINT={name!r}: model {manifest.ref} has "
            f"{len(manifest.class_names)} classes and decides by the highest score; operating "
            "points apply to binary models only. Unset RADLENS_OPERATING_POINT"
        )
    table = manifest.metrics.get("operating_points")
    point = table.get(name) if isinstance(table, dict) else None
    threshold = _point_threshold(point)
    if threshold is None:
        offered = operating_point_names(manifest)
        has = (
            f"its operating points are {', '.join(offered)}"
            if offered
            else "its manifest records no operating points (trained before they were)"
        )
        raise ConfigurationError(
            f"RADLENS_OPERATING_POINT={name!r}: model {manifest.ref} has no operating point "
            f"{name!r}; {has}. Choose one of them or unset RADLENS_OPERATING_POINT to use the "
            "model's own threshold"
        )
    return OperatingPoint(name, threshold)


def _multi_label_refusal(manifest: ModelManifest, name: str) -> str:
    """Why a multi-label model refuses an operating point, and what to do.

    Each finding has its own threshold, chosen on validation by the run's threshold rule
    (``findings.thresholds``); training records no alternative per-finding points to switch
    to, and one name cannot say which of a finding's thresholds to move. So the setting is
    refused rather than ignored: a deployment that believes it chose, e.g., high sensitivity
    must not silently run at the trained thresholds.
    """
    findings = manifest.findings or {}
    rule = findings.get("threshold_rule")
    chosen_by = f" by the {rule!r} rule" if isinstance(rule, str) and rule else ""
    return (
        f"RADLENS_OPERATING_POINT={name!r}: model {manifest.ref} is multi-label: each of its "
        f"{len(manifest.class_names)} findings is decided at its own threshold, chosen on "
        f"validation{chosen_by} (the manifest's findings.thresholds; GET /v1/models lists "
        "them as finding_thresholds), and operating points apply to binary single-label "
        "models only. Unset RADLENS_OPERATING_POINT to serve it with those thresholds; to "
        "change them, train again with another --threshold-rule"
    )


def _point_threshold(point: Any) -> float | None:
    """The point's threshold when it is a number in [0, 1], else None."""
    value = point.get("threshold") if isinstance(point, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None
    return float(value)


def decide_findings(scores: np.ndarray, manifest: ModelManifest) -> list[FindingDecision]:
    """Each finding of a multi-label model with its score, threshold and decision.

    A finding is positive when its (independent, sigmoid) score is ``>= `` its own threshold
    from the manifest, the rule :func:`is_positive` applies to a binary model.

    Raises:
        ValueError: the manifest is not multi-label, or the score count is wrong.
    """
    if not manifest.multi_label:
        raise ValueError(f"model {manifest.ref} is single-label: it has no findings")
    vector = np.asarray(scores, dtype=np.float64)
    names = manifest.class_names
    if vector.shape != (len(names),):
        raise ValueError(
            f"expected {len(names)} scores (one per finding {names!r}). "
            f"Received shape {vector.shape}"
        )
    cuts = manifest.finding_thresholds
    return [
        FindingDecision(name, float(v), cuts[name], bool(is_positive(v, cuts[name])))
        for name, v in zip(names, vector, strict=True)
    ]


def finding_label(decisions: Sequence[FindingDecision], manifest: ModelManifest) -> str:
    """The positive findings joined by ``|`` (the data's own notation), or the no-finding
    name from the manifest."""
    positive = [d.name for d in decisions if d.positive]
    if positive:
        return "|".join(positive)
    return str((manifest.findings or {}).get("none_name", "No Finding"))


@dataclass(frozen=True)
class FindingDecision:
    """One finding of a multi-label prediction."""

    name: str
    score: float
    threshold: float
    positive: bool

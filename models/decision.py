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
the positive findings joined by ``|``, or the manifest's no-finding name. Their training
records the same table per finding (``metrics["operating_points_per_finding"]``:
``per_finding`` {finding: {point: figures}}, and ``not_computed`` {finding: {point: why}} for
the points a finding's validation positives could not choose). ``RADLENS_OPERATING_POINT``
then moves every finding that has the named point to its threshold there; a finding without
it keeps its trained threshold (``OperatingPoint.kept``: the service warns, naming them), and
a name no finding has -- or any name on a model trained before the table -- is refused with a
message saying what to do. The service decides with :func:`serve_at`'s manifest, whose
:attr:`~radlens.models.manifest.ModelManifest.decision_thresholds` are the served ones, and
:func:`finding_point_of` says which point a stored finding decision was taken at.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
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
        return finding_label(decide_findings(vector, manifest, point), manifest)
    return classes[int(decide_indices(vector[np.newaxis], threshold)[0])]


CHOSEN = "chosen"  # the operating point of the model's own (trained) threshold


@dataclass(frozen=True)
class OperatingPoint:
    """Which operating point decides a model's labels, and its threshold(s).

    ``name`` is ``"chosen"`` for a binary model's own threshold (``threshold`` None: the plain
    0.5 of a model saved without one), a name from the manifest's operating-point table
    otherwise, and None for a multi-class model (argmax, no threshold) and for a multi-label
    model served at its trained thresholds (the variable unset).

    A multi-label model at a named point has no single ``threshold``: ``finding_thresholds``
    holds each finding's threshold as served and ``finding_points`` the point each finding is
    at (``name``, or ``"chosen"`` for a finding without that point, which keeps its trained
    threshold: :attr:`kept`).
    """

    name: str | None
    threshold: float | None
    finding_thresholds: Mapping[str, float] | None = None
    finding_points: Mapping[str, str] | None = None

    @property
    def kept(self) -> list[str]:
        """The findings that keep their trained threshold because they lack the named point
        (empty unless a multi-label model is served at a named point)."""
        if self.finding_points is None or self.name is None:
            return []
        return [f for f, point in self.finding_points.items() if point != self.name]


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

    A multi-label model resolves ``name`` per finding (:func:`finding_point_tables`): each
    finding with that point is decided at its threshold there, each without it keeps its
    trained threshold (``OperatingPoint.kept``).

    Raises:
        ConfigurationError: ``name`` is set but the model is multi-class, or its manifest has
            no such point -- for a multi-label model: no finding has it, or the manifest has
            no per-finding table (trained before it was recorded); the message lists the
            points there are and what to do.

    Example:
        >>> operating_point(manifest, "sens95")
        OperatingPoint(name='sens95', threshold=0.1734)
    """
    from radlens.models.errors import ConfigurationError

    if name is None:
        if not manifest.is_binary:
            return OperatingPoint(None, None)
        return OperatingPoint(CHOSEN, manifest.threshold)
    if manifest.multi_label:
        return _finding_point(manifest, name)
    if not manifest.is_binary:
        raise ConfigurationError(
            f"RADLENS_OPERATING_POINT={name!r}: model {manifest.ref} has "
            f"{len(manifest.class_names)} classes and decides by the highest score; operating "
            "points apply to binary models and to each finding of a multi-label model, not "
            "to a multi-class model. Unset RADLENS_OPERATING_POINT"
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
        why = points_not_computed(manifest.metrics).get(name)
        raise ConfigurationError(
            f"RADLENS_OPERATING_POINT={name!r}: model {manifest.ref} has no operating point "
            f"{name!r}"
            + (f" (training could not choose it: {why})" if why else "")
            + f"; {has}. Choose one of them or unset RADLENS_OPERATING_POINT to use the "
            "model's own threshold"
        )
    return OperatingPoint(name, threshold)


def finding_point_tables(manifest: ModelManifest) -> dict[str, dict[str, float]]:
    """Each finding's operating points with a usable threshold, from the manifest's
    ``metrics["operating_points_per_finding"]["per_finding"]`` ({} for a model trained
    before the table, and for single-label models).

    Example:
        >>> finding_point_tables(manifest)["Effusion"]
        {'chosen': 0.31, 'youden': 0.31, 'sens90': 0.12}
    """
    record = manifest.metrics.get("operating_points_per_finding")
    per_finding = record.get("per_finding") if isinstance(record, dict) else None
    if not manifest.multi_label or not isinstance(per_finding, dict):
        return {}
    tables: dict[str, dict[str, float]] = {}
    for finding in manifest.class_names:
        table = per_finding.get(finding)
        if not isinstance(table, dict):
            continue
        usable = {str(p): _point_threshold(v) for p, v in table.items()}
        tables[finding] = {p: t for p, t in usable.items() if t is not None}
    return tables


def points_not_computed(metrics: Mapping[str, Any]) -> dict[str, str]:
    """The points training could not choose for a binary model, with why
    (``metrics["operating_points_not_computed"]``, training.metrics.recorded_operating_points;
    {} for a model trained before it was recorded, or a damaged entry).

    Example:
        >>> points_not_computed(manifest.metrics)
        {'sens99': '30 validation positives, at least 100 needed'}
    """
    missing = metrics.get("operating_points_not_computed")
    if not isinstance(missing, Mapping):
        return {}
    return {str(p): why for p, why in missing.items() if isinstance(why, str)}


def finding_points_not_computed(metrics: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The points training could not choose for each finding, with its reason
    (``metrics["operating_points_per_finding"]["not_computed"]``); entries of another shape
    (a hand-edited or damaged manifest) are left out, so every reader -- start-up's warning,
    the refusal, ``radlens evaluate``, /ui -- can quote them without checking again.

    Example:
        >>> finding_points_not_computed(manifest.metrics)["Nodule"]
        {'sens95': '4 validation positives, at least 20 needed'}
    """
    record = metrics.get("operating_points_per_finding")
    missing = record.get("not_computed") if isinstance(record, Mapping) else None
    if not isinstance(missing, Mapping):
        return {}
    return {
        str(finding): {str(p): why for p, why in points.items() if isinstance(why, str)}
        for finding, points in missing.items()
        if isinstance(points, Mapping)
    }


def _finding_point(manifest: ModelManifest, name: str) -> OperatingPoint:
    """:func:`operating_point` for a multi-label model and a named point.

    A finding whose table names the point with a threshold that is not a number in [0, 1]
    stops start-up, as a binary model's malformed point does: served at its trained threshold
    instead, it would pass for a finding that merely lacks the point."""
    from radlens.models.errors import ConfigurationError

    tables = finding_point_tables(manifest)
    record = manifest.metrics.get("operating_points_per_finding")
    raw = record.get("per_finding") if isinstance(record, dict) else None
    if not tables and isinstance(raw, dict) and raw:
        raise ConfigurationError(
            f"RADLENS_OPERATING_POINT={name!r}: model {manifest.ref}'s operating points per "
            f"finding name {', '.join(repr(str(f)) for f in list(raw)[:10])}, none of its "
            f"findings ({', '.join(manifest.class_names)}): the manifest does not match its "
            "model. Restore it from the model store's copy or train again, or unset "
            "RADLENS_OPERATING_POINT"
        )
    if not tables:
        raise ConfigurationError(_multi_label_refusal(manifest, name))
    damaged = [
        f
        for f in manifest.class_names
        if isinstance(raw, dict)
        and isinstance(raw.get(f), dict)
        and name in raw[f]
        and name not in tables.get(f, {})
    ]
    if damaged:
        raise ConfigurationError(
            f"RADLENS_OPERATING_POINT={name!r}: model {manifest.ref}'s manifest records "
            f"{name!r} for {', '.join(damaged)} without a threshold in [0, 1] "
            "(metrics.operating_points_per_finding.per_finding): the manifest is damaged. "
            "Restore it from the model store's copy or train again, or choose another point"
        )
    at = {f: table[name] for f, table in tables.items() if name in table}
    if not at:
        raise ConfigurationError(_no_finding_has(manifest, name, tables))
    trained = manifest.finding_thresholds
    return OperatingPoint(
        name,
        None,
        finding_thresholds={f: at.get(f, trained[f]) for f in manifest.class_names},
        finding_points={f: name if f in at else CHOSEN for f in manifest.class_names},
    )


def _multi_label_refusal(manifest: ModelManifest, name: str) -> str:
    """Why a multi-label model trained before per-finding operating points refuses a named
    point, and what to do.

    Each finding has its own threshold, chosen on validation by the run's threshold rule
    (``findings.thresholds``), and such a manifest records no other point per finding to
    switch to. So the setting is refused rather than ignored: a deployment that believes it
    chose, e.g., high sensitivity must not silently run at the trained thresholds.
    """
    findings = manifest.findings or {}
    rule = findings.get("threshold_rule")
    chosen_by = f" by the {rule!r} rule" if isinstance(rule, str) and rule else ""
    return (
        f"RADLENS_OPERATING_POINT={name!r}: model {manifest.ref} is multi-label: each of its "
        f"{len(manifest.class_names)} findings is decided at its own threshold, chosen on "
        f"validation{chosen_by} (the manifest's findings.thresholds; GET /v1/models lists "
        "them as finding_thresholds), and its manifest records no operating points per "
        "finding (metrics.operating_points_per_finding: trained before they were). Unset "
        "RADLENS_OPERATING_POINT to serve it with those thresholds; to serve it at sens90, "
        "sens95 or sens99, train it again (the run records them); to change the thresholds "
        "themselves, train again with another --threshold-rule"
    )


def _no_finding_has(
    manifest: ModelManifest, name: str, tables: Mapping[str, Mapping[str, float]]
) -> str:
    """Why no finding has the named point: the points there are (with the findings that
    have each) and, when the run recorded it, why the findings lack this one."""
    offered: dict[str, list[str]] = {}
    for finding, table in tables.items():
        for point in table:
            offered.setdefault(point, []).append(finding)
    listed = "; ".join(
        f"{point} ({'every finding' if len(fs) == len(manifest.class_names) else ', '.join(fs)})"
        for point, fs in offered.items()
    )
    reasons = [
        f"{finding}: {missing[name]}"
        for finding, missing in finding_points_not_computed(manifest.metrics).items()
        if name in missing
    ]
    why = f" (training left it out: {'; '.join(reasons)})" if reasons else ""
    return (
        f"RADLENS_OPERATING_POINT={name!r}: no finding of model {manifest.ref} has an "
        f"operating point {name!r}{why}; its findings' operating points are {listed}. "
        "Choose one of them, or unset RADLENS_OPERATING_POINT to decide every finding at its "
        "own threshold; a sensitivity point a finding lacks needs more validation positives "
        "(train again with more data or a larger validation split)"
    )


def serve_at(manifest: ModelManifest, point: OperatingPoint) -> ModelManifest:
    """The manifest the service decides with: for a multi-label model at a named point, a
    copy whose ``served_thresholds`` are the point's (so every decision -- the label, each
    finding, the rows stored in prediction_findings -- uses them); otherwise ``manifest``.

    Only the decision thresholds differ: ``finding_thresholds`` stays the trained ones, which
    the drift reference and the series thresholds were measured against.
    """
    if point.finding_thresholds is None or not manifest.multi_label:
        return manifest
    return dataclasses.replace(manifest, served_thresholds=dict(point.finding_thresholds))


def finding_point_of(
    manifest: ModelManifest, point_name: str | None, finding: str, threshold: float
) -> str | None:
    """Which operating point a finding's stored decision was taken at.

    Args:
        manifest: the model that decided it (the caller checks name and version).
        point_name: the prediction's recorded operating point (None: the variable unset).
        finding: the finding's name.
        threshold: the threshold stored with the decision (prediction_findings.threshold).

    Returns:
        ``point_name`` when ``threshold`` is the finding's threshold at that point,
        ``"chosen"`` when it is the finding's trained threshold, else None (unknown).
    """
    if point_name is not None and point_name != CHOSEN:
        at = finding_point_tables(manifest).get(finding, {}).get(point_name)
        if at is not None and math.isclose(at, threshold, rel_tol=0.0, abs_tol=1e-9):
            return point_name
    trained = manifest.finding_thresholds.get(finding)
    if trained is not None and math.isclose(trained, threshold, rel_tol=0.0, abs_tol=1e-9):
        return CHOSEN
    return None


def _point_threshold(point: Any) -> float | None:
    """The point's threshold when it is a number in [0, 1], else None."""
    value = point.get("threshold") if isinstance(point, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None
    return float(value)


def decide_findings(
    scores: np.ndarray, manifest: ModelManifest, point: OperatingPoint | None = None
) -> list[FindingDecision]:
    """Each finding of a multi-label model with its score, threshold and decision.

    A finding is positive when its (independent, sigmoid) score is ``>= `` its own threshold,
    the rule :func:`is_positive` applies to a binary model: the threshold of ``point`` (from
    :func:`operating_point`) when it has per-finding thresholds, else the manifest's
    ``decision_thresholds`` (the trained ones, or those :func:`serve_at` set).

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
    cuts = (
        dict(point.finding_thresholds)
        if point is not None and point.finding_thresholds is not None
        else manifest.decision_thresholds
    )
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

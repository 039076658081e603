"""How the instance (slice) scores of one series combine into one series score.

One function for the service and for training: ``app/series.py`` aggregates stored
predictions with it on read, ``training/series.py`` aggregates validation and test slice
scores with it, so the series AUC a run reports is the AUC of the scores the service will
give (RADLENS_SERIES_AGGREGATION, RADLENS_SERIES_TOP_K).

Methods, over the scores in [0, 1] of one class:

- ``max``: the highest score (a series is as positive as its most positive slice);
- ``mean_top_k``: the mean of the ``k`` highest (all of them when there are fewer), less
  sensitive to one noisy slice;
- ``noisy_or``: ``1 - prod(1 - p_i)``, the probability that at least one slice is positive
  if slices were independent; computed in log space. It tends to 1 on long series, so
  ``max`` or ``mean_top_k`` suit CT better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Aggregation = Literal["max", "mean_top_k", "noisy_or"]
AGGREGATIONS: tuple[str, ...] = ("max", "mean_top_k", "noisy_or")


def aggregate(scores: Sequence[float], method: str, k: int) -> float:
    """Combine instance scores in [0, 1] into one series score.

    ``method``: "max", "mean_top_k" (mean of the ``k`` highest, all when fewer) or "noisy_or"
    (1 - prod(1 - p), computed in log space). Scores outside [0, 1] are clipped.

    Raises:
        ValueError: an empty sequence, an unknown method or k < 1.
    """
    if not scores:
        raise ValueError("aggregate needs at least one score. Received: []")
    if k < 1:
        raise ValueError(f"k should be >= 1. Received: k={k!r}")
    clipped = [min(max(float(s), 0.0), 1.0) for s in scores]
    if method == "max":
        return max(clipped)
    if method == "mean_top_k":
        top = sorted(clipped, reverse=True)[:k]
        return sum(top) / len(top)
    if method == "noisy_or":
        if any(s >= 1.0 for s in clipped):
            return 1.0
        return -math.expm1(sum(math.log1p(-s) for s in clipped))
    raise ValueError(f"method should be one of {', '.join(AGGREGATIONS)}. Received: {method!r}")


def recorded_series_threshold(metrics: Mapping[str, Any], method: str, k: int) -> float | None:
    """The series threshold a training run chose for a binary model (the manifest's
    ``metrics["series_threshold"]``, ``training.series.choose_series_threshold``), when it
    was chosen for this aggregation (``method``, and ``k`` for ``mean_top_k``); else None,
    and a series is decided at the model's threshold as an instance is.

    A threshold chosen on ``max`` series scores says nothing about ``noisy_or`` ones, so a
    service configured with another aggregation than the run's does not use it.
    """
    record = _series_record(metrics, method, k)
    return None if record is None else _threshold(record.get("threshold"))


def recorded_finding_series_thresholds(
    metrics: Mapping[str, Any], method: str, k: int
) -> dict[str, float]:
    """The series threshold per finding a training run chose for a multi-label model (the
    manifest's ``metrics["series_threshold"]["thresholds"]``,
    ``training.series.choose_finding_series_thresholds``), under the same rule as
    :func:`recorded_series_threshold`: only for the aggregation (and ``k`` of
    ``mean_top_k``) it was chosen for. A finding missing from the mapping -- its validation
    series had no positive or no negative -- or with a malformed value is left out, and is
    decided at its instance threshold. Empty when there is no such record (a binary record,
    one for another aggregation, a manifest written before it).
    """
    record = _series_record(metrics, method, k)
    per_finding = record.get("thresholds") if record is not None else None
    if not isinstance(per_finding, Mapping):
        return {}
    found = {str(name): _threshold(value) for name, value in per_finding.items()}
    return {name: value for name, value in found.items() if value is not None}


def _series_record(metrics: Mapping[str, Any], method: str, k: int) -> Mapping[str, Any] | None:
    """``metrics["series_threshold"]`` when it was chosen for ``method`` (and ``k`` for
    ``mean_top_k``), else None."""
    record = metrics.get("series_threshold")
    if not isinstance(record, Mapping) or record.get("aggregation") != method:
        return None
    if method == "mean_top_k" and record.get("top_k") != k:
        return None
    return record


def _threshold(value: Any) -> float | None:
    """A recorded threshold as a float in [0, 1], else None (a bool, a string, out of range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None

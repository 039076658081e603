"""Classification metrics, the choice of decision threshold, Keras metrics for softmax outputs.

Every model is a softmax over classes (binary = 2 classes, index 1 the positive class). A
class is decided from scores by ``models.decision`` -- the service's own rule -- so the
figures here describe the labels the service will give.

Decision threshold (binary only), chosen on the validation split by :func:`decision_threshold`
with the run's ``threshold_rule``; ``youden`` is :func:`choose_threshold`:

1. candidates are 0.5 and every midpoint between two consecutive distinct validation scores
   of the positive class (a midpoint never sits on a seen score, so the rule does not depend on
   how ties at exactly the threshold are broken);
2. each candidate ``t`` predicts "positive" when ``score >= t``; keep the candidates that
   maximise Youden's J = sensitivity + specificity - 1;
3. among ties, take the one closest to 0.5 (the plain softmax decision), then the lower one.

``balanced`` takes the candidate where sensitivity and specificity are closest instead.
When validation holds a single class J is undefined and the threshold is 0.5.
Multi-class models use argmax and have no threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from radlens.models.decision import DEFAULT_THRESHOLD, decide_indices, is_positive

__all__ = [
    "DEFAULT_THRESHOLD",
    "THRESHOLD_RULES",
    "apply_temperature",
    "binary_metrics",
    "choose_threshold",
    "classification_metrics",
    "decision_threshold",
    "expected_calibration_error",
    "fit_temperature",
    "keras_metrics",
    "multiclass_metrics",
    "operating_points",
    "recorded_operating_points",
    "reliability_bins",
    "required_positives",
    "roc_auc",
    "roc_curve_points",
    "unsupported_points",
    "wilson_interval",
]

THRESHOLD_RULES = ("youden", "balanced")


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The positive-class threshold that maximises Youden's J on (labels, scores).

    Args:
        labels: int array (N,), 1 = positive, 0 = negative.
        scores: float array (N,), the positive-class probability.

    Returns:
        The threshold, a float in [0, 1]; see the module docstring for the rule and ties.
    """
    rates = _candidate_rates(labels, scores)
    if rates is None:
        return DEFAULT_THRESHOLD
    candidates, tpr, fpr, _ = rates
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0.0, atol=1e-12))
    order = sorted(best, key=lambda i: (abs(candidates[i] - DEFAULT_THRESHOLD), candidates[i]))
    return float(candidates[order[0]])


def decision_threshold(rule: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """The positive-class threshold on validation by ``rule`` (one of :data:`THRESHOLD_RULES`).

    ``youden``: :func:`choose_threshold` (maximum sensitivity + specificity).
    ``balanced``: the candidate (0.5 and the midpoints between distinct scores) where
    sensitivity and specificity are closest, ties broken by the larger Youden J and then by
    closeness to 0.5. It does not chase the few validation examples near the boundary, and it
    stays in the middle of the ROC curve when the test set's class balance differs.

    Raises:
        ValueError: an unknown rule (quotes it), or labels and scores of different lengths.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(
            f"threshold rule should be one of {', '.join(THRESHOLD_RULES)}. Received: {rule!r}"
        )
    if rule == "youden":
        return choose_threshold(labels, scores)
    rates = _candidate_rates(labels, scores)
    if rates is None:
        return DEFAULT_THRESHOLD
    candidates, tpr, _, tnr = rates
    order = np.lexsort(
        (np.abs(candidates - DEFAULT_THRESHOLD), -(tpr + tnr), np.round(np.abs(tpr - tnr), 12))
    )
    return float(candidates[order[0]])


def _candidate_rates(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(candidate thresholds, and at each: TPR, FPR, TNR), or None with a single class.

    The candidates are 0.5 and every midpoint between consecutive distinct scores; each
    decides by ``models.decision.is_positive``.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.size == 0 or y.min() == y.max():
        return None
    distinct = np.unique(s)
    candidates = np.concatenate([[DEFAULT_THRESHOLD], (distinct[:-1] + distinct[1:]) / 2.0])
    # linear memory: "score >= t" counts from sorted scores (what is_positive decides),
    # never a (candidates x examples) matrix
    pos_sorted = np.sort(s[y == 1])
    neg_sorted = np.sort(s[y != 1])
    n_pos = pos_sorted.size
    n_neg = neg_sorted.size
    tp = n_pos - np.searchsorted(pos_sorted, candidates, side="left")
    fp = n_neg - np.searchsorted(neg_sorted, candidates, side="left")
    tpr = tp / n_pos
    fpr = fp / n_neg
    tnr = (n_neg - fp) / n_neg
    return candidates, tpr, fpr, tnr


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
    """Metrics for a binary problem at a threshold on the positive-class score.

    Returns a JSON-ready dict: n, n_positive, n_negative, threshold, auc (None with one class),
    accuracy, sensitivity (recall), specificity, precision, f1, youden_j, confusion_matrix
    ([[TN, FP], [FN, TP]], rows = truth).
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pred = is_positive(s, threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    f1 = (
        None
        if precision is None or sensitivity is None or precision + sensitivity == 0
        else 2 * precision * sensitivity / (precision + sensitivity)
    )
    return {
        "n": int(y.size),
        "n_positive": int((y == 1).sum()),
        "n_negative": int((y == 0).sum()),
        "threshold": float(threshold),
        "auc": roc_auc(y, s),
        "accuracy": _ratio(tp + tn, y.size),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "f1": f1,
        "youden_j": None
        if sensitivity is None or specificity is None
        else sensitivity + specificity - 1,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def multiclass_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Metrics for argmax decisions over C classes, overall and per class (one-vs-rest).

    Returns n, accuracy, auc (macro one-vs-rest over classes present), confusion_matrix
    (rows = truth, columns = prediction) and per_class: {name: {n, auc, sensitivity,
    specificity, precision}}.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probabilities, dtype=np.float64)
    c = len(class_names)
    if p.ndim != 2 or p.shape != (y.size, c):
        raise ValueError(f"probabilities must be (N={y.size}, C={c}); received {p.shape}")
    pred = decide_indices(p)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    per_class: dict[str, dict[str, Any]] = {}
    aucs = []
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        fn = int(cm[k].sum() - tp)
        fp = int(cm[:, k].sum() - tp)
        tn = int(cm.sum() - tp - fn - fp)
        auc = roc_auc((y == k).astype(np.int64), p[:, k])
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {
            "n": int((y == k).sum()),
            "auc": auc,
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp),
        }
    return {
        "n": int(y.size),
        "threshold": None,
        "accuracy": _ratio(int(np.trace(cm)), y.size),
        "auc": float(np.mean(aucs)) if aucs else None,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    """Binary metrics at ``threshold`` for 2 classes, multi-class metrics otherwise."""
    p = np.asarray(probabilities, dtype=np.float64)
    if len(class_names) == 2:
        return binary_metrics(
            labels, p[:, 1], DEFAULT_THRESHOLD if threshold is None else threshold
        )
    return multiclass_metrics(labels, p, class_names)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None with a single class."""
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int((y == 1).sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    ranks = ((last - counts + 1 + last) / 2.0)[inverse]  # average rank within ties
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) arrays from (0, 0) to (1, 1), for plotting."""
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = max(int((y == 1).sum()), 1)
    n_neg = max(int((y == 0).sum()), 1)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    # counts of "score >= t" from sorted scores: linear memory, N log N time
    pos_sorted, neg_sorted = np.sort(s[y == 1]), np.sort(s[y == 0])
    tpr = (pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="left")) / n_pos
    fpr = (neg_sorted.size - np.searchsorted(neg_sorted, thresholds, side="left")) / n_neg
    return fpr, tpr


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else float(num) / float(den)


# --- calibration and operating points -----------------------------------------------------

ECE_BINS = 15
SENSITIVITY_TARGETS = {"sens90": 0.90, "sens95": 0.95, "sens99": 0.99}


def _log_probs(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    return np.log(np.clip(p, 1e-12, 1.0))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the softmax of the logits divided by T (log p is the logits up to
    a per-row constant, which the softmax ignores)."""
    z = _log_probs(probabilities) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _nll(labels: np.ndarray, probabilities: np.ndarray, temperature: float) -> float:
    p = apply_temperature(probabilities, temperature)
    y = np.asarray(labels).astype(np.int64).ravel()
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-12, 1.0))))


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of (labels, softmax(z/T)).

    Temperature scaling (Guo et al., 2017): one parameter fitted on validation, so the scores
    become probabilities without changing any decision's ranking. A coarse grid over
    log T in [1/20, 20], then a golden-section search around the best grid point.
    """
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    losses = [_nll(labels, probabilities, t) for t in grid]
    i = int(np.argmin(losses))
    lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, grid.size - 1)])
    ratio = (np.sqrt(5.0) - 1) / 2
    for _ in range(40):
        a = hi - ratio * (hi - lo)
        b = lo + ratio * (hi - lo)
        if _nll(labels, probabilities, np.exp(a)) <= _nll(labels, probabilities, np.exp(b)):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float | int]]:
    """Equal-width bins of top-label confidence: count, mean confidence, accuracy per bin."""
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probabilities, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = (decide_indices(p) == y).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        out.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "n": n,
                "confidence": float(confidence[mask].mean()) if n else 0.0,
                "accuracy": float(correct[mask].mean()) if n else 0.0,
            }
        )
    return out


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    table = reliability_bins(labels, probabilities, bins)
    total = sum(int(b["n"]) for b in table)
    if total == 0:
        return 0.0
    return float(
        sum(int(b["n"]) * abs(float(b["accuracy"]) - float(b["confidence"])) for b in table) / total
    )


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float] | None:
    """The Wilson score 95% confidence interval of a proportion, or None when n == 0."""
    if n == 0:
        return None
    phat = successes / n
    den = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / den
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / den
    # In exact arithmetic the interval holds phat and reaches 0 (1) when successes is 0 (n);
    # rounding can leave it a few ulps short, so the ends are pinned there
    low = 0.0 if successes == 0 else min(phat, max(0.0, centre - half))
    high = 1.0 if successes == n else max(phat, min(1.0, centre + half))
    return [float(low), float(high)]


def threshold_for_sensitivity(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold at which at least ``target`` of the positives score >= it."""
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.sort(s[y == 1])[::-1]
    if positives.size == 0:
        return DEFAULT_THRESHOLD
    k = min(max(int(np.ceil(target * positives.size - 1e-9)), 1), positives.size)
    return float(positives[k - 1])


def point_figures(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV at ``threshold`` with Wilson 95% intervals."""
    y = np.asarray(labels).astype(np.int64).ravel()
    pred = is_positive(np.asarray(scores, dtype=np.float64).ravel(), threshold)
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y != 1)).sum())
    tn = int((~pred & (y != 1)).sum())
    fn = int((~pred & (y == 1)).sum())
    out: dict[str, Any] = {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, num, den in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        out[name] = _ratio(num, den)
        out[f"{name}_ci95"] = wilson_interval(num, den)
    return out


def operating_points(
    val_labels: np.ndarray,
    val_scores: np.ndarray,
    eval_labels: np.ndarray,
    eval_scores: np.ndarray,
    chosen: float,
) -> dict[str, dict[str, Any]]:
    """Operating-point table: thresholds chosen on validation, figures on the evaluation set.

    Points: ``chosen`` (the model's decision threshold), ``youden`` (:func:`choose_threshold`)
    and ``sens90``/``sens95``/``sens99`` (the highest threshold reaching that validation
    sensitivity). Each holds the threshold and, on (eval_labels, eval_scores), the counts and
    sensitivity/specificity/PPV/NPV with Wilson 95% intervals.
    """
    thresholds = {"chosen": chosen, "youden": choose_threshold(val_labels, val_scores)}
    for name, target in SENSITIVITY_TARGETS.items():
        thresholds[name] = threshold_for_sensitivity(val_labels, val_scores, target)
    return {name: point_figures(eval_labels, eval_scores, t) for name, t in thresholds.items()}


def recorded_operating_points(
    val_labels: np.ndarray,
    val_scores: np.ndarray,
    eval_labels: np.ndarray,
    eval_scores: np.ndarray,
    chosen: float,
    rule: str | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The operating-point table a manifest records for a binary model (or one finding of a
    multi-label model) and the points left out of it with why: :func:`operating_points`
    without the points the validation labels cannot choose (:func:`unsupported_points`: a
    sens99 "chosen" on 30 validation positives is the lowest positive's score, whatever the
    target), and with the run's threshold ``rule`` as a second name for ``chosen`` (None: no
    rule chose it).

    Example:
        >>> table, missing = recorded_operating_points(yv, sv, ye, se, 0.42, "youden")
        >>> missing
        {'sens99': '30 validation positives, at least 100 needed'}
    """
    table = operating_points(val_labels, val_scores, eval_labels, eval_scores, chosen)
    missing = unsupported_points(val_labels)
    for point in missing:
        table.pop(point, None)
    if rule is not None:
        table[rule] = {**table["chosen"], "rule": rule}
    return table, missing


def required_positives(target: float) -> int:
    """The validation positives a sensitivity target needs: ``ceil(1 / (1 - target))``
    (sens90: 10, sens95: 20, sens99: 100).

    With fewer, missing one positive already drops validation sensitivity below the target,
    so :func:`threshold_for_sensitivity` returns the lowest positive's score -- the point
    that catches every validation positive -- whatever the target: sens90, sens95 and sens99
    would be one threshold under three names, none of them chosen for its target.
    """
    return math.ceil(round(1.0 / (1.0 - target), 9))


def unsupported_points(val_labels: np.ndarray) -> dict[str, str]:
    """The points of :func:`operating_points` that ``val_labels`` cannot choose, each with
    why: ``youden`` without a validation positive or negative (J is undefined), a
    sensitivity target with fewer than :func:`required_positives` validation positives.
    ``chosen`` (the model's own threshold) is always kept.

    Used for a binary model's table and each finding's (:func:`recorded_operating_points`),
    where a rare class or finding may have a handful of validation positives.

    Example:
        >>> unsupported_points(np.array([1] * 12 + [0] * 30))
        {'sens95': '12 validation positives, at least 20 needed', 'sens99': ...}
    """
    y = np.asarray(val_labels).astype(np.int64).ravel()
    positives = int((y == 1).sum())
    missing: dict[str, str] = {}
    if positives == 0 or positives == y.size:
        missing["youden"] = (
            "no validation positive" if positives == 0 else "no validation negative"
        ) + ": Youden's J is undefined"
    for name, target in SENSITIVITY_TARGETS.items():
        needed = required_positives(target)
        if positives < needed:
            missing[name] = (
                f"{positives} validation positive{'' if positives == 1 else 's'}, "
                f"at least {needed} needed"
            )
    return missing


# --- Keras metrics on softmax outputs with integer labels -------------------------------------


def keras_metrics(num_classes: int) -> list[Any]:
    """Compiled metrics: accuracy, auc, precision, sensitivity, specificity.

    Binary: on the positive-class score at 0.5 (the tuned threshold is applied after training).
    Multi-class: accuracy and macro one-vs-rest AUC; per-class figures are computed with
    :func:`multiclass_metrics` on the validation predictions.
    """
    import keras

    class PositiveClassAUC(keras.metrics.AUC):
        """ROC AUC of the class-1 softmax score against integer labels."""

        def update_state(self, y_true, y_pred, sample_weight=None):
            y_true = keras.ops.reshape(keras.ops.cast(y_true, "float32"), (-1,))
            return super().update_state(y_true, y_pred[:, 1], sample_weight)

    class PositiveClassPrecision(keras.metrics.Precision):
        def update_state(self, y_true, y_pred, sample_weight=None):
            y_true = keras.ops.reshape(keras.ops.cast(y_true, "float32"), (-1,))
            return super().update_state(y_true, y_pred[:, 1], sample_weight)

    class PositiveClassRecall(keras.metrics.Recall):
        def update_state(self, y_true, y_pred, sample_weight=None):
            y_true = keras.ops.reshape(keras.ops.cast(y_true, "float32"), (-1,))
            return super().update_state(y_true, y_pred[:, 1], sample_weight)

    class NegativeClassRecall(keras.metrics.Recall):
        """Specificity: the recall of the negative class (scores 1 - p, labels 1 - y)."""

        def update_state(self, y_true, y_pred, sample_weight=None):
            y_true = keras.ops.reshape(keras.ops.cast(y_true, "float32"), (-1,))
            return super().update_state(1.0 - y_true, 1.0 - y_pred[:, 1], sample_weight)

    class MacroAUC(keras.metrics.AUC):
        """Macro one-vs-rest ROC AUC for integer labels over C softmax classes."""

        def update_state(self, y_true, y_pred, sample_weight=None):
            y_true = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
            one_hot = keras.ops.one_hot(y_true, num_classes)
            return super().update_state(one_hot, y_pred, sample_weight)

    accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    if num_classes == 2:
        return [
            accuracy,
            PositiveClassAUC(name="auc", num_thresholds=500),
            PositiveClassPrecision(name="precision"),
            PositiveClassRecall(name="sensitivity"),
            NegativeClassRecall(name="specificity"),
        ]
    return [
        accuracy,
        MacroAUC(name="auc", multi_label=True, num_labels=num_classes, num_thresholds=500),
    ]

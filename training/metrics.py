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

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.decision import DEFAULT_THRESHOLD, decide_indices, is_positive

__all__ = [
    "DEFAULT_THRESHOLD",
    "THRESHOLD_RULES",
    "binary_metrics",
    "choose_threshold",
    "classification_metrics",
    "decision_threshold",
    "keras_metrics",
    "multiclass_metrics",
    "roc_auc",
    "roc_curve_points",
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
    pos = y == 1
    predicted = is_positive(s[None, :], candidates[:, None])  # (T, N)
    n_pos = pos.sum()
    n_neg = y.size - n_pos
    tpr = (predicted & pos[None, :]).sum(axis=1) / n_pos
    fpr = (predicted & ~pos[None, :]).sum(axis=1) / n_neg
    tnr = (~predicted & ~pos[None, :]).sum(axis=1) / (~pos).sum()
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
    tpr = np.array([((s >= t) & (y == 1)).sum() / n_pos for t in thresholds])
    fpr = np.array([((s >= t) & (y == 0)).sum() / n_neg for t in thresholds])
    return fpr, tpr


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else float(num) / float(den)


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

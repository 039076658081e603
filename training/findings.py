"""Multi-label findings: the sigmoid head's loss, metrics, calibration and thresholds.

A multi-label model (``TrainConfig.multi_label``) ends in a sigmoid ``Dense`` named
``predictions`` with one unit per finding: every score is an independent probability that
the image shows that finding (the scores do not sum to one). Per finding, in order:

* training: binary cross-entropy, averaged over findings; with ``positive_weights="auto"``
  the positives of finding j weigh ``n_neg_j / n_pos_j`` (counted on the training split),
  so a rare finding is not learned as "never";
* each epoch: per-finding ROC AUC on validation, their unweighted mean (**macro**) and the
  AUC of all (image, finding) pairs pooled (**micro**), in train.log and TensorBoard
  (:class:`FindingMetricsCallback`). That exact macro AUC, over the whole validation
  split, is the epoch's ``val_auc``: what picks the best epoch and stops early. Keras'
  compiled ``auc`` (``keras.metrics.AUC(multi_label=True)``, 500 thresholds, a finding
  without validation positives counted as 0) is only its estimate, and could rank two
  epochs the other way round (QA round 95), so under ``fit`` the callback replaces it;
* after training: a temperature per finding, fitted on validation (the sigmoid is a
  two-class softmax over ``[0, z]``, so ``training.metrics.fit_temperature`` on
  ``[1 - p, p]`` fits ``sigmoid(z / T)``) and folded into that finding's column of the final
  Dense -- only for findings with at least ``min_calibration_positives`` validation
  positives and one negative, the others keep T = 1 and are listed as not calibrated;
  then a threshold per finding, chosen on the calibrated validation scores by the run's
  ``threshold_rule`` (0.5 where validation has no positive or no negative: listed too).

* operating points per finding (:func:`finding_operating_points`): the table a binary
  model's run writes (``training.metrics.operating_points``: ``chosen``, ``youden``,
  ``sens90``, ``sens95``, ``sens99`` and the run's threshold rule; thresholds on validation,
  figures with Wilson intervals on the reported split), one per finding, on that finding's
  column. A point its validation positives cannot choose
  (``training.metrics.unsupported_points``: e.g. sens95 needs 20) is left out and listed
  with the reason, so a site that serves at ``RADLENS_OPERATING_POINT=sens95``
  (``models.decision.operating_point``) never gets a sens95 that is not one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from radlens.models.decision import DEFAULT_THRESHOLD
from radlens.training.metrics import (
    apply_temperature,
    binary_metrics,
    decision_threshold,
    fit_temperature,
    recorded_operating_points,
    roc_auc,
)

log = logging.getLogger(__name__)

MAX_POSITIVE_WEIGHT = 100.0  # a finding with one positive in thousands must not swamp the rest


def positive_weights(targets: np.ndarray, mode: str) -> np.ndarray | None:
    """Per-finding positive weights ``n_neg / n_pos`` (capped) for ``mode="auto"``, else None.

    Args:
        targets: the training split's multi-hot targets (N, F).
        mode: ``"auto"`` or ``"none"``.
    """
    if mode != "auto":
        return None
    y = np.asarray(targets, dtype=np.float64)
    positives = y.sum(axis=0)
    negatives = y.shape[0] - positives
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1.0), 1.0)
    return np.clip(weights, 1.0 / MAX_POSITIVE_WEIGHT, MAX_POSITIVE_WEIGHT).astype(np.float32)


def make_loss(weights: np.ndarray | None = None) -> Any:
    """Binary cross-entropy per finding, averaged over findings (positives weighted)."""
    pos = None if weights is None else np.asarray(weights, dtype=np.float32)

    def findings_crossentropy(y_true: Any, y_pred: Any) -> Any:
        y = keras.ops.cast(y_true, "float32")
        p = keras.ops.clip(keras.ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        positive = y * keras.ops.log(p)
        if pos is not None:
            positive = positive * keras.ops.convert_to_tensor(pos)
        return -keras.ops.mean(positive + (1.0 - y) * keras.ops.log(1.0 - p), axis=-1)

    return findings_crossentropy


def keras_metrics(num_findings: int) -> list[Any]:
    """Compiled metrics: ``auc`` (macro over findings) and ``binary_accuracy`` at 0.5."""
    return [
        keras.metrics.AUC(
            name="auc", multi_label=True, num_labels=num_findings, num_thresholds=500
        ),
        keras.metrics.BinaryAccuracy(name="binary_accuracy"),
    ]


def auc_summary(targets: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Per-finding ROC AUC (None where a finding has one class), macro and micro AUC."""
    y = np.asarray(targets).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    per = {name: roc_auc(y[:, j], s[:, j]) for j, name in enumerate(names)}
    defined = [v for v in per.values() if v is not None]
    return {
        "per_finding": per,
        "macro_auc": float(np.mean(defined)) if defined else None,
        "micro_auc": roc_auc(y.ravel(), s.ravel()),
        "findings_without_auc": [n for n, v in per.items() if v is None],
    }


def finding_metrics(
    targets: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """Per-finding binary metrics at each finding's threshold, plus macro/micro AUC.

    Returns:
        ``{"label_mode": "multi-label", "n", "macro_auc", "micro_auc", "auc" (= macro),
        "exact_match", "per_finding": {name: binary_metrics(...)}}``.
    """
    y = np.asarray(targets).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    summary = auc_summary(y, s, names)
    cut = np.asarray([thresholds[n] for n in names], dtype=np.float64)
    decided = s >= cut
    return {
        "label_mode": "multi-label",
        "n": int(y.shape[0]),
        "auc": summary["macro_auc"],
        "macro_auc": summary["macro_auc"],
        "micro_auc": summary["micro_auc"],
        "exact_match": float(np.mean(np.all(decided == (y == 1), axis=1))) if len(y) else None,
        "per_finding": {
            name: binary_metrics(y[:, j], s[:, j], float(thresholds[name]))
            for j, name in enumerate(names)
        },
    }


def fit_temperatures(
    targets: np.ndarray, scores: np.ndarray, names: Sequence[str], *, min_positives: int
) -> tuple[np.ndarray, list[str]]:
    """One temperature per finding on validation; T = 1 for findings with fewer than
    ``min_positives`` positives or no negative (returned by name as not calibrated)."""
    y = np.asarray(targets).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    temperatures = np.ones(len(names), dtype=np.float64)
    skipped: list[str] = []
    for j, name in enumerate(names):
        positives = int(y[:, j].sum())
        if positives < min_positives or positives == len(y):
            skipped.append(name)
            continue
        temperatures[j] = fit_temperature(y[:, j], _two_column(s[:, j]))
    return temperatures, skipped


def apply_temperatures(scores: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """``sigmoid(logit(p) / T_j)`` column by column (what the folded model outputs)."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.empty_like(s)
    for j, t in enumerate(np.asarray(temperatures, dtype=np.float64)):
        out[:, j] = apply_temperature(_two_column(s[:, j]), float(t))[:, 1]
    return out


def _two_column(p: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - p, p], axis=1)


def fold_temperatures(network: keras.Model, temperatures: np.ndarray) -> None:
    """Divide each finding's logit by its temperature, in the final sigmoid Dense's weights.

    Raises:
        ValueError: no sigmoid ``predictions`` Dense, a count mismatch or a T <= 0.
    """
    t = np.asarray(temperatures, dtype=np.float32)
    if not np.all(t > 0):
        raise ValueError(f"temperatures must be > 0. Received: {t.tolist()!r}")
    layer = network.get_layer("predictions")
    activation = getattr(layer, "activation", None)
    if not isinstance(layer, keras.layers.Dense) or getattr(activation, "__name__", "") != (
        "sigmoid"
    ):
        raise ValueError(f"the final layer must be a sigmoid Dense. Received: {layer!r}")
    kernel, bias = layer.get_weights()
    if kernel.shape[1] != t.size:
        raise ValueError(f"expected {kernel.shape[1]} temperatures. Received: {t.size}")
    layer.set_weights([kernel / t[np.newaxis, :], bias / t])


def choose_thresholds(
    rule: str, targets: np.ndarray, scores: np.ndarray, names: Sequence[str]
) -> tuple[dict[str, float], list[str]]:
    """A threshold per finding on validation by ``rule``; 0.5 where validation has no
    positive or no negative for that finding (those are returned by name)."""
    y = np.asarray(targets).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    thresholds: dict[str, float] = {}
    undecided: list[str] = []
    for j, name in enumerate(names):
        positives = int(y[:, j].sum())
        if positives == 0 or positives == len(y):
            thresholds[name] = DEFAULT_THRESHOLD
            undecided.append(name)
        else:
            thresholds[name] = decision_threshold(rule, y[:, j], s[:, j])
    return thresholds, undecided


def finding_operating_points(
    val_targets: np.ndarray,
    val_scores: np.ndarray,
    eval_targets: np.ndarray,
    eval_scores: np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    rule: str,
    undecided: Sequence[str] = (),
    evaluated_on: str = "val",
) -> dict[str, Any]:
    """The operating-point table of each finding (the manifest's
    ``metrics["operating_points_per_finding"]``).

    Each finding gets what ``training.metrics.operating_points`` gives a binary model, on its
    own column: ``chosen`` (its threshold, ``thresholds[name]``), ``youden`` and ``sens90`` /
    ``sens95`` / ``sens99``, thresholds chosen on validation, counts and
    sensitivity/specificity/PPV/NPV with Wilson 95% intervals on the evaluation split; and,
    as for a binary model, the run's ``rule`` as a name for ``chosen`` (not for the
    ``undecided`` findings, whose 0.5 no rule chose). Points the finding's validation
    positives cannot choose (``training.metrics.unsupported_points``) are left out and
    listed under ``not_computed`` with the reason.

    Args:
        val_targets, val_scores: validation ``(N, F)`` multi-hot targets and calibrated scores.
        eval_targets, eval_scores: the reported split's (validation's when there is no test).
        names: the findings, in the model's order.
        thresholds: each finding's trained threshold (``findings.thresholds``).
        rule: the run's threshold rule.
        undecided: findings whose threshold was not chosen on data (:func:`choose_thresholds`).
        evaluated_on: the evaluation split's name.

    Returns:
        ``{"fitted_on": "val", "evaluated_on", "per_finding": {name: {point: figures}},
        "not_computed": {name: {point: reason}}}``.
    """
    yv = np.asarray(val_targets).astype(np.int64)
    sv = np.asarray(val_scores, dtype=np.float64)
    ye = np.asarray(eval_targets).astype(np.int64)
    se = np.asarray(eval_scores, dtype=np.float64)
    per_finding: dict[str, dict[str, Any]] = {}
    not_computed: dict[str, dict[str, str]] = {}
    for j, name in enumerate(names):
        table, missing = recorded_operating_points(
            yv[:, j],
            sv[:, j],
            ye[:, j],
            se[:, j],
            float(thresholds[name]),
            None if name in undecided else rule,
        )
        per_finding[name] = table
        if missing:
            not_computed[name] = missing
    return {
        "fitted_on": "val",
        "evaluated_on": evaluated_on,
        "per_finding": per_finding,
        "not_computed": not_computed,
    }


def format_points_table(record: Mapping[str, Any]) -> list[str]:
    """The per-finding operating points as text lines (train.log, ``radlens evaluate``):
    one line per finding and point (threshold, sensitivity and specificity with their 95%
    intervals, PPV, NPV), then one line per finding naming the points it has not and why."""

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    def ci(value: Any) -> str:
        if not isinstance(value, list | tuple) or len(value) != 2:
            return "-"
        return f"{value[0]:.3f}-{value[1]:.3f}"

    lines = [
        f"{'finding':<24} {'point':<8} {'thr':>6} {'sens':>6} {'(95% CI)':>13} "
        f"{'spec':>6} {'(95% CI)':>13} {'ppv':>6} {'npv':>6}"
    ]
    for name, table in (record.get("per_finding") or {}).items():
        for point, m in table.items():
            lines.append(
                f"{name:<24} {point:<8} {m['threshold']:>6.3f} {fmt(m.get('sensitivity')):>6} "
                f"{ci(m.get('sensitivity_ci95')):>13} {fmt(m.get('specificity')):>6} "
                f"{ci(m.get('specificity_ci95')):>13} {fmt(m.get('ppv')):>6} "
                f"{fmt(m.get('npv')):>6}"
            )
    for name, missing in (record.get("not_computed") or {}).items():
        why = "; ".join(f"{point}: {reason}" for point, reason in missing.items())
        lines.append(f"{name}: no {', '.join(missing)} ({why})")
    return lines


def format_table(metrics: Mapping[str, Any]) -> list[str]:
    """The per-finding table as text lines (``radlens evaluate``, train.log)."""
    lines = [f"{'finding':<24} {'n+':>5} {'auc':>6} {'thr':>6} {'sens':>6} {'spec':>6}"]

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    for name, m in metrics["per_finding"].items():
        lines.append(
            f"{name:<24} {m['n_positive']:>5} {fmt(m['auc']):>6} {m['threshold']:>6.3f} "
            f"{fmt(m['sensitivity']):>6} {fmt(m['specificity']):>6}"
        )
    lines.append(
        f"macro AUC {fmt(metrics['macro_auc'])}, micro AUC {fmt(metrics['micro_auc'])}, "
        f"exact match {fmt(metrics['exact_match'])} (n={metrics['n']})"
    )
    return lines


def drift_reference(
    scores: np.ndarray,
    pixels: np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """The drift reference of a multi-label model (``metrics["drift_reference"]``): the form
    ``models.drift.build_reference`` gives a single-label model, which the service reads
    (``app/drift.py``: ``scores`` keyed by the class names, i.e. the findings, in order;
    ``label_rates`` per class name; ``inputs``), with the label rates per finding: the
    fraction of the split's images where the finding is decided positive at its own
    threshold (``score >= threshold``, ``models.decision.decide_findings``). Findings are not
    exclusive, so the rates need not sum to one; ``label_mode`` says so.

    Args:
        scores: ``(N, findings)`` the exported (calibrated) model's scores on validation.
        pixels: the same images as the model saw them.
        names: the findings, in the model's order.
        thresholds: finding -> its threshold (the manifest's ``findings.thresholds``).
    """
    from radlens.models.decision import is_positive
    from radlens.models.drift import build_reference

    reference = build_reference(scores, pixels, names, None)
    s = np.asarray(scores, dtype=np.float64)
    cuts = np.array([thresholds[name] for name in names], dtype=np.float64)
    positive = is_positive(s, cuts[np.newaxis, :])
    reference["label_mode"] = "multi-label"
    reference["label_rates"] = {
        name: round(float(np.mean(positive[:, j])), 6) for j, name in enumerate(names)
    }
    return reference


def write_roc_curves(
    out: Path, targets: np.ndarray, scores: np.ndarray, names: Sequence[str]
) -> list[Path]:
    """One ROC curve PNG per finding with both classes present: ``out/roc_<finding>.png``."""
    from radlens.training.callbacks import roc_curve_png

    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(targets).astype(np.int64)
    written = []
    for j, name in enumerate(names):
        auc = roc_auc(y[:, j], scores[:, j])
        if auc is None:
            continue
        path = out / f"roc_{_safe(name)}.png"
        path.write_bytes(roc_curve_png(y[:, j], scores[:, j], auc, title=f"ROC: {name}"))
        written.append(path)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class FindingMetricsCallback(keras.callbacks.Callback):
    """Each epoch: per-finding validation AUC and the macro/micro means, to train.log and to
    TensorBoard (``findings/auc/<finding>``, ``findings/macro_auc``, ``findings/micro_auc``).

    The macro AUC it logs is also the epoch's ``val_auc`` (replacing Keras' compiled estimate
    under ``fit``), so the best checkpoint, early stopping, history.csv and the epoch line
    select and show the figure train.log prints: it must come before them in the callback
    list, and be given the whole validation split. Without a macro AUC (no finding has both
    classes in validation) ``val_auc`` is removed rather than left as Keras' estimate.
    """

    def __init__(
        self,
        log_dir: Path | None,
        inputs: np.ndarray,
        targets: np.ndarray,
        names: Sequence[str],
        batch_size: int = 32,
        *,
        local: bool = False,
    ) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.inputs = inputs
        self.targets = np.asarray(targets)
        self.names = list(names)
        self.batch_size = batch_size
        self.local = local  # under a strategy: predict on this process (training.loop)
        self._writer: Any = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        scores = _predict(self.model, self.inputs, self.batch_size, local=self.local)
        summary = auc_summary(self.targets, scores, self.names)
        shown = ", ".join(
            f"{n} {'-' if v is None else f'{v:.3f}'}" for n, v in summary["per_finding"].items()
        )
        log.info(
            "epoch %d findings: macro AUC %s, micro AUC %s; %s",
            epoch + 1,
            _fmt(summary["macro_auc"]),
            _fmt(summary["micro_auc"]),
            shown,
        )
        if logs is not None:
            for key in ("macro_auc", "micro_auc"):
                if summary[key] is not None:
                    logs[f"val_{key}"] = summary[key]
            # the figure that picks the best epoch is the one printed above (QA round 95)
            if summary["macro_auc"] is None:
                logs.pop("val_auc", None)
            else:
                logs["val_auc"] = float(summary["macro_auc"])
        if self.log_dir is None:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        with self._writer.as_default(step=epoch + 1):
            for key in ("macro_auc", "micro_auc"):
                if summary[key] is not None:
                    tf.summary.scalar(f"findings/{key}", summary[key])
            for name, value in summary["per_finding"].items():
                if value is not None:
                    tf.summary.scalar(f"findings/auc/{_safe(name)}", value)
        self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _predict(model: Any, inputs: np.ndarray, batch_size: int, *, local: bool) -> np.ndarray:
    """Validation scores: ``model.predict``, or on this process only (``local``: inside a
    distributed run, where ``model.predict`` would distribute through the strategy)."""
    if local:
        from radlens.training.loop import predict_local

        return np.asarray(predict_local(model, inputs, batch_size=batch_size))
    return np.asarray(model.predict(inputs, batch_size=batch_size, verbose=0))


class FindingValidationMetrics(keras.callbacks.Callback):
    """The custom loop's validation for a multi-label run (``training.loop.distributed_train``
    has no ``validation_data``): ``val_loss`` (the run's findings loss), ``val_auc`` (the
    exact macro AUC over findings, what picks the best epoch and stops early, as
    :class:`FindingMetricsCallback` sets it under ``fit``) and ``val_binary_accuracy`` in the
    epoch logs.

    Predicts on this process only: every worker holds the same weights, so every worker
    takes the same decisions without a collective (as ``callbacks.ValidationMetrics``).
    """

    def __init__(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        names: Sequence[str],
        batch_size: int,
        loss: Any = None,
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.targets = np.asarray(targets, dtype=np.float32)
        self.names = list(names)
        self.batch_size = batch_size
        self.loss = loss if loss is not None else make_loss()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        scores = _predict(self.model, self.inputs, self.batch_size, local=True)
        logs["val_loss"] = float(np.mean(np.asarray(self.loss(self.targets, scores))))
        logs["val_binary_accuracy"] = float(np.mean((scores >= 0.5) == (self.targets == 1)))
        macro = auc_summary(self.targets, scores, self.names)["macro_auc"]
        if macro is not None:
            logs["val_auc"] = float(macro)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

"""Series-level evaluation: slice scores aggregated per series, as the service aggregates them.

A series-labelled data set (``training.data.series``) trains on slices that inherit their
series' label, but its label is a fact about the series: a positive series may hold many
slices that show nothing. What a clinician (and the service's ``/v1/series/{uid}``) sees is
the series score, so that is what a run reports beside the slice figures:

1. each series' slice scores are combined with ``models.aggregation.aggregate`` -- the very
   function the service applies on read -- with the run's ``series_aggregation`` and
   ``series_top_k`` (defaults: the service's, ``max`` and 3);
2. a binary model's series score is the aggregate of its positive-class scores, decided at
   the model's saved threshold (the service decides a series at that threshold too); a
   multi-class model aggregates each class and takes the highest (as ``app.series``); a
   multi-label model aggregates each finding and decides it at the finding's threshold;
3. the series AUC (and the slice AUC, for contrast) go to train.log, TensorBoard
   (``series/auc``, ``series/slice_auc`` per epoch), the manifest's metrics and
   ``radlens evaluate``'s series table.

A binary model also gets a **series threshold** (:func:`choose_series_threshold`): chosen by
the run's ``threshold_rule`` on the validation series scores, recorded in the manifest's
``metrics["series_threshold"]`` with the aggregation it holds for, and the one the series
figures are measured at; the service decides a series at it when its own aggregation is the
same (``app.series``), else at the model threshold as before. A multi-label model gets one
per finding (:func:`choose_finding_series_thresholds`), for the same reason -- ``max`` over
200 slices is far likelier to cross a finding's instance threshold than one slice -- recorded
in the same place as a per-finding mapping (``thresholds``); a finding whose validation series
are all positive or all negative keeps its instance threshold and is listed
(``instance_threshold_kept``). The series figures of each finding are measured at the
threshold it is decided at, and say which (``per_finding[name]["threshold_source"]``:
"series" or "model"). The best epoch may be picked by the validation series AUC instead of the
slice AUC (``select_by="series-auc"``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radlens.models.aggregation import AGGREGATIONS, aggregate
from radlens.models.decision import DEFAULT_THRESHOLD
from radlens.training.data.sources import Example, SkippedFile
from radlens.training.metrics import classification_metrics, roc_auc

log = logging.getLogger(__name__)

__all__ = [
    "AGGREGATIONS",
    "SeriesScores",
    "aggregate_series",
    "choose_finding_series_thresholds",
    "choose_series_threshold",
    "decoded",
    "finding_series_cuts",
    "format_series_table",
    "series_callback",
    "series_metrics",
    "series_rows",
]


def decoded(examples: Sequence[Example], skipped: Sequence[SkippedFile]) -> list[Example]:
    """The examples ``load_examples`` returned, in order: those whose file was not skipped
    (what lines slice scores up with their series)."""
    bad = {s.path for s in skipped}
    return [e for e in examples if e.key not in bad]


@dataclass(frozen=True)
class SeriesScores:
    """Slice scores combined per series, in order of first appearance."""

    series: list[str]  # series ids ("<csv name>:<line>")
    targets: np.ndarray  # (S,) int labels, or (S, F) multi-hot
    scores: np.ndarray  # (S, C): each column the aggregate of that column's slice scores
    slices: np.ndarray  # (S,) slices per series


def aggregate_series(
    series_of: Sequence[str | None],
    targets: np.ndarray,
    scores: np.ndarray,
    *,
    method: str,
    k: int,
) -> SeriesScores:
    """Group slice rows by series id and aggregate every score column.

    Raises:
        ValueError: lengths that differ, a slice without a series, an unknown method or k < 1.
    """
    t, s = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    if not len(series_of) == len(t) == len(s):
        raise ValueError(
            f"series ids, targets and scores must have one row per slice; received "
            f"{len(series_of)}, {len(t)}, {len(s)}"
        )
    if method not in AGGREGATIONS:
        raise ValueError(f"method should be one of {', '.join(AGGREGATIONS)}. Received: {method!r}")
    rows: dict[str, list[int]] = {}
    for i, sid in enumerate(series_of):
        if sid is None:
            raise ValueError(f"slice {i} has no series id")
        rows.setdefault(sid, []).append(i)
    names = list(rows)
    combined = np.asarray(
        [
            [aggregate(s[idx, c].tolist(), method, k) for c in range(s.shape[1])]
            for idx in rows.values()
        ],
        dtype=np.float64,
    ).reshape(len(names), s.shape[1])
    return SeriesScores(
        series=names,
        targets=np.asarray([t[idx[0]] for idx in rows.values()]),
        scores=combined,
        slices=np.asarray([len(idx) for idx in rows.values()], dtype=np.int64),
    )


def _binary_columns(scores: np.ndarray) -> np.ndarray:
    """A binary model's series scores as (S, 2) [1 - s, s]: only the positive class is
    aggregated (as the service does), the negative column is its complement."""
    positive = scores[:, 1]
    return np.stack([1.0 - positive, positive], axis=1)


def series_metrics(
    series_of: Sequence[str | None],
    targets: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    method: str,
    k: int,
    threshold: float | None = None,
    thresholds: Mapping[str, float] | None = None,
    multi_label: bool = False,
    threshold_sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Series-level figures, with the slice AUC for contrast. JSON-ready.

    ``threshold``: a binary model's decision threshold; ``thresholds``: a multi-label model's
    per finding (both as the manifest stores them, or the series thresholds: see
    :func:`finding_series_cuts`); ``threshold_sources``: where each finding's threshold comes
    from ("series" or "model"), written into its ``per_finding`` entry.

    Returns:
        ``{"aggregation", "top_k", "n_series", "n_slices", "auc", "slice_auc", ...}`` plus
        the metrics of ``training.metrics.classification_metrics`` (multi-label:
        ``training.findings.finding_metrics``) computed over series.
    """
    grouped = aggregate_series(series_of, targets, scores, method=method, k=k)
    names = list(class_names)
    if multi_label:
        from radlens.training.findings import auc_summary, finding_metrics

        cuts = dict(thresholds or {n: DEFAULT_THRESHOLD for n in names})
        figures = finding_metrics(grouped.targets, grouped.scores, names, cuts)
        for name, source in (threshold_sources or {}).items():
            if name in figures["per_finding"]:
                figures["per_finding"][name]["threshold_source"] = source
        slice_auc = auc_summary(np.asarray(targets), np.asarray(scores), names)["macro_auc"]
    elif len(names) == 2:
        figures = classification_metrics(
            grouped.targets, _binary_columns(grouped.scores), names, threshold
        )
        slice_auc = roc_auc(np.asarray(targets), np.asarray(scores)[:, 1])
    else:
        figures = classification_metrics(grouped.targets, grouped.scores, names)
        slice_auc = classification_metrics(np.asarray(targets), np.asarray(scores), names)["auc"]
    figures.pop("n", None)
    return {
        "aggregation": method,
        "top_k": k,
        "n_series": len(grouped.series),
        "n_slices": int(grouped.slices.sum()),
        **figures,
        "slice_auc": slice_auc,
    }


def choose_series_threshold(
    rule: str,
    series_of: Sequence[str | None],
    targets: np.ndarray,
    scores: np.ndarray,
    *,
    method: str,
    k: int,
) -> dict[str, Any] | None:
    """A binary model's series-level threshold, chosen on validation SERIES scores.

    The slice threshold is chosen on slice scores; a series score is an aggregate of many
    slices (``max`` of a 40-slice series sits far above a typical slice score), so the cut
    that balances sensitivity and specificity on series is another one. It is chosen by the
    run's ``threshold_rule`` (``training.metrics.decision_threshold``) on the series scores
    aggregated with ``method``/``k`` -- valid for that aggregation only, which is recorded
    with it (the service uses it when its own aggregation is the same).

    Returns:
        ``{"threshold", "rule", "aggregation", "top_k", "fitted_on": "val", "n_series",
        "n_positive"}``, or None when the validation series hold one class only.
    """
    from radlens.training.metrics import decision_threshold

    grouped = aggregate_series(series_of, targets, scores, method=method, k=k)
    y = np.asarray(grouped.targets).astype(np.int64).reshape(-1)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        return None
    return {
        "threshold": float(decision_threshold(rule, y, grouped.scores[:, 1])),
        "rule": rule,
        "aggregation": method,
        "top_k": k,
        "fitted_on": "val",
        "n_series": len(y),
        "n_positive": positives,
    }


def choose_finding_series_thresholds(
    rule: str,
    series_of: Sequence[str | None],
    targets: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    *,
    method: str,
    k: int,
) -> dict[str, Any]:
    """A multi-label model's series threshold per finding, chosen on validation SERIES scores.

    As :func:`choose_series_threshold`, finding by finding: each finding's slice scores are
    aggregated per series with ``method``/``k`` (its own column, as the service aggregates
    it) and the run's ``threshold_rule`` picks the cut on those series scores against the
    series' multi-hot labels. The instance threshold of a finding was chosen on slice scores;
    an aggregate such as ``max`` over many slices runs higher, so a 200-slice series is far
    likelier to hold one slice over it than one slice is. A finding whose validation series
    are all positive or all negative has nothing to choose on: it gets no series threshold
    (its instance threshold applies) and is listed under ``instance_threshold_kept``.

    Returns:
        ``{"label_mode": "multi-label", "thresholds": {finding: threshold},
        "instance_threshold_kept": [finding, ...], "n_positive": {finding: series},
        "rule", "aggregation", "top_k", "fitted_on": "val", "n_series"}``. It has no
        top-level ``threshold``, so a reader of a binary record
        (``models.aggregation.recorded_series_threshold``) finds none in it.

    Raises:
        ValueError: targets that are not (slices, findings) multi-hot, or as
            :func:`aggregate_series`.
    """
    from radlens.training.metrics import decision_threshold

    names = list(names)
    t = np.asarray(targets)
    if t.ndim != 2 or t.shape[1] != len(names):
        raise ValueError(
            f"expected multi-hot targets of shape (slices, {len(names)}) for findings "
            f"{names!r}. Received shape {t.shape}"
        )
    grouped = aggregate_series(series_of, t, scores, method=method, k=k)
    y = np.asarray(grouped.targets).astype(np.int64).reshape(len(grouped.series), len(names))
    thresholds: dict[str, float] = {}
    kept: list[str] = []
    positives: dict[str, int] = {}
    for j, name in enumerate(names):
        positives[name] = int(y[:, j].sum())
        if positives[name] == 0 or positives[name] == len(y):
            kept.append(name)
            continue
        thresholds[name] = float(decision_threshold(rule, y[:, j], grouped.scores[:, j]))
    return {
        "label_mode": "multi-label",
        "thresholds": thresholds,
        "instance_threshold_kept": kept,
        "n_positive": positives,
        "rule": rule,
        "aggregation": method,
        "top_k": k,
        "fitted_on": "val",
        "n_series": len(y),
    }


def finding_series_cuts(
    instance_thresholds: Mapping[str, float], series_thresholds: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Each finding's series decision threshold and where it comes from: its series threshold
    (``series_thresholds``, e.g. ``models.aggregation.recorded_finding_series_thresholds``)
    when it has one -- "series" -- else its instance threshold -- "model", the service's
    ``threshold_source`` words. Findings are those of ``instance_thresholds``, in its order."""
    cuts = {n: float(series_thresholds.get(n, t)) for n, t in instance_thresholds.items()}
    sources = {n: "series" if n in series_thresholds else "model" for n in instance_thresholds}
    return cuts, sources


def series_rows(
    series_of: Sequence[str | None],
    targets: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    method: str,
    k: int,
    threshold: float | None = None,
    thresholds: Mapping[str, float] | None = None,
    multi_label: bool = False,
) -> list[dict[str, Any]]:
    """One row per series: its id, true label, slice count, score and decided label (the
    service's decision on the aggregate). Ids are CSV lines, never a UID or a patient."""
    grouped = aggregate_series(series_of, targets, scores, method=method, k=k)
    names = list(class_names)
    rows = []
    for i, sid in enumerate(grouped.series):
        row: dict[str, Any] = {"series": sid, "slices": int(grouped.slices[i])}
        if multi_label:
            cuts = thresholds or {}
            truth = [names[j] for j in np.flatnonzero(grouped.targets[i])]
            decided = [
                n
                for j, n in enumerate(names)
                if grouped.scores[i, j] >= float(cuts.get(n, DEFAULT_THRESHOLD))
            ]
            row.update(
                truth="|".join(truth) or "-",
                score=float(grouped.scores[i].max()),
                predicted="|".join(decided) or "-",
            )
        elif len(names) == 2:
            cut = DEFAULT_THRESHOLD if threshold is None else float(threshold)
            score = float(grouped.scores[i, 1])
            row.update(
                truth=names[int(grouped.targets[i])],
                score=score,
                predicted=names[1] if score >= cut else names[0],
            )
        else:
            best = int(np.argmax(grouped.scores[i]))
            row.update(
                truth=names[int(grouped.targets[i])],
                score=float(grouped.scores[i, best]),
                predicted=names[best],
            )
        rows.append(row)
    return rows


def format_series_table(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any]) -> list[str]:
    """The series table as text lines (``radlens evaluate``)."""
    lines = [f"{'series':<28} {'slices':>6} {'truth':<16} {'score':>6} predicted"]
    for r in rows:
        mark = "" if r["truth"] == r["predicted"] else "  *"
        lines.append(
            f"{r['series']:<28} {r['slices']:>6} {r['truth']:<16} {r['score']:>6.3f} "
            f"{r['predicted']}{mark}"
        )

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines.append(
        f"series AUC {fmt(metrics.get('auc'))} over {metrics.get('n_series')} series "
        f"({metrics.get('aggregation')}, k={metrics.get('top_k')}); slice AUC "
        f"{fmt(metrics.get('slice_auc'))} over {metrics.get('n_slices')} slices"
        " (* = decided otherwise)"
    )
    per_finding = metrics.get("per_finding")
    if isinstance(per_finding, Mapping):  # multi-label: each finding at its series decision
        for name, m in per_finding.items():
            source = m.get("threshold_source")
            lines.append(
                f"  {name}: threshold {fmt(m.get('threshold'))}"
                f"{f' ({source})' if source else ''}, sensitivity {fmt(m.get('sensitivity'))}, "
                f"specificity {fmt(m.get('specificity'))}, AUC {fmt(m.get('auc'))} "
                f"({m.get('n_positive')} positive series)"
            )
    return lines


def series_callback(
    log_dir: Path | None,
    inputs: np.ndarray,
    targets: np.ndarray,
    series_of: Sequence[str | None],
    class_names: Sequence[str],
    *,
    method: str,
    k: int,
    batch_size: int,
    multi_label: bool = False,
    local: bool = False,
) -> Any:
    """A Keras callback: each epoch, the validation series AUC and slice AUC to train.log,
    to the epoch logs (``val_series_auc``: history.csv, and what picks the best epoch with
    ``select_by="series-auc"``) and to TensorBoard (``series/auc``, ``series/slice_auc``
    under ``log_dir``; None: no TensorBoard, e.g. a worker). ``local``: predict on this
    process only (``training.loop.predict_local``: inside a distributed run, where every
    worker holds the same weights and so takes the same decision)."""
    import keras

    class _Callback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._writer: Any = None

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if local:
                from radlens.training.loop import predict_local

                scores = np.asarray(predict_local(self.model, inputs, batch_size=batch_size))
            else:
                scores = np.asarray(self.model.predict(inputs, batch_size=batch_size, verbose=0))
            figures = series_metrics(
                series_of,
                targets,
                scores,
                class_names,
                method=method,
                k=k,
                multi_label=multi_label,
            )
            log.info(
                "epoch %d series: AUC %s over %d series (%s), slice AUC %s over %d slices",
                epoch + 1,
                _fmt(figures["auc"]),
                figures["n_series"],
                method,
                _fmt(figures["slice_auc"]),
                figures["n_slices"],
            )
            if logs is not None and figures["auc"] is not None:
                logs["val_series_auc"] = figures["auc"]
            if log_dir is None:
                return
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(log_dir))
            with self._writer.as_default(step=epoch + 1):
                for tag, key in (("series/auc", "auc"), ("series/slice_auc", "slice_auc")):
                    if figures[key] is not None:
                        tf.summary.scalar(tag, figures[key])
            self._writer.flush()

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    return _Callback()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

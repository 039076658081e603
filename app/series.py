"""Series and study results: the instances of one series (same Series Instance UID) read as one.

Two parts:

- **Write side** (:func:`register_instance`, called by the writer in the transaction that
  stores a prediction): the first stored instance of a series records the attributes every
  instance of it must share (Modality, Rows x Columns, Study Instance UID) in
  ``prediction_series``; an instance that disagrees is refused with
  :class:`SeriesMismatchError` (422) and nothing of it is stored. The row is inserted with
  ``INSERT ... ON CONFLICT DO NOTHING`` and read back in the same transaction, so two writers
  (the writer's group transaction, or two replicas on PostgreSQL, where the second insert waits
  for the first transaction) agree on one reference. The read takes the row FOR KEY SHARE
  (PostgreSQL) until the commit: `radlens purge` deletes a series record left with no
  prediction only if it can lock it (app/audit.py ``_delete_empty_series``), so it cannot
  delete the record of a series whose upload is being written (QA 61).
- **Read side** (:func:`series_results`, :func:`study_results`): the aggregate is *computed on
  read* from the stored prediction rows, one SELECT per request. It is therefore always the
  aggregate of exactly the rows that are committed (a concurrent upload is either in it or not,
  never half), there is no second row to keep in step with the predictions (no lost update
  between concurrent uploads of one series, nothing to repair after ``radlens purge``), the
  upload path pays nothing for it, and a change of RADLENS_SERIES_AGGREGATION applies to every
  stored series. Reading a 200-slice series is one indexed query of 200 small rows.

Aggregation (RADLENS_SERIES_AGGREGATION, k = RADLENS_SERIES_TOP_K), over the instance scores of
the class of interest (a binary model's positive class; for a multi-class model each class is
aggregated and the highest is the label):
``max``; ``mean_top_k``, the mean of the k highest; ``noisy_or``, 1 - prod(1 - p_i), the
probability that at least one instance is positive if they were independent (it tends to 1 on
long series: prefer max or mean_top_k for CT). Results are per model (name, version): scores of
different models are never mixed.

A binary model's series is decided at the instances' threshold, or -- for the loaded model,
when its training chose a series threshold on validation series for the aggregation the
service runs (``metrics["series_threshold"]``, models.aggregation.recorded_series_threshold)
and the instances were decided at the model threshold -- at that series threshold
(``ModelResult.threshold_source`` says which: "series" or "model").

A multi-label model's scores are independent findings, not classes of one softmax: each finding
is aggregated on its own and decided at its own threshold, and the series' label is its positive
findings joined by '|' (``ModelResult.findings``). That threshold is the one its instances were
decided at (from prediction_findings), or -- by the same rule as a binary model's, finding by
finding -- the series threshold the loaded model's training chose for that finding on
validation series for the service's aggregation (``metrics["series_threshold"]["thresholds"]``,
models.aggregation.recorded_finding_series_thresholds): an aggregate such as ``max`` over 200
slices is far likelier than one slice to cross the instance threshold.
``FindingResult.threshold_source`` says which ("series" or "model"); a finding the run kept at
its instance threshold (validation series of one class) stays "model".
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from radlens.app.db import utcnow
from radlens.app.errors import AppError
from radlens.app.tables import Prediction, PredictionFinding, PredictionSeries
from radlens.models.aggregation import AGGREGATIONS, Aggregation, aggregate
from radlens.models.decision import DEFAULT_THRESHOLD

__all__ = ["AGGREGATIONS", "Aggregation", "aggregate"]  # re-exported from models.aggregation


class SeriesMismatchError(AppError):
    code = "series-mismatch"
    title = (
        "This instance disagrees with the instances already stored for its series (modality, "
        "rows/columns or study); send it with its own Series Instance UID"
    )
    status_code = 422
    comment = "Unlike its series' instances: give it its own Series UID"


# --- write side -----------------------------------------------------------------------------

_SERIES_TABLE = cast(Table, PredictionSeries.__table__)
# what a series' reference is (returned by a fresh insert, else read back)
_REFERENCE = (
    PredictionSeries.study_instance_uid,
    PredictionSeries.modality,
    PredictionSeries.rows,
    PredictionSeries.columns,
)
_SQLITE_INSERT = (
    sqlite_insert(_SERIES_TABLE)
    .on_conflict_do_nothing(index_elements=["series_instance_uid"])
    .returning(*_REFERENCE)
)
_POSTGRESQL_INSERT = (
    postgresql_insert(_SERIES_TABLE)
    .on_conflict_do_nothing(index_elements=["series_instance_uid"])
    .returning(*_REFERENCE)
)


def register_instance(session: Session, prediction: Prediction) -> None:
    """Record ``prediction``'s series on its first instance, or check it against the record.

    Raises SeriesMismatchError (422) when the instance's Modality, Rows x Columns or Study
    Instance UID differ from the series'; the caller's transaction then rolls back, so nothing
    of the instance is stored. Instances without a Series Instance UID (PNG/JPEG) pass.
    """
    uid = prediction.series_instance_uid
    if not uid:
        return
    reference = _series_seen(session).get(uid)
    if reference is None:
        reference = _record_series(session, prediction, uid)
        # the rest of this transaction (begun by now) checks against it without a query
        _series_seen(session)[uid] = reference
    problems = mismatches(
        reference.study_instance_uid,
        reference.modality,
        (reference.rows, reference.columns),
        prediction,
    )
    if problems:
        raise SeriesMismatchError(
            "the instance's " + "; ".join(problems) + " (nothing of this instance was stored)"
        )


def _series_seen(session: Session) -> dict[str, Any]:
    """The series recorded or read so far in the session's current transaction.

    The writer commits a group of predictions in one transaction, often many instances of
    one series (a STOW-RS request of a CT series): the series' row is inserted or read for
    the first and checked from memory for the others, saving two statements per instance.
    A group that fails is rolled back as a whole, so what is remembered here never outlives
    the transaction it was read in (it is keyed by the transaction object)."""
    transaction = session.get_transaction()
    stored = session.info.get(_SEEN_KEY)
    if stored is None or stored[0] is not transaction:
        stored = (transaction, {})
        session.info[_SEEN_KEY] = stored
    return cast(dict[str, Any], stored[1])


_SEEN_KEY = "radlens.series_seen"


def _record_series(session: Session, prediction: Prediction, uid: str) -> Any:
    """Insert the series' row unless it exists, and read it back, locked FOR KEY SHARE
    (PostgreSQL; SQLite's transaction holds the write lock already) until the transaction
    ends: the lock that keeps `radlens purge` from deleting it as empty meanwhile. A row
    this transaction inserts is its own reference (RETURNING: one statement for a new
    series' first upload): no other transaction sees it before the commit, so `radlens
    purge` cannot delete it and it needs no lock."""
    values = {
        "series_instance_uid": uid,
        "study_instance_uid": prediction.study_instance_uid,
        "modality": prediction.modality,
        "rows": prediction.rows,
        "columns": prediction.columns,
        "created_at": utcnow(),
    }
    reference = None
    for _attempt in range(2):  # the second: `radlens purge` deleted the row in between
        inserted = _insert_series(session, values)
        if inserted is not None:
            return inserted
        reference = session.execute(
            select(*_REFERENCE)
            .where(PredictionSeries.series_instance_uid == uid)
            .with_for_update(read=True, key_share=True)
        ).one_or_none()
        if reference is not None:
            break
    if reference is None:
        raise RuntimeError(f"the series record of {uid!r} was neither inserted nor found")
    return reference


def _insert_series(session: Session, values: dict[str, Any]) -> Any:
    """Insert the series' row unless one exists: the inserted row's reference, or None
    (the row existed; or another dialect, which is read back)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return session.execute(_POSTGRESQL_INSERT, values).one_or_none()
    if dialect == "sqlite":
        return session.execute(_SQLITE_INSERT, values).one_or_none()
    if session.get(PredictionSeries, values["series_instance_uid"]) is None:
        session.add(PredictionSeries(**values))  # settings allow only the two above
        session.flush()
    return None


def mismatches(
    study: str | None, modality: str | None, size: tuple[int, int], prediction: Prediction
) -> list[str]:
    """What ``prediction`` has that differs from its series' reference, one phrase each."""
    found = []
    if (prediction.modality or None) != (modality or None):
        found.append(f"Modality is {prediction.modality!r}, the series' is {modality!r}")
    if (prediction.rows, prediction.columns) != size:
        found.append(
            f"Rows x Columns is {prediction.rows}x{prediction.columns}, "
            f"the series' is {size[0]}x{size[1]}"
        )
    if study and prediction.study_instance_uid and prediction.study_instance_uid != study:
        found.append("Study Instance UID differs from the study of the series' first instance")
    return found


# --- aggregation (pure): models.aggregation, shared with training's series evaluation ---------


@dataclass(frozen=True)
class InstanceScore:
    """One instance's prediction and its score for the aggregated class."""

    prediction: Prediction
    score: float


@dataclass(frozen=True)
class FindingResult:
    """One finding of a multi-label model aggregated over a series' instances: its
    instances' scores for that finding aggregated as a binary model's are, decided at the
    finding's own threshold (the one its instances were decided at, or its series threshold:
    ``threshold_source``)."""

    name: str
    score: float
    threshold: float
    positive: bool
    key_instances: list[InstanceScore]  # the k instances with the highest score for it
    # "series" when decided at the training run's series threshold for this finding
    # (SeriesThresholds), "model" when at its instances' threshold as before
    threshold_source: str = "model"


@dataclass(frozen=True)
class ModelResult:
    """The aggregate of one model's predictions on a set of instances."""

    model_name: str
    model_version: int
    class_name: str  # the class whose scores were aggregated
    score: float
    label: str
    threshold: float | None
    positive: bool | None  # binary models: score >= threshold; None otherwise
    instances: list[InstanceScore]  # highest score first
    key_instances: list[InstanceScore]  # the first k of instances
    # binary models: "series" when decided at the training run's series threshold
    # (SeriesThresholds), "model" when at the instances' threshold as before; multi-label
    # models: the source of the top finding's threshold (``threshold``); None otherwise
    threshold_source: str | None = None
    # multi-label models: every finding aggregated on its own; None for single-label models
    findings: list[FindingResult] | None = None
    # the instances were decided at different thresholds (the threshold or operating point
    # changed while the series arrived): the series is decided at its newest instance's
    instance_thresholds_differ: bool = False

    @property
    def instance_count(self) -> int:
        return len(self.instances)


def _ordered(rows: Iterable[InstanceScore]) -> list[InstanceScore]:
    return sorted(rows, key=lambda i: (-i.score, i.prediction.sop_instance_uid or ""))


# A binary model's pair: (the model threshold its instances are decided at, the series
# threshold its training run chose for the service's aggregation).
ThresholdPair = tuple[float | None, float]


@dataclass(frozen=True)
class FindingSeriesThresholds:
    """A multi-label model's series thresholds: a ThresholdPair per finding that has one (the
    manifest's finding threshold, the series threshold of
    models.aggregation.recorded_finding_series_thresholds), and the model's no-finding label:
    a series whose findings are all negative at their series thresholds may hold no instance
    whose stored label names it (each instance may have been positive for some finding)."""

    pairs: Mapping[str, ThresholdPair]
    none_name: str


# (model name, version) -> a binary model's ThresholdPair (models.aggregation.
# recorded_series_threshold) or a multi-label model's FindingSeriesThresholds; the routes fill
# it for the model the service has loaded.
SeriesThresholds = Mapping[tuple[str, int], ThresholdPair | FindingSeriesThresholds]


def _cut(instance_threshold: float | None, found: ThresholdPair | None) -> tuple[float, str]:
    """The threshold a series (or one finding of it) is decided at, and where it comes from:
    the run's series threshold (``found``) when the instances were decided at the model
    threshold (an operating point chosen by the site keeps its own), else the instances'
    threshold as before."""
    instance = float(DEFAULT_THRESHOLD if instance_threshold is None else instance_threshold)
    if found is not None:
        model_threshold, series_threshold = found
        if instance_threshold is None or (
            model_threshold is not None and math.isclose(instance, model_threshold, abs_tol=1e-9)
        ):
            return series_threshold, "series"
    return instance, "model"


def _series_cut(
    newest: Prediction, series_thresholds: SeriesThresholds | None
) -> tuple[float, str]:
    """The threshold a binary model's series is decided at, and where it comes from
    (:func:`_cut` of its newest instance's threshold)."""
    found = (series_thresholds or {}).get((newest.model_name, newest.model_version))
    return _cut(newest.threshold, found if isinstance(found, tuple) else None)


def _newest_first(rows: Iterable[Prediction]) -> list[Prediction]:
    """``rows`` newest first (the rows come from the database in no set order): where a
    series' instances were decided at different thresholds, the newest instance's -- the one
    in force now -- decides the series."""
    return sorted(rows, key=lambda r: (r.created_at, str(r.id)), reverse=True)


def _differ(thresholds: Iterable[float | None]) -> bool:
    seen = [float(DEFAULT_THRESHOLD if t is None else t) for t in thresholds]
    return any(not math.isclose(t, seen[0], abs_tol=1e-9) for t in seen[1:])


# prediction id -> its prediction_findings rows (multi-label predictions only)
FindingRows = Mapping[uuid.UUID, Sequence[PredictionFinding]]


def _findings_result(
    rows: Sequence[Prediction],
    method: str,
    k: int,
    findings: FindingRows,
    series_thresholds: SeriesThresholds | None = None,
) -> ModelResult:
    """A multi-label model's aggregate: each finding on its own (its instances' scores
    aggregated, decided at the finding's threshold, or at its series threshold by
    :func:`_cut`); the label is the positive findings joined by '|' as an instance's is, or
    the no-finding label its instances carry. The result's class is the positive finding with
    the highest aggregate (else the highest one), so studies and instance lists rank by it."""
    newest = _newest_first(rows)[0]
    names = [str(n) for n in newest.scores]
    cut: dict[str, float] = {}
    seen: dict[str, list[float]] = {}
    for row in _newest_first(rows):  # each finding at its newest instance's threshold
        for f in findings.get(row.id, ()):
            cut.setdefault(f.finding, float(f.threshold))
            seen.setdefault(f.finding, []).append(float(f.threshold))
    found = (series_thresholds or {}).get((newest.model_name, newest.model_version))
    per_finding = found.pairs if isinstance(found, FindingSeriesThresholds) else {}
    results = []
    for name in names:
        scored = [InstanceScore(r, float(r.scores.get(name, 0.0))) for r in rows]
        score = aggregate([s.score for s in scored], method, k)
        threshold, source = _cut(cut.get(name), per_finding.get(name))
        results.append(
            FindingResult(name, score, threshold, score >= threshold, _ordered(scored)[:k], source)
        )
    positives = [f for f in results if f.positive]
    top = max(positives or results, key=lambda f: f.score)
    none_name = (
        found.none_name
        if isinstance(found, FindingSeriesThresholds)
        else next(
            (
                r.label
                for r in _newest_first(rows)
                if r.id in findings and not any(f.positive for f in findings[r.id])
            ),
            "No Finding",
        )
    )
    ordered = _ordered(InstanceScore(r, float(r.scores.get(top.name, 0.0))) for r in rows)
    return ModelResult(
        model_name=newest.model_name,
        model_version=newest.model_version,
        class_name=top.name,
        score=top.score,
        label="|".join(f.name for f in positives) or none_name,
        threshold=top.threshold,
        positive=bool(positives),
        instances=ordered,
        key_instances=ordered[:k],
        threshold_source=top.threshold_source,
        findings=results,
        instance_thresholds_differ=any(_differ(t) for t in seen.values()),
    )


def model_result(
    rows: Sequence[Prediction],
    method: str,
    k: int,
    series_thresholds: SeriesThresholds | None = None,
    findings: FindingRows | None = None,
) -> ModelResult:
    """The aggregate of ``rows``, which are one model's predictions (non-empty);
    ``findings``: the prediction_findings rows of multi-label predictions among them."""
    if findings and any(r.id in findings for r in rows):
        return _findings_result(rows, method, k, findings, series_thresholds)
    newest, differ = _newest_first(rows)[0], False
    names = [str(n) for n in newest.scores]
    source: str | None = None
    if len(names) == 2:  # binary, as models.decision decides: class 1 >= threshold
        positive_name, negative_name = names[1], names[0]
        scored = [InstanceScore(r, float(r.scores.get(positive_name, 0.0))) for r in rows]
        score = aggregate([s.score for s in scored], method, k)
        threshold, source = _series_cut(newest, series_thresholds)
        differ = _differ(r.threshold for r in rows)
        positive = score >= threshold
        label, class_name = (positive_name if positive else negative_name), positive_name
    else:
        per_class = {
            name: aggregate([float(r.scores.get(name, 0.0)) for r in rows], method, k)
            for name in names
        }
        class_name = max(names, key=lambda n: per_class[n])
        label, score, threshold, positive = class_name, per_class[class_name], None, None
        scored = [InstanceScore(r, float(r.scores.get(class_name, 0.0))) for r in rows]
    ordered = _ordered(scored)
    return ModelResult(
        model_name=newest.model_name,
        model_version=newest.model_version,
        class_name=class_name,
        score=score,
        label=label,
        threshold=threshold,
        positive=positive,
        instances=ordered,
        key_instances=ordered[:k],
        threshold_source=source,
        instance_thresholds_differ=differ,
    )


def results_by_model(
    rows: Sequence[Prediction],
    method: str,
    k: int,
    series_thresholds: SeriesThresholds | None = None,
    findings: FindingRows | None = None,
) -> list[ModelResult]:
    """One result per (model name, version), the model with the newest prediction first."""
    groups: dict[tuple[str, int], list[Prediction]] = {}
    for row in rows:
        groups.setdefault((row.model_name, row.model_version), []).append(row)
    newest = {key: max(r.created_at for r in group) for key, group in groups.items()}
    order = sorted(groups, key=lambda key: (newest[key], key), reverse=True)
    return [model_result(groups[key], method, k, series_thresholds, findings) for key in order]


# --- read side ------------------------------------------------------------------------------


def stored_uid_candidates(uid: str, key: bytes | None) -> list[str]:
    """The stored forms a caller's UID may have: with a pseudonym key, its pseudonym (the
    caller gave the original) and itself (the caller gave a pseudonym from a response)."""
    from radlens.app.pseudonym import pseudonymise_uid

    pseudonym = pseudonymise_uid(uid, key)
    return [uid] if pseudonym in (None, uid) else [pseudonym, uid]


@dataclass(frozen=True)
class SeriesView:
    """A stored series: its identity, as stored, and its results per model."""

    series_instance_uid: str
    study_instance_uid: str | None
    modality: str | None
    rows: int
    columns: int
    uids_pseudonymised: bool
    results: list[ModelResult]


def _findings_of(session: Session, where: Any) -> dict[uuid.UUID, list[PredictionFinding]]:
    """The prediction_findings rows of the predictions ``where`` selects (one query)."""
    found: dict[uuid.UUID, list[PredictionFinding]] = {}
    query = select(PredictionFinding).join(
        Prediction, Prediction.id == PredictionFinding.prediction_id
    )
    for finding in session.scalars(query.where(where)):
        found.setdefault(finding.prediction_id, []).append(finding)
    return found


def _series_view(
    rows: Sequence[Prediction],
    method: str,
    k: int,
    series_thresholds: SeriesThresholds | None = None,
    findings: FindingRows | None = None,
) -> SeriesView:
    first = min(rows, key=lambda r: (r.created_at, r.id))
    return SeriesView(
        series_instance_uid=cast(str, first.series_instance_uid),
        study_instance_uid=first.study_instance_uid,
        modality=first.modality,
        rows=first.rows,
        columns=first.columns,
        uids_pseudonymised=bool(first.uids_pseudonymised),
        results=results_by_model(rows, method, k, series_thresholds, findings),
    )


def series_results(
    session: Session,
    candidates: Sequence[str],
    method: str,
    k: int,
    series_thresholds: SeriesThresholds | None = None,
) -> SeriesView | None:
    """The series stored under one of ``candidates`` (None when there is none)."""
    where = Prediction.series_instance_uid.in_(candidates)
    rows = list(session.scalars(select(Prediction).where(where)))
    if not rows:
        return None
    # both forms stored (a site that turned pseudonymisation on mid-series): one view per form
    # would split the series, so the caller's first candidate (the pseudonym) names it
    return _series_view(rows, method, k, series_thresholds, _findings_of(session, where))


@dataclass(frozen=True)
class StudyView:
    """A stored study: its series, and per model the series with the highest score."""

    study_instance_uid: str
    series: list[SeriesView]  # highest top score first
    results: list[tuple[ModelResult, SeriesView]]  # per model: the key series' result


def study_results(
    session: Session,
    candidates: Sequence[str],
    method: str,
    k: int,
    series_thresholds: SeriesThresholds | None = None,
) -> StudyView | None:
    """The study stored under one of ``candidates``: each series aggregated; the study's result
    per model is its most positive series' (a study is as positive as its most positive
    series). Instances without a Series Instance UID are left out. None when nothing is
    stored."""
    where = Prediction.study_instance_uid.in_(candidates)
    rows = list(session.scalars(select(Prediction).where(where)))
    by_series: dict[str, list[Prediction]] = {}
    for row in rows:
        if row.series_instance_uid:
            by_series.setdefault(row.series_instance_uid, []).append(row)
    if not by_series:
        return None
    findings = _findings_of(session, where)
    views = [
        _series_view(group, method, k, series_thresholds, findings) for group in by_series.values()
    ]
    best: dict[tuple[str, int], tuple[ModelResult, SeriesView]] = {}
    for view in views:
        for result in view.results:
            key = (result.model_name, result.model_version)
            if key not in best or result.score > best[key][0].score:
                best[key] = (result, view)
    views.sort(key=lambda v: (-max(r.score for r in v.results), v.series_instance_uid))
    study_uid = next(r.study_instance_uid for r in rows if r.study_instance_uid)
    return StudyView(
        study_instance_uid=study_uid,
        series=views,
        results=sorted(
            best.values(), key=lambda pair: (pair[0].model_name, -pair[0].model_version)
        ),
    )


def series_output_uid(view: SeriesView, result: ModelResult, kind: str) -> str:
    """A UID for one DICOM output of one series result (``2.25.<uuid5>``; the series SR's SOP
    Instance UID): the same content (series, model, the key instances' predictions and the
    instance count) gives the same UID, and a series that received more instances gets a new
    one. The SR's series is the model's SR series about the source series
    (app/dicom_outputs.output_series_uid), beside its per-instance SRs."""
    from radlens.app.dicom_outputs import OUTPUT_GROUPING, output_uid

    state = ",".join(str(i.prediction.id) for i in result.key_instances)
    name = (
        f"series:{view.series_instance_uid}:{result.model_name}:{result.model_version}:"
        f"{result.instance_count}:{state}:{OUTPUT_GROUPING}"
    )
    return output_uid(uuid.uuid5(uuid.NAMESPACE_OID, name), kind, with_patient=False)

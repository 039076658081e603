"""Prediction persistence: dedupe-aware insert, lookup, filtered cursor pagination.

Services flush and never commit: the request's session dependency owns the transaction.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Table, and_, exists, or_, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Executable

from radlens.app.db import utcnow
from radlens.app.errors import InvalidCursorError, NotFoundError, UnknownFindingError
from radlens.app.tables import Prediction, PredictionFinding

T = TypeVar("T")


def find_existing(
    session: Session,
    *,
    model_name: str,
    model_version: int,
    dedupe_key: str,
    dedupe_identity: str | None = None,
) -> Prediction | None:
    """The stored prediction for this input and model, if any: the row with this identity
    (app/dedupe.py), else the row with this dedupe key (the rule of rows stored before
    migration 0010, which have no identity)."""
    same_model = (Prediction.model_name == model_name, Prediction.model_version == model_version)
    # Two lookups, each on its own unique index, rather than one OR: without statistics (a
    # fresh PostgreSQL table) the planner searched the OR as a filter over every row of the
    # model (an index scan on the model prefix; bench/dedupe.py: re-posts at 0.3-0.4x). Both can
    # exist (a pre-0010 row and a newer one stored in another pseudonymisation state): the
    # identity's row is the one the current rule enforces.
    if dedupe_identity is not None:
        by_identity = select(Prediction).where(
            *same_model, Prediction.dedupe_identity == dedupe_identity
        )
        found = session.scalars(by_identity).one_or_none()
        if found is not None:
            return found
    by_key = select(Prediction).where(*same_model, Prediction.dedupe_key == dedupe_key)
    return session.scalars(by_key).one_or_none()


def record_prediction(session: Session, prediction: Prediction) -> tuple[Prediction, bool]:
    """Insert ``prediction`` unless the same input was already predicted by the same model.

    Returns ``(stored, created)``. The unique constraints decide: a concurrent request that
    inserted the same (model, dedupe identity) or (model, dedupe key) first wins, and this one
    returns its row; so do re-posts made in different pseudonymisation states at once.

    On SQLite and PostgreSQL this is ONE statement, ``INSERT ... ON CONFLICT DO NOTHING``
    (with no conflict target, so either unique constraint may fire; a Core insert: no SELECT
    first, no SAVEPOINT, no ORM unit of work), and a SELECT only when the row was there
    already; ``prediction`` is returned as given (not added to the session). Other databases
    take the portable path: SELECT, then INSERT in a SAVEPOINT so losing the race leaves the
    request's transaction usable.
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        if prediction.id is None:
            prediction.id = uuid.uuid4()
        if prediction.created_at is None:
            prediction.created_at = utcnow()
        values = {attr.columns[0].name: getattr(prediction, attr.key) for attr in _COLUMN_ATTRS}
        # One statement object per dialect, the row as execution parameters: SQLAlchemy
        # caches its compiled form, where .values(**row) built (and cache-keyed) a new
        # statement with a bound literal per column on every call.
        stmt = _SQLITE_INSERT if dialect == "sqlite" else _POSTGRESQL_INSERT
        result = session.execute(stmt, values)
        if result.first() is not None:  # RETURNING: rowcount is -1 on psycopg
            return prediction, True
        existing = _find(session, prediction)
        if existing is None:  # the conflict was something else: a bug, not a race
            raise RuntimeError("INSERT ... ON CONFLICT DO NOTHING inserted nothing, found nothing")
        return existing, False
    return _record_portable(session, prediction)


_COLUMN_ATTRS = tuple(sa_inspect(Prediction).column_attrs)
_TABLE = cast(Table, Prediction.__table__)  # Core: no ORM unit of work on the hot path
# No conflict target: (model, dedupe_key) and (model, dedupe_identity) are both unique, and a
# targeted ON CONFLICT would raise on the other one.
_SQLITE_INSERT: Executable = sqlite_insert(_TABLE).on_conflict_do_nothing().returning(_TABLE.c.id)
_POSTGRESQL_INSERT: Executable = (
    postgresql_insert(_TABLE).on_conflict_do_nothing().returning(_TABLE.c.id)
)


def _find(session: Session, prediction: Prediction) -> Prediction | None:
    return find_existing(
        session,
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        dedupe_key=prediction.dedupe_key,
        dedupe_identity=prediction.dedupe_identity,
    )


def _record_portable(session: Session, prediction: Prediction) -> tuple[Prediction, bool]:
    return record_once(session, prediction, lambda: _find(session, prediction))


def record_once(session: Session, row: T, find: Callable[[], T | None]) -> tuple[T, bool]:
    """Add ``row`` unless ``find()`` returns a stored one; returns ``(stored, created)``.

    The insert runs in a SAVEPOINT, so a concurrent transaction that inserted the same unique
    key first wins and this one returns its row, with the caller's transaction still usable.
    """
    existing = find()
    if existing is not None:
        return existing, False
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        winner = find()
        if winner is None:  # the integrity error was something else: a bug, not a race
            raise
        return winner, False
    return row, True


def get_prediction(session: Session, prediction_id: uuid.UUID) -> Prediction:
    prediction = session.get(Prediction, prediction_id)
    if prediction is None:
        raise NotFoundError(f"no prediction with id {str(prediction_id)!r}")
    return prediction


@dataclass(frozen=True)
class PredictionFilters:
    """What a list of predictions selects: the API's ``GET /v1/predictions`` and the /ui list
    (app/ui/queries.py) both build one, and :func:`prediction_conditions` turns it into SQL
    for both, so the two lists cannot select differently."""

    study_instance_uid: str | None = None
    label: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    finding: str | None = None  # multi-label: predictions with this finding ...
    positive: bool | None = None  # ... decided positive (True) or negative (False)
    created_from: datetime | None = None  # inclusive (/ui: from the start of a day)
    in_distribution: bool | None = None  # the OOD gate's verdict; unscored rows never match


# --- multi-label findings (prediction_findings, 0007) ------------------------------------------


@dataclass(frozen=True)
class FindingValue:
    """One finding of a multi-label prediction, before it is stored."""

    name: str
    score: float
    threshold: float
    positive: bool


def record_findings(
    session: Session, prediction_id: uuid.UUID, findings: Sequence[FindingValue]
) -> None:
    """Add one ``prediction_findings`` row per finding of a newly stored prediction (flush
    only: the caller's transaction holds the prediction too)."""
    session.add_all(
        PredictionFinding(
            id=uuid.uuid4(),
            prediction_id=prediction_id,
            finding=f.name,
            score=float(f.score),
            threshold=float(f.threshold),
            positive=bool(f.positive),
        )
        for f in findings
    )
    session.flush()


def findings_of(
    session: Session, prediction_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[PredictionFinding]]:
    """The stored findings of these predictions (one query), unordered; predictions without
    findings (single-label) are absent."""
    if not prediction_ids:
        return {}
    stmt = select(PredictionFinding).where(PredictionFinding.prediction_id.in_(prediction_ids))
    found: dict[uuid.UUID, list[PredictionFinding]] = {}
    for row in session.scalars(stmt):
        found.setdefault(row.prediction_id, []).append(row)
    return found


def finding_conditions(finding: str | None, positive: bool | None) -> list[Any]:
    """``finding`` (+ ``positive``): predictions with that finding (so decided). ``positive``
    alone: multi-label predictions with at least one positive finding (true) or none (false)."""
    linked = PredictionFinding.prediction_id == Prediction.id
    if finding is not None:
        having = [linked, PredictionFinding.finding == finding]
        if positive is not None:
            having.append(PredictionFinding.positive == positive)
        return [exists().where(*having)]
    if positive is None:
        return []
    any_positive = exists().where(linked, PredictionFinding.positive.is_(True))
    if positive:
        return [any_positive]
    return [exists().where(linked), ~any_positive]


def read_findings(
    sessionmaker: Callable[[], Session], prediction_id: uuid.UUID
) -> list[PredictionFinding]:
    """:func:`findings_of` one prediction in a session of its own (blocking: a worker thread)."""
    with sessionmaker() as session:
        return findings_of(session, [prediction_id]).get(prediction_id, [])


def check_finding_filter(session: Session, finding: str | None, known: Sequence[str]) -> None:
    """Refuse (404) a finding that neither the loaded model (``known``) nor any stored
    prediction has."""
    if finding is None or finding in known:
        return
    stored = select(PredictionFinding.id).where(PredictionFinding.finding == finding).limit(1)
    if session.scalars(stored).first() is None:
        listed = ", ".join(known) if known else "none (the loaded model is single-label)"
        raise UnknownFindingError(
            f"no model finding is called {finding!r}; the loaded model's findings: {listed}"
        )


@dataclass(frozen=True)
class Cursor:
    """Position after the last item of a page, in (created_at desc, id desc) order."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), str(self.id)], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        shown = text if len(text) <= 80 else text[:77] + "..."
        try:
            padded = text + "=" * (-len(text) % 4)
            created_at_text, id_text = json.loads(base64.urlsafe_b64decode(padded.encode()))
            if not isinstance(created_at_text, str) or not isinstance(id_text, str):
                raise TypeError("a cursor holds two strings")
            created_at = datetime.fromisoformat(created_at_text)
            if created_at.tzinfo is None:
                raise ValueError("naive timestamp")
            # a cursor this service issued is in UTC; one that is not representable in UTC
            # (year 0 or 10000 once converted) was not issued here
            created_at = created_at.astimezone(UTC)
            return cls(created_at=created_at, id=uuid.UUID(id_text))
        except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidCursorError(f"cannot decode cursor {shown!r}") from exc


def as_utc(value: datetime | None) -> datetime | None:
    """Naive datetimes in query parameters are taken as UTC.

    An instant beyond datetime's range once in UTC (0001-01-01T00:00+14:00 is in year 0) is
    clamped to the first or last representable one: the filter means the same thing.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if value.year == datetime.min.year else datetime.max
        return edge.replace(tzinfo=UTC)


def list_predictions(
    session: Session, filters: PredictionFilters, *, limit: int, cursor: Cursor | None
) -> tuple[list[Prediction], Cursor | None]:
    """One page, newest first, and the cursor of the next page (None on the last)."""
    conditions = prediction_conditions(filters)
    if cursor is not None:
        conditions.append(
            or_(
                Prediction.created_at < cursor.created_at,
                and_(Prediction.created_at == cursor.created_at, Prediction.id < cursor.id),
            )
        )
    stmt = (
        select(Prediction)
        .where(*conditions)
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .limit(limit + 1)
    )
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    last = page[-1]
    return page, Cursor(created_at=last.created_at, id=last.id)


def prediction_conditions(filters: PredictionFilters) -> list[Any]:
    """The WHERE conditions of ``filters`` (an empty list selects every prediction)."""
    conditions: list[Any] = []
    if filters.study_instance_uid is not None:
        conditions.append(Prediction.study_instance_uid == filters.study_instance_uid)
    if filters.label is not None:
        conditions.append(Prediction.label == filters.label)
    if filters.model_name is not None:
        conditions.append(Prediction.model_name == filters.model_name)
    if filters.model_version is not None:
        conditions.append(Prediction.model_version == filters.model_version)
    if filters.created_after is not None:
        conditions.append(Prediction.created_at > filters.created_after)
    if filters.created_before is not None:
        conditions.append(Prediction.created_at < filters.created_before)
    conditions.extend(finding_conditions(filters.finding, filters.positive))
    if filters.created_from is not None:
        conditions.append(Prediction.created_at >= filters.created_from)
    if filters.in_distribution is not None:
        conditions.append(Prediction.in_distribution.is_(filters.in_distribution))
    return conditions

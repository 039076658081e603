"""The audit trail: append rows, read them back, and the retention purge.

Every row is written by a function of this module, in one of three ways (tested in
tests/app/test_audit.py and tests/app/test_ingest.py):
- a successful action's row is added to the action's own transaction, so there is no
  accepted write without its audit row and no audit row for a write that was rolled back:
  ``prediction_created`` (one "prediction.create" row per upload's prediction, STOW-RS
  instances included) in the PredictionWriter's transaction, ``add`` for the read routes in
  the request's session (app/auth.audit);
- a failed action (any error response once the key is known) is recorded too, by
  ``record_apart`` in its own short transaction after the action's was rolled back;
- the retention purge deletes predictions and writes one audit row per deleted prediction in
  one transaction.
Rows hold no patient identifiers: targets are prediction ids (key ids, DICOM UIDs, a refused
route), anything else given as one is withheld, and listing queries are kept with UID values
and names that are no listing parameter withheld.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from radlens.app.db import utcnow
from radlens.app.security_tables import AuditEvent
from radlens.app.tables import Prediction
from radlens.models.errors import RadlensError

logger = logging.getLogger(__name__)

CLI_ACTOR = "cli"
PREDICTION_CREATE = "prediction.create"  # an upload's prediction (each STOW-RS instance's too)
# Query parameters recorded with their value; any other parameter is recorded as name=*.
_RECORDED_VALUES = frozenset(
    {"label", "model_name", "model_version", "created_after", "created_before", "limit"}
)
# The listings' own parameters (GET /v1/predictions, /ui/predictions): any other name is what
# the client typed, perhaps the MRN or name it meant to search for (`?1234567`), so withheld.
_PARAMETER_NAMES = _RECORDED_VALUES | {
    "study_instance_uid",
    "cursor",
    "finding",
    "positive",
    "in_distribution",
    "model",
    "date_from",
    "date_to",
    "flagged",
    "ood",
    "page",
}
_QUERY_LENGTH = 512
WITHHELD = "*"
# What a target is, by action: a key id (key.create, key.revoke), a route refused for its scope
# (auth.denied: "GET /v1/predictions/{prediction_id}"), a DICOM UID (dimse.store: the refused
# instance's, as received or its pseudonym), else a prediction id. A value of another form came
# from the request (a path segment that is no prediction id: an accession number or MRN typed in
# its place) and is withheld.
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_ROUTE = re.compile(r"[A-Z]+ /[A-Za-z0-9_/{}.-]*")
_UID = re.compile(r"[0-9]+(\.[0-9]+)+")
_PREDICTION_ID = re.compile(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}")


def record(
    session: Session,
    *,
    actor: str | None,
    action: str,
    status: int,
    target: str | None = None,
    query: str | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Add one audit row to ``session`` (flushed; committed with the caller's transaction)."""
    event = add(session, actor=actor, action=action, status=status, target=target, query=query)
    if at is not None:
        event.at = at
    session.flush()
    return event


def add(
    session: Session,
    *,
    actor: str | None,
    action: str,
    status: int,
    target: str | None = None,
    query: str | None = None,
) -> AuditEvent:
    """Add one audit row to ``session`` without flushing: no I/O, safe on the event loop.

    The caller's commit (or next flush) writes it, in the caller's transaction.
    """
    event = AuditEvent(
        at=utcnow(),
        actor=actor,
        action=action[:64],
        target=safe_target(action, target),
        query=query[:_QUERY_LENGTH] if query else None,
        status=status,
    )
    session.add(event)
    return event


def safe_target(action: str, target: str | None) -> str | None:
    """``target`` (cut to its column's 64 characters) when it has the form of what ``action``
    targets, else ``*``: a path parameter that failed validation is what a client sent."""
    if not target:
        return None
    if action.startswith("key."):
        form = _KEY_ID
    elif action == "auth.denied":
        form = _ROUTE
    elif action.startswith("dimse."):
        form = _UID
    else:
        form = _PREDICTION_ID
    return target[:64] if form.fullmatch(target) else WITHHELD


def prediction_created(
    session: Session, actor: str | None, stored: Prediction, created: bool
) -> AuditEvent:
    """Add an upload's "prediction.create" row (201 new, 200 re-post) to its transaction."""
    return add(
        session,
        actor=actor,
        action=PREDICTION_CREATE,
        target=str(stored.id),
        status=201 if created else 200,
    )


def record_apart(sessionmaker: Callable[[], Session], **fields: object) -> None:
    """Write one audit row in its own transaction (a failed request's, after its own was
    rolled back); a failure to write it is logged, never raised."""
    try:
        with sessionmaker() as session:
            record(session, **fields)  # type: ignore[arg-type]
            session.commit()
    except (SQLAlchemyError, RadlensError) as exc:
        logger.warning("audit row not written: %s", type(exc).__name__)


# A recorded value must have its parameter's form: a time filter or number that is none (a
# refused ?created_after=DOE^JOHN 19610402, ?limit=<MRN>) is what the client typed in its place.
_DATE_TIME_FORM = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ][0-9:.,]{2,24}([Zz]|[ +-][0-9:]{2,5})?")
# at most 3 digits for a page size (at most 100 is accepted) and 6 for a model version: a
# longer number (an all-digit MRN typed as ?limit=12345678) is withheld (QA round 50)
_VALUE_FORMS = {
    "created_after": _DATE_TIME_FORM,
    "created_before": _DATE_TIME_FORM,
    "limit": re.compile(r"\d{1,3}"),
    "model_version": re.compile(r"\d{1,6}"),
}


def minimal_query(params: Iterable[tuple[str, str]]) -> str | None:
    """A listing's query for the audit: UIDs and cursors withheld (``name=*``), and the name of
    a parameter the listings do not have too (``*=*``); a time or number that has not the
    form of one is withheld too."""
    parts = []
    for name, value in params:
        form = _VALUE_FORMS.get(name)
        recorded = name in _RECORDED_VALUES and (form is None or form.fullmatch(value))
        shown = value if recorded else WITHHELD
        parts.append(f"{name if name in _PARAMETER_NAMES else WITHHELD}={shown}")
    return "&".join(parts) or None


@dataclass(frozen=True)
class AuditFilter:
    since: datetime | None = None
    action: str | None = None
    actor: str | None = None
    limit: int = 1000


def events(session: Session, where: AuditFilter) -> list[AuditEvent]:
    """Audit rows, oldest first."""
    stmt = select(AuditEvent)
    if where.since is not None:
        stmt = stmt.where(AuditEvent.at >= where.since)
    if where.action is not None:
        stmt = stmt.where(AuditEvent.action == where.action)
    if where.actor is not None:
        stmt = stmt.where(AuditEvent.actor == where.actor)
    stmt = stmt.order_by(AuditEvent.id.desc()).limit(where.limit)
    return list(reversed(list(session.scalars(stmt))))


def expired_predictions(session: Session, *, retention_days: int, now: datetime) -> list[uuid.UUID]:
    """Ids of predictions created more than ``retention_days`` before ``now``."""
    cutoff = now - timedelta(days=retention_days)
    stmt = select(Prediction.id).where(Prediction.created_at < cutoff).order_by(Prediction.id)
    return list(session.scalars(stmt))


def purge(
    session: Session,
    *,
    retention_days: int,
    now: datetime | None = None,
    dry_run: bool = False,
    actor: str = CLI_ACTOR,
) -> list[uuid.UUID]:
    """Delete predictions older than ``retention_days``; one audit row per deleted id.

    Returns the ids (that would be) deleted. With ``dry_run`` nothing is written.
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1. Received: {retention_days!r}")
    now = now or utcnow()
    ids = expired_predictions(session, retention_days=retention_days, now=now)
    if dry_run or not ids:
        return ids
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        session.execute(delete(Prediction).where(Prediction.id.in_(chunk)))
        for prediction_id in chunk:
            record(
                session,
                actor=actor,
                action="prediction.purge",
                target=str(prediction_id),
                query=f"retention_days={retention_days}",
                status=200,
                at=now,
            )
    forget_empty_series(session)
    return ids


def forget_empty_series(session: Session) -> None:
    """Delete the series records (app/series.py) no stored prediction belongs to any more, so
    a purge leaves none of the purged series' UIDs behind."""
    from sqlalchemy import exists

    from radlens.app.tables import PredictionSeries

    session.execute(
        delete(PredictionSeries).where(
            ~exists().where(Prediction.series_instance_uid == PredictionSeries.series_instance_uid)
        )
    )

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
  the transaction that deletes it (one per batch of :data:`PURGE_BATCH` predictions).
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
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from radlens.app.db import READ_ONLY, utcnow
from radlens.app.security_tables import AuditEvent
from radlens.app.tables import Explanation, Prediction, PredictionFinding, PredictionSeries
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


# --- retention: `radlens purge` (docs/security.md "Retention") ---------------------------------

PREDICTION_PURGE = "prediction.purge"
INBOX_PURGE = "dimse.inbox.purge"  # unreadable DIMSE inbox files past retention (one row a run)
PURGE_BATCH = 1000  # predictions per transaction: no lock held over the whole purge
_IN_CHUNK = 500  # values in one IN (...) list of a look-up


@dataclass
class PurgeCounts:
    """What a purge deleted (or, with ``dry_run``, would delete)."""

    predictions: int = 0
    explanations: int = 0  # Grad-CAM overlays (their pixels)
    findings: int = 0  # prediction_findings rows
    series: int = 0  # prediction_series records left with no prediction (their UIDs)
    orphans: int = 0  # explanations/findings rows of a prediction deleted outside radlens
    outbox_entries: int = 0  # queued SR/SC of purged predictions, dropped undelivered
    outbox_busy: int = 0  # such entries another process was sending: the next run drops them
    inbox_files: int = 0  # unreadable DIMSE inbox files queued before the cutoff
    # queued DIMSE inbox files of purged predictions (a crash's leftovers: replayed at the
    # service's next start, they would store them again)
    inbox_predicted: int = 0
    batches: int = 0


def retention_cutoff(retention_days: int, now: datetime | None = None) -> datetime:
    """Predictions created before this are past retention."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1. Received: {retention_days!r}")
    return (now or utcnow()) - timedelta(days=retention_days)


def expired_predictions(session: Session, *, retention_days: int, now: datetime) -> list[uuid.UUID]:
    """Ids of predictions created more than ``retention_days`` before ``now``."""
    cutoff = retention_cutoff(retention_days, now)
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
    """Delete predictions older than ``retention_days`` in the caller's one transaction, with
    everything the database holds of them; one audit row per deleted id.

    Returns the ids (that would be) deleted. With ``dry_run`` nothing is written. `radlens
    purge` uses :func:`retention_purge` (a transaction per batch, and the spool files)."""
    now = now or utcnow()
    cutoff = retention_cutoff(retention_days, now)
    if dry_run:
        return expired_predictions(session, retention_days=retention_days, now=now)
    deleted: list[uuid.UUID] = []
    counts = PurgeCounts()
    while rows := _expired_batch(session, cutoff, PURGE_BATCH):
        deleted += _purge_rows(session, rows, now, retention_days, actor, counts)
    _sweep(session, counts)
    return deleted


def retention_purge(
    sessionmaker: Callable[[], Session],
    *,
    retention_days: int,
    outbox_dir: Path | None = None,
    inbox_dir: Path | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = PURGE_BATCH,
    actor: str = CLI_ACTOR,
    inbox_key: bytes | None = None,
) -> PurgeCounts:
    """`radlens purge`: delete the predictions older than ``retention_days`` and everything
    radlens keeps of them, or (``dry_run``) count it all.

    Database: transactions of ``batch_size`` predictions, each deleting them with their
    explanations, findings and emptied series records and writing their ``prediction.purge``
    rows, so an interrupted purge leaves every prediction whole or gone. Then the files, after
    those commits: the outbox's queued SR/SC of purged predictions are dropped undelivered
    (app/outbox.py ``drop_purged_entries``) and the DIMSE inbox's unreadable files queued before
    the cutoff deleted. A re-run finishes what an interrupted one left: the outbox entries are
    matched against the ``prediction.purge`` rows, not against this run's ids.

    Before all that, the DIMSE inbox's queued files whose instance has a prediction to purge
    (a crash between that prediction's commit and the file's deletion left them; the service
    would predict them again at its next start) are deleted: first, so that no interruption
    leaves such a file behind a purged prediction. ``inbox_key``: RADLENS_UID_PSEUDONYM_KEY,
    which the inbox is encrypted under."""
    now = now or utcnow()
    cutoff = retention_cutoff(retention_days, now)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1. Received: {batch_size!r}")
    predicted = 0
    if inbox_dir is not None:
        predicted = _purge_inbox_predicted(
            sessionmaker, Path(inbox_dir), inbox_key, cutoff, retention_days, now, dry_run, actor
        )
    if dry_run:
        with sessionmaker() as session:
            session.connection(execution_options=READ_ONLY)  # SQLite: a snapshot, no write lock
            counts = _would_purge(session, cutoff)
    else:
        counts = PurgeCounts()
        while True:
            with sessionmaker() as session:
                rows = _expired_batch(session, cutoff, batch_size)
                if not rows:
                    break
                _purge_rows(session, rows, now, retention_days, actor, counts)
                session.commit()
            counts.batches += 1
        with sessionmaker() as session:
            _sweep(session, counts)
            session.commit()
            _checkpoint(session)
    if outbox_dir is not None:
        from radlens.app.outbox import drop_purged_entries

        counts.outbox_entries, counts.outbox_busy = drop_purged_entries(
            Path(outbox_dir), _purged_or_expired(sessionmaker, cutoff), dry_run=dry_run
        )
    if inbox_dir is not None:
        counts.inbox_files = _purge_inbox(
            sessionmaker, Path(inbox_dir), cutoff, retention_days, now, dry_run, actor
        )
    counts.inbox_predicted = predicted
    return counts


def _expired_batch(
    session: Session, cutoff: datetime, limit: int
) -> list[tuple[uuid.UUID, str | None]]:
    """The oldest ``limit`` expired predictions: id and Series Instance UID (index (created_at,
    id))."""
    stmt = (
        select(Prediction.id, Prediction.series_instance_uid)
        .where(Prediction.created_at < cutoff)
        .order_by(Prediction.created_at, Prediction.id)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in session.execute(stmt)]


def _rowcount(result: Any) -> int:
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


def _purge_rows(
    session: Session,
    rows: list[tuple[uuid.UUID, str | None]],
    now: datetime,
    retention_days: int,
    actor: str,
    counts: PurgeCounts,
) -> list[uuid.UUID]:
    """Delete these predictions with their explanations, findings and series records left
    empty, and add a ``prediction.purge`` row for each one deleted here (another purge running
    at the same time may have taken some: RETURNING says which were ours)."""
    ids = [prediction_id for prediction_id, _ in rows]
    if session.get_bind().dialect.name == "sqlite":
        # overwrite what is deleted with zeros: else the rows' bytes (an overlay's pixels, the
        # UIDs) stay in the file's free pages until reused (a per-connection setting)
        session.execute(text("PRAGMA secure_delete=ON"))
    # the children explicitly (not left to ON DELETE CASCADE): counted, and gone on a SQLite
    # connection without foreign keys too
    counts.explanations += _rowcount(
        session.execute(delete(Explanation).where(Explanation.prediction_id.in_(ids)))
    )
    counts.findings += _rowcount(
        session.execute(delete(PredictionFinding).where(PredictionFinding.prediction_id.in_(ids)))
    )
    deleted = list(
        session.scalars(delete(Prediction).where(Prediction.id.in_(ids)).returning(Prediction.id))
    )
    counts.predictions += len(deleted)
    series = sorted({uid for _, uid in rows if uid})
    for start in range(0, len(series), _IN_CHUNK):
        counts.series += _delete_empty_series(
            session, PredictionSeries.series_instance_uid.in_(series[start : start + _IN_CHUNK])
        )
    if deleted:
        query = f"retention_days={retention_days}"
        session.execute(
            insert(AuditEvent),
            [
                {
                    "at": now,
                    "actor": actor,
                    "action": PREDICTION_PURGE,
                    "target": str(prediction_id),
                    "query": query,
                    "status": 200,
                }
                for prediction_id in deleted
            ],
        )
    return deleted


def _has_prediction() -> Any:
    return exists().where(Prediction.series_instance_uid == PredictionSeries.series_instance_uid)


def _delete_empty_series(session: Session, *where: Any) -> int:
    """Delete the series records (of ``where``) that no prediction belongs to.

    PostgreSQL (READ COMMITTED): an upload holds its series' record FOR KEY SHARE from reading
    it to its commit (app/series.py). One ``DELETE ... WHERE NOT EXISTS`` would judge the series
    empty on a snapshot taken before that upload's prediction committed, and -- waiting for the
    upload's lock, then deleting a row the upload only locked -- delete it anyway (QA 61). So
    the empty records are locked first, skipping those an upload holds (it never waits for one,
    nor deadlocks with one), and deleted by a later statement, whose snapshot sees every
    prediction committed before the lock was taken. A record skipped and left empty (the upload
    rolled back) goes in the next purge's sweep. SQLite serialises the writers."""
    empty = [~_has_prediction(), *where]
    if session.get_bind().dialect.name == "postgresql":
        locked = list(
            session.scalars(
                select(PredictionSeries.series_instance_uid)
                .where(*empty)
                .order_by(PredictionSeries.series_instance_uid)
                .with_for_update(skip_locked=True)
            )
        )
        if not locked:
            return 0
        deleted = 0
        for start in range(0, len(locked), _IN_CHUNK):
            chunk = locked[start : start + _IN_CHUNK]
            deleted += _rowcount(
                session.execute(
                    delete(PredictionSeries).where(
                        PredictionSeries.series_instance_uid.in_(chunk), ~_has_prediction()
                    )
                )
            )
        return deleted
    return _rowcount(session.execute(delete(PredictionSeries).where(*empty)))


def _sweep(session: Session, counts: PurgeCounts) -> None:
    """What no batch reached: series records no prediction belongs to any more (the last
    instance purged while an upload of the series was being written), and, on SQLite, the
    explanations and findings of predictions deleted with foreign keys off (the sqlite3 shell):
    their overlay pixels, reachable by no route. PostgreSQL enforces the keys: none there."""
    counts.series += _delete_empty_series(session)
    if session.get_bind().dialect.name != "sqlite":
        return
    for child in (Explanation, PredictionFinding):
        counts.orphans += _rowcount(
            session.execute(
                delete(child).where(~exists().where(Prediction.id == child.prediction_id))
            )
        )


def _checkpoint(session: Session) -> None:
    """SQLite in WAL mode: copy the zeroed pages into the database file and empty the WAL
    (TRUNCATE), so the purged rows' bytes leave both files now, not at some later checkpoint.
    PASSIVE would not do: it leaves the WAL file's old frames (the rows as once written) in
    place until new writes happen to overwrite them.

    Without waiting (QA 62): a TRUNCATE checkpoint waits for every reader of an older snapshot,
    and while it waits SQLite holds off every new writer: with the connection's 15 s busy
    timeout, one slow read stalled the service's writes for seconds, even when nothing was
    purged. So each attempt has no busy timeout (where a reader or writer is in the way it
    copies what it can, PASSIVE-like, and gives up at once), and a few are made 0.1 s apart,
    writers proceeding in between. Still partial: logged; the WAL keeps those frames until a
    later checkpoint that completes (the next purge's, which runs even with nothing to delete).
    """
    import time

    from radlens.app.db import SQLITE_BUSY_TIMEOUT_MS

    bind = session.get_bind()
    if bind.dialect.name != "sqlite":
        return
    attempts, pause_s = 20, 0.1
    busy: Any = None
    raw = bind.engine.raw_connection()  # isolation_level None (app/db.py): no transaction around it
    try:
        cursor = raw.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout")
            row = cursor.fetchone()
            busy_timeout_ms = int(row[0]) if row else SQLITE_BUSY_TIMEOUT_MS
            cursor.execute("PRAGMA busy_timeout = 0")
            try:
                for attempt in range(attempts):
                    if attempt:
                        time.sleep(pause_s)
                    cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    busy = cursor.fetchone()
                    if not (busy and busy[0]):
                        break
            finally:  # the pooled connection goes back with the service's timeout
                cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        finally:
            cursor.close()
    finally:
        raw.close()
    if busy and busy[0]:
        logger.info(
            "purge: the WAL checkpoint was partial (a reader or writer was busy); "
            "the next purge empties the WAL"
        )


def _would_purge(session: Session, cutoff: datetime) -> PurgeCounts:
    """The database part of a dry run: what :func:`retention_purge` would delete."""
    expired = select(Prediction.id).where(Prediction.created_at < cutoff)
    counts = PurgeCounts()
    counts.predictions = _count(session, select(func.count()).select_from(expired.subquery()))
    for child, field in ((Explanation, "explanations"), (PredictionFinding, "findings")):
        setattr(
            counts,
            field,
            _count(
                session,
                select(func.count()).select_from(child).where(child.prediction_id.in_(expired)),
            ),
        )
    # every series with no prediction created at or after the cutoff (purged ones and any left)
    counts.series = _count(
        session,
        select(func.count())
        .select_from(PredictionSeries)
        .where(
            ~exists().where(
                Prediction.series_instance_uid == PredictionSeries.series_instance_uid,
                Prediction.created_at >= cutoff,
            )
        ),
    )
    if session.get_bind().dialect.name == "sqlite":
        for child in (Explanation, PredictionFinding):
            counts.orphans += _count(
                session,
                select(func.count())
                .select_from(child)
                .where(~exists().where(Prediction.id == child.prediction_id)),
            )
    return counts


def _count(session: Session, stmt: Any) -> int:
    return int(session.scalar(stmt) or 0)


def _purged_or_expired(
    sessionmaker: Callable[[], Session], cutoff: datetime
) -> Callable[[set[str]], set[str]]:
    """Of the prediction ids given (an outbox's), those purged (a ``prediction.purge`` row, of
    this run or an earlier, interrupted one) or still to be (created before ``cutoff``: a dry
    run). A spool shared with another database matches none of its rows."""

    def select_ids(given: set[str]) -> set[str]:
        known: dict[str, str] = {}
        for value in given:
            try:
                known[str(uuid.UUID(value))] = value
            except ValueError:
                continue
        keys = sorted(known)
        found: set[str] = set()
        with sessionmaker() as session:
            session.connection(execution_options=READ_ONLY)
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start : start + _IN_CHUNK]
                found.update(
                    t
                    for t in session.scalars(
                        select(AuditEvent.target).where(
                            AuditEvent.action == PREDICTION_PURGE, AuditEvent.target.in_(chunk)
                        )
                    )
                    if t is not None
                )
                found.update(
                    str(i)
                    for i in session.scalars(
                        select(Prediction.id).where(
                            Prediction.id.in_([uuid.UUID(k) for k in chunk]),
                            Prediction.created_at < cutoff,
                        )
                    )
                )
        return {known[k] for k in found if k in known}

    return select_ids


def _purge_inbox_predicted(
    sessionmaker: Callable[[], Session],
    directory: Path,
    key: bytes | None,
    cutoff: datetime,
    retention_days: int,
    now: datetime,
    dry_run: bool,
    actor: str,
) -> int:
    """Delete the inbox's queued files whose instance has a prediction created before
    ``cutoff`` and after the file was queued (matched by the sha256 of its bytes, the row's
    ``input_sha256``; such a file was queued before its prediction, so before the cutoff too).
    A prediction of the same bytes made before the file was queued is another reception's (the
    instance sent again, or by a second sender): the file is owed its own and is kept (QA 82).
    Audited like the unreadable ones (``predicted_files=K``), the row committed first."""
    from radlens.app.dimse_inbox import (
        QUEUED_BEFORE_PREDICTION_SLACK_S,
        queued_at,
        queued_digests_before,
    )

    digests = queued_digests_before(directory, cutoff.timestamp(), key)
    if not digests:
        return 0
    keys = sorted(digests)
    latest: dict[str, float] = {}  # per digest, its latest prediction before the cutoff
    with sessionmaker() as session:
        session.connection(execution_options=READ_ONLY)
        for start in range(0, len(keys), _IN_CHUNK):
            rows = session.execute(
                select(Prediction.input_sha256, func.max(Prediction.created_at))
                .where(
                    Prediction.input_sha256.in_(keys[start : start + _IN_CHUNK]),
                    Prediction.created_at < cutoff,
                )
                .group_by(Prediction.input_sha256)
            )
            latest.update((digest, made.timestamp()) for digest, made in rows)
    paths = [
        path
        for digest in sorted(latest)
        for path in digests[digest]
        if latest[digest] >= (queued_at(path) or 0.0) - QUEUED_BEFORE_PREDICTION_SLACK_S
    ]
    if not dry_run:
        _audit_then_unlink(sessionmaker, paths, "predicted_files", retention_days, now, actor)
    return len(paths)


def _purge_inbox(
    sessionmaker: Callable[[], Session],
    directory: Path,
    cutoff: datetime,
    retention_days: int,
    now: datetime,
    dry_run: bool,
    actor: str,
) -> int:
    """Delete the DIMSE inbox's unreadable files queued before ``cutoff``; their audit row is
    committed first (a crash in between audits a deletion twice, never not at all)."""
    from radlens.app.dimse_inbox import unreadable_before

    paths = unreadable_before(directory, cutoff.timestamp())
    if not dry_run:
        _audit_then_unlink(sessionmaker, paths, "files", retention_days, now, actor)
    return len(paths)


def _audit_then_unlink(
    sessionmaker: Callable[[], Session],
    paths: list[Path],
    counted: str,
    retention_days: int,
    now: datetime,
    actor: str,
) -> None:
    """Delete inbox ``paths`` after committing their one ``dimse.inbox.purge`` row (``counted``
    names the count in its query): a crash in between audits a deletion twice, never not at
    all. Nothing to delete: no row."""
    if not paths:
        return
    with sessionmaker() as session:
        record(
            session,
            actor=actor,
            action=INBOX_PURGE,
            status=200,
            query=f"{counted}={len(paths)}&retention_days={retention_days}",
            at=now,
        )
        session.commit()
    for path in paths:
        path.unlink(missing_ok=True)

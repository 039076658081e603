"""QA 61: an upload into a series racing `radlens purge` (PostgreSQL, READ COMMITTED).

An upload reads its series' record (app/series.py ``register_instance``: the attributes the
first instance recorded) and commits its prediction; a purge that deletes the series' last
expired prediction deletes the record as "empty" when no prediction of the series is
*committed*. Interleaved -- the upload has read the record, the purge deletes it, the upload
commits -- the series had predictions and no record, and its next instance re-created it from
itself: an instance unlike the series (other rows/columns) was accepted (the first-instance
check lost). Now the upload holds the record FOR KEY SHARE until it commits, and the purge
deletes only the records it could lock (SKIP LOCKED: it never waits for an upload), checking
them for predictions again in a later statement.

The interleaving is made deterministic by holding the upload's transaction open (the writer's
own steps: ``register_instance``, the prediction's insert) while the purge runs in a thread.
SQLite is not affected: every write transaction begins IMMEDIATE (app/db.py), so the upload
holds the database's write lock from its first statement and the purge waits for its commit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from radlens.app import audit, series
from radlens.app.tables import Prediction, PredictionSeries
from tests.app.conftest import new_uid, prediction_row

RETENTION = 30


@pytest.fixture()
def db(migrated_database_url: str) -> Iterator[tuple[Engine, Any]]:
    from radlens.app.db import make_engine, make_sessionmaker

    engine = make_engine(migrated_database_url)
    try:
        yield engine, make_sessionmaker(engine)
    finally:
        engine.dispose()


def _instance(series_uid: str, *, size: int = 8, days_old: int = 0) -> Prediction:
    row = prediction_row(f"sop:{new_uid()}")
    row.series_instance_uid = series_uid
    row.study_instance_uid = "2.25.61"
    row.modality = "CT"
    row.rows = row.columns = size
    row.created_at = datetime.now(UTC) - timedelta(days=days_old)
    return row


def _store(sessionmaker: Any, prediction: Prediction) -> None:
    """What the writer does for one instance (app/writer.py), committed."""
    with sessionmaker() as session:
        series.register_instance(session, prediction)
        session.add(prediction)
        session.commit()


def _waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
        )


def _purge_while_open(engine: Engine, sessionmaker: Any, upload: Session) -> None:
    """Run the purge in a thread while ``upload``'s transaction is open; commit the upload once
    the purge has finished or waits for one of its locks, then let the purge finish."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            audit.retention_purge(sessionmaker, retention_days=RETENTION)
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    purge = threading.Thread(target=run)
    purge.start()
    while purge.is_alive() and not _waiting_on_a_lock(engine):
        purge.join(0.02)
    upload.commit()
    upload.close()
    purge.join()
    assert not failures, failures


def _record(sessionmaker: Any, uid: str) -> Any:
    with sessionmaker() as session:
        return session.get(PredictionSeries, uid)


def _open_upload(sessionmaker: Any, prediction: Prediction) -> Session:
    """An upload's transaction between reading its series' record and its commit."""
    session: Session = sessionmaker()
    series.register_instance(session, prediction)
    session.add(prediction)
    session.flush()
    return session


postgres_only = pytest.mark.usefixtures("postgres_backend")


@pytest.fixture()
def postgres_backend(databases: Any) -> None:
    if databases.backend != "postgresql":
        pytest.skip("a PostgreSQL race (READ COMMITTED); SQLite serialises writers (last test)")


@postgres_only
def test_an_upload_keeps_its_series_record_when_purge_empties_the_series_meanwhile(
    db: tuple[Engine, Any],
) -> None:
    engine, sessionmaker = db
    uid = new_uid()
    old = _instance(uid, days_old=RETENTION + 5)
    _store(sessionmaker, old)  # the series' first instance records it: 8 x 8

    upload = _open_upload(sessionmaker, _instance(uid))  # read the record, not yet committed
    _purge_while_open(engine, sessionmaker, upload)

    with sessionmaker() as session:
        left = list(session.scalars(select(Prediction.id)))
    assert old.id not in left and len(left) == 1, left
    assert _record(sessionmaker, uid) is not None, "the series has a prediction and no record"
    # the consequence: the series' next instance is checked against its record
    with pytest.raises(series.SeriesMismatchError):
        _store(sessionmaker, _instance(uid, size=16))


@postgres_only
def test_the_sweep_spares_a_record_an_upload_has_read(db: tuple[Engine, Any]) -> None:
    """A record left with no prediction (an earlier race, a rolled-back upload) is swept by
    the next purge, but not while an upload that read it is being written."""
    engine, sessionmaker = db
    uid = new_uid()
    _store(sessionmaker, _instance(uid))
    with sessionmaker() as session:  # the record alone, as an earlier race left it
        session.execute(text("DELETE FROM predictions"))
        session.commit()

    upload = _open_upload(sessionmaker, _instance(uid))
    _purge_while_open(engine, sessionmaker, upload)

    assert _record(sessionmaker, uid) is not None
    with pytest.raises(series.SeriesMismatchError):
        _store(sessionmaker, _instance(uid, size=16))


@postgres_only
def test_an_upload_after_the_purge_deleted_the_record_records_it_again(
    db: tuple[Engine, Any],
) -> None:
    """The other order: the purge deleted the record (not yet committed) when the upload reads
    it; the upload waits for the purge and records the series from itself (its only
    instance now)."""
    engine, sessionmaker = db
    uid = new_uid()
    _store(sessionmaker, _instance(uid, days_old=RETENTION + 5))
    purge: Session = sessionmaker()
    assert len(audit.purge(purge, retention_days=RETENTION)) == 1  # open, record deleted
    failures: list[BaseException] = []
    newcomer = _instance(uid, size=16)

    def upload() -> None:
        try:
            _store(sessionmaker, newcomer)
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    while thread.is_alive() and not _waiting_on_a_lock(engine):
        thread.join(0.02)
    purge.commit()
    purge.close()
    thread.join()
    assert not failures, failures
    record = _record(sessionmaker, uid)
    assert record is not None and (record.rows, record.columns) == (16, 16)


def test_sqlite_serialises_an_upload_and_the_purge(databases: Any, db: tuple[Engine, Any]) -> None:
    """SQLite: from the upload's first statement on its series record to its commit, no other
    connection can begin a write (the purge's transactions begin IMMEDIATE too)."""
    if databases.backend != "sqlite":
        pytest.skip("SQLite's write lock; PostgreSQL: the tests above")
    engine, sessionmaker = db
    uid = new_uid()
    _store(sessionmaker, _instance(uid, days_old=RETENTION + 5))
    upload = _open_upload(sessionmaker, _instance(uid))
    other = sqlite3.connect(engine.url.database or "", timeout=0, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
    upload.commit()
    upload.close()
    audit.retention_purge(sessionmaker, retention_days=RETENTION)
    assert _record(sessionmaker, uid) is not None

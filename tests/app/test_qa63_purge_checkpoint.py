"""`radlens purge`'s final SQLite WAL checkpoint no longer holds off the service's writes (QA
62/63). It was ``PRAGMA wal_checkpoint(TRUNCATE)`` on a connection with the service's 15 s busy
timeout: with any reader holding an older snapshot (a request listing predictions) it waited
for that reader, and SQLite refused every new writer meanwhile (5-14 s measured), even when
nothing was purged. Now each attempt gives up at once (app/audit.py ``_checkpoint``), and the
privacy property it exists for stays true when nothing is in the way: the purged bytes are in
neither the database file nor the WAL afterwards. SQLite only: PostgreSQL has no such step."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event

from radlens.app import audit
from radlens.app.db import SQLITE_BUSY_TIMEOUT_MS, make_engine, make_sessionmaker
from radlens.app.migrate import upgrade
from radlens.app.tables import Explanation
from tests.app.conftest import prediction_row

MARKER = b"QA63-OVERLAY-BYTES-"


def _database(tmp_path: Path, **engine_kwargs: Any) -> tuple[Path, Any]:
    path = tmp_path / "radlens.db"
    upgrade(f"sqlite:///{path}")
    return path, make_engine(f"sqlite:///{path}", **engine_kwargs)


def _add_expired_prediction(sessionmaker: Any, marker: bytes = MARKER) -> None:
    with sessionmaker() as s:
        row = prediction_row("qa63-" + marker.decode())
        row.created_at = datetime.now(UTC) - timedelta(days=30)
        s.add(row)
        s.flush()
        s.add(
            Explanation(
                prediction_id=row.id,
                layer="conv",
                class_index=1,
                class_name="abnormal",
                score=0.9,
                png=marker * 400,
            )
        )
        s.commit()


def _write(path: Path, busy_timeout_s: float) -> None:
    """A write of the service: one audit row, in a transaction of its own."""
    writer = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO audit_events(at, actor, action, status) "
            "VALUES ('2026-12-07 00:00:00.000000', 'qa63', 'test.write', 200)"
        )
        writer.execute("COMMIT")
    finally:
        writer.close()


def test_a_write_during_the_purge_checkpoint_does_not_wait_for_a_reader(tmp_path: Path) -> None:
    path, engine = _database(tmp_path)
    checkpointing = threading.Event()

    @event.listens_for(engine, "connect")
    def trace(dbapi_connection: Any, record: Any) -> None:
        def seen(statement: str) -> None:
            if "wal_checkpoint" in statement:
                checkpointing.set()

        dbapi_connection.set_trace_callback(seen)

    sessionmaker = make_sessionmaker(engine)
    _add_expired_prediction(sessionmaker)
    # a request reading predictions: its snapshot predates the purge's commits
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM predictions").fetchone()
    failures: list[BaseException] = []

    def purge() -> None:
        try:
            audit.retention_purge(sessionmaker, retention_days=7)
        except BaseException as exc:  # reported below
            failures.append(exc)

    thread = threading.Thread(target=purge, daemon=True)
    try:
        thread.start()
        assert checkpointing.wait(30), "the purge never reached its checkpoint"
        time.sleep(0.3)  # into the checkpoint (the old one then waited 15 s for the reader)
        try:
            _write(path, busy_timeout_s=1.0)
        except sqlite3.OperationalError as exc:
            failures.append(exc)
    finally:
        reader.execute("COMMIT")
        reader.close()
        thread.join(60)
        engine.dispose()
    assert not thread.is_alive()
    assert failures == [], failures


def test_the_purged_bytes_leave_the_database_and_its_wal(tmp_path: Path) -> None:
    # one pooled connection: the checkpoint's, checked afterwards for the service's timeout
    path, engine = _database(tmp_path, pool_size=1, max_overflow=0, pool_timeout=10)
    try:
        sessionmaker = make_sessionmaker(engine)
        _add_expired_prediction(sessionmaker)
        wal = Path(f"{path}-wal")
        assert MARKER in path.read_bytes() + wal.read_bytes()
        counts = audit.retention_purge(sessionmaker, retention_days=7)
        assert (counts.predictions, counts.explanations) == (1, 1)
        assert MARKER not in path.read_bytes()
        assert not wal.exists() or wal.stat().st_size == 0  # TRUNCATE: the old frames gone
        with engine.connect() as conn:
            timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert timeout == SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()

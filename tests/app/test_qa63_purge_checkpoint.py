"""`radlens purge`'s final SQLite WAL checkpoint no longer holds off the service's writes (QA
62/63). It was ``PRAGMA wal_checkpoint(TRUNCATE)`` on a connection with the service's 15 s busy
timeout: with any reader holding an older snapshot (a request listing predictions) it waited
for that reader, and SQLite refused every new writer meanwhile (5-14 s measured), even when
nothing was purged. Now each attempt gives up at once (app/audit.py ``_checkpoint``), and the
privacy property it exists for stays true when nothing is in the way: the purged bytes are in
neither the database file nor the WAL afterwards. SQLite only: PostgreSQL has no such step."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def _write(path: Path) -> None:
    """A write of the service: one audit row, in a transaction of its own. It does not wait
    for the lock at all (timeout 0): it fails unless nobody holds the write lock right now."""
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
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
    """No stopwatch (QA 96): each checkpoint attempt the purge makes is recorded with the busy
    timeout of its connection as it runs. A reader of an older snapshot is in the way of the
    first attempt; that attempt must not wait for it (busy timeout 0: while a TRUNCATE
    checkpoint waits, SQLite refuses every new writer) and must come back partial, a write must
    get the lock at once before the next attempt, and the purge's later attempt, the reader
    gone, empties the WAL. The old checkpoint ran under the service's 15 s timeout."""
    attempts: list[tuple[int, tuple[int, ...]]] = []  # (busy timeout ms, checkpoint's answer)
    written: list[int] = []  # the attempt after which the write got in

    class RecordingCursor(sqlite3.Cursor):
        timeout_ms: int | None = None  # set while a checkpoint's answer is yet to be fetched

        def execute(self, sql: str, parameters: Any = (), /) -> Any:
            if "wal_checkpoint" in sql:
                self.timeout_ms = self.connection.execute("PRAGMA busy_timeout").fetchone()[0]
            return super().execute(sql, parameters)

        def fetchone(self) -> Any:
            row = super().fetchone()
            if self.timeout_ms is not None:
                attempts.append((self.timeout_ms, tuple(row or ())))
                self.timeout_ms = None
                if len(attempts) == 1:  # between the first attempt and the next
                    try:
                        _write(path)
                        written.append(len(attempts))
                    finally:
                        reader.execute("COMMIT")  # the reader's request ends
            return row

    class RecordingConnection(sqlite3.Connection):
        def cursor(self, factory: Any = None) -> Any:
            return super().cursor(factory or RecordingCursor)

    path, engine = _database(tmp_path, connect_args={"factory": RecordingConnection})
    # a request reading predictions: its snapshot predates the purge's commits
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        sessionmaker = make_sessionmaker(engine)
        _add_expired_prediction(sessionmaker)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM predictions").fetchone()
        audit.retention_purge(sessionmaker, retention_days=7)
    finally:
        if reader.in_transaction:
            reader.execute("COMMIT")
        reader.close()
        engine.dispose()
    assert len(attempts) >= 2, attempts
    # every attempt gave up at once where something was in the way: no busy timeout
    assert [timeout_ms for timeout_ms, _ in attempts] == [0] * len(attempts), attempts
    assert attempts[0][1][0] == 1, attempts  # the reader was in the way: partial, not waited
    assert written == [1]  # the writer got the lock at once, between attempts
    assert attempts[-1][1][0] == 0, attempts  # the reader gone: the checkpoint completed
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


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

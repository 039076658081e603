"""SQLAlchemy 2.0 base, engine and sessions for the service.

The tables themselves are in ``app/tables.py``; Alembic (``migrations/``) builds them, the
service never calls ``create_all``. Sessions never commit in service code: the request's
session dependency (``app/deps.py``) owns the one transaction per request.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base: every table shares one MetaData with a naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive
    UTC (which keeps their text order equal to time order) and come back tagged UTC.
    Naive datetimes are refused on the way in: a silent local-time guess would corrupt order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"UTCDateTime needs a timezone-aware datetime. Received: {value!r}")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


DEFAULT_CONNECT_TIMEOUT_S = 10


def make_engine(
    database_url: str, *, connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S, **kwargs: Any
) -> Engine:
    """Create the engine; for a SQLite file, create its directory and fix its transactions.

    A server database gets ``connect_timeout_s`` as its driver's connect timeout (unless the
    URL sets ``connect_timeout`` itself): libpq's default is to wait for ever, so a database
    host that stops answering (a partition, a firewall dropping packets, a server that
    accepts and then hangs) would hold every request, readiness probe and metrics scrape that
    needs a new connection until the kernel abandons the TCP connect, minutes later, instead
    of failing fast into the service's 503.

    pysqlite begins transactions lazily on its own, which breaks SAVEPOINT (used to survive
    a duplicate-insert race); the SQLAlchemy-documented fix is to let SQLAlchemy emit BEGIN.
    It emits BEGIN IMMEDIATE: two deferred transactions that both read and then write
    deadlock in SQLite ("database is locked" at once, no waiting), whereas immediate ones
    queue on the write lock within the busy timeout. Request transactions are kept short.

    Every SQLite connection also sets ``busy_timeout`` (a writer waits up to
    ``SQLITE_BUSY_TIMEOUT_MS`` for the lock instead of failing) and, for a file, WAL journal
    mode: readers never block the writer's commit and the writer never blocks readers.
    ``synchronous=NORMAL`` is WAL's recommended setting (no fsync per commit; a commit
    survives a crash of the service, the last ones may be lost on power loss).
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _fix_sqlite_transactions(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    # libpq's keyword (psycopg, psycopg2); another driver (pg8000) has its own, left alone
    if url.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in url.query:
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("connect_timeout", connect_timeout_s)
        kwargs["connect_args"] = connect_args
    return create_engine(url, **kwargs)


SQLITE_BUSY_TIMEOUT_MS = 15_000


def _in_memory(engine: Engine) -> bool:
    """A SQLite database in memory: it lives only as long as its connection."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return False
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def _fix_sqlite_transactions(engine: Engine) -> None:
    in_memory = _in_memory(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:
            # a WAL database on a full file system cannot even be opened for reading: SQLite
            # cannot size its -shm file, and says only "disk I/O error"
            if getattr(exc, "sqlite_errorname", None) == "SQLITE_IOERR_SHMSIZE":
                raise sqlite3.OperationalError(
                    "database or disk is full: SQLite could not grow the database's -shm file "
                    "(SQLITE_IOERR_SHMSIZE)"
                ) from exc
            raise
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode not in ("IMMEDIATE", "DEFERRED"):
            raise ValueError(f"sqlite_begin must be IMMEDIATE or DEFERRED. Received: {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")


READ_ONLY: dict[str, Any] = {"sqlite_begin": "DEFERRED"}
"""Execution options for a transaction that only reads (ignored outside SQLite).

On SQLite it begins DEFERRED instead of IMMEDIATE: with WAL it reads a snapshot and never
waits for (nor blocks) the writer. Never write in such a transaction: a deferred transaction
that read and then writes fails at once with "database is locked" when another writer
committed in between. Use ``make_sessionmaker(engine, read_only=True)`` or
``session.connection(execution_options=READ_ONLY)`` before the first query.
"""


def make_sessionmaker(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on ``engine``; ``read_only`` ones begin SQLite transactions DEFERRED."""
    bind = engine.execution_options(**READ_ONLY) if read_only else engine
    # expire_on_commit=False: the response is built from objects after the commit.
    return sessionmaker(bind=bind, expire_on_commit=False, autoflush=False)


WRITE_PROBE = "INSERT INTO predictions SELECT * FROM predictions WHERE 1 = 0"
"""A write that stores nothing: the database must accept a write to the predictions table.

PostgreSQL checks a read-only transaction (SQLSTATE 25006) and the INSERT privilege before
looking for rows; SQLite takes its write lock and refuses a read-only file (SQLITE_READONLY).
Neither can see a full disk this way (nothing reaches the disk before a commit)."""


PROBE_BUSY_TIMEOUT_MS = 1_000


def probe_write(engine: Engine) -> None:
    """Run :data:`WRITE_PROBE` on a new connection in a transaction that is rolled back;
    raises the database's error when it refuses writes. Used by GET /readyz before the first
    upload and after a write failed.

    A new connection, because one opened before the change may not see it: a SQLite file
    whose volume went read-only stays open read-write (its writes fail only at the commit, as
    I/O errors), and PostgreSQL applies default_transaction_read_only to new sessions. On
    SQLite the probe waits at most ``PROBE_BUSY_TIMEOUT_MS`` for the write lock ("database is
    locked" then: another connection is writing), not an upload's 15 s: a readiness probe has
    a few seconds."""
    sqlite = engine.url.get_backend_name() == "sqlite"
    with engine.connect() as conn:
        if not _in_memory(engine):
            conn.invalidate()  # the pool's connection is closed; the next statement opens one
        if sqlite:  # BEGIN DEFERRED: the lock is taken by the INSERT, within the short timeout
            conn.execution_options(**READ_ONLY)
            conn.exec_driver_sql(f"PRAGMA busy_timeout={PROBE_BUSY_TIMEOUT_MS}")
        try:
            conn.exec_driver_sql(WRITE_PROBE)
        finally:
            conn.rollback()
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                conn.rollback()


def renew_connections(engine: Engine) -> None:
    """Close the pool's connections (those checked out, once returned): the next requests
    open new ones. For connections opened while the database refused writes, which may keep
    refusing (PostgreSQL applies default_transaction_read_only per session)."""
    if not _in_memory(engine):
        engine.dispose()

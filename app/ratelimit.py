"""Per-key rate limiting: one token bucket per API key, in the database or in process memory.

``RADLENS_RATE_LIMIT_PER_MINUTE`` tokens refill evenly over a minute and a bucket holds at
most that many, so a key may burst up to a minute's allowance and then proceeds at the
steady rate.

``RADLENS_RATE_LIMIT_STORE=database`` (the default) keeps the buckets in the
``rate_limit_buckets`` table (migration 0012), so every replica and every worker process on
one database charges the same bucket: R replicas give a key N requests per minute, not R x N.
Each request is one atomic statement, ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``,
that computes the refill and the take in SQL from the row it has locked: two processes
charging one key at once queue on that row (PostgreSQL) or on the write lock (SQLite, whose
transactions begin IMMEDIATE, app/db.py), so the bucket is never over-drawn.

Time is the database's clock, never the replicas': ``clock_timestamp()`` on PostgreSQL (read
after the row lock is taken), the host clock on SQLite (one file, one host). Replicas whose
clocks disagree therefore still agree on every bucket. A refusal also stores the refilled
amount; a clock that steps back never refills nor moves a bucket's time backwards.

``memory`` keeps the buckets in the process (no database round trip), for a single process
that does not share its database with other replicas: with R processes a key gets up to R x N.
The clock of the memory limiter is injectable for tests.

On PostgreSQL the table is UNLOGGED (migration 0012): a charge is not worth a WAL flush per
request, and losing the buckets in a crash or failover only lets each key burst once more.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, cast

from sqlalchemy import Boolean, Engine, Float, String, Table, bindparam, case, func
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from radlens.app.db import Base

BUCKET_KEY_LENGTH = 64  # an API key id (12 characters) or "anonymous"


class RateLimitBucket(Base):
    """(0012) One API key's token bucket, shared by every process on the database.

    ``updated_at`` is seconds since the epoch by the database's clock (a float, so the refill
    is plain arithmetic in SQL on both backends); ``admitted`` is whether the last charge took
    a token, returned by the same statement so a refusal costs no second round trip.
    """

    __tablename__ = "rate_limit_buckets"

    key: Mapped[str] = mapped_column(String(BUCKET_KEY_LENGTH), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    admitted: Mapped[bool] = mapped_column(Boolean)


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds (RFC 9110): round up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def _check_per_minute(per_minute: int) -> None:
    if per_minute < 1:
        raise ValueError(f"per_minute must be at least 1. Received: {per_minute!r}")


class RateLimiter:
    """Token buckets keyed by a string (the API key id), in this process's memory."""

    blocking: ClassVar[bool] = False  # acquire() does no I/O: call it on the event loop

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        _check_per_minute(per_minute)
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated at)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float | None:
        """Take one token for ``key``: None when allowed, else the seconds until one is due."""
        with self._lock:
            now = self.clock()
            tokens, updated = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + max(0.0, now - updated) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    retry_after_header = staticmethod(retry_after_header)


class DatabaseRateLimiter:
    """Token buckets in the ``rate_limit_buckets`` table, shared by every process using it.

    Built before the engine exists (app/main.py builds the app, the lifespan the engine), so
    the engine is given by :meth:`bind`. ``capacity`` and ``rate`` (tokens per second) default
    to ``per_minute`` and ``per_minute / 60``; tests set them apart (a rate near zero makes
    "never more than the capacity" exact). A database error propagates: the request fails
    with 503 like an upload during the outage (fail closed, docs/deployment.md).
    """

    blocking: ClassVar[bool] = True  # acquire() is a database round trip: call it in a thread

    def __init__(
        self,
        per_minute: int,
        engine: Engine | None = None,
        *,
        capacity: float | None = None,
        rate: float | None = None,
    ) -> None:
        _check_per_minute(per_minute)
        self.capacity = float(per_minute if capacity is None else capacity)
        self.rate = per_minute / 60.0 if rate is None else float(rate)
        if self.capacity < 1.0 or self.rate <= 0.0:
            raise ValueError(
                f"capacity must be >= 1 and rate > 0. Received: {self.capacity!r}, {self.rate!r}"
            )
        self._engine: Engine | None = None
        self._statement: Any = None
        if engine is not None:
            self.bind(engine)

    def bind(self, engine: Engine) -> None:
        """Charge the buckets in ``engine``'s database (a migrated one: revision 0012+)."""
        self._statement = _charge_statement(engine.dialect.name, self.capacity, self.rate)
        if engine.dialect.name == "postgresql":
            # one statement is its own transaction: no BEGIN and COMMIT round trips
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._engine = engine

    def acquire(self, key: str) -> float | None:
        """Take one token for ``key``: None when allowed, else the seconds until one is due."""
        if self._engine is None:
            raise RuntimeError("DatabaseRateLimiter.acquire before bind(engine)")
        with self._engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE (app/db.py)
            tokens, admitted = conn.execute(self._statement, {"key": key}).one()
        if admitted:
            return None
        return (1.0 - float(tokens)) / self.rate

    retry_after_header = staticmethod(retry_after_header)


def _charge_statement(dialect: str, capacity: float, rate: float) -> Any:
    """The one statement that refills and charges a bucket, returning (tokens, admitted).

    A new key starts full and is charged at once (capacity - 1). An existing row is refilled
    by the time elapsed since it was last charged (never negative: a clock step back refills
    nothing), capped at the capacity; a token is taken when at least one is there. Capacity
    and rate are literal constants of the statement (they are settings, fixed per process),
    which keeps the SQL the same for every request.
    """
    greatest: Callable[..., Any]
    least: Callable[..., Any]
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        # clock_timestamp(), not now(): the time when the row lock is held, not the start
        # of a transaction that may have waited for it
        now: ColumnElement[float] = func.date_part("epoch", func.clock_timestamp())
        greatest, least = func.greatest, func.least
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]

        # SQLite's clock: the host's, the same for every process on this file
        now = (func.julianday("now") - 2440587.5) * 86400.0
        greatest, least = func.max, func.min
    else:
        raise ValueError(f"no database rate limiter for {dialect!r}; use postgresql or sqlite")
    table = cast(Table, RateLimitBucket.__table__)
    refilled = least(capacity, table.c.tokens + greatest(0.0, now - table.c.updated_at) * rate)
    take = refilled >= 1.0
    statement = insert(table).values(
        key=bindparam("key"), tokens=capacity - 1.0, updated_at=now, admitted=True
    )
    return statement.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={
            "tokens": case((take, refilled - 1.0), else_=refilled),
            "updated_at": greatest(table.c.updated_at, now),
            "admitted": take,
        },
    ).returning(table.c.tokens, table.c.admitted)

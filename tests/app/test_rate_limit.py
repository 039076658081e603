"""Per-key token buckets: 429 with Retry-After once a key's allowance is spent, refill over
time (an injected clock, or a bucket aged in the database: no sleeping), one bucket per key;
the database buckets are shared by every process (engine, app) on one database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, text

from radlens.app.ratelimit import DatabaseRateLimiter, RateLimiter
from tests.app.conftest import (
    Service,
    TestClient,
    assert_problem,
    create_api_key,
    make_settings,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestRateLimiter:
    def test_burst_then_steady_rate(self) -> None:
        clock = FakeClock()
        limiter = RateLimiter(3, clock=clock)  # 3 per minute: one token every 20 s
        assert [limiter.acquire("k") for _ in range(3)] == [None, None, None]
        wait = limiter.acquire("k")
        assert wait == pytest.approx(20.0)
        clock.now += 10.0
        assert limiter.acquire("k") == pytest.approx(10.0)
        clock.now += 10.0
        assert limiter.acquire("k") is None
        assert limiter.acquire("k") == pytest.approx(20.0)

    def test_buckets_are_per_key_and_capped(self) -> None:
        clock = FakeClock()
        limiter = RateLimiter(2, clock=clock)
        assert limiter.acquire("a") is None and limiter.acquire("a") is None
        assert limiter.acquire("a") is not None
        assert limiter.acquire("b") is None  # another key has its own bucket
        clock.now += 3600.0  # an idle hour refills to the cap, not beyond
        assert [limiter.acquire("a") for _ in range(3)][2] is not None

    def test_retry_after_is_whole_seconds(self) -> None:
        assert RateLimiter.retry_after_header(0.01) == "1"
        assert RateLimiter.retry_after_header(19.2) == "20"
        with pytest.raises(ValueError, match="Received: 0"):
            RateLimiter(0)

    def test_setting_is_validated(self, tmp_path: Path) -> None:
        assert make_settings("sqlite://", tmp_path).rate_limit_per_minute == 0  # off by default
        with pytest.raises(ValidationError, match="rate_limit_per_minute"):
            make_settings("sqlite://", tmp_path, rate_limit_per_minute=-1)


@pytest.fixture()
def limited(service: Service) -> Iterator[FakeClock]:
    """The running app with a 2-per-minute limiter on a fake clock (restored afterwards)."""
    clock = FakeClock()
    previous = service.app.state.rate_limiter
    service.app.state.rate_limiter = RateLimiter(2, clock=clock)
    try:
        yield clock
    finally:
        service.app.state.rate_limiter = previous


def test_429_with_retry_after_then_recovers(service: Service, limited: FakeClock) -> None:
    assert service.client.get("/v1/models").status_code == 200
    assert service.client.get("/v1/predictions", params={"limit": 1}).status_code == 200
    response = service.client.get("/v1/models")
    body = assert_problem(response, 429, code="rate-limited")
    assert response.headers["retry-after"] == "30"
    assert "retry in 30 s" in body["detail"]
    # another key is not affected; the health endpoints are never limited
    other = create_api_key(service.database_url, "read", name="other client")
    headers = {"Authorization": f"Bearer {other}"}
    assert service.client.get("/v1/models", headers=headers).status_code == 200
    assert service.client.get("/healthz").status_code == 200
    limited.now += 30.0
    assert service.client.get("/v1/models").status_code == 200


# --- the database buckets, shared by every process on one database (issue #22) ------------


@pytest.fixture()
def engines(migrated_database_url: str) -> Iterator[list[Engine]]:
    """Two engines on one migrated database: two processes' connection pools."""
    from radlens.app.db import make_engine

    pair = [make_engine(migrated_database_url), make_engine(migrated_database_url)]
    try:
        yield pair
    finally:
        for engine in pair:
            engine.dispose()


def _age(engine: Engine, key: str, seconds: float) -> None:
    """Move a bucket's last charge ``seconds`` into the past (negative: into the future),
    which is what the database clock moving on does, without sleeping."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE rate_limit_buckets SET updated_at = updated_at - :s WHERE key = :k"),
            {"s": seconds, "k": key},
        )


def _bucket(engine: Engine, key: str) -> tuple[float, float]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT tokens, updated_at FROM rate_limit_buckets WHERE key = :k"), {"k": key}
        ).one()
    return float(row[0]), float(row[1])


class TestDatabaseRateLimiter:
    def test_burst_then_refill_by_the_database_clock(self, engines: list[Engine]) -> None:
        engine = engines[0]
        limiter = DatabaseRateLimiter(3, engine)  # one token every 20 s
        assert [limiter.acquire("k") for _ in range(3)] == [None, None, None]
        wait = limiter.acquire("k")
        assert wait is not None and 19.0 < wait <= 20.0
        _age(engine, "k", 10.0)
        wait = limiter.acquire("k")
        assert wait is not None and 9.0 < wait <= 10.0
        _age(engine, "k", 10.0)
        assert limiter.acquire("k") is None
        assert limiter.acquire("k") is not None
        assert limiter.retry_after_header(19.2) == "20"

    def test_buckets_are_per_key_capped_and_shared_by_engines(self, engines: list[Engine]) -> None:
        first, second = (DatabaseRateLimiter(2, engine) for engine in engines)
        assert first.acquire("a") is None and second.acquire("a") is None
        assert first.acquire("a") is not None and second.acquire("a") is not None
        assert second.acquire("b") is None  # another key has its own bucket
        _age(engines[0], "a", 3600.0)  # an idle hour refills to the cap, not beyond
        assert [first.acquire("a"), second.acquire("a"), first.acquire("a")][2] is not None

    def test_a_clock_step_back_refills_nothing(self, engines: list[Engine]) -> None:
        engine = engines[0]
        limiter = DatabaseRateLimiter(2, engine)
        assert limiter.acquire("k") is None and limiter.acquire("k") is None
        _age(engine, "k", -30.0)  # the last charge appears 30 s in the future
        tokens, updated_at = _bucket(engine, "k")
        wait = limiter.acquire("k")
        assert wait is not None and wait == pytest.approx(30.0, abs=0.5)  # no negative refill
        assert _bucket(engine, "k") == (pytest.approx(tokens), updated_at)  # time never goes back

    def test_concurrent_takes_on_two_engines_never_exceed_the_capacity(
        self, engines: list[Engine]
    ) -> None:
        capacity, attempts = 12, 60
        # a refill rate near zero: every admission must come from the capacity
        limiters = [DatabaseRateLimiter(60, e, capacity=capacity, rate=1e-9) for e in engines]
        start = threading.Barrier(8)

        def take(i: int) -> bool:
            if i < 8:
                start.wait(timeout=30)  # the first eight race for real
            return limiters[i % 2].acquire("shared") is None

        with ThreadPoolExecutor(8) as pool:
            admitted = sum(pool.map(take, range(attempts)))
        assert admitted == capacity
        tokens, _ = _bucket(engines[0], "shared")
        assert 0.0 <= tokens < 1.0

    def test_unbound_and_bad_arguments_are_refused(self) -> None:
        with pytest.raises(RuntimeError, match="before bind"):
            DatabaseRateLimiter(5).acquire("k")
        with pytest.raises(ValueError, match="Received: 0"):
            DatabaseRateLimiter(0)
        with pytest.raises(ValueError, match="rate > 0"):
            DatabaseRateLimiter(5, rate=0.0)


def test_setting_selects_the_store(tmp_path: Path) -> None:
    from radlens.app.main import _rate_limiter

    settings = make_settings("sqlite://", tmp_path, rate_limit_per_minute=5)
    assert settings.rate_limit_store == "database"  # shared by default
    assert isinstance(_rate_limiter(settings), DatabaseRateLimiter)
    memory = make_settings(
        "sqlite://", tmp_path, rate_limit_per_minute=5, rate_limit_store="memory"
    )
    assert isinstance(_rate_limiter(memory), RateLimiter)
    with pytest.raises(ValidationError, match="rate_limit_store"):
        make_settings("sqlite://", tmp_path, rate_limit_store="redis")


def test_two_apps_on_one_database_share_each_keys_allowance(
    migrated_database_url: str, model_store: Path
) -> None:
    """Two app instances (two replicas' worth of process state) on one database: a key's
    allowance is spent once in total, not once per app."""
    from radlens.app.main import create_app

    url = migrated_database_url
    key = create_api_key(url, "read", name="two apps")
    headers = {"Authorization": f"Bearer {key}"}
    settings = make_settings(url, model_store, auth="enabled", rate_limit_per_minute=3)
    with (
        TestClient(create_app(settings), headers=headers) as one,
        TestClient(create_app(settings), headers=headers) as two,
    ):
        statuses = [(one, two)[i % 2].get("/v1/models").status_code for i in range(6)]
        assert statuses == [200, 200, 200, 429, 429, 429]
        refused = two.get("/v1/models")
        body = assert_problem(refused, 429, code="rate-limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        assert "3 requests per minute" in body["detail"]
        assert one.get("/healthz").status_code == 200  # never limited


def test_the_buckets_table_is_unlogged_on_postgresql(engines: list[Engine]) -> None:
    """No WAL flush per charge on PostgreSQL (migration 0012); SQLite has no such notion."""
    engine = engines[0]
    if engine.dialect.name != "postgresql":
        pytest.skip("UNLOGGED tables are a PostgreSQL feature")
    with engine.connect() as conn:
        persistence = conn.execute(
            text("SELECT relpersistence FROM pg_class WHERE relname = 'rate_limit_buckets'")
        ).scalar_one()
    assert persistence == "u"


def test_revoking_a_key_deletes_its_bucket(engines: list[Engine]) -> None:
    """A revoked key is never charged again: its bucket row goes with the revocation (other
    keys' buckets stay)."""
    from sqlalchemy.orm import Session

    from radlens.app.keys import create_key, revoke_key

    engine = engines[0]
    with Session(engine) as session, session.begin():
        key_id = create_key(session, name="bucket-test", scopes="predict").key_id
    limiter = DatabaseRateLimiter(5, engine)
    assert limiter.acquire(key_id) is None and limiter.acquire("other") is None
    _bucket(engine, key_id)  # present
    with Session(engine) as session, session.begin():
        revoke_key(session, key_id)
    with engine.connect() as conn:
        keys = set(conn.execute(text("SELECT key FROM rate_limit_buckets")).scalars())
    assert key_id not in keys and "other" in keys

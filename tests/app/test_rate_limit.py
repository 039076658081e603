"""Per-key token buckets: 429 with Retry-After once a key's allowance is spent, refill over
time (an injected clock, no sleeping), one bucket per key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from radlens.app.ratelimit import RateLimiter
from tests.app.conftest import Service, assert_problem, create_api_key, make_settings


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

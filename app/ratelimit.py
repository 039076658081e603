"""Per-key rate limiting: one token bucket per API key, in process memory.

``RADLENS_RATE_LIMIT_PER_MINUTE`` tokens refill evenly over a minute and a bucket holds at
most that many, so a key may burst up to a minute's allowance and then proceeds at the
steady rate. The buckets live in each process: with N replicas (or N workers) the effective
limit for one key is up to N times the setting. The clock is injectable for tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets keyed by a string (the API key id)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1. Received: {per_minute!r}")
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

    @staticmethod
    def retry_after_header(seconds: float) -> str:
        """Retry-After is whole seconds (RFC 9110): round up, at least 1."""
        return str(max(1, math.ceil(seconds)))

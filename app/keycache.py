"""A short-lived in-process cache of successful API-key lookups.

Looking a key up is a database round trip in a worker thread on every request; with the
cache, a key seen in the last ``ttl_s`` seconds is authenticated on the event loop without
touching the database. Only keys that authenticated are cached (an unknown or revoked key is
looked up every time), under the sha256 of the whole token, so the cache never holds a
secret. The price: revoking a key (``radlens keys revoke``, another process) takes effect
within ``ttl_s`` seconds instead of on the next request. ``ttl_s = 0`` turns the cache off
(``RADLENS_AUTH_CACHE_TTL_S``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_ENTRIES = 1024


class KeyCache(Generic[T]):
    """``token hash -> value`` for ``ttl_s`` seconds; thread-safe; the clock is injectable."""

    def __init__(
        self,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0. Received: {ttl_s!r}")
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, token_hash: str) -> T | None:
        """The cached value, or None when absent, expired or the cache is off."""
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(token_hash)
            if entry is None:
                return None
            expires, value = entry
            if self.clock() >= expires:
                del self._entries[token_hash]
                return None
            return value

    def put(self, token_hash: str, value: T) -> None:
        if not self.enabled:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # bounded: many distinct keys just cost lookups again
            self._entries[token_hash] = (self.clock() + self.ttl_s, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

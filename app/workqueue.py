"""The hand-off between request handlers (event loop) and a worker thread, shared by the
Predictor (app/predictor.py) and the PredictionWriter (app/writer.py).

A handler puts an item carrying an ``asyncio.Future`` on a :class:`WorkQueue` and awaits the
future; the worker thread takes items off the queue and settles each future back on the
loop that created it (``loop.call_soon_threadsafe``), once per loop for a whole batch. The
queue is bounded: a full one refuses the item at once with 503 + Retry-After
(``ServiceBusyError``) instead of holding the request, and its upload, in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Iterable
from typing import Any, TypeVar

from radlens.app.errors import ServiceBusyError

T = TypeVar("T")

STOP = object()  # the marker a worker thread stops at


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # a cancelled request (client gone) is left alone
        future.set_result(value)


def _set_results(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, value in results:
        _set_result(future, value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def fail(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], exc: BaseException) -> None:
    """Raise ``exc`` in the request awaiting ``future`` (from any thread)."""
    with contextlib.suppress(RuntimeError):  # that request's loop is closed
        loop.call_soon_threadsafe(_set_exception, future, exc)


def resolve_all(
    results: Iterable[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Any]],
) -> None:
    """Hand each request its result (from any thread): one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for loop, future, value in results:
        by_loop.setdefault(loop, []).append((future, value))
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that request's loop is closed
            loop.call_soon_threadsafe(_set_results, pairs)


class WorkQueue:
    """A SimpleQueue (``put`` runs in C, once per request on the event loop) holding at most
    ``max_items`` work items; stop markers are not counted against the bound."""

    def __init__(self, max_items: int, what: str) -> None:
        if max_items < 1:
            raise ValueError(f"max_items should be >= 1. Received: {max_items!r}")
        self.max_items = int(max_items)
        self.what = what  # names the queue and its setting in the 503's detail
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def full(self) -> bool:
        return self._queue.qsize() >= self.max_items

    def check(self) -> None:
        """Raise ServiceBusyError (503, Retry-After) when the queue is full."""
        if self.full():
            raise ServiceBusyError(f"{self.max_items} {self.what} are queued already")

    def put(self, item: Any) -> None:
        self.check()
        self._queue.put(item)

    def put_stop(self) -> None:
        self._queue.put(STOP)

    def get(self, timeout: float | None = None) -> Any:
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> Any:
        return self._queue.get_nowait()

    def qsize(self) -> int:
        return self._queue.qsize()

    def drain(self) -> list[Any]:
        """Take out everything queued (stop markers included)."""
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

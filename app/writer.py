"""The uploads' predictions are written by one thread, as many per transaction as are waiting.

``POST /v1/predictions`` ends with a lookup-or-insert of its prediction, its audit row and a
commit. Run one by one, each request pays for its own session, transaction and commit, and
hops to a worker thread to do so. Under load several finish their model call at once (a
batch), so :class:`PredictionWriter` takes everything queued while the previous transaction
ran into the next one: one session, one commit (on SQLite one WAL append), for the group
("group commit"). Each request still gets its own row back, and its own ``created``.

A group that fails (a row the database refuses, an outage) is written again row by row, so
only the request whose row fails gets the error and nothing of the others is lost; a request
is answered only after the transaction holding its row committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app import audit as audit_log
from app import services
from app.errors import AppError
from app.tables import Prediction

log = logging.getLogger(__name__)

MAX_GROUP = 64  # rows in one transaction at most


class WriterStoppedError(AppError):
    """The writer is stopped or stopping (service shutting down)."""

    code = "service-stopping"
    title = "The service is shutting down and stores nothing more; retry shortly"
    status_code = 503


@dataclass
class _Write:
    prediction: Prediction
    actor: str | None
    future: asyncio.Future[tuple[Prediction, bool]]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class PredictionWriter:
    """One thread that stores predictions (with their audit rows) in group transactions."""

    def __init__(self, sessionmaker: Callable[[], Session], *, max_group: int = MAX_GROUP) -> None:
        if max_group < 1:
            raise ValueError(f"max_group should be >= 1. Received: {max_group!r}")
        self.sessionmaker = sessionmaker
        self.max_group = max_group
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.transactions = 0  # committed group transactions (for tests and logs)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="radlens-writer", daemon=True)
        self._thread.start()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        self._closing = True
        thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(thread.join, timeout_s)
            if thread.is_alive():
                log.warning("prediction writer did not stop within %.1f s", timeout_s)
        self._thread = None
        while True:  # anything left (the thread timed out) is refused, not lost silently
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Write):
                _resolve(item, exc=WriterStoppedError("the prediction writer was stopped"))

    async def write(self, prediction: Prediction, actor: str | None) -> tuple[Prediction, bool]:
        """Store ``prediction`` (or find the row this model stored for the same input) with
        its "prediction.create" audit row; returns ``(stored, created)`` once committed.
        Raises the database's errors, with nothing of this request committed."""
        if self._closing:
            raise WriterStoppedError("the prediction writer is stopping")
        if self._thread is None or not self._thread.is_alive():
            self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Prediction, bool]] = loop.create_future()
        self._queue.put(_Write(prediction, actor, future, loop))
        return await future

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            group = [first]
            while len(group) < self.max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True  # write what came before the stop marker, then stop
                    break
                group.append(item)
            self._write(group)

    def _write(self, group: list[_Write]) -> None:
        try:
            results = self._transaction(group)
        except Exception as exc:
            if len(group) == 1:
                _resolve(group[0], exc=exc)
                return
            log.warning(
                "a group of %d predictions failed (%s); writing them one by one",
                len(group),
                type(exc).__name__,
            )
            for item in group:
                self._write([item])
            return
        for item, result in zip(group, results, strict=True):
            _resolve(item, result=result)

    def _transaction(self, group: list[_Write]) -> list[tuple[Prediction, bool]]:
        session = self.sessionmaker()
        try:
            results = []
            for item in group:
                stored, created = services.record_prediction(session, item.prediction)
                audit_created(session, item.actor, stored, created)
                results.append((stored, created))
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        self.transactions += 1
        return results


def audit_created(session: Session, actor: str | None, stored: Prediction, created: bool) -> None:
    """Add the upload's "prediction.create" row (201 new, 200 re-post) to its transaction."""
    audit_log.add(
        session,
        actor=actor,
        action=audit_log.PREDICTION_CREATE,
        target=str(stored.id),
        status=201 if created else 200,
    )


def _resolve(
    item: _Write, *, result: tuple[Prediction, bool] | None = None, exc: BaseException | None = None
) -> None:
    def settle() -> None:
        if item.future.done():  # the request was cancelled (client gone)
            return
        if exc is not None:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # that request's loop is closed
        item.loop.call_soon_threadsafe(settle)

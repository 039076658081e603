"""The uploads' predictions are written by one thread, as many per transaction as are waiting.

Every upload (``POST /v1/predictions``, ``/v1/predictions/dicom-sr``, each STOW-RS instance)
ends with a lookup-or-insert of its prediction, its explanation when one was asked for, its
"prediction.create" audit row and a commit (app/ingest.py), and this writer is the only place
that commits them. Run one by one, each request pays for its own session, transaction and
commit, and hops to a worker thread to do so. Under load several finish their model call at
once (a batch), so :class:`PredictionWriter` takes everything queued while the previous
transaction ran into the next one: one session, one commit (on SQLite one WAL append), for the group
("group commit"). Each request still gets its own row back, and its own ``created``.

A group that fails (a row the database refuses, an outage) is written again row by row, so
only the request whose row fails gets the error and nothing of the others is lost; a request
is answered only after the transaction holding its row committed. The queue is bounded
(RADLENS_MAX_QUEUED_WRITES): beyond it a write is refused at once with 503 (app/workqueue.py).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from radlens.app import audit as audit_log
from radlens.app import series, services
from radlens.app.errors import AppError
from radlens.app.explain import ExplanationOutput, record_explanation
from radlens.app.tables import Explanation, Prediction
from radlens.app.workqueue import STOP, WorkQueue, fail, resolve_all

log = logging.getLogger(__name__)

MAX_GROUP = 64  # rows in one transaction at most
MAX_QUEUED = 1024  # writes waiting at most (RADLENS_MAX_QUEUED_WRITES)


class WriterStoppedError(AppError):
    """The writer is stopped or stopping (service shutting down)."""

    code = "service-stopping"
    title = "The service is shutting down and stores nothing more; retry shortly"
    status_code = 503


@dataclass(frozen=True)
class Written:
    """One committed write: the stored prediction (this request's, or the row this model had
    stored for the same input) and, when an explanation was given, the stored one."""

    prediction: Prediction
    created: bool
    explanation: Explanation | None = None
    explanation_created: bool = False


@dataclass
class _Write:
    prediction: Prediction
    actor: str | None
    explanation: ExplanationOutput | None
    future: asyncio.Future[Written]
    loop: asyncio.AbstractEventLoop
    findings: Sequence[services.FindingValue] = ()  # multi-label: stored with a new row


def _lock_order(item: _Write) -> tuple[str, int, str, str]:
    """The order a group's predictions are inserted in: by their unique keys."""
    p = item.prediction
    return (p.model_name, p.model_version, p.dedupe_identity or "", p.dedupe_key)


class PredictionWriter:
    """One thread that stores predictions (with their explanations and audit rows) in group
    transactions."""

    def __init__(
        self,
        sessionmaker: Callable[[], Session],
        *,
        max_group: int = MAX_GROUP,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        if max_group < 1:
            raise ValueError(f"max_group should be >= 1. Received: {max_group!r}")
        self.sessionmaker = sessionmaker
        self.max_group = max_group
        self.queue = WorkQueue(max_queued, "predictions waiting to be stored")
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
            self.queue.put_stop()
            await asyncio.to_thread(thread.join, timeout_s)
            if thread.is_alive():
                log.warning("prediction writer did not stop within %.1f s", timeout_s)
        self._thread = None
        # anything left (the thread timed out) is refused, not lost silently
        for item in self.queue.drain():
            if isinstance(item, _Write):
                error = WriterStoppedError("the prediction writer was stopped")
                fail(item.loop, item.future, error)

    async def write(self, prediction: Prediction, actor: str | None) -> tuple[Prediction, bool]:
        """``commit`` without an explanation; returns ``(stored, created)``."""
        written = await self.commit(prediction, actor)
        return written.prediction, written.created

    async def commit(
        self,
        prediction: Prediction,
        actor: str | None,
        explanation: ExplanationOutput | None = None,
        findings: Sequence[services.FindingValue] = (),
    ) -> Written:
        """Store ``prediction`` (or find the row this model stored for the same input), the
        ``explanation`` of the stored row unless it has one, and the "prediction.create" audit
        row; returns once committed. Raises ServiceBusyError (503) at once when the queue is
        full, and the database's errors with nothing of this request committed."""
        if self._closing:
            raise WriterStoppedError("the prediction writer is stopping")
        if self._thread is None or not self._thread.is_alive():
            self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Written] = loop.create_future()
        self.queue.put(_Write(prediction, actor, explanation, future, loop, findings))
        return await future

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self.queue.get()
            if first is STOP:
                break
            group = [first]
            while len(group) < self.max_group:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is STOP:
                    stop = True  # write what came before the stop marker, then stop
                    break
                group.append(item)
            self._write(group)

    def _write(self, group: list[_Write]) -> None:
        try:
            results = self._transaction(group)
        except Exception as exc:
            if len(group) == 1:
                fail(group[0].loop, group[0].future, exc)
                return
            log.warning(
                "a group of %d predictions failed (%s); writing them one by one",
                len(group),
                type(exc).__name__,
            )
            for item in group:
                self._write([item])
            return
        resolve_all(
            (item.loop, item.future, result) for item, result in zip(group, results, strict=True)
        )

    def _transaction(self, group: list[_Write]) -> list[Written]:
        session = self.sessionmaker()
        try:
            # Every process takes the rows' locks in one order: the group's series rows by
            # Series Instance UID, then its predictions by their unique keys. In arrival order,
            # two replicas storing the same instances (a study sent to both) waited for each
            # other's uncommitted rows, and PostgreSQL broke the deadlock after 1 s by failing
            # one group, written again row by row (QA round 44).
            firsts: dict[str, _Write] = {}
            for item in group:  # a new series' first instance records it, as before
                uid = item.prediction.series_instance_uid
                if uid and uid not in firsts:
                    firsts[uid] = item
            for uid in sorted(firsts):
                series.register_instance(session, firsts[uid].prediction)
            written: dict[int, Written] = {}
            for index in sorted(range(len(group)), key=lambda i: _lock_order(group[i])):
                item = group[index]
                # the instance's series: recorded, or checked (422 on a mismatch) first
                series.register_instance(session, item.prediction)
                stored, created = services.record_prediction(session, item.prediction)
                if created and item.findings:  # a re-post keeps the stored row's findings
                    services.record_findings(session, stored.id, item.findings)
                explanation, explanation_created = None, False
                if item.explanation is not None:
                    explanation, explanation_created = record_explanation(
                        session, stored.id, item.explanation
                    )
                written[index] = Written(stored, created, explanation, explanation_created)
            results = [written[index] for index in range(len(group))]
            for item, result in zip(group, results, strict=True):  # the audit trail: as served
                audit_log.prediction_created(session, item.actor, result.prediction, result.created)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        self.transactions += 1
        return results

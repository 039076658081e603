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

A write the database refuses as a whole (full, read-only, an I/O error of its storage) is kept
as :attr:`PredictionWriter.failure` until the next commit: GET /readyz answers 503 meanwhile
(app/routes/ops.py), so a load balancer stops sending uploads that cannot be stored.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from radlens.app import audit as audit_log
from radlens.app import series, services
from radlens.app.errors import AppError, database_problem
from radlens.app.explain import ExplanationOutput, record_explanation
from radlens.app.tables import Explanation, Prediction
from radlens.app.workqueue import STOP, WorkQueue, fail, resolve_all

log = logging.getLogger(__name__)

MAX_GROUP = 64  # rows in one transaction at most
MAX_QUEUED = 1024  # writes waiting at most (RADLENS_MAX_QUEUED_WRITES)
# After a write the database refused as a whole (full, read-only), GET /readyz answers 503 for
# this long, doubling with each failure that follows a retry, up to the maximum (app/routes/ops.py)
WRITE_RETRY_S = 15.0
WRITE_RETRY_MAX_S = 240.0
# The query of a new prediction's "prediction.create" row written by a process without DICOM
# destinations (no outbox): it queues none of the results, and writes no dicom.send.queue row,
# so a re-post on a replica with destinations need not wait CLAIM_WAIT_S for one (app/outbox.py
# ``Outbox._queued_rows``; QA 104: it waited the whole 5 s). Same row, same transaction.
NO_OUTBOX_QUERY = "outbox=none"


@dataclass(frozen=True)
class WriteFailure:
    """The database refused the last write as a whole: it is full or read-only (not a row it
    refused, not a lock wait that timed out). Cleared by the next committed write."""

    code: str  # the problem code: database-full, database-read-only
    detail: str  # the driver's error type and message (no SQL, no parameters)
    at: float  # time.monotonic() of the failure
    streak: int  # failures in a row, each after the previous one's retry time had passed
    # GET /readyz's write probe (rolled back) passed after the retry time: writable as far as a
    # probe can tell (not a full disk), so ready and no more probes; kept for its streak, the
    # back-off of the next refused write (QA 51)
    probed_ok: bool = False

    @property
    def retry_s(self) -> float:
        """How long after it GET /readyz says not ready before it checks again."""
        return min(WRITE_RETRY_S * 2 ** (self.streak - 1), WRITE_RETRY_MAX_S)


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
    no_outbox: bool = False  # a new row's audit row says so (NO_OUTBOX_QUERY)


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
        self.failure: WriteFailure | None = None  # the last write failed: full or read-only
        # a write committed, or GET /readyz's write probe passed, since the process started
        self.write_checked = False

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
        *,
        no_outbox: bool = False,
    ) -> Written:
        """Store ``prediction`` (or find the row this model stored for the same input), the
        ``explanation`` of the stored row unless it has one, and the "prediction.create" audit
        row; returns once committed. Raises ServiceBusyError (503) at once when the queue is
        full, and the database's errors with nothing of this request committed. ``no_outbox``:
        the process has no DICOM destinations, and a new row's audit row says so
        (:data:`NO_OUTBOX_QUERY`)."""
        if self._closing:
            raise WriterStoppedError("the prediction writer is stopping")
        if self._thread is None or not self._thread.is_alive():
            self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Written] = loop.create_future()
        self.queue.put(_Write(prediction, actor, explanation, future, loop, findings, no_outbox))
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

    def record_failure(self, exc: BaseException) -> WriteFailure | None:
        """Remember ``exc`` when it says the database refuses every write (full, read-only),
        for GET /readyz; returns the failure recorded (None: another error, not recorded)."""
        problem = database_problem(exc)
        if problem is None:
            return None
        now = time.monotonic()
        last = self.failure
        streak = 1
        if last is not None:  # failed again: after its retry time (ready again), back off more
            streak = last.streak + 1 if now - last.at >= last.retry_s else last.streak
        orig = getattr(exc, "orig", None) or exc
        detail = f"{type(orig).__name__}: {' '.join(str(orig).split())[:200]}"
        self.failure = WriteFailure(problem[0], detail, now, streak)
        if last is None or last.probed_ok:
            log.error("the database refused a write (%s): %s", problem[0], detail)
        return self.failure

    def _write(self, group: list[_Write]) -> None:
        try:
            results = self._transaction(group)
        except Exception as exc:
            if len(group) == 1:
                self.record_failure(exc)
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
                        session, stored.id, item.explanation, new_prediction=created
                    )
                written[index] = Written(stored, created, explanation, explanation_created)
            results = [written[index] for index in range(len(group))]
            for item, result in zip(group, results, strict=True):  # the audit trail: as served
                event = audit_log.prediction_created(
                    session, item.actor, result.prediction, result.created
                )
                if result.created and item.no_outbox:
                    event.query = NO_OUTBOX_QUERY
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        self.transactions += 1
        self.write_checked = True
        if self.failure is not None:
            log.warning("the database stores writes again (after %s)", self.failure.code)
            self.failure = None
        return results

"""DICOM send-back (issue #24): each prediction's SR (and Secondary Capture) C-STOREd to the
destinations of ``RADLENS_DICOM_DESTINATIONS`` through a persistent outbox.

After a prediction is committed (any upload path: ``POST /v1/predictions``, STOW-RS, the
DIMSE Storage SCP), :meth:`Outbox.submit` builds the outputs each destination wants
(app/dicom_outputs.py) from the *sender's own* Study/Series/SOP Instance UIDs, held in memory
by the upload (``Candidate.sender``), never from the database, where they may be pseudonyms.
So the PACS files the result into the study it came from.

The outbox is a spool directory, not a table: nothing patient-identifying goes into the
database for it. One entry per (object, destination) is two files, written each to a
temporary name, flushed and renamed (a crash leaves either a whole entry or none):

- ``<id>.dcm`` the Part 10 object (``<id>.enc``: Fernet-encrypted, when
  ``RADLENS_UID_PSEUDONYM_KEY`` is set, with a key derived from it, since the object carries
  the UIDs the database does not keep);
- ``<id>.json`` its state: prediction id, kind, destination, attempts, next attempt, the
  last error, and whether it is still to be delivered (``pending``; a state file without the
  field, from an earlier version, is pending) or ``delivered`` / ``dropped`` (with the
  reason) and waiting for its audit row. No UID, no patient data.

An SR is built with the prediction's stored findings (a multi-label model's per-finding
groups). When the database cannot be read for them, just after the commit, the SR is not built
without them: its entry's payload is the source reference it is to be built from (DICOM JSON,
encrypted as a Part 10 payload would be; ``build_at_send`` in its state), and each delivery
attempt reads the prediction and its findings and builds the SR then, or is retried, sending
nothing, while they cannot be read (QA 101: before, the SR was sent without them at once, and
never replaced).

One thread (:meth:`start`) delivers: each pass opens one association per destination for its
due entries; an entry whose C-STORE returned Success or Warning becomes ``delivered``, and
otherwise its next attempt is scheduled after ``RADLENS_DICOM_OUTBOX_RETRY_S`` doubling per
attempt up to ``RADLENS_DICOM_OUTBOX_RETRY_MAX_S``. An entry older than
``RADLENS_DICOM_OUTBOX_MAX_AGE_S``, one that cannot be decrypted any more (the key changed) and
one whose destination is no longer configured become ``dropped``.

The audit trail does not lose an outcome: each delivery has a ``dicom.send.deliver`` row, each
drop a ``dicom.send.drop`` row (actor ``dicom-send``, target the prediction id). An entry is
first rewritten (atomically) as delivered or dropped and its payload deleted, so it is never
sent again; then, at the end of the pass, the rows of every such entry in the spool are written
in one transaction, and the state files removed only once it committed. A database that is
down, or a crash, leaves them in the spool; every later pass (and a new process) retries the
rows, without sending anything again. A crash between the commit and the removal (or a commit
whose answer was lost) writes the row a second time (``audit_events`` has no key to recognise
it by): an outcome may be audited twice, never not at all. A crash between a C-STORE's
answer and the state rewrite sends the object again (delivery is at least once). Without a
sessionmaker (tests) there is no audit trail: delivered or dropped entries are forgotten at
once.

Only entries still to be delivered are listed (:meth:`entries`, ``GET /v1/dicom/outbox``),
counted by the gauge, expired or retried. The spool survives restarts: a new process delivers
what the previous one left, and writes the audit rows it did not.

**Several processes** (replicas, ``RADLENS_WORKERS``) may share one spool directory (a volume
every pod mounts; QA round 44: three replicas on one spool sent every SR six times). Each claims
what it handles with an exclusive, non-blocking ``flock`` and reads the state again once it
holds it: an entry's payload while it is sent or dropped (another process skips it, and finds
it settled afterwards), a settled entry's state file while its audit row is written and the
entry forgotten, a file while it is written (until renamed, and a payload until its state is
written too), so a process starting does not remove another's entry half-written as a crash's
leftover. A flock is released by the kernel when its process dies; the spool holds no other
file.

**Queued once.** Once a new prediction's entries are written, a ``dicom.send.queue`` audit row
(status 202, target the prediction id) records it, and :meth:`handled_or_wait` counts it: the same
instance posted to two replicas at once (each with its spool, or one shared) is stored once,
and the replica whose upload found the stored row no longer queues the results a second time
(QA round 44: every concurrent re-post queued them again). The row is written just after the
entries, so a re-post of a prediction committed in the last :data:`CLAIM_WAIT_S` seconds waits
that long at most for it; if it never comes (the creating process died between the commit and
the queueing), the results are queued by the re-post, as before. A queue row that comes but
leaves something out ends the wait at once: its request is done, and nothing else is queueing
(QA 78: the re-post waited out the 5 s before queueing what was missing). So does the
``dicom.send.none`` row (status 204) of a request that queued nothing and is done: every result
failed to be built or written, or its instance lacked a UID the results reference (app/ingest.py
``Ingestor._sender``) while a re-post may have it (:meth:`record_nothing_queued`; QA 88: the
re-post waited the 5 s for a row that was not coming), or the submit raised an unforeseen error
(``Ingestor._send_back``, QA 96). It covers no result: what is queued is read from the spool.
A process without destinations (no outbox: replicas disagreeing, mid-rollout) writes no such
row, but marks a new prediction's ``prediction.create`` row (query ``outbox=none``,
app/writer.py ``NO_OUTBOX_QUERY``, in the prediction's own transaction), which counts as one
(QA 104: the re-post on a replica with destinations waited the whole 5 s); a process of an
earlier version does not read the mark, and waits, as before.

**What was queued, per kind and destination.** A re-send (the instance received again) queues
only the results a destination wants that were not queued before: an SR queued while the SC
failed to be (or one destination's entry written and the next one's spool write failing) no
longer keeps the lost one from being queued, and the queued one is not queued twice (QA 68). A
(kind, destination) counts as queued when the spool holds its entry, when a
``dicom.send.deliver``/``drop`` row names it (``destination=...&kind=...``), or when a
``dicom.send.queue`` row does: ``entries=N`` alone says that everything wanted was queued
(so does a row of an earlier version); a submit that left something out writes
``entries=N&queued=<items>``, an item being a kind every destination wanting it got (``sr``) or
one destination's (``sr:PACS@10.0.0.5:104``). Which submits are re-sends: the caller says
(``submit(..., resend=)``; app/ingest.py: a stored prediction's, which
:meth:`Outbox.handled_or_wait` or :meth:`Outbox.queued_since` found not fully queued; QA 78
removed the in-process marker that told the outbox before).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlens.app.destinations import OUTPUT_KINDS, Destination

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy.orm import Session

    from radlens.app.dicom_outputs import SourceRef
    from radlens.app.settings import Settings
    from radlens.app.tables import Prediction

logger = logging.getLogger(__name__)

ACTOR = "dicom-send"
DELIVER_ACTION = "dicom.send.deliver"
DROP_ACTION = "dicom.send.drop"
QUEUE_ACTION = "dicom.send.queue"  # a new prediction's entries were written (handled_or_wait)
# a new prediction's request queued nothing, and is done: a re-post need not wait (QA 88)
NONE_ACTION = "dicom.send.none"
PENDING = "pending"  # Entry.state: still to be delivered
DELIVERED = "delivered"  # delivered, its audit row not yet committed
DROPPED = "dropped"  # dropped (Entry.reason), its audit row not yet committed
PARTIAL_SUFFIX = ".part"
_KEY_LABEL = b"radlens outbox encryption key"
NO_RESPONSE = "no response"  # how a C-STORE without an answer begins its last_error
_POLL_S = 5.0  # the delivery thread looks at the spool at least this often
# How long a re-post of a prediction committed that recently waits for the creating request's
# dicom.send.queue row (normally written milliseconds after the commit) before queueing the
# results itself (its creator died in between).
CLAIM_WAIT_S = 5.0
CLAIM_POLL_S = 0.1  # one indexed query per poll (audit_events.target, migration 0016)
MAX_CLAIMS = 256  # entries one pass holds (a flock-ed file each) at most
_EVERY = "*"  # a (kind, destination) pair's destination: every destination wanting the kind
_QUERY_LENGTH = 512  # audit_events.query: a longer one is cut (app/audit.py)

Pair = tuple[str, str]  # (kind, destination name)


def _fernet(key: bytes | None) -> Any:
    """The Fernet cipher of the spool (None: no pseudonym key, stored as plain Part 10)."""
    if key is None:
        return None
    from cryptography.fernet import Fernet

    derived = hmac.new(key, _KEY_LABEL, hashlib.sha256).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


@dataclass(frozen=True)
class Entry:
    """One object waiting for one destination (the ``<id>.json`` file)."""

    id: str
    prediction_id: str
    kind: str  # "sr" | "sc"
    destination: str  # Destination.name
    created_at: float  # seconds since the epoch
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    encrypted: bool = False
    state: str = PENDING  # PENDING | DELIVERED | DROPPED
    reason: str | None = None  # why DROPPED
    # an SR whose payload is its source reference, built at each attempt with the stored
    # findings (they could not be read when it was queued; Outbox._build_deferred)
    build_at_send: bool = False

    def state_json(self) -> bytes:
        """The ``<id>.json`` file's content. ``build_at_send`` is written only when set: the
        state of every other entry is as an earlier version wrote it (and reads it)."""
        fields = asdict(self)
        if not self.build_at_send:
            del fields["build_at_send"]
        return json.dumps(fields).encode()

    def audit_row(self) -> tuple[str, int, str]:
        """The action, status and query of this delivered or dropped entry's audit row."""
        query = f"destination={self.destination}&kind={self.kind}"
        if self.state == DROPPED:
            return DROP_ACTION, 410, f"{query}&reason={self.reason}"
        return DELIVER_ACTION, 200, query


class UndecryptableEntryError(Exception):
    """The payload cannot be decrypted with the current key."""


class _NotBuiltYetError(Exception):
    """A deferred SR's findings cannot be read yet (the database): retried."""


class _NotBuildableError(Exception):
    """A deferred SR cannot be built (its prediction is gone, or a bug): dropped."""


_SOURCE_FORMAT = "radlens.outbox.sr-source/1"


def _source_payload(source: SourceRef) -> bytes:
    """A deferred SR's payload: its source reference as DICOM JSON
    (app/dicom_outputs.source_dataset), read back as it was by :func:`_source_from_payload`.
    JSON, not Part 10: nothing can take it for an object to C-STORE."""
    from radlens.app.dicom_outputs import source_dataset

    record = {"format": _SOURCE_FORMAT, "dataset": source_dataset(source).to_json_dict()}
    return json.dumps(record).encode()


def _source_from_payload(data: bytes) -> SourceRef:
    """:func:`_source_payload` read back (ValueError: not one)."""
    from pydicom import Dataset

    from radlens.app.dicom_outputs import source_from_dataset

    record = json.loads(data)
    if not isinstance(record, dict) or record.get("format") != _SOURCE_FORMAT:
        raise ValueError("not an SR source reference")
    ds = Dataset.from_json(record["dataset"])
    return source_from_dataset(ds, copy_patient=True)


class ResultsNotQueuedError(Exception):
    """Some of a prediction's results were not queued (:meth:`Outbox.submit`): ``failures``
    holds ``(kind, reason, cause)`` for each entry not written (one per destination that
    wanted it), the reason one of app/metrics.py's OUTBOX_FAILURE_REASONS (build, spool,
    no-overlay, error); ``queued``: the entries that were written (each destination's on its
    own: one whose spool write failed does not take the others' with it). The prediction is
    stored: the caller counts and logs them."""

    def __init__(
        self, failures: list[tuple[str, str, BaseException | None]], queued: int = 0
    ) -> None:
        super().__init__(", ".join(f"{kind}: {reason}" for kind, reason, _ in failures))
        self.failures = failures
        self.queued = queued


class Outbox:
    """The spool directory and its delivery thread; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        sessionmaker: Callable[[], Session] | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.directory = Path(settings.dicom_outbox_dir)
        self.destinations: dict[str, Destination] = {
            d.name: d for d in settings.dicom_destination_list
        }
        self.sessionmaker = sessionmaker
        self.clock = clock
        self._fernet = _fernet(settings.uid_pseudonym_key_bytes)
        self._lock = threading.Lock()
        # one re-send at a time decides what is missing and queues it (submit, resend=True)
        self._resend_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.gauge: Any = None
        if registry is not None:
            from prometheus_client import Gauge

            self.gauge = Gauge(
                "radlens_dicom_outbox_pending",
                "Results (SR/SC objects) waiting in the outbox, by destination.",
                ("destination",),
                registry=registry,
            )
        from radlens.app.startup import ensure_spool

        # created here as in `radlens serve`'s pre-flight: a path that cannot be one is a
        # ConfigurationError naming RADLENS_DICOM_OUTBOX_DIR, one line, not a traceback
        ensure_spool("dicom_outbox_dir", self.directory)
        self._remove_partials()
        self._recount()

    # --- what is wanted ------------------------------------------------------------

    def wants(self, kind: str) -> bool:
        return any(d.wants(kind) for d in self.destinations.values())

    # --- enqueue -------------------------------------------------------------------

    def wanted(self) -> set[Pair]:
        """Every (kind, destination) the destinations want."""
        return {(kind, d.name) for d in self.destinations.values() for kind in d.outputs}

    def submit(
        self,
        prediction: Prediction,
        source: SourceRef,
        overlay_png: bytes | None,
        *,
        resend: bool,
    ) -> int:
        """Build the outputs the destinations want and queue one entry per destination;
        returns the number of entries queued. Runs in a worker thread (highdicom, disk).

        Each kind is built and queued on its own (an SR that could not be built stopped the
        SC before), each destination's entry written on its own, and the queue row records
        what was. A re-send (``resend``: a stored prediction whose results
        :meth:`handled_or_wait` found not fully queued) queues only what was not queued before
        (module docstring); a new prediction's submit (``resend=False``) queues everything.
        Raises :class:`ResultsNotQueuedError` naming each entry not queued and why, after
        queueing (and recording) the others."""
        prediction_id = str(prediction.id)
        if not resend:
            return self._submit(prediction, source, overlay_png, self.wanted())
        from sqlalchemy.exc import SQLAlchemyError

        with self._resend_lock:  # two re-sends in this process: the second finds it queued
            try:
                missing = self._missing(self._covered(prediction_id, spool=True))
            except SQLAlchemyError as exc:  # not known, so not queued a second time
                logger.warning(
                    "outbox: prediction %s: could not tell which results were queued (%s); "
                    "none queued again",
                    prediction_id,
                    type(exc).__name__,
                )
                return 0
            if not missing:
                return 0
            return self._submit(prediction, source, overlay_png, missing)

    def _submit(
        self,
        prediction: Prediction,
        source: SourceRef,
        overlay_png: bytes | None,
        pairs: set[Pair],
    ) -> int:
        from radlens.app.clinical import validated as clinically_validated
        from radlens.app.dicom_outputs import build_sc, build_sr

        prediction_id = str(prediction.id)
        queued: list[Pair] = []
        failures: list[tuple[str, str, BaseException | None]] = []
        for kind in OUTPUT_KINDS:
            names = [d.name for d in self.destinations.values() if (kind, d.name) in pairs]
            if not names:
                continue
            if kind == "sc" and overlay_png is None:
                failures.extend((kind, "no-overlay", None) for _ in names)
                continue
            deferred = False
            try:
                # the model that made the prediction decides the not-for-clinical-use notice
                validated = clinically_validated(
                    self.settings, prediction.model_name, prediction.model_version
                )
                if kind == "sr":
                    findings = self._stored_findings(prediction)
                    if findings is None:  # built at delivery, with them (QA 101)
                        payload, deferred = _source_payload(source), True
                    else:
                        payload = build_sr(prediction, source, findings, validated=validated)
                else:
                    assert overlay_png is not None
                    payload = build_sc(prediction, source, overlay_png, validated=validated)
            except Exception as exc:  # DicomOutputError, or highdicom's own: a radlens bug
                failures.extend((kind, "build", exc) for _ in names)
                continue
            written, failed = self._enqueue(
                prediction_id, kind, payload, names, build_at_send=deferred
            )
            queued.extend((kind, name) for name in written)
            for name, error in failed:
                # the spool: disk full, read-only, gone; else the cipher, a bug
                reason = "spool" if isinstance(error, OSError) else "error"
                failures.append((kind, reason, error))
                logger.warning(
                    "outbox: %s of prediction %s not written for %s (%s)",
                    kind.upper(),
                    prediction_id,
                    name,
                    type(error).__name__,
                )
        if queued:  # what was queued named when something was left out
            self._record_queued(prediction_id, len(queued), queued if failures else None)
        elif failures:  # nothing queued: a re-post need not wait for a queue row (QA 88)
            self.record_nothing_queued(prediction_id)
        if failures:
            raise ResultsNotQueuedError(failures, len(queued))
        return len(queued)

    def _stored_findings(self, prediction: Prediction) -> list[Any] | None:
        """The prediction's stored findings, which its SR is built with as
        ``GET /v1/predictions/{id}/dicom/sr`` and WADO-RS build it (app/catalogue.sr_findings;
        QA 86: the SR sent had no per-finding groups); none without a sessionmaker (tests).
        None when the database cannot be read, and a WARNING says so: the SR is queued to be
        built at its delivery, when they can be read (:meth:`_build_deferred`; a database error
        after the commit loses no result, QA round 54). Before QA 101 it was queued without
        its per-finding groups, and sending the instance again did not replace it."""
        if self.sessionmaker is None:
            return []
        from sqlalchemy.exc import SQLAlchemyError

        from radlens.app.catalogue import sr_findings

        try:
            with self.sessionmaker() as session:
                return list(sr_findings(session, [prediction]).get(prediction.id, []))
        except SQLAlchemyError as exc:
            logger.warning(
                "outbox: prediction %s: its stored findings could not be read (%s); its SR is "
                "queued to be built with them at its delivery",
                prediction.id,
                type(exc).__name__,
            )
            return None

    def _queued_items(self, queued: list[Pair]) -> str:
        """What a submit that left something out queued, for its queue row: ``sr`` for a kind
        every destination wanting it got, else ``sr:<destination>`` for each that did."""
        items: list[str] = []
        for kind in OUTPUT_KINDS:
            names = {name for k, name in queued if k == kind}
            every = {d.name for d in self.destinations.values() if d.wants(kind)}
            if names and names == every:
                items.append(kind)
            else:
                items.extend(
                    f"{kind}:{d.name}" for d in self.destinations.values() if d.name in names
                )
        return ",".join(items)

    def _record_queued(
        self, prediction_id: str, count: int, partial: list[Pair] | None = None
    ) -> None:
        """The ``dicom.send.queue`` audit row of a prediction whose ``count`` entries were
        written, which tells every process (:meth:`handled_or_wait`) that its results are on
        their way: all that were missing, or (``partial``) those named (module docstring). A
        database error is logged: the entries are queued; a re-post within CLAIM_WAIT_S may then
        queue them once more."""
        query = f"entries={count}"
        if partial is not None:
            query += f"&queued={self._queued_items(partial)}"
        self._audit(prediction_id, QUEUE_ACTION, 202, query, " queued, its")

    def record_nothing_queued(self, prediction_id: str) -> None:
        """The ``dicom.send.none`` audit row (status 204) of a request that queued none of a
        prediction's results and is done: every one failed to be built or written
        (:meth:`submit`), or its instance lacks a UID the results must reference (app/ingest.py
        ``Ingestor._sender``) while a re-post of it may have them, or :meth:`submit` raised an
        unforeseen error (``Ingestor._send_back``, QA 96). A re-post then does not
        wait CLAIM_WAIT_S for a queue row that is not coming (:meth:`handled_or_wait`,
        :meth:`queued_since`): it queues the results at once (QA 88: it waited the 5 s). The
        row says nothing was queued (it covers no result). A database error is logged (a
        re-post then waits, as before)."""
        self._audit(prediction_id, NONE_ACTION, 204, "entries=0", ": its")

    def _audit(self, prediction_id: str, action: str, status: int, query: str, said: str) -> None:
        """One audit row of the outbox's about ``prediction_id``; a database error is logged
        (``outbox: prediction <id>`` + ``said`` + `` <action> audit row not written``)."""
        if self.sessionmaker is None:
            return
        from sqlalchemy.exc import SQLAlchemyError

        from radlens.app import audit

        try:
            with self.sessionmaker() as session:
                audit.add(
                    session,
                    actor=ACTOR,
                    action=action,
                    status=status,
                    target=prediction_id,
                    query=query,
                )
                session.commit()
        except SQLAlchemyError as exc:
            logger.warning(
                "outbox: prediction %s%s %s audit row not written (%s)",
                prediction_id,
                said,
                action,
                type(exc).__name__,
            )

    def enqueue(self, prediction_id: str, kind: str, payload: bytes) -> int:
        """Queue ``payload`` (a Part 10 object) for every destination that wants ``kind``;
        raises the first destination's error when one could not be written (the others are)."""
        written, failed = self._enqueue(prediction_id, kind, payload)
        if failed:
            raise failed[0][1]
        return len(written)

    def _enqueue(
        self,
        prediction_id: str,
        kind: str,
        payload: bytes,
        names: list[str] | None = None,
        *,
        build_at_send: bool = False,
    ) -> tuple[list[str], list[tuple[str, Exception]]]:
        """Queue ``payload`` for each destination that wants ``kind`` (of ``names``, when
        given), each on its own; returns the destinations written and those not, with why.
        ``build_at_send``: the payload is an SR's source reference (:func:`_source_payload`)."""
        written: list[str] = []
        failed: list[tuple[str, Exception]] = []
        now = self.clock()
        for destination in self.destinations.values():
            if not destination.wants(kind) or (names is not None and destination.name not in names):
                continue
            entry = Entry(
                id=f"{int(now * 1000):013d}-{uuid.uuid4().hex}",
                prediction_id=prediction_id,
                kind=kind,
                destination=destination.name,
                created_at=now,
                encrypted=self._fernet is not None,
                build_at_send=build_at_send,
            )
            try:
                stored = self._fernet.encrypt(payload) if self._fernet is not None else payload
                with self._lock:
                    # payload first, then state; the payload stays locked until its state is
                    # written, so another process's clean-up does not take it for an orphan
                    held = _write_locked(self._payload_path(entry), stored)
                    try:
                        _write_atomic(self._state_path(entry), entry.state_json())
                    except BaseException:  # no state, no entry: its payload would hold space
                        self._payload_path(entry).unlink(missing_ok=True)
                        raise
                    finally:
                        os.close(held)
                    if self.gauge is not None:
                        self.gauge.labels(destination=destination.name).inc()
            except Exception as exc:  # this destination's entry only: the next is tried
                failed.append((destination.name, exc))
                continue
            written.append(destination.name)
        if written:
            self._wake.set()
        return written, failed

    # --- what was queued before ------------------------------------------------------

    def _missing(self, covered: set[Pair] | None) -> set[Pair]:
        """The wanted (kind, destination) pairs ``covered`` (None: everything) leaves out."""
        if covered is None:
            return set()
        return {
            (kind, name)
            for kind, name in self.wanted()
            if (kind, name) not in covered and (kind, _EVERY) not in covered
        }

    def _spool_pairs(self, prediction_id: str) -> set[Pair]:
        return {(e.kind, e.destination) for e in self._spool() if e.prediction_id == prediction_id}

    def _covered(self, prediction_id: str, *, spool: bool) -> set[Pair] | None:
        """What the audit trail (and the spool, with ``spool``) says was queued (None:
        everything, a queue row saying so)."""
        covered = self._spool_pairs(prediction_id) if spool else set()
        if self.sessionmaker is None:
            return covered
        from_rows, _queue_row, _created_at = self._queued_rows(prediction_id)
        return None if from_rows is None else covered | from_rows

    def handled_or_wait(self, prediction_id: str) -> tuple[bool, float]:
        """Whether a prediction's results were queued before, every (kind, destination) the
        destinations want: ``(True, 0)`` when the spool (an entry pending, or settled and
        waiting for its audit row) and the ``dicom.send.queue``/``deliver``/``drop`` audit
        rows (written by whichever process queued them) account for each; else ``(False,
        seconds)``: how long to wait for the creating request's queue row before queueing
        what is missing. A prediction committed less than CLAIM_WAIT_S ago and without a queue
        row is waited for until then (the request that created it, on this process or another,
        is writing its entries: the same instance posted twice at once); 0 for one whose
        commit was not followed by its queueing (a crash between the two, a queued instance
        replayed after a restart), or whose queue row says something was left out (a kind
        that could not be built, a spool write that failed): what is missing is queued when
        the instance is received again (:meth:`submit` then queues only that). Without a
        sessionmaker (tests) the spool alone decides. One spool read and one query; the
        service waits in its event loop, polling :meth:`queued_since`
        (app/ingest.py ``Ingestor._results_queued``)."""
        spool = self._spool_pairs(prediction_id)
        if not self._missing(spool):
            return True, 0.0
        if self.sessionmaker is None:
            return False, 0.0
        from_rows, queue_row, created_at = self._queued_rows(prediction_id, created=True)
        if not self._missing(None if from_rows is None else spool | from_rows):
            return True, 0.0
        wait = 0.0
        if not queue_row and created_at is not None:
            # created_at is the creating process's wall clock: compared with this one's (not
            # self.clock, which tests move); the caller bounds the wait with a monotonic
            # deadline
            wait = max(0.0, min(_epoch(created_at) + CLAIM_WAIT_S - time.time(), CLAIM_WAIT_S))
        return False, wait

    def queued_since(self, prediction_id: str, *, final: bool) -> tuple[bool, bool]:
        """While waiting (:meth:`handled_or_wait`): ``(queued, over)``, whether the audit rows
        now account for every result wanted, and whether the wait is over: when they do, on
        the last look (``final``), or when a queue row has come that leaves something out (the
        request that queued it is done, and nothing else is queueing: what is missing is
        queued now rather than after CLAIM_WAIT_S, QA 78). One query; when the wait ends
        unqueued, the spool too (a shared one shows entries whose row the database refused).
        Not queued: the submit that follows is a re-send (``resend=True``)."""
        from_rows, queue_row, _ = self._queued_rows(prediction_id)
        if not self._missing(from_rows):
            return True, True
        if not (final or queue_row):
            return False, False
        covered = from_rows
        if covered is not None:
            covered = covered | self._spool_pairs(prediction_id)
        return not self._missing(covered), True

    def _queued_rows(
        self, prediction_id: str, *, created: bool = False
    ) -> tuple[set[Pair] | None, bool, Any]:
        """What the audit rows say was queued, delivered or dropped of a prediction's results
        (None: everything), whether one is a queue row, and (``created``) the prediction's
        created_at (None when it is not found). The "prediction.create" row of a process without
        destinations (app/writer.py ``NO_OUTBOX_QUERY``) counts as a ``dicom.send.none`` row."""
        from sqlalchemy import and_, or_, select

        from radlens.app.audit import PREDICTION_CREATE
        from radlens.app.security_tables import AuditEvent
        from radlens.app.tables import Prediction
        from radlens.app.writer import NO_OUTBOX_QUERY

        assert self.sessionmaker is not None
        with self.sessionmaker() as session:
            rows = session.execute(
                select(AuditEvent.action, AuditEvent.query).where(
                    or_(
                        AuditEvent.action.in_(
                            (QUEUE_ACTION, NONE_ACTION, DELIVER_ACTION, DROP_ACTION)
                        ),
                        and_(
                            AuditEvent.action == PREDICTION_CREATE,
                            AuditEvent.query == NO_OUTBOX_QUERY,
                        ),
                    ),
                    AuditEvent.target == prediction_id,
                )
            ).all()
            created_at = None
            if created:
                try:
                    key = uuid.UUID(prediction_id)
                except ValueError:
                    key = None
                if key is not None:
                    created_at = session.scalar(
                        select(Prediction.created_at).where(Prediction.id == key)
                    )
        covered: set[Pair] | None = set()
        for action, text in rows:
            pairs = _row_pairs(str(action), text)
            covered = None if pairs is None or covered is None else covered | pairs
        # a queue row, or one saying nothing was queued: the creating request is done
        done = any(action not in (DELIVER_ACTION, DROP_ACTION) for action, _ in rows)
        return covered, done, created_at

    # --- claims between the processes sharing the spool ---------------------------------

    @contextlib.contextmanager
    def _claimed(self, entry: Entry) -> Iterator[Entry | None]:
        """Claim a pending entry for sending or dropping: its payload flock-ed (exclusive,
        non-blocking), then its state read again. Yields that state, or None when another
        process holds it, or has sent, settled or rescheduled it since it was listed."""
        try:
            fd = _lock_path(self._payload_path(entry))
        except FileNotFoundError:
            fd = -1  # no payload: if its state is still pending, it is dropped as unreadable
        if fd is None:
            yield None
            return
        try:
            try:
                fresh = Entry(**json.loads(self._state_path(entry).read_text()))
            except (OSError, ValueError, TypeError):
                yield None
                return
            due = fresh.state == PENDING and fresh.next_attempt_at <= entry.next_attempt_at
            yield fresh if due else None
        finally:
            if fd >= 0:
                os.close(fd)

    # --- the spool -----------------------------------------------------------------

    def _state_path(self, entry: Entry) -> Path:
        return self.directory / f"{entry.id}.json"

    def _payload_path(self, entry: Entry) -> Path:
        return self.directory / f"{entry.id}.{'enc' if entry.encrypted else 'dcm'}"

    def entries(self) -> list[Entry]:
        """The entries still to be delivered, oldest first."""
        return [e for e in self._spool() if e.state == PENDING]

    def unaudited(self) -> list[Entry]:
        """The delivered or dropped entries whose audit row is not committed yet, oldest first."""
        return [e for e in self._spool() if e.state != PENDING]

    def _spool(self) -> list[Entry]:
        """Every entry in the spool, oldest first (unreadable state files are skipped)."""
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                found.append(Entry(**json.loads(path.read_text())))
            except FileNotFoundError:
                continue  # forgotten since listed (by another process sharing the spool)
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("outbox: %s unreadable (%s)", path.name, type(exc).__name__)
        return found

    def payload(self, entry: Entry) -> bytes:
        """The Part 10 bytes of ``entry``, decrypted."""
        data = self._payload_path(entry).read_bytes()
        if not entry.encrypted:
            return data
        from cryptography.fernet import InvalidToken

        if self._fernet is None:
            raise UndecryptableEntryError("encrypted, and RADLENS_UID_PSEUDONYM_KEY is unset")
        try:
            return bytes(self._fernet.decrypt(data))
        except InvalidToken:
            raise UndecryptableEntryError("RADLENS_UID_PSEUDONYM_KEY changed") from None

    def _settle(self, entry: Entry, state: str, reason: str | None = None) -> None:
        """Mark ``entry`` delivered or dropped (state first, then the payload goes: it is
        never sent again); its audit row is written at the end of the pass."""
        settled = replace(entry, state=state, reason=reason)
        with self._lock:
            if not self._state_path(entry).exists():
                return
            _write_atomic(self._state_path(entry), settled.state_json())
            self._payload_path(entry).unlink(missing_ok=True)
            if self.gauge is not None:
                self.gauge.labels(destination=entry.destination).dec()

    def _forget(self, entries: list[Entry]) -> None:
        """Remove delivered or dropped entries whose audit rows are committed."""
        with self._lock:
            for entry in entries:
                self._payload_path(entry).unlink(missing_ok=True)  # normally gone already
                self._state_path(entry).unlink(missing_ok=True)

    def _remove_partials(self) -> None:
        """Files a crash left: temporaries, and payloads whose state was never written, was
        already removed, or says delivered or dropped. A file another process holds (writing
        it, or the payload it is sending) is left alone; one it finished meanwhile, too."""
        for path in self.directory.iterdir():
            partial = path.name.endswith(PARTIAL_SUFFIX)
            if not (partial or path.suffix in (".dcm", ".enc")):
                continue
            try:
                fd = _lock_path(path)
            except FileNotFoundError:  # renamed or removed since listed
                continue
            if fd is None:  # being written or sent
                continue
            try:
                if not partial:
                    state = path.with_suffix(".json")
                    try:
                        settled = json.loads(state.read_text()).get("state", PENDING) != PENDING
                    except FileNotFoundError:
                        settled = True  # never written, or already removed
                    except (OSError, ValueError, AttributeError):
                        continue  # unreadable: _spool() says so; the payload is kept
                    if not settled:
                        continue
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    def _recount(self) -> None:
        if self.gauge is None:
            return
        with self._lock:
            counts = dict.fromkeys(self.destinations, 0)
            for entry in self.entries():
                counts[entry.destination] = counts.get(entry.destination, 0) + 1
            for name, count in counts.items():
                self.gauge.labels(destination=name).set(count)

    # --- delivery ------------------------------------------------------------------

    def deliver_due(self) -> None:
        """One pass: drop the expired, send the due (one association per destination), then
        write the audit rows of every delivered or dropped entry (this pass's and those a
        database outage or a crash left) and forget those entries. An entry another process
        sharing the spool holds (sending it, or writing its audit row) is left to it."""
        now = self.clock()
        due: dict[str, list[Entry]] = {}
        with contextlib.ExitStack() as claims:
            claimed = 0
            for listed in self.entries():
                expired = now - listed.created_at >= self.settings.dicom_outbox_max_age_s
                unknown = listed.destination not in self.destinations
                if not (expired or unknown or listed.next_attempt_at <= now):
                    continue
                if claimed >= MAX_CLAIMS:  # the rest in the next pass, which follows at once
                    break
                entry = claims.enter_context(self._claimed(listed))
                if entry is None:  # another process has it
                    continue
                claimed += 1
                if expired:
                    self._drop(entry, f"undelivered after {entry.attempts} attempts")
                elif unknown:
                    self._drop(entry, "destination no longer configured")
                else:
                    due.setdefault(entry.destination, []).append(entry)
            for name, entries in due.items():
                self._send(self.destinations[name], entries)
        self._audit_settled()
        self._recount()

    def _send(self, destination: Destination, entries: list[Entry]) -> None:
        import pydicom
        from pydicom.errors import InvalidDicomError

        datasets = []
        for entry in entries:
            try:
                data = self.payload(entry)
                if entry.build_at_send:
                    data = self._build_deferred(entry, data)
                ds = pydicom.dcmread(io.BytesIO(data))
            except UndecryptableEntryError as exc:
                self._drop(entry, f"cannot be decrypted: {exc}")
                continue
            except (OSError, InvalidDicomError) as exc:
                self._drop(entry, f"payload unreadable: {type(exc).__name__}")
                continue
            except _NotBuiltYetError as exc:  # its findings still unreadable: not sent yet
                self._retry(entry, str(exc))
                continue
            except _NotBuildableError as exc:
                self._drop(entry, str(exc))
                continue
            datasets.append((entry, ds))
        if not datasets:
            return
        assoc = self._associate(destination, {str(ds.SOPClassUID) for _, ds in datasets})
        if not assoc.is_established:
            reason = _association_error(assoc, destination, self.settings.dimse_ae_title)
            for entry, _ in datasets:
                self._retry(entry, reason)
            return
        delivered = 0
        lost: str | None = None  # the association ended: the rest wait for the next pass
        try:
            for entry, ds in datasets:
                error = lost or self._store(assoc, ds, self.settings.dimse_ae_title)
                if error is None:
                    self._settle(entry, DELIVERED)
                    delivered += 1
                else:
                    # not "not sent: The association with a peer SCP must be established"
                    # for each entry after an abort, which hid why (QA round 30)
                    lost = error if error.startswith(NO_RESPONSE) else None
                    self._retry(entry, error)
        finally:
            if assoc.is_established:
                assoc.release()
        if delivered:
            logger.info("outbox: %d objects delivered to %s", delivered, destination.name)

    def _build_deferred(self, entry: Entry, source_payload: bytes) -> bytes:
        """The SR of a deferred entry (its findings could not be read when it was queued),
        built now from the stored prediction and findings, as :meth:`submit` builds it, and
        its source reference in the payload (the sender's UIDs: never the database's). Built
        again at each attempt (the entry is not rewritten while claimed). Raises
        _NotBuiltYetError when the database cannot be read (retried as a failed delivery),
        _NotBuildableError when the prediction is gone or the SR cannot be built (dropped)."""
        from sqlalchemy.exc import SQLAlchemyError

        from radlens.app.catalogue import sr_findings
        from radlens.app.clinical import validated as clinically_validated
        from radlens.app.dicom_outputs import build_sr
        from radlens.app.tables import Prediction

        try:
            source = _source_from_payload(source_payload)
        except Exception as exc:  # not written by _source_payload: nothing to build from
            raise _NotBuildableError(f"payload unreadable: {type(exc).__name__}") from exc
        if self.sessionmaker is None:
            raise _NotBuiltYetError("database: none to read the findings from")
        try:
            with self.sessionmaker() as session:
                prediction = session.get(Prediction, uuid.UUID(entry.prediction_id))
                if prediction is None:
                    raise _NotBuildableError("SR not built: the prediction is no longer stored")
                findings = sr_findings(session, [prediction]).get(prediction.id, [])
                validated = clinically_validated(
                    self.settings, prediction.model_name, prediction.model_version
                )
                try:
                    return build_sr(prediction, source, findings, validated=validated)
                except Exception as exc:  # DicomOutputError, or highdicom's own: a bug
                    raise _NotBuildableError(f"SR not built: {type(exc).__name__}") from exc
        except SQLAlchemyError as exc:
            raise _NotBuiltYetError(
                f"database: its findings could not be read ({type(exc).__name__}); the SR is "
                "built when they can be"
            ) from exc

    def _associate(self, destination: Destination, sop_classes: set[str]) -> Any:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        s = self.settings
        ae = _sender_ae(s.dimse_ae_title)
        ae.connection_timeout = s.dimse_network_timeout_s  # a silent host: no endless connect
        ae.acse_timeout = s.dimse_acse_timeout_s
        ae.dimse_timeout = s.dimse_dimse_timeout_s
        ae.network_timeout = s.dimse_network_timeout_s
        ae.maximum_pdu_size = s.dimse_max_pdu_size
        for sop_class in sorted(sop_classes):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        return ae.associate(destination.host, destination.port, ae_title=destination.ae_title)

    @staticmethod
    def _store(assoc: Any, ds: Any, calling: str) -> str | None:
        """C-STORE one object; None on Success/Warning, else why not (``calling``: radlens'
        AE title, named when the destination gives no answer)."""
        from pynetdicom.status import code_to_category

        try:
            status = assoc.send_c_store(ds)
        except (ValueError, RuntimeError) as exc:  # e.g. no accepted presentation context
            return f"not sent: {exc}"[:200]
        if "Status" not in status:
            # what Orthanc does with a calling AE title it does not know: it accepts the
            # association and aborts it at the C-STORE (QA round 30: the error said only "no
            # response (timeout or abort)", naming neither the title nor what to check)
            return (
                f"{NO_RESPONSE} (aborted by the destination, or RADLENS_DIMSE_DIMSE_TIMEOUT_S): "
                f"check that it lets AE title {calling} store from radlens' address"
            )
        category = code_to_category(status.Status)
        if category in ("Success", "Warning"):
            return None
        comment = str(status.get("ErrorComment", ""))[:64]
        return f"C-STORE status 0x{status.Status:04X} {category} {comment}".strip()

    def _retry(self, entry: Entry, error: str) -> None:
        attempts = entry.attempts + 1
        s = self.settings
        delay = min(s.dicom_outbox_retry_s * 2 ** (attempts - 1), s.dicom_outbox_retry_max_s)
        updated = replace(
            entry, attempts=attempts, next_attempt_at=self.clock() + delay, last_error=error
        )
        with self._lock:
            if self._state_path(entry).exists():
                _write_atomic(self._state_path(entry), updated.state_json())
        logger.warning(
            "outbox: %s of prediction %s to %s not delivered (attempt %d): %s; next in %.0f s",
            entry.kind.upper(),
            entry.prediction_id,
            entry.destination,
            attempts,
            error,
            delay,
        )

    def _drop(self, entry: Entry, reason: str) -> None:
        self._settle(entry, DROPPED, reason)
        logger.error(
            "outbox: %s of prediction %s to %s dropped: %s",
            entry.kind.upper(),
            entry.prediction_id,
            entry.destination,
            reason,
        )

    def _audit_settled(self) -> None:
        """Write the audit rows of the delivered and dropped entries in one transaction and,
        once it committed, forget the entries; if it fails they wait for the next pass."""
        listed = self.unaudited()
        if not listed:
            return
        with contextlib.ExitStack() as claims:
            settled = []  # those this process holds: another writes the others' rows
            for entry in listed[:MAX_CLAIMS]:
                try:
                    fd = _lock_path(self._state_path(entry))
                except FileNotFoundError:  # audited and forgotten by another process
                    continue
                if fd is not None:
                    claims.callback(os.close, fd)
                    settled.append(entry)
            self._audit_claimed(settled)

    def _audit_claimed(self, settled: list[Entry]) -> None:
        if not settled:
            return
        if self.sessionmaker is None:  # no audit trail (tests)
            self._forget(settled)
            return
        from sqlalchemy.exc import SQLAlchemyError

        from radlens.app import audit

        try:
            with self.sessionmaker() as session:
                for entry in settled:
                    action, status, query = entry.audit_row()
                    audit.add(
                        session,
                        actor=ACTOR,
                        action=action,
                        status=status,
                        target=entry.prediction_id,
                        query=query,
                    )
                session.commit()
        except SQLAlchemyError as exc:
            logger.warning(
                "outbox: %d audit rows not written (%s); kept in the spool, retried next pass",
                len(settled),
                type(exc).__name__,
            )
            return
        self._forget(settled)

    # --- the delivery thread ---------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="radlens-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def wake(self) -> None:
        """Run a delivery pass now (a new entry, or a test that moved the clock)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.deliver_due()
            except Exception:  # the thread must survive anything one pass meets
                logger.exception("outbox: delivery pass failed")
            self._wake.wait(timeout=self._next_wait())

    def _next_wait(self) -> float:
        entries = self.entries()
        if not entries:
            return _POLL_S
        soonest = min(e.next_attempt_at for e in entries) - self.clock()
        return min(max(soonest, 0.05), _POLL_S)


PURGED_REASON = "prediction purged (retention)"


def drop_purged_entries(
    directory: Path, purged: Callable[[set[str]], set[str]], *, dry_run: bool = False
) -> tuple[int, int]:
    """Retention (`radlens purge`, app/audit.py ``retention_purge``): the entries still to be
    delivered of the predictions ``purged`` returns (given the spool's prediction ids) become
    ``dropped`` and their payload (the SR/SC, with the sender's UIDs) is deleted, so nothing of
    a purged prediction is sent or kept. Their ``dicom.send.drop`` rows (410, reason
    :data:`PURGED_REASON`) are written by the service's next delivery pass, as for any drop.

    Claimed as the delivery thread claims an entry (the payload's flock, then its state read
    again), so it is safe while a service shares the spool; an entry another process holds
    (sending it now) is left, and counted. Delivered or dropped entries waiting for their audit
    row hold no payload (and no UID) and are left to it. Returns ``(dropped, busy)``; with
    ``dry_run`` the entries that would be dropped, nothing changed. A directory that does not
    exist holds nothing (it is not created)."""
    if not directory.is_dir():
        return 0, 0
    pending: list[Entry] = []
    for path in sorted(directory.glob("*.json")):
        try:
            entry = Entry(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # forgotten since listed, or unreadable (the service logs it)
        if entry.state == PENDING:
            pending.append(entry)
    if not pending:
        return 0, 0
    gone = purged({e.prediction_id for e in pending})
    chosen = [e for e in pending if e.prediction_id in gone]
    if dry_run:
        return len(chosen), 0
    dropped = busy = 0
    for entry in chosen:
        state_path = directory / f"{entry.id}.json"
        payload_path = directory / f"{entry.id}.{'enc' if entry.encrypted else 'dcm'}"
        try:
            fd = _lock_path(payload_path)
        except FileNotFoundError:
            fd = -1  # no payload left: the state alone is settled
        if fd is None:
            busy += 1
            continue
        try:
            try:
                fresh = Entry(**json.loads(state_path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # settled and forgotten meanwhile
            if fresh.state != PENDING:
                continue  # delivered (or dropped) meanwhile
            settled = replace(fresh, state=DROPPED, reason=PURGED_REASON)
            _write_atomic(state_path, settled.state_json())
            payload_path.unlink(missing_ok=True)
            dropped += 1
        finally:
            if fd >= 0:
                os.close(fd)
    if dropped:
        logger.info("outbox: %d queued results of purged predictions dropped", dropped)
    return dropped, busy


def _row_pairs(action: str, query: str | None) -> set[Pair] | None:
    """The (kind, destination) pairs an outbox audit row names (module docstring); None for
    everything wanted: a queue row saying nothing was left out (or of an earlier version, or
    cut at the column's length), a row that cannot be read."""
    if action not in (QUEUE_ACTION, DELIVER_ACTION, DROP_ACTION):  # the request queued nothing
        return set()  # (a dicom.send.none row, or a process without destinations' create row)
    text = query or ""
    fields: dict[str, str] = {}
    for part in text.split("&"):
        name, _, value = part.partition("=")
        fields.setdefault(name, value)
    if action == QUEUE_ACTION:
        if "queued" not in fields or len(text) >= _QUERY_LENGTH:
            return None
        pairs: set[Pair] = set()
        for item in fields["queued"].split(","):
            kind, _, name = item.partition(":")
            if kind:
                pairs.add((kind, name or _EVERY))
        return pairs
    if fields.get("kind") and fields.get("destination"):
        return {(fields["kind"], fields["destination"])}
    return None


def _association_error(assoc: Any, destination: Destination, calling: str) -> str:
    """Why the association to ``destination`` was not established, with what to check: the
    destination's own reason when it rejected it (it said only "association rejected")."""
    if assoc.is_rejected:
        answer = assoc.acceptor.primitive
        why = getattr(answer, "reason_str", None) or "no reason given"
        return (
            f"association rejected by {destination.name}: {why} "
            f"(radlens calls as {calling}, RADLENS_DIMSE_AE_TITLE)"
        )
    return (
        f"association failed by {destination.name}: no connection, or closed at once "
        f"(check its host and port, and that it knows AE title {calling})"
    )


def _sender_ae(ae_title: str) -> Any:
    """A pynetdicom AE whose sockets are closed when the connection is refused.

    pynetdicom 3.0 shuts a socket down and closes it in one ``try``: on a socket that never
    connected the shutdown raises and the close is skipped, so each refused attempt would
    leave a socket to the garbage collector (a ResourceWarning per retry of a down PACS).
    """
    import socket

    from pynetdicom import AE
    from pynetdicom.transport import AssociationSocket

    from radlens.app.dicomlog import quiet_pynetdicom

    quiet_pynetdicom()  # no UID as received in the log (app/dicomlog.py)

    class ClosingSocket(AssociationSocket):
        def _shutdown_socket(self) -> None:
            sock = self.socket
            if sock is None:
                return
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # never connected
            finally:
                sock.close()

    class SenderAE(AE):
        def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> AssociationSocket:
            sock = ClosingSocket(assoc, address=address)
            sock.tls_args = tls_args
            return sock

    return SenderAE(ae_title=ae_title)


def _epoch(value: Any) -> float:
    """Seconds since the epoch of a stored timestamp (naive: UTC)."""
    from datetime import UTC

    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def _lock_path(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive flock, or None when another
    process holds it (or replaced the file meanwhile). Raises FileNotFoundError when there is
    no such file (any more)."""
    fd = os.open(path, os.O_RDONLY)  # flock needs no write access
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:
        now = os.stat(path)
    except BaseException:  # removed between the open and the lock
        os.close(fd)
        raise
    held = os.fstat(fd)
    if (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev):
        os.close(fd)  # replaced between the open and the lock: what was listed is gone
        return None
    return fd


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and a rename."""
    os.close(_write_locked(path, data))


def _write_locked(path: Path, data: bytes) -> int:
    """:func:`_write_atomic`, returning an open descriptor of the file, its flock held: the
    temporary file is locked while it is written (another process's clean-up leaves it)."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    fd = -1
    try:
        for _attempt in range(3):
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:
                break
            os.close(fd)  # removed by a clean-up between the open and the lock: again
            fd = -1
        else:
            raise OSError(f"{partial.name} was removed while being written")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.replace(partial, path)
    except BaseException:
        # a full disk: what was written would hold the space until a restart removed it
        # (_remove_partials), and every later result would fail to queue (QA round 33)
        if fd >= 0:
            os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    return fd

"""QA 68: results lost on the way to the outbox are queued by a re-send, and counted true
(app/outbox.py; SQLite and PostgreSQL).

- A prediction whose SR was queued while its SC could not be (or the other way round) had a
  ``dicom.send.queue`` row, and that row stopped a re-send of the instance from queueing the
  lost kind (docs/pacs-integration.md: "when one kind was, the other is not queued again"). A
  re-send now queues what is missing, never what was queued.
- A spool write failing after one destination's entry was written lost that entry's count:
  the submit said 0 queued, wrote no queue row (so another replica's re-post queued that
  destination's result again) and the log said the kind "will not be sent". Each destination's
  entry is now written, counted and recorded on its own, and
  radlens_dicom_outbox_enqueue_failures_total counts each entry not written (one per
  destination), as radlens_dicom_outbox_pending counts the written ones.

Since QA 78 the outbox no longer marks a prediction ``handled_or_wait`` found not fully queued
as a re-send for the submit that follows: its caller says so (``resend=``), as the ingest does.
The outbox tests here pass it as the ingest would; the same re-sends through the ingest (a
re-post of the instance) are in tests/app/test_qa78_outbox_claims.py.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import dicom_bytes, new_uid, png_bytes, prediction_row
from tests.app.test_outbox import (
    audit_actions,
    make_outbox,
    metric,
    outbox_settings,
    post_dicom,
    sessions,  # noqa: F401 (a fixture)
    waiting_outbox_client,
)

# Port 26800-26899 is QA 68's range; nothing listens on these: entries stay pending
A = "A@127.0.0.1:26811"
B = "B@127.0.0.1:26812"
FAILURES = "radlens_dicom_outbox_enqueue_failures_total"
PENDING = "radlens_dicom_outbox_pending"


def _row() -> Any:
    row = prediction_row("sha256:" + new_uid().replace(".", "")[-64:].rjust(64, "0"))
    row.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    return row


def _source(row: Any) -> Any:
    from radlens.app.dicom_outputs import SourceRef

    return SourceRef(new_uid(), new_uid(), new_uid(), row.sop_class_uid, "CT")


def _queued(outbox: Any) -> list[tuple[str, str]]:
    """(kind, destination) of every pending entry, sorted."""
    return sorted((e.kind, e.destination) for e in outbox.entries())


def _queue_rows(outbox: Any, prediction_id: str) -> list[str]:
    from sqlalchemy import select

    from radlens.app.security_tables import AuditEvent

    with outbox.sessionmaker() as session:
        query = select(AuditEvent.query).where(
            AuditEvent.action == "dicom.send.queue", AuditEvent.target == prediction_id
        )
        return [str(q) for q in session.scalars(query.order_by(AuditEvent.id))]


def _failing_writes(monkeypatch: pytest.MonkeyPatch, from_call: int) -> None:
    """Every spool file write from the ``from_call``-th on fails with ENOSPC (each entry is
    two writes: its payload, then its state)."""
    from radlens.app import outbox as outbox_module

    real = outbox_module._write_locked
    calls = {"n": 0}

    def write(path: Path, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] >= from_call:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(outbox_module, "_write_locked", write)


@pytest.fixture()
def outbox_of(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    sessions: Any,  # noqa: F811
) -> Callable[[str], Any]:
    def make(destinations: str) -> Any:
        settings = outbox_settings(
            migrated_database_url, model_store, tmp_path / "spool", destinations
        )
        return make_outbox(settings, sessions)

    return make


def test_a_resend_queues_the_sc_that_was_lost_and_not_the_sr_again(
    outbox_of: Callable[[str], Any],
) -> None:
    from radlens.app.outbox import ResultsNotQueuedError

    outbox = outbox_of(f"{A}/sr+sc")
    row, overlay = _row(), png_bytes(seed=68)
    source = _source(row)
    with pytest.raises(ResultsNotQueuedError):  # no overlay: the SC is lost, the SR queued
        outbox.submit(row, source, None, resend=False)
    assert _queued(outbox) == [("sr", A)]
    assert _queue_rows(outbox, str(row.id)) == ["entries=1&queued=sr"]
    # the instance comes again: its results are not all queued
    assert outbox.handled_or_wait(str(row.id)) == (False, 0.0)
    assert outbox.submit(row, source, overlay, resend=True) == 1
    assert _queued(outbox) == [("sc", A), ("sr", A)]
    assert _queue_rows(outbox, str(row.id)) == ["entries=1&queued=sr", "entries=1"]
    # and once more: everything is queued, nothing is sent twice
    assert outbox.handled_or_wait(str(row.id)) == (True, 0.0)


def test_a_resend_queues_the_lost_sr_after_the_sc_was_delivered(
    outbox_of: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way round, and the queued kind delivered meanwhile: its entry is gone from
    the spool, its dicom.send.deliver row says which it was."""
    from radlens.app.dicom_outputs import DicomOutputError
    from radlens.app.outbox import DELIVERED, ResultsNotQueuedError

    outbox = outbox_of(f"{A}/sr+sc")
    row, overlay = _row(), png_bytes(seed=69)
    source = _source(row)
    with monkeypatch.context() as patched:

        def refused(*args: Any, **kwargs: Any) -> bytes:
            raise DicomOutputError("highdicom refused the SR (a test)")

        patched.setattr("radlens.app.dicom_outputs.build_sr", refused)
        with pytest.raises(ResultsNotQueuedError) as raised:
            outbox.submit(row, source, overlay, resend=False)
    assert [(k, r) for k, r, _ in raised.value.failures] == [("sr", "build")]
    (sc,) = outbox.entries()
    outbox._settle(sc, DELIVERED)  # as a pass does once the C-STORE answered Success
    outbox._audit_settled()
    assert outbox.entries() == [] and outbox.unaudited() == []
    assert outbox.handled_or_wait(str(row.id)) == (False, 0.0)
    assert outbox.submit(row, source, overlay, resend=True) == 1
    assert _queued(outbox) == [("sr", A)]
    assert outbox.handled_or_wait(str(row.id)) == (True, 0.0)


def test_two_resends_at_once_in_one_process_queue_it_once(
    outbox_of: Callable[[str], Any],
) -> None:
    """Both found the SC missing; the second re-send finds it queued by the first."""
    from radlens.app.outbox import ResultsNotQueuedError

    outbox = outbox_of(f"{A}/sr+sc")
    row, overlay = _row(), png_bytes(seed=70)
    source = _source(row)
    with pytest.raises(ResultsNotQueuedError):
        outbox.submit(row, source, None, resend=False)
    assert outbox.handled_or_wait(str(row.id)) == (False, 0.0)
    assert outbox.handled_or_wait(str(row.id)) == (False, 0.0)
    assert outbox.submit(row, source, overlay, resend=True) == 1
    assert outbox.submit(row, source, overlay, resend=True) == 0
    assert _queued(outbox) == [("sc", A), ("sr", A)]


def test_a_spool_write_failing_after_one_destinations_entry_counts_that_entry(
    outbox_of: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app.outbox import ResultsNotQueuedError

    outbox = outbox_of(f"{A}/sr,{B}/sr")
    row = _row()
    source = _source(row)
    with monkeypatch.context() as patched:
        _failing_writes(patched, from_call=3)  # A's payload and state written, B's payload not
        with pytest.raises(ResultsNotQueuedError) as raised:
            outbox.submit(row, source, None, resend=False)
    assert raised.value.queued == 1
    assert [(k, r) for k, r, _ in raised.value.failures] == [("sr", "spool")]
    assert _queued(outbox) == [("sr", A)]
    assert outbox.gauge.labels(destination=A)._value.get() == 1.0
    assert outbox.gauge.labels(destination=B)._value.get() == 0.0
    # recorded: a re-post on a replica with its own spool sees A's entry as queued
    assert _queue_rows(outbox, str(row.id)) == [f"entries=1&queued=sr:{A}"]
    # the instance comes again: B's SR is queued, A's is not queued twice
    assert outbox.handled_or_wait(str(row.id)) == (False, 0.0)
    assert outbox.submit(row, source, None, resend=True) == 1
    assert _queued(outbox) == [("sr", A), ("sr", B)]
    assert outbox.handled_or_wait(str(row.id)) == (True, 0.0)


def test_every_entry_not_written_is_a_failure_and_every_written_one_is_queued(
    outbox_of: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk from the first write on: the SR for A and the SR for B are two results
    lost (one was counted: the first error stopped the second destination's write)."""
    from radlens.app.outbox import ResultsNotQueuedError

    outbox = outbox_of(f"{A}/sr,{B}/sr")
    row = _row()
    with monkeypatch.context() as patched:
        _failing_writes(patched, from_call=1)
        with pytest.raises(ResultsNotQueuedError) as raised:
            outbox.submit(row, _source(row), None, resend=False)
    assert raised.value.queued == 0
    assert [(k, r) for k, r, _ in raised.value.failures] == [("sr", "spool"), ("sr", "spool")]
    assert outbox.entries() == []
    assert _queue_rows(outbox, str(row.id)) == []


# --- through the service: a re-post of the instance ---------------------------------------


@pytest.fixture()
def client(tmp_path: Path, model_store: Path, migrated_database_url: str) -> Iterator[TestClient]:
    """A service sending SR and SC to A and SR to B, both down (the entries wait)."""
    with waiting_outbox_client(
        migrated_database_url, model_store, tmp_path / "spool", f"{A}/sr+sc,{B}/sr"
    ) as test_client:
        yield test_client


def _failures(client: TestClient) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metric(client, FAILURES + "{"))


def _pending(client: TestClient) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metric(client, PENDING + "{"))


def test_a_repost_queues_what_the_first_post_lost(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SC could not be built at the first post (counted, logged); the instance sent again
    gets its SC queued, and its SRs are not queued twice."""
    from radlens.app.dicom_outputs import DicomOutputError

    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    data = dicom_bytes(sop=new_uid())
    with monkeypatch.context() as patched:

        def refused(*args: Any, **kwargs: Any) -> bytes:
            raise DicomOutputError("the SC could not be built (a test)")

        patched.setattr("radlens.app.dicom_outputs.build_sc", refused)
        first = post_dicom(client, data)
    assert _queued(outbox) == [("sr", A), ("sr", B)]
    assert _failures(client) == 1.0  # A's SC
    again = client.post("/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert _queued(outbox) == [("sc", A), ("sr", A), ("sr", B)]
    queue_rows = [q for a, t, q in audit_actions(app) if a == "dicom.send.queue"]
    assert queue_rows == ["entries=2&queued=sr", "entries=1"]
    # the counts add up: 3 wanted, 3 pending (the failure stays counted: it happened)
    assert _pending(client) == 3.0
    third = client.post("/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")})
    assert third.status_code == 200
    assert len(outbox.entries()) == 3


def test_the_counts_add_up_when_the_spool_fills_midway(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three results wanted (A's SR and SC, B's SR), the spool full after A's SR: one pending,
    two counted as lost, and a queue row for the one."""
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    with monkeypatch.context() as patched:
        _failing_writes(patched, from_call=3)
        body = post_dicom(client, dicom_bytes(sop=new_uid()))  # asserts 201
    assert _queued(outbox) == [("sr", A)]
    assert _pending(client) == 1.0
    assert _failures(client) == 2.0
    assert [q for a, t, q in audit_actions(app) if a == "dicom.send.queue" and t == body["id"]] == [
        f"entries=1&queued=sr:{A}"
    ]

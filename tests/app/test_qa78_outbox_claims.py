"""QA 78: re-sends of results to the DICOM destinations (app/outbox.py, app/ingest.py), on
SQLite and PostgreSQL.

- A re-post waiting for the creating request's ``dicom.send.queue`` row (the same instance
  stored a moment before, its results still being queued) waited out the whole claim wait
  (CLAIM_WAIT_S, 5 s) when that row came but left something out (an SC that could not be
  built), and only then queued what was missing. The row says its request is done and nothing
  else holds the claim: the wait now ends when it comes (these tests failed before: the
  re-post took the whole wait). No stopwatch (QA 94): the re-post's polls for the row
  (``queued_since``) are recorded, and the first poll after the row came must end the wait;
  one that would keep waiting is recorded and ends it at once, so old code fails fast.
- The outbox no longer keeps an in-process marker of the predictions found not fully queued
  (the ingest says which submits are re-sends: ``submit(..., resend=)``). QA 68's re-sends,
  which exercised that marker through the outbox alone, through the ingest here: a re-post
  of the instance queues what the first post lost, never what it queued (these passed before
  as well).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from radlens.app.ingest import Ingestor
from tests.app.conftest import dicom_bytes, new_uid, prediction_row
from tests.app.test_outbox import (
    audit_actions,
    make_outbox,
    outbox_settings,
    post_dicom,
    sessions,  # noqa: F401 (a fixture)
    waiting_outbox_client,
)

# QA 78's ports (27800-27899); nothing listens on them: entries stay pending
A = "A@127.0.0.1:27811"
B = "B@127.0.0.1:27812"
CLAIM_WAIT_S = 30.0  # long, so that waiting it out cannot pass for not waiting


def _queued(outbox: Any) -> list[tuple[str, str]]:
    return sorted((e.kind, e.destination) for e in outbox.entries())


def _repost(client: TestClient, data: bytes) -> Any:
    return client.post("/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")})


class Polls:
    """The re-post's polls for the creating request's queue row (``outbox.queued_since``):
    ``answers`` holds ``(final, (queued, over))`` per poll. ``before`` runs ahead of each poll
    (to make the row come, or to wait until it has). A poll that would keep waiting is recorded
    and ends the wait at once, so a wait the row does not end fails the test at once instead of
    after CLAIM_WAIT_S."""

    def __init__(
        self, outbox: Any, monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]
    ) -> None:
        self.answers: list[tuple[bool, tuple[bool, bool]]] = []
        poll = outbox.queued_since

        def polling(prediction_id: str, *, final: bool) -> tuple[bool, bool]:
            before()
            answer: tuple[bool, bool] = poll(prediction_id, final=final)
            self.answers.append((final, answer))
            return answer[0], True  # over either way: `answers` says whether it should be

        monkeypatch.setattr(outbox, "queued_since", polling)


# --- the claim wait -----------------------------------------------------------------------


def test_a_partial_queue_row_ends_the_wait_at_once(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    sessions: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ingestor._results_queued for a prediction committed just now: the creating request's
    queue row comes while the re-post waits (just before its first poll), saying the SR was
    queued and the SC was not; that poll ends the wait, and the re-post answers "not all
    queued" (its submit queues the SC)."""
    from radlens.app import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "CLAIM_WAIT_S", CLAIM_WAIT_S)
    settings = outbox_settings(migrated_database_url, model_store, tmp_path, f"{A}/sr+sc")
    outbox = make_outbox(settings, sessions)
    row = prediction_row(f"claim-{uuid.uuid4()}")
    with sessions() as session:
        session.add(row)
        session.commit()
    prediction_id = str(row.id)
    found, wait = outbox.handled_or_wait(prediction_id)
    assert not found and wait > CLAIM_WAIT_S - 5  # committed just now: waited for
    ingestor = types.SimpleNamespace(outbox=outbox)
    written = types.SimpleNamespace(prediction=types.SimpleNamespace(id=prediction_id))

    came: list[bool] = []

    def the_row_comes() -> None:
        if not came:
            outbox._record_queued(prediction_id, 1, [("sr", A)])
            came.append(True)

    polls = Polls(outbox, monkeypatch, before=the_row_comes)
    queued = asyncio.run(Ingestor._results_queued(ingestor, written))  # type: ignore[arg-type]
    assert queued is False  # the SC is missing: the re-post's submit queues it
    # the first poll after the row came ended the wait (before: not over, waited out 30 s)
    assert polls.answers == [(False, (False, True))], "the re-post kept waiting after the row"


@pytest.fixture()
def client(tmp_path: Path, model_store: Path, migrated_database_url: str) -> Iterator[TestClient]:
    """A service sending SR and SC to A and SR to B, both down (the entries wait)."""
    with waiting_outbox_client(
        migrated_database_url, model_store, tmp_path / "spool", f"{A}/sr+sc,{B}/sr"
    ) as test_client:
        yield test_client


def test_a_repost_while_the_first_is_queueing_does_not_wait_out_a_partial_row(
    client: TestClient, migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance posted, and posted again once its prediction is committed while the first
    request's results are still being queued (its submit held until the re-post has looked
    for the queue row); the first request's SC is lost (no overlay). The re-post answers
    without waiting out CLAIM_WAIT_S, with the SC queued and the SRs not queued twice."""
    from sqlalchemy import create_engine, text

    from radlens.app import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "CLAIM_WAIT_S", CLAIM_WAIT_S)
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    submit, look = outbox.submit, outbox.handled_or_wait
    looked, first_queued = threading.Event(), threading.Event()
    looks: list[tuple[bool, float]] = []

    def looking(prediction_id: str) -> Any:
        try:
            looks.append(look(prediction_id))
            return looks[-1]
        finally:
            looked.set()

    def first_loses_the_sc(prediction: Any, source: Any, overlay: Any, *, resend: bool) -> int:
        if resend:
            return int(submit(prediction, source, overlay, resend=True))
        assert looked.wait(timeout=120), "the re-post never looked for the queue row"
        try:
            return int(submit(prediction, source, None, resend=False))  # the SC: no overlay
        finally:
            first_queued.set()  # its queue row is written

    def once_the_first_has_queued() -> None:
        assert first_queued.wait(timeout=120), "the first request never queued its results"

    monkeypatch.setattr(outbox, "submit", first_loses_the_sc)
    monkeypatch.setattr(outbox, "handled_or_wait", looking)
    polls = Polls(outbox, monkeypatch, before=once_the_first_has_queued)
    data = dicom_bytes(sop=new_uid())
    engine = create_engine(migrated_database_url)
    answers: dict[str, Any] = {}
    try:
        thread = threading.Thread(target=lambda: answers.update(first=_repost(client, data)))
        thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM predictions")).scalar_one():
                    break
            time.sleep(0.02)
        again = _repost(client, data)
        thread.join(timeout=120)  # bounds a hang only
    finally:
        engine.dispose()
    assert answers["first"].status_code == 201, answers["first"].text
    assert again.status_code == 200 and again.json()["id"] == answers["first"].json()["id"]
    (looked_at,) = looks
    assert looked_at[0] is False and looked_at[1] > CLAIM_WAIT_S - 5  # it waited for the row
    # its first poll after the row came ended the wait (before: not over, waited out 30 s)
    assert polls.answers == [(False, (False, True))], "the re-post kept waiting after the row"
    assert _queued(outbox) == [("sc", A), ("sr", A), ("sr", B)]
    queue_rows = [q for a, t, q in audit_actions(app) if a == "dicom.send.queue"]
    assert queue_rows == ["entries=2&queued=sr", "entries=1"]


# --- QA 68's re-sends, through the ingest ---------------------------------------------------


def _post_with_refused_builder(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, data: bytes, builder: str
) -> dict[str, Any]:
    """The first post of ``data`` while ``dicom_outputs.<builder>`` (build_sr or build_sc)
    refuses, so that output is never queued."""
    from radlens.app.dicom_outputs import DicomOutputError

    def refused(*args: Any, **kwargs: Any) -> bytes:
        raise DicomOutputError(f"{builder} refused (a test)")

    with monkeypatch.context() as patched:
        patched.setattr(f"radlens.app.dicom_outputs.{builder}", refused)
        return post_dicom(client, data)


def test_a_repost_queues_the_lost_sr_after_the_sc_was_delivered(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app.outbox import DELIVERED

    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    data = dicom_bytes(sop=new_uid())
    first = _post_with_refused_builder(client, monkeypatch, data, "build_sr")
    (sc,) = outbox.entries()
    outbox._settle(sc, DELIVERED)  # as a pass does once the C-STORE answered Success
    outbox._audit_settled()
    assert outbox.entries() == [] and outbox.unaudited() == []
    again = _repost(client, data)
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert _queued(outbox) == [("sr", A), ("sr", B)]  # the SRs, not the delivered SC again
    third = _repost(client, data)
    assert third.status_code == 200
    assert _queued(outbox) == [("sr", A), ("sr", B)]


def test_a_repost_after_the_spool_filled_midway_queues_the_rest_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.app.test_qa68_outbox_resend import _failing_writes

    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    data = dicom_bytes(sop=new_uid())
    with monkeypatch.context() as patched:
        _failing_writes(patched, from_call=3)  # A's SR written, then the spool is full
        first = post_dicom(client, data)
    assert _queued(outbox) == [("sr", A)]
    again = _repost(client, data)
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert _queued(outbox) == [("sc", A), ("sr", A), ("sr", B)]  # A's SR not twice


def test_two_reposts_at_once_queue_what_was_lost_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    data = dicom_bytes(sop=new_uid())
    first = _post_with_refused_builder(client, monkeypatch, data, "build_sc")
    assert _queued(outbox) == [("sr", A), ("sr", B)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: _repost(client, data), range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert {a.json()["id"] for a in answers} == {first["id"]}
    assert _queued(outbox) == [("sc", A), ("sr", A), ("sr", B)]

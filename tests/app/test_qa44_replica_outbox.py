"""The DICOM outbox with several replicas (QA round 44): three `radlens serve` processes on one
PostgreSQL database sent every SR six times when they shared one spool directory (each
process's delivery pass sent every entry it listed), and three times with a spool each (the
replicas whose upload of the same instance found the stored row queued its results again).

Reproduced here with two outboxes (or two apps) in one process, on SQLite and PostgreSQL: one
delivery pass at a time per spool (a flock), and a ``dicom.send.queue`` audit row that tells
every replica the results are queued (app/outbox.py)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import dicom_bytes, new_uid
from tests.app.test_outbox import (
    AcceptingPACS,
    free_port,
    make_outbox,
    outbox_settings,
    rows,
    sessions,  # noqa: F401 (a fixture)
)

pytest.importorskip("pynetdicom")


class SlowPACS(AcceptingPACS):
    """Answers Success after a pause, so that two delivery passes surely overlap."""

    def _store(self, event: Any) -> int:
        time.sleep(0.1)
        return super()._store(event)


@pytest.fixture()
def slow_pacs() -> Iterator[SlowPACS]:
    scp = SlowPACS()
    yield scp
    scp.server.shutdown()


def test_two_replicas_on_one_spool_deliver_each_entry_once(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    sessions: Any,  # noqa: F811
    slow_pacs: SlowPACS,
) -> None:
    settings = outbox_settings(
        migrated_database_url, model_store, tmp_path / "shared", f"PACS@127.0.0.1:{slow_pacs.port}"
    )
    first, second = make_outbox(settings, sessions), make_outbox(settings, sessions)
    sops = [new_uid() for _ in range(4)]
    ids = [str(uuid.uuid4()) for _ in sops]
    for i, sop in enumerate(sops):  # queued by either replica: one spool (a shared volume)
        (first if i % 2 else second).enqueue(ids[i], "sr", dicom_bytes(sop=sop))
    start = threading.Barrier(2)

    def deliver(outbox: Any) -> None:
        start.wait(timeout=30)
        outbox.deliver_due()

    threads = [threading.Thread(target=deliver, args=(o,)) for o in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for outbox in (first, second):  # whichever skipped its pass: nothing is left for it
        outbox.deliver_due()

    assert sorted(slow_pacs.received) == sorted(sops)  # each once
    delivered = rows(migrated_database_url, "dicom.send.deliver")
    assert sorted(r[1] for r in delivered) == sorted(ids)
    assert first.entries() == [] and first.unaudited() == []


def test_the_same_instance_on_two_replicas_is_queued_once(
    tmp_path: Path, model_store: Path, migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two apps on one database, each with its own spool (as pods with their own volume), the
    destination down so that what is queued stays in the spools. The instance is posted to A,
    whose queueing is slow, and to B as soon as A's prediction is committed: B answers 200 with
    A's row and queues nothing (it waited for A's dicom.send.queue row)."""
    from sqlalchemy import create_engine, text

    from radlens.app import outbox as outbox_module
    from radlens.app.main import create_app

    # B waits for A's row until CLAIM_WAIT_S after A's commit: 5 s, which a process's first SR
    # (highdicom cold, 6-9 s on a loaded 2-core machine, QA round 65) outlasted, so that B
    # queued the results too. Here the wait only bounds a hang.
    monkeypatch.setattr(outbox_module, "CLAIM_WAIT_S", 120.0)

    down = f"PACS@127.0.0.1:{free_port()}"  # nothing listens there

    def settings(spool: str) -> Any:
        return outbox_settings(migrated_database_url, model_store, tmp_path / spool, down)

    data = dicom_bytes(sop=new_uid(), study=new_uid())
    engine = create_engine(migrated_database_url)
    try:
        with (
            TestClient(create_app(settings("spool-a"))) as a,
            TestClient(create_app(settings("spool-b"))) as b,
        ):
            outbox_a = a.app.state.resources.ingestor.outbox  # type: ignore[attr-defined]
            outbox_b = b.app.state.resources.ingestor.outbox  # type: ignore[attr-defined]
            submit, look = outbox_a.submit, outbox_b.handled_or_wait
            looked = threading.Event()

            def looking(prediction_id: str) -> Any:
                try:
                    return look(prediction_id)
                finally:
                    looked.set()

            def slow_submit(*args: Any, **kwargs: Any) -> int:
                # A's SR is queued once B's upload has looked for its queue row, not found it,
                # and waits for it (a fixed 1 s sleep here only made that order likely)
                assert looked.wait(timeout=60), "B's upload never looked for the queue row"
                return int(submit(*args, **kwargs))

            outbox_a.submit = slow_submit
            outbox_b.handled_or_wait = looking
            answers: dict[str, Any] = {}

            def post_a() -> None:
                answers["a"] = a.post("/v1/predictions", files={"file": ("ct.dcm", data)})

            thread = threading.Thread(target=post_a)
            thread.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    if conn.execute(text("SELECT count(*) FROM predictions")).scalar_one():
                        break
                time.sleep(0.02)
            answers["b"] = b.post("/v1/predictions", files={"file": ("ct.dcm", data)})
            thread.join(timeout=60)

            assert answers["a"].status_code == 201, answers["a"].text
            assert answers["b"].status_code == 200, answers["b"].text
            assert answers["b"].json()["id"] == answers["a"].json()["id"]
            queued = outbox_a.entries() + outbox_b.entries()
            assert [(e.prediction_id, e.kind) for e in queued] == [
                (answers["a"].json()["id"], "sr")
            ]
            # a later re-post (a PACS forwarding the study again) queues nothing either
            again = b.post("/v1/predictions", files={"file": ("ct.dcm", data)})
            assert again.status_code == 200
            assert outbox_b.entries() == []
        queue_rows = rows(migrated_database_url, "dicom.send.queue")
        assert [(r[0], r[1], r[3]) for r in queue_rows] == [
            ("dicom-send", answers["a"].json()["id"], 202)
        ]
    finally:
        engine.dispose()


def test_a_replica_starting_leaves_an_entry_another_is_writing(
    tmp_path: Path, model_store: Path
) -> None:
    """A process starting on a shared spool removes a crash's leftovers (a payload without
    state, a temporary file): not those another process is writing at that moment."""
    import fcntl
    import json

    from radlens.app.outbox import Entry

    settings = outbox_settings("sqlite://", model_store, tmp_path, "PACS@h:1")
    entry = Entry(id="0000000000001-abc", prediction_id="p", kind="sr", destination="PACS@h:1",
                  created_at=time.time())  # fmt: skip
    payload = tmp_path / f"{entry.id}.dcm"
    payload.write_bytes(b"payload")  # renamed into place; its state comes next
    held = os.open(payload, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the writing process holds it until then
    (tmp_path / "0000000000002-def.dcm").write_bytes(b"a crash's payload without state")
    make_outbox(settings)  # another replica starts
    (tmp_path / f"{entry.id}.json").write_text(json.dumps(entry.__dict__))
    os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{entry.id}.dcm", f"{entry.id}.json"]
    assert [e.id for e in make_outbox(settings).entries()] == [entry.id]

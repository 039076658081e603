"""QA 88: a re-post does not wait for a queue row when the request that created the
prediction queued nothing (app/outbox.py ``handled_or_wait``/``queued_since``, app/ingest.py
``Ingestor._results_queued``), on SQLite and PostgreSQL.

A re-post of a prediction committed less than CLAIM_WAIT_S (5 s) ago waits for the creating
request's ``dicom.send.queue`` row. A creating request that had nothing to queue wrote no
row, so the re-post waited the whole CLAIM_WAIT_S for a row that never came, then queued the
results: the instance's first post lacked a UID the results must reference (no Study
Instance UID: nothing sent back), or every result it wanted failed to be built or written.
Such a request now writes a ``dicom.send.none`` audit row (it queued nothing and is done): the
re-post finds it and queues the results at once, and never polls for a row (these tests
failed before: ``handled_or_wait`` asked the re-post to wait). An upload recognised by its
bytes (PNG) writes no such row (its re-post is the same bytes: nothing to send either).

No stopwatch: CLAIM_WAIT_S is set to 30 s, the re-post's look (``handled_or_wait``) is
recorded, and a poll (``queued_since``) is recorded and ends the wait at once.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread

from tests.app.conftest import dicom_bytes, new_uid, png_bytes
from tests.app.test_outbox import audit_actions, waiting_outbox_client

A = "A@127.0.0.1:28811"  # QA 88's ports: nothing listens, the entries stay pending


@pytest.fixture()
def client(
    tmp_path: Path, model_store: Path, migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    from radlens.app import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "CLAIM_WAIT_S", 30.0)
    with waiting_outbox_client(
        migrated_database_url, model_store, tmp_path / "spool", f"{A}/sr"
    ) as test_client:
        yield test_client


class Looks:
    """The re-post's looks at the outbox: what handled_or_wait answered, and whether it
    polled queued_since (each poll ends the wait at once, so old code fails fast)."""

    def __init__(self, outbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: list[tuple[bool, float]] = []
        self.polled = threading.Event()
        look = outbox.handled_or_wait

        def looking(prediction_id: str) -> tuple[bool, float]:
            answer: tuple[bool, float] = look(prediction_id)
            self.answers.append(answer)
            return answer

        def polling(prediction_id: str, *, final: bool) -> tuple[bool, bool]:
            self.polled.set()
            return False, True

        monkeypatch.setattr(outbox, "handled_or_wait", looking)
        monkeypatch.setattr(outbox, "queued_since", polling)


def _post(client: TestClient, data: bytes, name: str = "ct.dcm") -> Any:
    return client.post("/v1/predictions", files={"file": (name, data, "application/dicom")})


def _queued(outbox: Any) -> list[tuple[str, str]]:
    return sorted((e.kind, e.destination) for e in outbox.entries())


def _rows(client: TestClient, prediction_id: str) -> list[tuple[str, str]]:
    """The outbox's audit rows of a prediction: (action, query), sorted."""
    return sorted(
        (str(a), str(q))
        for a, t, q in audit_actions(client.app)
        if a.startswith("dicom.send.") and t == prediction_id
    )


def assert_the_repost_queues_at_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, data: bytes, first: Any
) -> None:
    """Re-post ``data`` after ``first`` queued nothing: the re-post is answered from the
    store, does not wait (its look says so, it never polls) and queues the result once; the
    first request's row says it queued nothing, the re-post's what it queued."""
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    assert _queued(outbox) == []
    looks = Looks(outbox, monkeypatch)
    again = _post(client, data)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert looks.answers == [(False, 0.0)]  # nothing to wait for (was: wait ~30 s)
    assert not looks.polled.is_set(), "the re-post waited for a queue row that was not coming"
    assert _queued(outbox) == [("sr", A)]  # queued by the re-post, once
    assert _rows(client, first.json()["id"]) == [
        ("dicom.send.none", "entries=0"),
        ("dicom.send.queue", "entries=1"),
    ]


def _without_study_uid(data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    del ds.StudyInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_repost_with_the_uids_the_first_lacked_queues_at_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = dicom_bytes(sop=new_uid(), seed=88)
    first = _post(client, _without_study_uid(data))  # nothing can be sent back
    assert first.status_code == 201, first.text
    # the same instance, with its Study Instance UID
    assert_the_repost_queues_at_once(client, monkeypatch, data, first)


def test_a_repost_after_every_result_failed_to_be_built_queues_at_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app.dicom_outputs import DicomOutputError

    data = dicom_bytes(sop=new_uid(), seed=89)

    def refused(*args: Any, **kwargs: Any) -> bytes:
        raise DicomOutputError("build_sr refused (a test)")

    with monkeypatch.context() as patched:
        patched.setattr("radlens.app.dicom_outputs.build_sr", refused)
        first = _post(client, data)
    assert first.status_code == 201, first.text
    assert_the_repost_queues_at_once(client, monkeypatch, data, first)


def test_an_upload_recognised_by_its_bytes_writes_no_queue_row(client: TestClient) -> None:
    first = client.post(
        "/v1/predictions", files={"file": ("x.png", png_bytes(seed=88), "image/png")}
    )
    assert first.status_code == 201, first.text
    assert _rows(client, first.json()["id"]) == []

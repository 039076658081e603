"""QA 96: a first request whose send-back failed with an unforeseen error (app/ingest.py
``Ingestor._send_back``, its ``except Exception`` branch) also writes the ``dicom.send.none``
row that QA 88 writes when nothing was queued, so a re-post of the instance does not wait
CLAIM_WAIT_S for a queue row that is not coming: it queues the results at once. The upload
does not fail, and the log names the error by its type, not its message (which may quote the
instance's UIDs). Before, no row was written and the re-post waited the 5 s.

No stopwatch: CLAIM_WAIT_S is 30 s, the re-post's look (``handled_or_wait``) is recorded, and a
poll (``queued_since``) is recorded and ends the wait at once (tests/app/test_qa88_...).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import dicom_bytes, new_uid
from tests.app.test_qa88_outbox_nothing_queued import (  # noqa: F401
    A,
    Looks,
    _post,
    _queued,
    _rows,
    assert_the_repost_queues_at_once,
    client,
)


def test_a_repost_after_an_unforeseen_send_back_error_queues_at_once(
    client: TestClient,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    sop = new_uid()
    data = dicom_bytes(sop=sop, seed=96)

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError(f"a radlens bug (instance {sop})")  # a message quoting the UID

    caplog.set_level(logging.INFO)
    with monkeypatch.context() as patched:
        patched.setattr(outbox, "_submit", broken)
        first = _post(client, data)
    assert first.status_code == 201, first.text  # the prediction is committed: not its failure
    assert _queued(outbox) == []
    assert "RuntimeError" in caplog.text and sop not in caplog.text
    # the first request says it queued nothing and is done
    assert _rows(client, first.json()["id"]) == [("dicom.send.none", "entries=0")]
    assert_the_repost_queues_at_once(client, monkeypatch, data, first)


def test_an_unforeseen_error_after_queueing_leaves_the_queued_alone(
    client: TestClient,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error came after the entry was written: the row ends a re-post's wait, and the
    re-post, reading the spool, queues nothing a second time."""
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    data = dicom_bytes(sop=new_uid(), seed=97)
    submit = outbox._submit

    def queued_then_broken(*args: Any, **kwargs: Any) -> int:
        submit(*args, **kwargs)
        raise RuntimeError("a radlens bug after queueing")

    with monkeypatch.context() as patched:
        patched.setattr(outbox, "_submit", queued_then_broken)
        first = _post(client, data)
    assert first.status_code == 201, first.text
    assert _queued(outbox) == [("sr", A)]
    looks = Looks(outbox, monkeypatch)
    again = _post(client, data)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert looks.answers == [(True, 0.0)]  # the spool shows it queued
    assert not looks.polled.is_set()
    assert _queued(outbox) == [("sr", A)]  # not a second time

"""QA 104: a re-post on a replica with DICOM destinations does not wait for a queue row when
the prediction was created by a replica without any (replicas disagreeing on
RADLENS_DICOM_DESTINATIONS, mid-rollout), on SQLite and PostgreSQL.

A re-post of a prediction committed less than CLAIM_WAIT_S (5 s) ago waits for the creating
request's ``dicom.send.queue`` or ``dicom.send.none`` row (app/outbox.py ``handled_or_wait``).
A replica without destinations has no outbox and wrote neither, so the re-post waited the whole
CLAIM_WAIT_S for a row that never came, then queued the results (QA 101 measured 29.96 s with
CLAIM_WAIT_S at 30). Such a replica now marks the new prediction's own "prediction.create" row
(query ``outbox=none``, app/writer.py ``NO_OUTBOX_QUERY``, in the prediction's transaction),
which the re-post reads as "the creating request is done, nothing queued": it queues at once.

No stopwatch: CLAIM_WAIT_S is set to 30 s; the first test records the re-post's look and ends
any poll at once (old code fails fast), the second bounds the real re-post well below the 30 s
(old code waited them out).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import dicom_bytes, make_settings, new_uid
from tests.app.test_outbox import audit_actions, waiting_outbox_client

A = "A@127.0.0.1:30411"  # QA 104's port: nothing listens, the entries stay pending
CLAIM_WAIT_S = 30.0


@pytest.fixture()
def replicas(
    tmp_path: Path, model_store: Path, migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, TestClient]]:
    """Two replicas on one database: the first without destinations, the second with one."""
    from radlens.app import outbox as outbox_module
    from radlens.app.main import create_app

    monkeypatch.setattr(outbox_module, "CLAIM_WAIT_S", CLAIM_WAIT_S)
    with ExitStack() as stack:
        plain = stack.enter_context(
            TestClient(create_app(make_settings(migrated_database_url, model_store)))
        )
        sending = stack.enter_context(
            waiting_outbox_client(migrated_database_url, model_store, tmp_path / "spool", A)
        )
        assert plain.app.state.resources.ingestor.outbox is None  # type: ignore[attr-defined]
        yield plain, sending


def _post(client: TestClient, data: bytes) -> Any:
    return client.post("/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")})


def _outbox(client: TestClient) -> Any:
    return client.app.state.resources.ingestor.outbox  # type: ignore[attr-defined]


def _queued(client: TestClient) -> list[tuple[str, str]]:
    return sorted((e.kind, e.destination) for e in _outbox(client).entries())


def _rows(client: TestClient, prediction_id: str) -> list[tuple[str, str]]:
    """A prediction's prediction.create and outbox audit rows: (action, query or ""), sorted."""
    return sorted(
        (str(a), q or "")
        for a, t, q in audit_actions(client.app)
        if t == prediction_id and (a == "prediction.create" or a.startswith("dicom.send."))
    )


def test_a_repost_after_a_replica_without_destinations_queues_at_once(
    replicas: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, sending = replicas
    outbox = _outbox(sending)
    answers: list[tuple[bool, float]] = []
    polled = threading.Event()
    look = outbox.handled_or_wait

    def looking(prediction_id: str) -> tuple[bool, float]:
        answer: tuple[bool, float] = look(prediction_id)
        answers.append(answer)
        return answer

    def polling(prediction_id: str, *, final: bool) -> tuple[bool, bool]:
        polled.set()
        return False, True  # ends the wait at once

    monkeypatch.setattr(outbox, "handled_or_wait", looking)
    monkeypatch.setattr(outbox, "queued_since", polling)

    data = dicom_bytes(sop=new_uid(), study=new_uid(), seed=104)
    first = _post(plain, data)
    assert first.status_code == 201, first.text
    again = _post(sending, data)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert answers == [(False, 0.0)]  # nothing to wait for (was: wait ~30 s)
    assert not polled.is_set(), "the re-post waited for a queue row that was not coming"
    assert _queued(sending) == [("sr", A)]  # queued by the re-post, once
    # the first replica's create row carries the mark; the re-post's (200) row does not
    assert _rows(sending, first.json()["id"]) == [
        ("dicom.send.queue", "entries=1"),
        ("prediction.create", ""),
        ("prediction.create", "outbox=none"),
    ]


def test_the_repost_returns_well_within_the_claim_wait(
    replicas: tuple[TestClient, TestClient],
) -> None:
    """The real wait, unpatched: bounded far below the deliberately huge CLAIM_WAIT_S."""
    plain, sending = replicas
    data = dicom_bytes(sop=new_uid(), study=new_uid(), seed=105)
    first = _post(plain, data)
    assert first.status_code == 201, first.text
    started = time.monotonic()
    again = _post(sending, data)
    took = time.monotonic() - started
    assert again.status_code == 200, again.text
    assert took < CLAIM_WAIT_S / 2, f"the re-post waited {took:.1f} s for a queue row"
    assert _queued(sending) == [("sr", A)]
    # a later re-post (the study forwarded again) queues nothing more
    assert _post(sending, data).status_code == 200
    assert _queued(sending) == [("sr", A)]

"""A re-post waiting for another request's ``dicom.send.queue`` row waits in the event loop,
not in a worker thread (app/ingest.py ``Ingestor._results_queued``, app/outbox.py
``handled_or_wait``/``queued_since``). QA round 50: the wait slept in ``asyncio.to_thread``,
so 8 re-posts of instances being stored took every thread of the pool (6 on 2 cores), the
creating request's own queue row among them: it came after the waits had given up, and each
re-post queued the results a second time.

No stopwatch (QA 94): CLAIM_WAIT_S is 30 s in the test of the pool, far longer than the row
takes to come when no wait holds a thread; a wait that held one would keep the row out until
the waits gave up, and every re-post would answer "not queued"."""

from __future__ import annotations

import asyncio
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from radlens.app.ingest import Ingestor
from tests.app.conftest import prediction_row
from tests.app.test_outbox import make_outbox, outbox_settings, sessions  # noqa: F401

WAITERS = 8


def _results_queued(outbox: Any, prediction_id: str) -> bool:
    """What the service decides for a re-post (Ingestor._results_queued), waiting included."""
    ingestor = types.SimpleNamespace(outbox=outbox)
    written = types.SimpleNamespace(prediction=types.SimpleNamespace(id=prediction_id))
    return asyncio.run(Ingestor._results_queued(ingestor, written))  # type: ignore[arg-type]


@pytest.fixture()
def outbox(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    sessions: Any,  # noqa: F811
) -> Any:
    settings = outbox_settings(migrated_database_url, model_store, tmp_path, "PACS@127.0.0.1:9")
    return make_outbox(settings, sessions)


def _stored_prediction(sessions: Any) -> str:  # noqa: F811
    row = prediction_row(f"claim-{uuid.uuid4()}")
    with sessions() as session:
        session.add(row)
        session.commit()
    return str(row.id)


def test_waits_for_the_queue_row_take_no_worker_thread(
    outbox: Any,
    sessions: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from radlens.app import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "CLAIM_WAIT_S", 30.0)  # the row comes long before
    prediction_id = _stored_prediction(sessions)  # committed just now, its results not queued
    ingestor = types.SimpleNamespace(outbox=outbox)
    written = types.SimpleNamespace(prediction=types.SimpleNamespace(id=prediction_id))
    look = outbox.handled_or_wait
    looks: list[tuple[bool, float]] = []

    def looking(prediction_id: str) -> tuple[bool, float]:
        answer: tuple[bool, float] = look(prediction_id)
        looks.append(answer)
        return answer

    monkeypatch.setattr(outbox, "handled_or_wait", looking)

    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))  # a small pool, filled
        waits = [
            asyncio.create_task(Ingestor._results_queued(ingestor, written))  # type: ignore[arg-type]
            for _ in range(WAITERS)
        ]
        while len(looks) < WAITERS:  # every re-post has looked, and is waiting
            await asyncio.sleep(0.01)
        # the creating request queues its results: its row needs a thread of the same pool
        await asyncio.to_thread(outbox._record_queued, prediction_id, 1)
        return list(await asyncio.gather(*waits))

    answers = asyncio.run(asyncio.wait_for(scenario(), 300))  # bounds a hang only
    assert all(not found and wait > 20 for found, wait in looks), looks  # each one waited
    # every re-post saw the row before its wait ran out (a wait holding a thread kept the row
    # out until they gave up): nothing queued twice
    assert answers == [True] * WAITERS


def test_a_prediction_committed_long_ago_is_not_waited_for(
    outbox: Any,
    sessions: Any,  # noqa: F811
) -> None:
    """One whose creator died before queueing (older than CLAIM_WAIT_S): no wait, queued."""
    from radlens.app import outbox as outbox_module

    prediction_id = _stored_prediction(sessions)
    real_epoch = outbox_module._epoch
    try:
        outbox_module._epoch = lambda value: real_epoch(value) - 60.0  # committed a minute ago
        assert outbox.handled_or_wait(prediction_id) == (False, 0.0)
        assert _results_queued(outbox, prediction_id) is False
    finally:
        outbox_module._epoch = real_epoch


@pytest.mark.parametrize("queued", [False, True])
def test_a_wait_for_a_row_that_never_comes_ends_unqueued(
    outbox: Any,
    sessions: Any,  # noqa: F811
    queued: bool,
) -> None:
    from radlens.app import outbox as outbox_module

    prediction_id = _stored_prediction(sessions)
    if queued:
        outbox._record_queued(prediction_id, 1)
        assert outbox.handled_or_wait(prediction_id) == (True, 0.0)
    real_wait = outbox_module.CLAIM_WAIT_S
    try:
        outbox_module.CLAIM_WAIT_S = 0.3  # a short wait for the row that never comes
        assert _results_queued(outbox, prediction_id) is queued
    finally:
        outbox_module.CLAIM_WAIT_S = real_wait

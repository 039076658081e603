"""A batch that does not fill is released once RADLENS_MAX_BATCH_WAIT_MS has passed.

The predictor is built the way the service builds it (``load_predictor`` on ``Settings`` read
from the environment), taught that requests arrive close together (so the worker does wait for
company), and then given two requests, far fewer than the batch size: they must leave together,
as one batch of two, once the wait has run out — not before (the worker did wait) and not much
later (it does not hold a partial batch for the batch to fill).

No stopwatch (QA 94; the bounds on the worker's own timings failed on loaded machines): the
worker's timed waits on its queue (``get(timeout=...)``) are recorded with how each ended. The
batch must leave after one wait of at most RADLENS_MAX_BATCH_WAIT_MS that ran out (queue.Empty:
the wait's full course) and no other, the waits before it ending with the second request.
"""

from __future__ import annotations

import asyncio
import os
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.app.test_predictor import Recorder, run

WAIT_MS = 400.0
BATCH = 8


@pytest.fixture()
def env_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RADLENS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RADLENS_MAX_BATCH_WAIT_MS", str(int(WAIT_MS)))


@pytest.mark.parametrize("streams", [1, 2])
def test_partial_batch_is_released_after_max_batch_wait_ms(
    env_wait: None, model_store: Path, streams: int
) -> None:
    from radlens.app.predictor import load_predictor
    from radlens.app.settings import Settings

    inputs = np.random.default_rng(0).random((BATCH + 2, 32, 32, 1), dtype=np.float32)
    settings = Settings(
        model_store=model_store,
        model="tiny",
        device="cpu",
        max_batch_size=BATCH,
        batch_tuning="off",
        inference_streams=streams,
    )
    assert settings.max_batch_wait_ms == WAIT_MS  # read from RADLENS_MAX_BATCH_WAIT_MS
    predictor = load_predictor(settings)
    assert predictor.max_batch_wait_ms == WAIT_MS
    rec = Recorder(predictor)

    async def reported() -> None:
        """The worker reports a batch just after answering it: wait for every report."""
        for _ in range(500):
            if len(rec.stats) == len(rec.sizes):
                return
            await asyncio.sleep(0.01)

    async def main() -> list[Any]:
        try:
            # Bursts teach the worker that requests arrive close together and several at once.
            for _ in range(3):
                await asyncio.gather(*(predictor.predict(x) for x in inputs[:BATCH]))
            assert predictor._waiting_can_help(), "the bursts did not teach the worker"
            await reported()
            before = len(rec.stats)
            get = predictor._queue.get

            def timed_get(timeout: float | None = None) -> Any:
                """The worker's queue reads; a timed one (a wait for company) recorded."""
                if timeout is None:
                    return get()
                try:
                    item = get(timeout=timeout)
                except queue.Empty:
                    waits.append((timeout, "ran out"))
                    raise
                waits.append((timeout, "an item"))
                return item

            predictor._queue.get = timed_get  # type: ignore[method-assign]
            outs = await asyncio.gather(*(predictor.predict(x) for x in inputs[BATCH : BATCH + 2]))
            await reported()
            return [outs, rec.stats[before:]]
        finally:
            await predictor.stop()

    waits: list[tuple[float, str]] = []
    outs, partial = run(main(), timeout_s=60.0)
    assert [s.size for s in partial] == [2], partial  # together, though the batch is 8
    (stats,) = partial
    assert stats.ok and stats.waited, stats
    assert all(o.batch_size == 2 for o in outs)
    # Released when the wait ran out, not before: its last wait ran its course (queue.Empty),
    # any before it ended with the second request. Not later: no wait after that one, and none
    # longer than the setting.
    assert waits and waits[-1][1] == "ran out", waits
    assert [how for _, how in waits[:-1]] == ["an item"] * (len(waits) - 1), waits
    assert len(waits) <= 2, waits
    assert all(0 < timeout <= WAIT_MS / 1000.0 for timeout, _ in waits), waits

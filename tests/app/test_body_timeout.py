"""RADLENS_BODY_TIMEOUT_S: a request body whose next chunk does not come in time is a 408.

QA round 26 found no limit on a body's pace: an upload that stalled mid-body (a client gone
silent, a network stall) held its connection, and now its share of the in-flight upload budget,
for ever. The wait for each next chunk is now bounded; the request is answered 408
problem+json with Connection: close, nothing is stored and its budget share is given back. A
slow upload whose chunks keep coming completes (app/limits.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Databases, TestClient, app_client, png_bytes
from tests.app.test_inflight_upload_budget import _form, _scope, answer

TIMEOUT_S = 0.5


@pytest.fixture()
def timed(databases: Databases, model_store: Path) -> Iterator[tuple[TestClient, Any]]:
    yield from app_client(databases, model_store, body_timeout_s=TIMEOUT_S)


async def _send(
    app: Any, body: bytes, pauses: list[float]
) -> tuple[int, dict[bytes, bytes], bytes]:
    """POST ``body`` in len(pauses) + 1 chunks, sleeping pauses[i] before chunk i + 1 (a pause
    of an hour: the client stalls)."""
    size = -(-len(body) // (len(pauses) + 1))
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    waits = [0.0, *pauses]

    async def receive() -> dict[str, Any]:
        if not chunks:
            await asyncio.sleep(3600)
        await asyncio.sleep(waits.pop(0))
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    return await answer(app, _scope(len(body)), receive)


async def _bounded(app: Any, body: bytes, pauses: list[float]) -> Any:
    return await asyncio.wait_for(_send(app, body, pauses), 60)


def test_a_stalled_body_is_a_408_and_stores_nothing(timed: tuple[TestClient, Any]) -> None:
    client, app = timed
    body = _form(png_bytes(seed=31, size=(120, 120)))
    assert client.portal is not None
    # bounded here too, so that without the limit this fails instead of waiting an hour; the
    # limit's own 408 (its detail names the setting) is the check, not a stopwatch
    status, headers, content = client.portal.call(_bounded, app, body, [3600.0])
    assert status == 408, content
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"connection"] == b"close"
    problem = json.loads(content)
    assert problem["type"] == "urn:radlens:problem:request-timeout"
    assert "RADLENS_BODY_TIMEOUT_S" in problem["detail"]
    assert client.get("/v1/predictions").json()["items"] == []


def test_a_slow_body_whose_chunks_keep_coming_completes(timed: tuple[TestClient, Any]) -> None:
    client, app = timed
    body = _form(png_bytes(seed=32, size=(120, 120)))
    assert client.portal is not None
    # four pauses of 0.3 s: 1.2 s in all, more than the timeout, each under it
    status, _, content = client.portal.call(_send, app, body, [0.3] * 4)
    assert status == 201, content

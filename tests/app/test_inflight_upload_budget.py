"""RADLENS_MAX_INFLIGHT_UPLOAD_BYTES bounds the bytes of uploads read or processed at once.

QA round 26 measured the serving process's memory growing with every concurrent upload (8 x 64
MiB bodies +642 MiB, 4 x 60 MiB DICOM +1.1 GiB) and nothing bounding it. Now a body is charged
from its first chunk (its declared length) until its response; one that does not fit beside
the uploads in flight gets 503 service-busy + Retry-After and stores nothing, an upload alone
is always admitted, and what a finished upload held is given back (app/limits.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radlens.app.limits import UploadBudget, UploadsBusy
from tests.app.conftest import Databases, TestClient, app_client, png_bytes, upload_scope

BUDGET = 150_000
BOUNDARY = "budget"


class TestUploadBudget:
    def test_an_upload_alone_is_admitted_whatever_its_size(self) -> None:
        budget = UploadBudget(100)
        assert budget.grow(0, 5_000) == 5_000
        assert budget.used == 5_000
        budget.release(5_000)
        assert budget.used == 0

    def test_one_that_does_not_fit_beside_the_others_is_refused(self) -> None:
        budget = UploadBudget(100)
        first = budget.grow(0, 60)
        with pytest.raises(UploadsBusy) as info:
            budget.grow(0, 41)
        assert info.value.status_code == 503
        assert info.value.headers == {"Retry-After": "1"}
        assert "60 bytes of uploads" in str(info.value.detail)
        assert budget.used == 60  # the refused one holds nothing
        assert budget.grow(0, 40) == 40  # what fits is admitted
        budget.release(first)
        assert budget.grow(0, 60) == 60

    def test_a_streaming_body_grows_its_charge_and_zero_means_no_bound(self) -> None:
        budget = UploadBudget(100)
        held = budget.grow(0, 10)
        held = budget.grow(held, 50)
        assert (held, budget.used) == (50, 50)
        assert budget.grow(held, 20) == 50  # never shrinks while in flight
        unbounded = UploadBudget(0)
        unbounded.grow(0, 10**9)
        assert unbounded.grow(0, 10**9) == 10**9


def _form(data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _scope(length: int) -> dict[str, Any]:
    return upload_scope(BOUNDARY, length)


async def _upload(
    app: Any,
    body: bytes,
    *,
    first_chunk: asyncio.Event | None = None,
    go: asyncio.Event | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """POST ``body`` in two chunks; with events, hold the second until ``go`` is set."""
    chunks = [body[:1000], body[1000:]]

    async def receive() -> dict[str, Any]:
        if not chunks:
            await asyncio.sleep(3600)  # no disconnect while the response is being sent
        if len(chunks) == 1 and first_chunk is not None and go is not None:
            first_chunk.set()  # the first chunk was handed over (and charged): hold the rest
            await go.wait()
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    return await answer(app, _scope(len(body)), receive)


async def answer(
    app: Any, scope: dict[str, Any], receive: Any
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Run ``app`` on one request; its status, headers and body."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), content


@pytest.fixture()
def budgeted(databases: Databases, model_store: Path) -> Iterator[tuple[TestClient, Any]]:
    yield from app_client(databases, model_store, max_inflight_upload_bytes=BUDGET)


def test_an_upload_over_the_budget_waits_its_turn(budgeted: tuple[TestClient, Any]) -> None:
    client, app = budgeted
    first, second = (
        _form(png_bytes(seed=1, size=(320, 320))),
        _form(png_bytes(seed=2, size=(320, 320))),
    )
    assert len(first) > BUDGET // 2 and len(second) > BUDGET // 2

    async def scenario() -> tuple[Any, Any, Any]:
        first_chunk, go = asyncio.Event(), asyncio.Event()
        held = asyncio.create_task(_upload(app, first, first_chunk=first_chunk, go=go))
        await first_chunk.wait()  # the first upload is in flight, charged its declared length
        refused = await _upload(app, second)
        go.set()
        return await held, refused, await _upload(app, second)

    assert client.portal is not None
    done, refused, again = client.portal.call(scenario)
    status, headers, body = refused
    assert status == 503, body
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"] == b"1"
    assert b"service-busy" in body and b"RADLENS_MAX_INFLIGHT_UPLOAD_BYTES" in body
    assert done[0] == 201, done[2]
    assert again[0] == 201, again[2]  # the first one's bytes were given back
    listed = client.get("/v1/predictions").json()
    assert len(listed["items"]) == 2  # the refused upload stored nothing

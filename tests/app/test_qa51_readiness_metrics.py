"""/metrics and the readiness series when the database misbehaves (QA round 51).

- A scrape never opens a database connection: it ran GET /readyz's checks (SELECT 1, and the
  write probe after a failure), so with a database host that accepts and never answers each
  scrape waited past Prometheus' 10 s scrape timeout: ``up == 0``, RadlensDown paged
  "process down", and every series was lost during the outage. ``radlens_ready`` is now
  GET /readyz's last answer, with its time.
- After a refused write, the first write probe that passes makes the database writable again
  (``radlens_database_writable`` 1: the critical alert paged on a replica that said ready
  until an upload committed) and is not repeated at every probe (each one ran the probe and
  renewed the pool).
"""

from __future__ import annotations

import dataclasses
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event

from tests.app.conftest import Databases, app_client, assert_problem, png_bytes
from tests.app.test_qa42_readiness_writes import _refuse_writes

# a port of this helper's range (QA 51: 25100-25199)
SILENT_PORT = 25151


@pytest.fixture()
def app(databases: Databases, model_store: Any) -> Iterator[tuple[Any, Any]]:
    # the drift gauges read the database at most once per RADLENS_DRIFT_CACHE_S (their own
    # matter, app/drift.py): cached for the test, so a scrape here is only what /metrics does
    yield from app_client(databases, model_store, drift_cache_s=3600)


@pytest.fixture()
def silent_host() -> Iterator[int]:
    """A TCP listener that accepts connections and never answers (a database host hung, or a
    firewall that lets the handshake through): a client waits for its connect timeout."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1", SILENT_PORT))
    except OSError as exc:
        server.close()
        pytest.skip(f"port {SILENT_PORT} is in use: {exc}")
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield SILENT_PORT
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def _metrics(client: Any) -> dict[str, float]:
    values = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_a_scrape_opens_no_database_connection(
    app: tuple[Any, Any], silent_host: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, application = app
    assert client.get("/readyz").status_code == 200
    before = _metrics(client)
    assert before["radlens_ready"] == 1

    # the database host stops answering (connect_timeout=2: libpq's least)
    silent = create_engine(
        f"postgresql+psycopg://radlens@127.0.0.1:{silent_host}/radlens?connect_timeout=2"
    )
    attempts: list[float] = []
    event.listen(silent, "do_connect", lambda *_: attempts.append(time.monotonic()))
    monkeypatch.setattr(application.state.resources, "engine", silent)
    try:
        during = _metrics(client)
        assert attempts == [], "a scrape tried to connect to the database"
        # the last readiness answer, still there, and every other series with it
        assert during["radlens_ready"] == 1
        assert 'radlens_database_errors_total{code="database-unavailable"}' in during

        # the orchestrator's probe finds out (and waits for the connect timeout: its own)
        assert_problem(client.get("/readyz"), 503, code="database-unavailable")
        assert len(attempts) == 1
        after = _metrics(client)
        assert len(attempts) == 1
        assert after["radlens_ready"] == 0
        checked = after["radlens_ready_checked_timestamp_seconds"]  # the last /readyz's time
        assert before["radlens_ready_checked_timestamp_seconds"] < checked <= time.time()
    finally:
        silent.dispose()


def test_radlens_ready_is_not_known_until_the_first_readyz(app: tuple[Any, Any]) -> None:
    """Nothing has probed yet: NaN (a 0 would page RadlensNotReady on a replica nobody
    probes, as in plain compose; a 1 would be a guess), checked at time 0 (never)."""
    client, _ = app
    scraped = _metrics(client)
    assert math.isnan(scraped["radlens_ready"])
    assert scraped["radlens_ready_checked_timestamp_seconds"] == 0
    assert client.get("/readyz").status_code == 200
    assert _metrics(client)["radlens_ready"] == 1


def test_a_passing_write_probe_makes_the_database_writable_once(app: tuple[Any, Any]) -> None:
    client, application = app
    resources = application.state.resources
    engine = resources.engine
    post = lambda seed: client.post(  # noqa: E731
        "/v1/predictions", files={"file": ("a.png", png_bytes(seed))}
    )
    assert post(0).status_code == 201

    listener = _refuse_writes(engine)
    assert_problem(post(1), 503, code="database-read-only")
    assert _metrics(client)["radlens_database_writable"] == 0  # from the writer, no /readyz
    assert_problem(client.get("/readyz"), 503, code="database-read-only")
    event.remove(engine, "connect", listener)  # the database is fixed

    failure = resources.writer.failure  # its retry time passes (15 s: too long for a test)
    resources.writer.failure = dataclasses.replace(failure, at=failure.at - failure.retry_s - 1)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "ok, retrying after database-read-only"
    assert _metrics(client)["radlens_database_writable"] == 1  # was 0 until an upload committed
    assert _metrics(client)["radlens_ready"] == 1

    connects: list[int] = []

    def count(*_: Any) -> None:
        connects.append(1)

    event.listen(engine, "connect", count)
    try:
        client.get("/readyz")  # the pool renewed after the probe: SELECT 1 opens one
        connects.clear()
        for _ in range(3):
            again = client.get("/readyz")
            assert again.json()["database"] == "ok, retrying after database-read-only"
        assert connects == [], f"{len(connects)} new connections: the write probe ran again"
    finally:
        event.remove(engine, "connect", count)
    assert _metrics(client)["radlens_database_writable"] == 1

    # refused again: not ready for twice as long (the streak was kept), not writable
    listener = _refuse_writes(engine)
    try:
        assert_problem(post(2), 503, code="database-read-only")
        refused = client.get("/readyz")
        assert "last write failed" in assert_problem(refused, 503)["detail"]
        assert int(refused.headers["Retry-After"]) == 30
        assert _metrics(client)["radlens_database_writable"] == 0
    finally:
        event.remove(engine, "connect", listener)
        engine.dispose()
    resources.writer.failure = None  # as after a committed write
    assert post(3).status_code == 201
    assert client.get("/readyz").json()["database"] == "ok"

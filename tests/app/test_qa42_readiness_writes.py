"""GET /readyz is honest when the database answers SELECT 1 but refuses to store predictions
(QA round 42, the SRE paged by the alerts): a read-only database (PostgreSQL's
default_transaction_read_only, as on a standby after a failover; SQLite's query_only, as a
read-only file) and a full one (SQLite's max_page_count, as a full disk). Uploads get a 503
naming the cause (PostgreSQL's read-only error was a 500 internal-error), the replica says
not ready for the failure's retry time, a rolled-back write probe keeps a still read-only
database out, /metrics says so (radlens_database_writable, radlens_database_errors_total), and
the first committed write brings everything back."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from tests.app.conftest import Databases, app_client, assert_problem, png_bytes


@pytest.fixture()
def app(databases: Databases, model_store: Any) -> Iterator[tuple[Any, Any]]:
    yield from app_client(databases, model_store)


def _refuse_writes(engine: Any) -> Any:
    """Every new connection refuses writes, the database's own way; the pool is renewed."""

    def read_only(dbapi_connection: Any, _record: Any) -> None:
        if engine.url.get_backend_name() == "sqlite":
            dbapi_connection.execute("PRAGMA query_only = ON")  # SQLITE_READONLY
        else:
            dbapi_connection.execute("SET default_transaction_read_only = on")  # 25006
            dbapi_connection.commit()

    event.listen(engine, "connect", read_only)
    engine.dispose()
    return read_only


def _cap_size(engine: Any) -> Any:
    """Every new connection may not grow the SQLite file: SQLITE_FULL, as on a full disk."""

    def cap(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count={pages}")
        cursor.close()

    event.listen(engine, "connect", cap)
    engine.dispose()
    return cap


def _post(client: Any, seed: int) -> Any:
    return client.post("/v1/predictions", files={"file": ("a.png", png_bytes(seed))})


def _metric(client: Any, name: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            if head == name:
                return float(value)
    return None


def _retry_time_passed(app: Any) -> None:
    """As if the failure's retry time had passed (15 s and more: too long for a test)."""
    writer = app.state.resources.writer
    failure = writer.failure
    writer.failure = dataclasses.replace(failure, at=failure.at - failure.retry_s - 1)


def test_a_read_only_database_makes_the_replica_not_ready_until_it_stores_again(
    app: tuple[Any, Any],
) -> None:
    client, application = app
    engine = application.state.resources.engine
    assert _post(client, 0).status_code == 201
    assert client.get("/readyz").json()["database"] == "ok"
    assert _metric(client, "radlens_database_writable") == 1

    listener = _refuse_writes(engine)
    refused = _post(client, 1)
    body = assert_problem(refused, 503, code="database-read-only")  # PostgreSQL: was a 500
    assert "read-only" in body["title"] and refused.headers["Retry-After"]
    assert client.get("/healthz").status_code == 200  # alive: not a reason to restart it

    # SELECT 1 still passes, but the replica must not get uploads it cannot store
    ready = client.get("/readyz")
    body = assert_problem(ready, 503, code="database-read-only")
    assert "last write failed" in body["detail"], body
    assert int(ready.headers["Retry-After"]) == 15
    assert _metric(client, "radlens_database_writable") == 0
    assert _metric(client, 'radlens_database_errors_total{code="database-read-only"}') == 1

    # after the retry time, the write probe (rolled back) sees it still read-only, each time
    _retry_time_passed(application)
    for _ in range(2):
        again = client.get("/readyz")
        body = assert_problem(again, 503, code="database-read-only")
        assert "write probe failed" in body["detail"], body
        assert int(again.headers["Retry-After"]) == 5

    # writable again: ready at the next probe, and the next upload clears the failure
    event.remove(engine, "connect", listener)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "ok, retrying after database-read-only"
    assert _post(client, 2).status_code == 201
    assert client.get("/readyz").json()["database"] == "ok"
    assert _metric(client, "radlens_database_writable") == 1


def test_a_full_database_makes_the_replica_not_ready_for_longer_each_time(
    app: tuple[Any, Any], databases: Databases
) -> None:
    if databases.backend != "sqlite":
        pytest.skip("SQLite's max_page_count stands in for a full disk (SQLITE_FULL)")
    client, application = app
    engine = application.state.resources.engine
    assert _post(client, 10).status_code == 201
    cap = _cap_size(engine)
    for seed in range(11, 60):  # the file fills up
        response = _post(client, seed)
        if response.status_code != 201:
            break
    assert_problem(response, 503, code="database-full")
    ready = client.get("/readyz")
    assert_problem(ready, 503, code="database-full")
    assert int(ready.headers["Retry-After"]) == 15

    # a probe cannot see a full disk (nothing reaches it before a commit): ready again after
    # the retry time, and the next refused upload takes the replica out for twice as long
    _retry_time_passed(application)
    assert client.get("/readyz").json()["database"] == "ok, retrying after database-full"
    assert_problem(_post(client, 70), 503, code="database-full")
    ready = client.get("/readyz")
    assert_problem(ready, 503, code="database-full")
    assert int(ready.headers["Retry-After"]) == 30

    event.remove(engine, "connect", cap)  # space freed
    _retry_time_passed(application)
    assert client.get("/readyz").status_code == 200
    assert _post(client, 71).status_code == 201
    assert client.get("/readyz").json()["database"] == "ok"


def test_readyz_does_not_wait_for_sqlites_write_lock(
    app: tuple[Any, Any], databases: Databases
) -> None:
    """A write held for longer than the probe's timeout (3 s in deploy/k8s: a long transaction,
    an operator's sqlite3 session) made /readyz wait for the lock (BEGIN IMMEDIATE), up to the
    15 s busy timeout, and fail: every replica on that file out of rotation at once.
    No stopwatch (QA 94): the busy timeout the write probe runs under is read from its
    connection as it runs (the probe's 1 s, not an upload's 15 s)."""
    if databases.backend != "sqlite":
        pytest.skip("SQLite's write lock")
    import sqlite3

    from radlens.app.db import PROBE_BUSY_TIMEOUT_MS, SQLITE_BUSY_TIMEOUT_MS, WRITE_PROBE

    client, application = app
    engine = application.state.resources.engine
    waits_ms: list[int] = []  # the busy timeout of each write probe, read as it runs

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement == WRITE_PROBE:
            waits_ms.append(cursor.connection.execute("PRAGMA busy_timeout").fetchone()[0])

    other = sqlite3.connect(engine.url.database, isolation_level=None)
    event.listen(engine, "before_cursor_execute", before)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        ready = client.get("/readyz")
    finally:
        event.remove(engine, "before_cursor_execute", before)
        other.execute("ROLLBACK")
        other.close()
    assert ready.status_code == 200, ready.text
    # the probe waited at most its own short timeout for the lock, not an upload's
    assert waits_ms == [PROBE_BUSY_TIMEOUT_MS] and PROBE_BUSY_TIMEOUT_MS < SQLITE_BUSY_TIMEOUT_MS


def test_a_replica_started_on_a_read_only_database_is_not_ready_before_any_upload(
    app: tuple[Any, Any],
) -> None:
    """Readiness follows the writer's last outcome; before the first upload there is none,
    so one rolled-back write probe checks (a replica started after a failover onto a
    standby, or on a read-only volume, said ready until an upload failed)."""
    client, application = app
    listener = _refuse_writes(application.state.resources.engine)
    try:
        application.state.resources.writer.write_checked = False  # as in a new process
        body = assert_problem(client.get("/readyz"), 503, code="database-read-only")
        assert "read-only" in body["detail"] or "readonly" in body["detail"], body
    finally:
        event.remove(application.state.resources.engine, "connect", listener)


def test_a_role_that_may_not_write_is_a_503_not_an_internal_error(
    app: tuple[Any, Any], databases: Databases
) -> None:
    """A PostgreSQL role with SELECT only (here the predefined pg_read_all_data) made uploads
    a 500 internal-error ("please report it"): the database refuses writes, 503."""
    if databases.backend != "postgresql":
        pytest.skip("PostgreSQL roles")
    client, application = app
    engine = application.state.resources.engine

    def reader(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("SET ROLE pg_read_all_data")
        dbapi_connection.commit()

    event.listen(engine, "connect", reader)
    engine.dispose()
    try:
        refused = _post(client, 80)
        body = assert_problem(refused, 503, code="database-read-only")
        assert "InsufficientPrivilege" in body["detail"], body
        assert_problem(client.get("/readyz"), 503, code="database-read-only")
    finally:
        event.remove(engine, "connect", reader)
        engine.dispose()


def test_another_database_error_is_still_an_internal_error() -> None:
    """Only the database's refusals are 503s: any other DBAPIError (a bad statement: a bug)
    stays a 500 internal-error, through the new DBAPIError handler."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from sqlalchemy.exc import InternalError, ProgrammingError

    from radlens.app.errors import CatchAllMiddleware, install_error_handlers

    class Orig(Exception):
        sqlstate = "42601"  # syntax_error

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(CatchAllMiddleware)

    @app.get("/bad")
    def bad() -> None:
        raise ProgrammingError("SELECT", {}, Orig("syntax error"))

    @app.get("/read-only")
    def read_only() -> None:
        class ReadOnly(Exception):
            sqlstate = "25006"

        raise InternalError("INSERT", {}, ReadOnly("cannot execute INSERT"))

    with TestClient(app, raise_server_exceptions=False) as client:
        assert_problem(client.get("/bad"), 500, code="internal-error")
        refused = assert_problem(client.get("/read-only"), 503, code="database-read-only")
        assert refused["detail"] == "ReadOnly: cannot execute INSERT"


def test_every_database_error_code_is_exported_from_zero() -> None:
    """A counter series born at its first error (value 1 or more in its first scrape) shows no
    increase() in Prometheus: every problem code the database handler answers is there at 0."""
    from prometheus_client import generate_latest

    from radlens.app.errors import (
        DATABASE_FULL,
        DATABASE_IO_ERROR,
        DATABASE_READ_ONLY,
        DatabaseUnavailableError,
    )
    from radlens.app.metrics import ServiceMetrics

    text = generate_latest(ServiceMetrics().registry).decode()
    for code in (DatabaseUnavailableError.code, DATABASE_FULL[0], DATABASE_READ_ONLY[0]):
        assert f'radlens_database_errors_total{{code="{code}"}} 0.0' in text
    assert f'radlens_database_errors_total{{code="{DATABASE_IO_ERROR[0]}"}} 0.0' in text

"""A real database outage (issue 7): PostgreSQL stops under a running service and comes back.

The shared server on 5432 is never touched: the test starts a private throwaway cluster
(initdb into tmp, a free port; bench/_reliability.py) and stops and starts that one. While it
is down, uploads and /readyz answer 503 problem+json with Retry-After and nothing half-done is
left; when it is back the same app serves again without a restart (pool_pre_ping), and every
201 is in the database. bench/db_outage.py runs the same under load for 30 s.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import (
    TestClient,
    assert_problem,
    create_api_key,
    make_settings,
    png_bytes,
)


def _no_postgres_user() -> bool:
    """initdb refuses to run as root; the helper then runs it as `postgres`, which must exist."""
    import os
    import pwd

    if os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return True
    return False


pytestmark = [
    pytest.mark.skipif(
        not glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        reason="no PostgreSQL server tools (initdb, pg_ctl) under /usr/lib/postgresql/*/bin",
    ),
    pytest.mark.skipif(_no_postgres_user(), reason="running as root without a postgres user"),
]


@pytest.fixture()
def private_cluster() -> Iterator[Any]:
    from bench._reliability import private_postgres

    with private_postgres() as pg:
        yield pg


def _post(client: TestClient) -> Any:
    return client.post(
        "/v1/predictions", files={"file": ("a.png", png_bytes(), "application/octet-stream")}
    )


def test_outage_is_503_with_retry_after_and_the_service_recovers_by_itself(
    private_cluster: Any, model_store: Path
) -> None:
    from sqlalchemy import create_engine, text

    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    pg = private_cluster
    upgrade(pg.url)
    key = create_api_key(pg.url, scopes="predict,read")
    app = create_app(make_settings(pg.url, model_store, auth="enabled"))
    created: list[str] = []
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        first = _post(client)
        assert first.status_code == 201, first.text
        created.append(first.json()["id"])

        pg.stop("fast")  # ends the pooled connections too, as a crash or restart would
        try:
            for _ in range(3):
                body = assert_problem(_post(client), 503, code="database-unavailable")
                assert "Traceback" not in body["detail"]
            response = _post(client)
            assert response.headers["retry-after"] == "1"
            ready = client.get("/readyz")
            assert_problem(ready, 503, code="database-unavailable")
            assert ready.headers["retry-after"] == "1"
            read = client.get(f"/v1/predictions/{created[0]}")
            assert_problem(read, 503, code="database-unavailable")
            assert read.headers["retry-after"] == "1"
            assert client.get("/healthz").status_code == 200  # the process itself is alive
            # the drift window is read from the database: 503 for its summary, while /metrics
            # still serves every other series (the drift gauges are left out of the scrape)
            assert_problem(client.get("/v1/drift"), 503, code="database-unavailable")
            scrape = client.get("/metrics")
            assert scrape.status_code == 200 and "radlens_http_requests_total" in scrape.text
            assert "radlens_drift_window_inputs" not in scrape.text
        finally:
            pg.start()

        # the same app, no restart: stale pooled connections are replaced on checkout
        assert client.get("/readyz").status_code == 200
        for _ in range(3):
            again = _post(client)
            assert again.status_code == 201, again.text
            created.append(again.json()["id"])
        assert client.get(f"/v1/predictions/{created[0]}").status_code == 200

    engine = create_engine(pg.url)
    try:
        with engine.connect() as conn:
            stored = {str(r[0]) for r in conn.execute(text("SELECT id FROM predictions"))}
    finally:
        engine.dispose()
    assert stored == set(created)  # every 201 stored, nothing from the refused uploads


def test_the_shared_rate_limit_fails_closed_during_an_outage(
    private_cluster: Any, model_store: Path
) -> None:
    """The database rate limiter cannot charge a bucket while the database is down: the
    request gets the outage's 503 (as an upload does), not an unlimited pass, and is charged
    again once the database is back, without a restart. The in-memory limiter, which needs no
    database, still answers a cached key (the contrast: the 503 comes from the shared one)."""
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    pg = private_cluster
    upgrade(pg.url)
    key = create_api_key(pg.url, scopes="read")
    headers = {"Authorization": f"Bearer {key}"}
    common = {"auth": "enabled", "auth_cache_ttl_s": 300.0, "rate_limit_per_minute": 1000}
    shared = create_app(make_settings(pg.url, model_store, **common))
    memory = create_app(make_settings(pg.url, model_store, rate_limit_store="memory", **common))
    with (
        TestClient(shared, headers=headers) as client,
        TestClient(memory, headers=headers) as in_memory,
    ):
        # the key is now cached by both apps: /v1/models needs no database but the bucket
        assert client.get("/v1/models").status_code == 200
        assert in_memory.get("/v1/models").status_code == 200
        pg.stop("fast")
        try:
            refused = client.get("/v1/models")
            body = assert_problem(refused, 503, code="database-unavailable")
            assert refused.headers["retry-after"] == "1"
            assert "Traceback" not in body["detail"]
            assert in_memory.get("/v1/models").status_code == 200
            assert client.get("/healthz").status_code == 200
        finally:
            pg.start()
        assert client.get("/v1/models").status_code == 200  # same app, no restart

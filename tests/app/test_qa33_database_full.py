"""The database's disk fills up under the service: a 503 that says so (not "cannot be reached;
check RADLENS_DATABASE_URL"), nothing half-stored, and serving again once there is space
(QA round 33)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from radlens.app.errors import DatabaseUnavailableError
from tests.app.conftest import Databases, app_client, assert_problem, png_bytes
from tests.conftest import REPO_ROOT


@pytest.fixture()
def sqlite_app(databases: Databases, model_store: Any) -> Iterator[Any]:
    if databases.backend != "sqlite":
        pytest.skip("SQLite's max_page_count stands in for a full disk (SQLITE_FULL)")
    yield from app_client(databases, model_store)


def _cap_database_size(engine: Any) -> Any:
    """Every new connection may not grow the file: SQLite then fails writes with
    SQLITE_FULL, "database or disk is full", as on a full file system."""

    def cap(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count={pages}")
        cursor.close()

    event.listen(engine, "connect", cap)
    engine.dispose()  # the pooled connections are replaced by capped ones
    return cap


def test_a_full_database_is_named_and_the_service_recovers(sqlite_app: Any) -> None:
    from radlens.app.tables import Explanation, Prediction

    client, app = sqlite_app
    engine = app.state.resources.engine
    assert (
        client.post("/v1/predictions", files={"file": ("a.png", png_bytes(0))}).status_code == 201
    )
    cap = _cap_database_size(engine)

    statuses = []
    full = None
    for seed in range(1, 60):
        response = client.post(
            "/v1/predictions?explain=true", files={"file": ("a.png", png_bytes(seed))}
        )
        statuses.append(response.status_code)
        if response.status_code != 201:
            full = response
            break
    assert full is not None, statuses
    body = assert_problem(full, 503, code="database-full")
    assert "disk is full" in body["title"] and "free space" in body["title"], body
    assert "RADLENS_DATABASE_URL" not in body["title"]
    assert full.headers["Retry-After"]
    assert client.get("/healthz").status_code == 200  # the process keeps serving

    event.remove(engine, "connect", cap)
    engine.dispose()  # space freed
    again = client.post("/v1/predictions?explain=true", files={"file": ("a.png", png_bytes(99))})
    assert again.status_code == 201, again.text

    with app.state.resources.sessionmaker() as session:
        predictions = session.scalar(select(func.count()).select_from(Prediction))
        explanations = session.scalar(select(func.count()).select_from(Explanation))
    assert predictions == 1 + statuses.count(201) + 1  # the refused upload stored nothing
    assert explanations == statuses.count(201) + 1  # and every stored one has its overlay


def test_the_cli_names_a_full_database_too() -> None:
    # `radlens keys create`, `radlens db upgrade`: the same error class, printed as one line
    full = DatabaseUnavailableError(
        "sqlite:////data/var/radlens.db: (sqlite3.OperationalError) database or disk is full"
    )
    assert full.code == "database-full"
    assert str(full).startswith("The database's disk is full; free space on the volume")
    postgres = DatabaseUnavailableError(
        'DiskFull: could not extend file "base/16384/16397": No space left on device'
    )
    assert postgres.code == "database-full"
    outage = DatabaseUnavailableError("connection refused")
    assert outage.code == "database-unavailable"
    assert "RADLENS_DATABASE_URL" in str(outage)


# a SQLite database in WAL mode on a full file system cannot even be opened to read: SQLite
# cannot size its -shm file and says only "disk I/O error" (SQLITE_IOERR_SHMSIZE). The file
# size limit (ulimit -f) makes that growth fail as a full disk does, without a mount.
_LIMITED_CLI = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
from radlens.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_opening_a_sqlite_database_on_a_full_disk_says_the_disk_is_full(tmp_path: Path) -> None:
    from radlens.app.migrate import upgrade

    database = tmp_path / "radlens.db"
    url = f"sqlite:///{database}"
    upgrade(url)
    for leftover in tmp_path.glob("radlens.db-*"):  # closed cleanly: checkpointed
        leftover.unlink()
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_CLI, "keys", "list"],
        cwd=REPO_ROOT,
        env={**os.environ, "RADLENS_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("radlens: ")]
    # before: "The database cannot be reached; check RADLENS_DATABASE_URL ...: disk I/O error"
    assert line.startswith("radlens: error: The database's disk is full; free space"), line
    assert "Traceback" not in done.stderr

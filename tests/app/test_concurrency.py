"""SQLite under concurrent load: many simultaneous POSTs never give 500 "database is locked".

The app runs in-process with its real lifespan (tiny model, SQLite file built by the
migrations) and is driven by an httpx AsyncClient over ASGITransport: 32 uploads at once, all
concurrently in flight through preprocessing, the micro-batching predictor and the database
write. A second connection holding SQLite's write lock shows that a writer waits for the lock
(busy timeout) instead of failing at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from tests.app.conftest import dicom_bytes, make_settings, png_bytes

CLIENTS = 32


@pytest.fixture(params=[1, 2], ids=["1-stream", "2-streams"])
def sqlite_app(request: Any, tmp_path: Path, model_store: Path) -> Iterator[Any]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'concurrency.db'}"
    upgrade(url)
    # Auth on, as in production: each request also reads its API key from the database.
    # One inference stream preprocesses in worker threads; two preprocess on the streams.
    settings = make_settings(
        url, model_store, max_batch_size=8, auth="enabled", inference_streams=request.param
    )
    app = create_app(settings)
    app.state.test_headers = {"Authorization": f"Bearer {_new_key(url)}"}
    yield app


def _new_key(url: str) -> str:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.keys import create_key

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            key = create_key(session, name="concurrency", scopes="predict,read")
            session.commit()
    finally:
        engine.dispose()
    return key.secret


async def _post_all(
    app: Any, uploads: list[bytes], extra_gets: int = 0, on_ready: Any = None
) -> list[Any]:
    import httpx

    async with app.router.lifespan_context(app):
        if on_ready is not None:
            on_ready()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=app.state.test_headers
        ) as client:

            async def post(data: bytes) -> Any:
                files = {"file": ("image.bin", data, "application/octet-stream")}
                return await client.post("/v1/predictions", files=files)

            async def listing() -> Any:
                return await client.get("/v1/predictions", params={"limit": 5})

            tasks = [post(d) for d in uploads] + [listing() for _ in range(extra_gets)]
            return list(await asyncio.gather(*tasks))


def _count(app_or_url: Any) -> int:
    from radlens.app.db import make_engine
    from radlens.app.tables import Prediction

    engine = make_engine(app_or_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Prediction)) or 0)
    finally:
        engine.dispose()


def test_concurrent_posts_on_sqlite_all_stored(sqlite_app: Any) -> None:
    uploads = [dicom_bytes(rows=64, columns=64, seed=i) for i in range(CLIENTS // 2)]
    uploads += [png_bytes(seed=1000 + i) for i in range(CLIENTS // 2)]
    responses = asyncio.run(_post_all(sqlite_app, uploads, extra_gets=8))
    posts, gets = responses[:CLIENTS], responses[CLIENTS:]
    assert [r.status_code for r in posts] == [201] * CLIENTS, [
        r.text for r in posts if r.status_code != 201
    ]
    assert [r.status_code for r in gets] == [200] * 8, [r.text for r in gets]
    assert len({r.json()["id"] for r in posts}) == CLIENTS
    assert _count(sqlite_app.state.settings.database_url) == CLIENTS


def test_concurrent_reposts_of_one_instance_store_one_row(sqlite_app: Any) -> None:
    data = dicom_bytes(rows=32, columns=32, seed=5)
    others = [png_bytes(seed=2000 + i) for i in range(CLIENTS // 2)]
    responses = asyncio.run(_post_all(sqlite_app, [data] * (CLIENTS // 2) + others))
    same, different = responses[: CLIENTS // 2], responses[CLIENTS // 2 :]
    assert sorted(r.status_code for r in same) == [200] * (CLIENTS // 2 - 1) + [201], [
        r.text for r in same
    ]
    assert len({r.json()["id"] for r in same}) == 1
    assert [r.status_code for r in different] == [201] * (CLIENTS // 2)
    assert _count(sqlite_app.state.settings.database_url) == 1 + CLIENTS // 2


def test_sqlite_connections_use_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    from radlens.app.db import SQLITE_BUSY_TIMEOUT_MS, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
    assert SQLITE_BUSY_TIMEOUT_MS >= 5000


def test_in_memory_sqlite_still_works(tmp_path: Path) -> None:
    """WAL does not apply to :memory: databases; the engine must not fail on them."""
    from radlens.app.db import make_engine

    engine = make_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
    finally:
        engine.dispose()


def test_a_post_waits_for_another_writer_instead_of_failing(sqlite_app: Any) -> None:
    """Another process holds the write lock for a moment: the POST queues on it (busy
    timeout) and is stored once the lock is released, instead of 500 "database is locked"."""
    path = sqlite_app.state.settings.database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    threads: list[threading.Thread] = []

    def lock_then_release_soon() -> None:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, as another writer would hold it
        thread = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
        threads.append(thread)
        thread.start()

    uploads = [png_bytes(seed=3000 + i) for i in range(4)]
    try:
        responses = asyncio.run(_post_all(sqlite_app, uploads, on_ready=lock_then_release_soon))
    finally:
        for thread in threads:
            thread.join()
        holder.close()
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    assert _count(sqlite_app.state.settings.database_url) == 4


def test_read_only_sessions_do_not_wait_for_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another connection holds the write lock, a read-only session reads at once
    (WAL snapshot); an ordinary session, which begins IMMEDIATE, waits and times out."""
    from sqlalchemy.exc import OperationalError

    from radlens.app import db
    from radlens.app.migrate import upgrade
    from radlens.app.tables import Prediction

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)  # keep the failing wait short
    url = f"sqlite:///{tmp_path / 'read-only.db'}"
    upgrade(url)
    engine = db.make_engine(url)
    holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with db.make_sessionmaker(engine, read_only=True)() as session:
            assert session.scalar(select(func.count()).select_from(Prediction)) == 0
        with db.make_sessionmaker(engine)() as session, pytest.raises(OperationalError) as info:
            session.scalar(select(func.count()).select_from(Prediction))
        assert "locked" in str(info.value)
    finally:
        holder.close()
        engine.dispose()

"""A database host that stops answering (RADLENS_DATABASE_CONNECT_TIMEOUT_S, app/db.py).

A stopped PostgreSQL refuses connections at once (tests/app/test_db_outage.py); a partitioned
or firewalled one, or a server that accepts and then hangs, does not answer at all, and libpq
then waits for ever. Played here on loopback by a TCP proxy in front of the shared PostgreSQL
that can turn silent: it keeps accepting connections and never forwards a byte.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.app.conftest import (
    Databases,
    TestClient,
    assert_problem,
    make_settings,
    png_bytes,
    postgres_available,
)

pytestmark = pytest.mark.postgres

UPSTREAM = ("127.0.0.1", 5432)


class SwitchableProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL, or, once silent, accepts and answers nothing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.silent = False
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.append(client)
                if self.silent:
                    continue  # held open, never read, never answered
            try:
                upstream = socket.create_connection(UPSTREAM, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.append(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _end(sock)

    def go_silent(self) -> None:
        """From now on answer nothing, and cut what is open (a partition ends those too)."""
        with self._lock:
            self.silent = True
            for sock in self._open:
                _end(sock)
            self._open.clear()

    def recover(self) -> None:
        with self._lock:
            self.silent = False

    def close(self) -> None:
        self.go_silent()
        self.listener.close()


def _end(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture()
def proxy() -> Iterator[SwitchableProxy]:
    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    p = SwitchableProxy()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture()
def proxied_url(proxy: SwitchableProxy, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated database on the shared server, addressed through the proxy."""
    from radlens.app.migrate import upgrade

    databases = Databases("postgresql", tmp_path, [])
    url = make_url(databases.new()).set(port=proxy.port).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        proxy.recover()
        databases.drop_all()


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result, or a failed test (not a hung suite) when it takes longer."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"still waiting after {seconds:.0f} s: a silent database host hangs the call")
    if "error" in outcome:
        raise outcome["error"]
    outcome["elapsed"] = time.monotonic() - started
    return outcome


def _select_one(engine: Any) -> Any:
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text("SELECT 1")).scalar()


def _refused(engine: Any) -> OperationalError:
    with pytest.raises(OperationalError) as caught:
        _select_one(engine)
    return caught.value


class TestMakeEngine:
    def test_a_new_connection_to_a_silent_host_fails_after_the_timeout(
        self, proxy: SwitchableProxy, proxied_url: str
    ) -> None:
        from radlens.app.db import make_engine

        engine = make_engine(proxied_url, connect_timeout_s=2)
        try:
            assert within(30, lambda: _select_one(engine))["value"] == 1  # forwarded
            proxy.go_silent()
            engine.dispose()  # a new connection, not a pooled one
            error = within(30, lambda: _refused(engine))["value"]
            assert "timeout" in str(error).lower()
        finally:
            engine.dispose()

    def test_a_connect_timeout_in_the_url_wins(
        self, proxy: SwitchableProxy, proxied_url: str
    ) -> None:
        from radlens.app.db import make_engine

        url = make_url(proxied_url).update_query_dict({"connect_timeout": "2"})
        # the argument alone would wait ten minutes: the URL's 2 s decide
        engine = make_engine(url.render_as_string(hide_password=False), connect_timeout_s=600)
        try:
            proxy.go_silent()
            within(30, lambda: _refused(engine))
        finally:
            engine.dispose()

    def test_sqlite_gets_no_connect_timeout(self, tmp_path: Path) -> None:
        from radlens.app.db import make_engine

        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", connect_timeout_s=2)
        try:
            assert _select_one(engine) == 1  # sqlite3.connect() has no connect_timeout
        finally:
            engine.dispose()


def test_the_service_answers_503_while_the_database_host_is_silent_and_recovers(
    proxy: SwitchableProxy, proxied_url: str, model_store: Path
) -> None:
    from radlens.app.main import create_app

    app = create_app(make_settings(proxied_url, model_store, database_connect_timeout_s=2))

    def post(client: TestClient) -> Any:
        return client.post(
            "/v1/predictions", files={"file": ("a.png", png_bytes(), "application/octet-stream")}
        )

    with TestClient(app) as client:
        first = within(120, lambda: post(client))["value"]
        assert first.status_code == 201, first.text

        proxy.go_silent()
        refused = within(60, lambda: post(client))["value"]
        assert_problem(refused, 503, code="database-unavailable")
        ready = within(60, lambda: client.get("/readyz"))["value"]
        assert_problem(ready, 503, code="database-unavailable")
        scrape = within(60, lambda: client.get("/metrics"))["value"]
        assert scrape.status_code == 200 and "radlens_http_requests_total" in scrape.text

        proxy.recover()
        again = within(60, lambda: post(client))["value"]
        assert again.status_code == 201, again.text
        stored = within(60, lambda: client.get(f"/v1/predictions/{first.json()['id']}"))["value"]
        assert stored.status_code == 200

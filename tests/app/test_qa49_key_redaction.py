"""A key sent in the query string is refused (401) and its secret never reaches the log.

uvicorn's access log (RADLENS_ACCESS_LOG=true) writes each request's path and query string;
a client that put its key in the URL (``?api_key=``, ``?access_token=``) had the secret of a
valid key written there (QA round 49, a live ``radlens serve``). app/auth.py puts a filter on
the ``uvicorn.access`` logger that replaces every key's secret, keeping its public id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import make_settings

SECRET = "QA49" * 10 + "qa4"  # 43 characters, as a key's secret
KEY = f"rl_0123456789ab_{SECRET}"
PORT = 24950  # QA 49's range


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def access_lines() -> Iterator[list[str]]:
    handler = Lines()
    access = logging.getLogger("uvicorn.access")
    previous = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        access.removeHandler(handler)
        access.setLevel(previous)


def test_the_access_logger_never_writes_a_secret(access_lines: list[str]) -> None:
    import radlens.app.auth  # noqa: F401  (installs the filter, as create_app does)

    # exactly uvicorn's call (uvicorn/protocols/http/h11_impl.py)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/v1/models?api_key={KEY}", "1.1", 401
    )
    assert access_lines == [
        '127.0.0.1:5000 - "GET /v1/models?api_key=rl_0123456789ab_<redacted> HTTP/1.1" 401'
    ]


def test_a_percent_encoded_key_is_redacted_too(access_lines: list[str]) -> None:
    """A client that encoded the key's underscores (``%5F``) in the URL (QA round 50)."""
    import radlens.app.auth  # noqa: F401

    encoded = KEY.replace("_", "%5F")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/v1/models?k={encoded}", "1.1", 401
    )
    assert SECRET not in access_lines[0] and "<redacted>" in access_lines[0]


def test_a_real_server_refuses_the_query_key_and_logs_no_secret(
    tmp_path: Path, access_lines: list[str]
) -> None:
    import uvicorn

    from radlens.app.main import create_app

    app = create_app(make_settings(f"sqlite:///{tmp_path / 'a.db'}", tmp_path, auth="enabled"))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=PORT, lifespan="off", access_log=True, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        for name in ("api_key", "access_token"):
            response = httpx.get(f"http://127.0.0.1:{PORT}/v1/models", params={name: KEY})
            assert response.status_code == 401
            assert SECRET not in response.text
    finally:
        server.should_exit = True
        thread.join(10)
    assert len(access_lines) == 2, access_lines
    assert all("rl_0123456789ab_<redacted>" in line for line in access_lines)
    assert not any(SECRET in line for line in access_lines)

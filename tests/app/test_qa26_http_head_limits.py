"""QA round 26: a request's head (request line and headers) is bounded in size and in time
(app/httpserver.py, the protocol `radlens serve` gives uvicorn).

Before: uvicorn's httptools protocol buffered a head of any size (a 50 MiB header took 128 MiB
of RSS and was answered 200; 4 unfinished 100 MiB headers held 490 MiB) and waited for it for
ever (1,000 idle or half-sent connections stayed open; on a 600-descriptor limit 700 idle
connections made /healthz fail). Each test runs a real uvicorn on a free port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from radlens.app.httpserver import HTTP_PROTOCOL, BoundedHttpToolsProtocol
from tests.app.conftest import save_tiny_model

HEAD_TIMEOUT_S = 1.0


class ShortTimeout(BoundedHttpToolsProtocol):
    head_timeout_s = HEAD_TIMEOUT_S
    fired: ClassVar[list[float]] = []  # each head timer that ran out: its delay (no stopwatch)

    def _head_timed_out(self) -> None:
        ShortTimeout.fired.append(self.head_timeout_s)
        super()._head_timed_out()


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 200 with the number of body bytes it read."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    import uvicorn

    config = uvicorn.Config(
        echo_app, host="127.0.0.1", port=0, http=ShortTimeout, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield int(server.servers[0].sockets[0].getsockname()[1])
    server.should_exit = True
    thread.join(10)


def exchange(port: int, data: bytes, *, wait: float = 10.0) -> bytes:
    """Send ``data``, read until the server closes (or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(OSError):  # the server refused and closed mid-send
            sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def request(headers: list[str] | None = None, body: bytes = b"") -> bytes:
    lines = ["POST /x HTTP/1.1", "Host: test", *(headers or []), f"Content-Length: {len(body)}"]
    return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode() + body


def assert_refused(response: bytes, status: int, code: str) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), response[:300]
    assert b"content-type: application/problem+json" in head
    assert b"connection: close" in head
    assert b'"urn:radlens:problem:' + code.encode() + b'"' in body


def test_a_head_within_the_limit_is_served_with_its_body(port: int) -> None:
    response = exchange(port, request([f"X-Pad: {'p' * 60_000}"], b"b" * 1_000_000))
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert response.endswith(b"1000000")


@pytest.mark.parametrize(
    "headers",
    [[f"X-Big: {'a' * (1 << 20)}"], [f"X-H{i}: v" for i in range(10_000)]],
    ids=["one-1MiB-header", "10000-headers"],
)
def test_a_head_over_the_limit_is_a_431_problem(port: int, headers: list[str]) -> None:
    assert_refused(exchange(port, request(headers)), 431, "request-header-fields-too-large")
    assert exchange(port, request()).startswith(b"HTTP/1.1 200 ")  # still serving


def test_a_head_that_never_ends_is_refused_without_reading_it_all(port: int) -> None:
    """A 64 MiB header line: refused at the limit, not buffered (the client's send fails)."""
    data = b"GET /x HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (64 << 20)
    assert_refused(exchange(port, data), 431, "request-header-fields-too-large")


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(port: int) -> None:
    """Closed by its head timer (recorded as it runs out), not at once nor by the client's own
    wait (the hang bound); the 408 says which limit it hit."""
    fired = len(ShortTimeout.fired)
    response = exchange(port, b"", wait=HEAD_TIMEOUT_S + 10)
    assert_refused(response, 408, "request-timeout")
    assert ShortTimeout.fired[fired:] == [HEAD_TIMEOUT_S]
    assert b"were not complete within 1 s" in response


def test_a_head_trickled_slower_than_the_timeout_is_a_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=HEAD_TIMEOUT_S + 10) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: test\r\n")
        response = b""
        for _ in range(int(HEAD_TIMEOUT_S * 10) + 20):  # a header byte every 100 ms
            try:
                sock.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
        try:
            while chunk := sock.recv(65536):
                response += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert_refused(response, 408, "request-timeout")


def test_a_body_slower_than_the_head_timeout_is_still_read(port: int) -> None:
    """Only the head is timed: a slow upload on a slow link is not cut."""
    body = b"z" * 30
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request(body=body)[: -len(body)])
        for i in range(0, len(body), 10):
            time.sleep(HEAD_TIMEOUT_S * 0.6)
            sock.sendall(body[i : i + 10])
        response = sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert response.endswith(b"30")


def test_kept_alive_and_pipelined_requests_each_get_a_fresh_head_budget(port: int) -> None:
    one = b"GET /x HTTP/1.1\r\nHost: test\r\nX-Pad: " + b"p" * 40_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(one * 3)  # 120 KB of heads in one write, 40 KB each
        time.sleep(HEAD_TIMEOUT_S * 0.6)
        sock.sendall(one + b"GET /x HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.count(b"HTTP/1.1 200 ") == 5, response[:500]


def test_radlens_serve_runs_uvicorn_with_the_bounded_protocol(
    clean_radlens_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from radlens.cli.main import main

    store = tmp_path / "store"
    save_tiny_model(store)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = int(sock.getsockname()[1])
    monkeypatch.setenv("RADLENS_DATABASE_URL", f"sqlite:///{tmp_path / 'radlens.db'}")
    monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
    monkeypatch.setenv("RADLENS_PORT", str(free))
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    assert main(["serve"]) in (0, None)
    assert seen["http"] == HTTP_PROTOCOL
    config = uvicorn.Config(echo_app, http=seen["http"])
    config.load()
    assert config.http_protocol_class is BoundedHttpToolsProtocol

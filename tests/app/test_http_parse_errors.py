"""A request httptools cannot parse is answered 400 as application/problem+json, like every
other refusal (before: uvicorn's plain-text "Invalid HTTP request received."), and the server
goes on serving. A real uvicorn with radlens' protocol (the qa26 fixture)."""

from __future__ import annotations

import json

import pytest

from tests.app.test_qa26_http_head_limits import (  # noqa: F401  (port: a fixture)
    assert_refused,
    exchange,
    port,
    request,
)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: ten\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: t\r\nBad Header Name: v\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ],
    ids=["request-line", "content-length", "header-name", "chunk-size"],
)
def test_an_unparsable_request_is_a_400_problem(port: int, raw: bytes) -> None:  # noqa: F811
    response = exchange(port, raw)
    assert_refused(response, 400, "bad-http-request")
    problem = json.loads(response.partition(b"\r\n\r\n")[2])
    assert problem["status"] == 400 and problem["detail"] == "Invalid HTTP request received."
    assert "not valid HTTP/1.1" in problem["title"]
    assert exchange(port, request()).startswith(b"HTTP/1.1 200 ")  # still serving

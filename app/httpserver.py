"""uvicorn's httptools protocol with the two limits on a request's head that it lacks.

uvicorn (httptools) keeps a connection open until the client finishes its request line and
headers, however long that takes, and buffers them whatever their size: a client that connects
and sends nothing, or trickles a header byte now and then, holds a connection (and a file
descriptor) for ever, and one that sends a 100 MiB header line holds 100 MiB and more (QA
round 26: 4 such connections took 490 MiB; 700 idle connections on a 600-descriptor limit made
/healthz fail). Here:

- a head (request line and headers) larger than ``max_head_bytes`` is answered 431 and the
  connection closed;
- a head not complete ``head_timeout_s`` after the connection opened, or after the first byte
  of a request on a kept-alive connection, is answered 408 and the connection closed.

A request httptools cannot parse (a malformed request line, header or chunk) is answered 400
as problem+json, like every other refusal, instead of uvicorn's plain-text "Invalid HTTP
request received.".

The body is not limited here: its size by ``RADLENS_MAX_UPLOAD_BYTES`` (app/limits.py), its pace
by nothing (put a proxy with a body timeout in front, docs/deployment.md).
``radlens serve`` runs uvicorn with this protocol (``HTTP_PROTOCOL``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HTTP_PROTOCOL = "radlens.app.httpserver:BoundedHttpToolsProtocol"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024  # nginx's large_client_header_buffers: 4 x 8 KiB per line
    head_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._heads_done = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._start_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_done += 1
        self._stop_head_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = self.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # more than the head may still take: feed what fits; unless the head ends within it,
        # refuse; else the rest is its body or the next (pipelined) request, read as usual.
        # (A head that begins inside one read is counted from the next read: at most twice
        # the limit is buffered.)
        heads = self._heads_done
        self._head_bytes = self.max_head_bytes
        super().data_received(data[:room])
        if self._heads_done == heads:
            if not self.transport.is_closing():
                self._refuse(
                    431,
                    "request-header-fields-too-large",
                    "The request line and headers are too large; send fewer or shorter headers",
                    f"the request's line and headers exceed {self.max_head_bytes} bytes",
                )
            return
        if not self.transport.is_closing():
            self.data_received(data[room:])

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(
                408,
                "request-timeout",
                "The request's headers did not arrive in time; send the whole request at once",
                f"the request line and headers were not complete within {self.head_timeout_s:g} s",
            )

    def send_400_response(self, msg: str) -> None:
        """httptools could not parse the request (uvicorn logs it as a warning)."""
        self._refuse(
            400,
            "bad-http-request",
            "The request is not valid HTTP/1.1 (request line, a header or the chunked body); "
            "check the client or proxy that sent it",
            msg,
        )

    def _refuse(self, status: int, code: str, title: str, detail: str) -> None:
        """A problem+json answer, then close: the connection cannot be read further."""
        self.logger.info("request refused before routing: %d %s", status, code)
        problem = {"type": f"urn:radlens:problem:{code}", "title": title, "status": status}
        body = json.dumps({**problem, "detail": detail}).encode()
        reason = {
            400: b"Bad Request",
            408: b"Request Timeout",
            431: b"Request Header Fields Too Large",
        }[status]
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

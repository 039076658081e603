"""Upload size limit, enforced before the body is read, and the bytes of uploads in flight
(pure ASGI middleware).

A declared ``Content-Length`` over the limit is refused at once with a 413 problem, without
reading a byte of the body; a chunked or lying body is counted as it streams and refused as
soon as it passes the limit, so the service never buffers more than the limit.

Each upload in flight costs about twice its size while it is read, decoded and predicted, and
nothing bounded how many were in flight at once (QA round 26: 8 concurrent 64 MiB bodies took
+642 MiB; 4 concurrent 60 MiB DICOM +1.1 GiB). :class:`UploadBudget` bounds the bytes of the
bodies being read or processed at once (``RADLENS_MAX_INFLIGHT_UPLOAD_BYTES``): a body is
charged from its first chunk (its declared ``Content-Length``, else what has arrived) until its
response is sent, and one that does not fit beside the others is refused with 503
``service-busy`` and ``Retry-After``, as a full queue is. Charging starts at the first chunk
because a route reads its body only after the API key was checked, so a client without a key
cannot hold the budget. An upload alone is always admitted, whatever its size.

A body whose next chunk does not arrive within ``RADLENS_BODY_TIMEOUT_S`` (a stalled or
trickling upload, which held its connection and its share of the budget for ever) is answered
408 and its connection closed; a slow upload whose chunks keep coming completes.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radlens.app.errors import PayloadTooLargeError, UnsupportedMediaTypeError, problem_response


class UploadTooLarge(StarletteHTTPException):
    """Raised from ``receive`` mid-stream; FastAPI lets HTTPExceptions through body parsing."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, detail=f"the body exceeded the limit of {limit} bytes while streaming"
        )


class UploadsBusy(StarletteHTTPException):
    """Raised from ``receive`` at a body's first chunk when it does not fit the budget."""

    def __init__(self, needed: int, used: int, limit: int) -> None:
        super().__init__(
            503,
            detail=f"{used} bytes of uploads are being read or processed already; this one "
            f"needs {needed} more and the limit is {limit} bytes "
            "(RADLENS_MAX_INFLIGHT_UPLOAD_BYTES)",
            headers={"Retry-After": "1"},
        )


class UploadBudget:
    """The bytes of request bodies in flight in this process, at most ``max_bytes`` (0: no
    bound) unless one body alone is larger. Used from the event loop only (no lock)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def grow(self, held: int, to: int) -> int:
        """Charge a body holding ``held`` bytes of the budget up to ``to``; returns what it
        holds now. Raises UploadsBusy when the others' bytes and ``to`` exceed the bound."""
        if to <= held:
            return held
        others = self.used - held
        if self.max_bytes and others > 0 and others + to > self.max_bytes:
            raise UploadsBusy(to - held, others, self.max_bytes)
        self.used += to - held
        return to

    def release(self, held: int) -> None:
        self.used -= held


class BodyTimeout(StarletteHTTPException):
    """Raised from ``receive`` when a body's next chunk does not come in time."""

    def __init__(self, seconds: float, received: int) -> None:
        super().__init__(
            408,
            detail=f"no part of the request body arrived for {seconds:g} s after {received} "
            "bytes (RADLENS_BODY_TIMEOUT_S)",
            headers={"Connection": "close"},
        )


class MaxBodySizeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        max_inflight_bytes: int = 0,
        body_timeout_s: float = 0.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget = UploadBudget(max_inflight_bytes)
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = _header(scope, b"content-encoding")
        if (
            encoding is not None
            and encoding.strip().lower() not in ("", "identity")
            and scope.get("method") == "POST"  # the one method with a body here
        ):
            # Starlette does not decode request bodies: a gzip-compressed upload was parsed as
            # it came and refused as a "malformed multipart body", which it is not
            response = problem_response(
                Request(scope),
                status=415,
                code=UnsupportedMediaTypeError.code,
                title="The request body is compressed (Content-Encoding); send it uncompressed",
                detail=f"Content-Encoding {encoding.strip()[:64]!r} is not accepted: send the "
                "body as it is, without Content-Encoding (DICOM has its own compression)",
                headers={"Connection": "close", "Accept-Encoding": "identity"},
            )
            await response(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = problem_response(
                Request(scope),
                status=413,
                code=PayloadTooLargeError.code,
                title=PayloadTooLargeError.title,
                detail=f"Content-Length is {declared} bytes, the limit is {self.max_bytes} bytes",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return

        received = 0
        held = 0  # bytes of the in-flight budget this body holds
        body_done = False

        async def counting_receive() -> Message:
            nonlocal received, held, body_done
            if body_done or not self.body_timeout_s:
                # once the body is in, receive() waits for the client to go away (a streaming
                # response listens for that): no timeout there
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(self.body_timeout_s):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout(self.body_timeout_s, received) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes)
                if received:
                    held = self.budget.grow(held, max(received, declared or 0))
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.budget.release(held)


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None

"""Upload size limit, enforced before the body is read (pure ASGI middleware).

A declared ``Content-Length`` over the limit is refused at once with a 413 problem, without
reading a byte of the body; a chunked or lying body is counted as it streams and refused as
soon as it passes the limit, so the service never buffers more than the limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radlens.app.errors import PayloadTooLargeError, problem_response


class UploadTooLarge(StarletteHTTPException):
    """Raised from ``receive`` mid-stream; FastAPI lets HTTPExceptions through body parsing."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, detail=f"the body exceeded the limit of {limit} bytes while streaming"
        )


class MaxBodySizeMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
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

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None

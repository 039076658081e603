"""HEAD answered as GET without its body (RFC 9110, section 9.3.2: a general-purpose server
MUST support GET and HEAD).

FastAPI routes a GET operation for GET only, so ``HEAD /healthz`` -- what ``curl -I``, uptime
monitors and some load balancers' health checks send -- was a 405 on every page and endpoint.
Here a HEAD request goes through the app as a GET (same authentication, rate limit, audit and
status) and its response keeps its status and headers, ``content-length`` included, with the
body dropped. Metrics and logs still see the request's own method (this middleware is inside
them).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # a streamed body's parts: nothing is sent until the last
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)

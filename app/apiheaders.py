"""Headers every API answer carries: ``X-Content-Type-Options: nosniff`` on every response,
and ``Cache-Control: no-store`` on the REST API's and DICOMweb's (``/v1``, ``/dicomweb``).

Results of a diagnosis service are not for a browser's or a proxy's cache (a shared
workstation, a caching proxy in front of the service), and a browser must not guess another
type than the one declared (a PNG overlay, a DICOM object, a multipart body). The /ui pages set
their own, stricter set (app/ui/routes.py); a header a route set itself is left as it is.
Outermost of the middlewares, so the catch-all's 500 and the body limit's 413 carry them too
(QA round 49: no API response carried either).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NO_STORE_PREFIXES = ("/v1/", "/dicomweb/")


class ApiHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        no_store = path.startswith(NO_STORE_PREFIXES) or path in ("/v1", "/dicomweb")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if no_store:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)

"""Swagger UI (/docs) and ReDoc (/redoc) served from the service itself.

FastAPI's default pages load their script, stylesheet, favicon (and ReDoc's fonts) from
public CDNs: in a hospital network without internet access Swagger UI renders as a blank
page, and elsewhere every visit tells a third party the service is in use. The assets come
from the pinned ``fastapi-offline`` package (Swagger UI and ReDoc dist files inside its
wheel) and are mounted under ``/docs-assets``; no page the service serves names another host
(tests/app/test_docs.py, and a headless-Chromium test with every non-loopback request blocked).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"

SWAGGER_UI_PARAMETERS = {
    # No "validator.swagger.io" badge (it sends the spec's URL to a third party).
    "validatorUrl": None,
    # Remember the pasted API key across reloads of /docs (browser local storage only).
    "persistAuthorization": True,
}


# The pages may load only from the service: ReDoc's bundle still names one image on a CDN (the
# "Redocly" logo, which it drops when it cannot load), and this keeps the browser from even
# asking. Swagger UI's start-up script and both UIs' styles are inline; ReDoc's search runs in
# a blob: worker.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'self'",
        "base-uri 'self'",
        "form-action 'self'",
    )
)


def _self_only(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def assets_directory() -> Path:
    """The directory of the Swagger UI / ReDoc dist files shipped in ``fastapi-offline``."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add /docs, its OAuth2 redirect page, /redoc and the assets they load to ``app``.

    ``app`` must be built with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages off).
    """
    app.mount(ASSETS_URL, StaticFiles(directory=assets_directory()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url

    def local(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _self_only(
            get_swagger_ui_html(
                openapi_url=local(request, openapi_url),
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=local(request, redirect_url) if redirect_url else None,
                swagger_js_url=local(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
                swagger_css_url=local(request, f"{ASSETS_URL}/swagger-ui.css"),
                swagger_favicon_url=local(request, f"{ASSETS_URL}/favicon.png"),
                swagger_ui_parameters={
                    **SWAGGER_UI_PARAMETERS,
                    **(app.swagger_ui_parameters or {}),
                },
            )
        )

    if redirect_url:

        @app.get(redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return _self_only(get_swagger_ui_oauth2_redirect_html())

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return _self_only(
            get_redoc_html(
                openapi_url=local(request, openapi_url),
                title=f"{app.title} - ReDoc",
                redoc_js_url=local(request, f"{ASSETS_URL}/redoc.standalone.js"),
                redoc_favicon_url=local(request, f"{ASSETS_URL}/favicon.png"),
                with_google_fonts=False,
            )
        )

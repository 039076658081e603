"""The /ui pages (server-rendered, Jinja2 templates, a little plain JS served by the app):
``install_ui(app)`` mounts them. See app/ui/routes.py."""

from __future__ import annotations

import inspect
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from radlens.app.errors import status_for
from radlens.models.errors import RadlensError

STATIC = Path(__file__).parent / "static"


def install_ui(app: FastAPI) -> None:
    """Mount /ui and /ui/static; a missing session redirects to the login form, and an
    expected failure on a /ui page renders as a page (the API keeps problem+json)."""
    from radlens.app.ui.routes import LoginRequired, render, router

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui_static")
    api_handler = app.exception_handlers[RadlensError]

    async def login_required(request: Request, exc: Exception) -> Response:
        reason = exc.reason if isinstance(exc, LoginRequired) else "login"
        if request.method == "POST" and request.url.path == "/ui/upload":
            # the session ended while the form was open: its file is lost with the request,
            # so the login says so and leads back to the form (QA 109)
            reason = "upload"
        return RedirectResponse(f"/ui/login?reason={reason}", status_code=303)

    async def radlens_error(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith("/ui") or not isinstance(exc, RadlensError):
            answer = api_handler(request, exc)
            return await answer if inspect.isawaitable(answer) else answer
        status = status_for(exc)
        if _refused_upload(request, status):
            # the form again, saying why and what to do (QA 109: an error page whose only way
            # on was "Back to the predictions", and whose intended-use title sent a clinician to
            # "GET /v1/models")
            response = render(
                request,
                "upload.html",
                status,
                refusal={"title": exc.title, "detail": exc.detail, "code": exc.code},
            )
        else:
            response = render(request, "error.html", status, title=exc.title, detail=exc.detail)
        for name, value in (getattr(exc, "headers", None) or {}).items():
            if name.lower() != "www-authenticate":
                response.headers[name] = value
        return response

    def _refused_upload(request: Request, status: int) -> bool:
        """An upload the service refused for its file or its load, not for who sent it (a
        403, a missing scope or CSRF token, keeps the error page)."""
        return (
            request.method == "POST"
            and request.url.path == "/ui/upload"
            and status not in (401, 403)
        )

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(RadlensError, radlens_error)

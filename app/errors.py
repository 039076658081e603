"""RFC 9457 problem documents: the service's error family and the handlers that render them.

Every expected failure is a ``models.errors.RadlensError`` (preprocessing errors from
``models``, the service's own ``AppError`` subclasses below) and becomes
``application/problem+json`` with the error's title and detail. FastAPI's validation errors
and Starlette's HTTP errors (unknown route, wrong method) get the same shape. Anything else is
a bug: ``CatchAllMiddleware`` logs it without request data and answers a 500 problem.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radlens.models.errors import RadlensError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:radlens:problem:"


class AppError(RadlensError):
    """A service-level failure that carries its HTTP status."""

    status_code: int = 400


class NotFoundError(AppError):
    code = "not-found"
    title = "No such resource; check the id or the URL"
    status_code = 404


class ModelNotReadyError(AppError):
    code = "model-not-ready"
    title = "The service is not ready to predict; retry when GET /readyz answers 200"
    status_code = 503


class PayloadTooLargeError(AppError):
    code = "payload-too-large"
    title = "The upload is too large; send a smaller file or raise RADLENS_MAX_UPLOAD_BYTES"
    status_code = 413


class UnsupportedMediaTypeError(AppError):
    code = "unsupported-media-type"
    title = "Send the image as multipart/form-data with the file in a field named 'file'"
    status_code = 415


class InvalidCursorError(AppError):
    code = "invalid-cursor"
    title = "The pagination cursor is invalid; pass next_cursor from a previous page unchanged"
    status_code = 422


class UnknownFindingError(AppError):
    """A finding name (list filter, explanation) that no model finding has: there is no such
    finding to filter on or explain (404, as for an unknown prediction id)."""

    code = "unknown-finding"
    title = "No such finding; use one of the model's findings (GET /v1/models)"
    status_code = 404


class InvalidDicomAttributeError(AppError):
    code = "invalid-dicom-attribute"
    title = (
        "A DICOM attribute the service records is too long or holds control characters; "
        "correct the file's header"
    )
    status_code = 422


class DatabaseNotMigratedError(AppError):
    code = "database-not-migrated"
    title = "The database schema is not at the current revision; run `radlens db upgrade`"
    status_code = 503


class MigrationError(AppError):
    code = "migration-failed"
    title = "The migration could not run; check the revision (see `radlens db current`)"
    status_code = 500


class DatabaseUnavailableError(AppError):
    code = "database-unavailable"
    title = "The database cannot be reached; check RADLENS_DATABASE_URL and the server"
    status_code = 503
    # like the OperationalError handler below: the outage is usually brief, clients retry
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        if database_full(detail):  # it answered, and refused to write: not a URL to check
            self.code, self.title = DATABASE_FULL


# The database (SQLite: the file system of its file and -wal; PostgreSQL: the server's
# data or WAL volume) is out of space: nothing can be written, and as every request writes
# its audit row (reads too), every request fails until space is freed.
DATABASE_FULL = (
    "database-full",
    "The database's disk is full; free space on the volume that holds the database, then retry",
)


def database_full(message: str) -> bool:
    """Whether a driver's message says the database is out of space (SQLite's SQLITE_FULL,
    PostgreSQL's DiskFull or "could not extend/write ...: No space left on device")."""
    text = message.lower()
    return any(
        s in text for s in ("database or disk is full", "no space left on device", "diskfull")
    )


# The database answers and refuses every write: PostgreSQL in read-only mode (a hot standby
# after a failover, default_transaction_read_only, SQLSTATE 25006) or to a role without the
# privilege (42501), or a SQLite file or volume that became read-only (SQLITE_READONLY).
# Nothing can be stored until it is writable again.
DATABASE_READ_ONLY = (
    "database-read-only",
    "The database accepts no writes (read-only: a standby, default_transaction_read_only, a "
    "role without the privilege, or a read-only file or volume); make it writable, then retry",
)
_READ_ONLY_SQLSTATES = ("25006", "42501")  # read_only_sql_transaction, insufficient_privilege


def database_read_only(orig: object) -> bool:
    """Whether a driver error says the database refuses writes: PostgreSQL's
    read_only_sql_transaction (SQLSTATE 25006) or insufficient_privilege (42501), or SQLite's
    SQLITE_READONLY (any variant)."""
    if orig is None:
        return False
    codes = (getattr(orig, "sqlstate", None), getattr(orig, "pgcode", None))
    if any(code in _READ_ONLY_SQLSTATES for code in codes):
        return True
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str) and name.startswith("SQLITE_READONLY"):
        return True
    return "readonly database" in str(orig).lower()


# The database's storage failed a write: SQLite's SQLITE_IOERR (its volume went read-only
# under it after an error, as ext4 with errors=remount-ro does, or the device fails),
# PostgreSQL's io_error (SQLSTATE 58030). Not an address to check, and not brief.
DATABASE_IO_ERROR = (
    "database-io-error",
    "The database's storage failed a write (an I/O error: a failing or read-only volume); "
    "check the volume and the kernel log, then retry",
)


def database_io_error(orig: object) -> bool:
    """Whether a driver error is an I/O error of the database's storage (SQLite's
    SQLITE_IOERR, any variant but SHMSIZE, which is a full disk; PostgreSQL's 58030)."""
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) == "58030":
        return True
    name = getattr(orig, "sqlite_errorname", None)
    return isinstance(name, str) and name.startswith("SQLITE_IOERR")


def _problem_of(orig: object) -> tuple[str, str] | None:
    """The (code, title) a driver error names: full, read-only, an I/O error; else None."""
    if _out_of_space(orig):
        return DATABASE_FULL
    if database_read_only(orig):
        return DATABASE_READ_ONLY
    if database_io_error(orig):
        return DATABASE_IO_ERROR
    return None


def _problem_in_chain(exc: BaseException) -> tuple[BaseException, tuple[str, str]] | None:
    """The first error along ``exc``'s chain (causes, then contexts) whose driver error is a
    database problem (:func:`_problem_of`), with that problem; None when there is none."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        problem = _problem_of(getattr(current, "orig", None))
        if problem is not None:
            return current, problem
        current = current.__cause__ or current.__context__
    return None


def database_problem(exc: BaseException) -> tuple[str, str] | None:
    """The (code, title) of a database error that stops the service storing anything (full,
    read-only, an I/O error of its storage), looked for along ``exc``'s chain; None for any
    other error."""
    found = _problem_in_chain(exc)
    return None if found is None else found[1]


class DatabaseNotWritableError(AppError):
    """GET /readyz: the database refused the last write as a whole (full, read-only)."""

    status_code = 503
    headers: dict[str, str]

    def __init__(self, problem: tuple[str, str], detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.code, self.title = problem
        self.headers = {"Retry-After": str(max(1, round(retry_after_s)))}


class ServiceBusyError(AppError):
    """A bounded queue (RADLENS_MAX_QUEUED_PREDICTIONS, RADLENS_MAX_QUEUED_WRITES) is full."""

    code = "service-busy"
    title = "The service has as much work queued as it accepts; retry after Retry-After seconds"
    comment = "radlens is busy: retry in a few seconds"  # DIMSE (no Retry-After there)
    status_code = 503
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


# models.errors codes -> HTTP status (RFC 9110 semantics: 415 for a media type the service
# does not handle, 422 for a well-formed upload whose content cannot be processed)
STATUS_BY_CODE: dict[str, int] = {
    "not-an-image": 415,
    "no-pixel-data": 422,
    "unsupported-transfer-syntax": 422,
    "image-too-large": 422,
    "truncated": 422,
    "invalid-image": 422,
    "malformed-dicom": 422,
    "codestream-mismatch": 422,
    "transfer-syntax-mismatch": 422,
    "invalid-rescale": 422,
    "blank-image": 422,
    "incomplete-pixel-header": 422,
    "preprocessing-error": 422,
    "model-not-found": 503,
    "model-corrupt": 503,
    "model-incompatible": 503,
    "model-store-error": 503,
    "model-tampered": 503,
    "model-unsigned": 503,
    "model-unsealed": 503,
    "runtime-unavailable": 503,
    "bad-configuration": 500,
}


def status_for(error: RadlensError) -> int:
    if isinstance(error, AppError):
        return error.status_code
    return STATUS_BY_CODE.get(error.code, 400)


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extensions,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def _radlens_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RadlensError)
    status = status_for(exc)
    logger.info("request failed: %s %s -> %d %s", request.method, _route(request), status, exc.code)
    return problem_response(
        request,
        status=status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        headers=getattr(exc, "headers", None),  # e.g. WWW-Authenticate, Retry-After
    )


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": ".".join(str(part) for part in error.get("loc", ())),
            "msg": error.get("msg", ""),
            "input": _short(error.get("input")),
        }
        for error in exc.errors()
    ]
    detail = "; ".join(
        f"{e['loc']}: {e['msg']}" + (f" (received {e['input']})" if e["input"] else "")
        for e in errors
    )
    return problem_response(
        request,
        status=422,
        code="invalid-request",
        title="The request is invalid; fix the fields listed in 'errors'",
        detail=detail or "the request did not match the API",
        errors=errors,
    )


_HTTP_TITLES = {
    400: ("bad-request", "The request could not be parsed; check its body and headers"),
    404: ("not-found", "No such resource; check the URL (the API is under /v1)"),
    405: ("method-not-allowed", "This method is not allowed here; see /docs for the API"),
    408: ("request-timeout", "The request body stopped arriving; send the whole request again"),
    413: (PayloadTooLargeError.code, PayloadTooLargeError.title),
    415: (UnsupportedMediaTypeError.code, UnsupportedMediaTypeError.title),
    503: (ServiceBusyError.code, ServiceBusyError.title),  # app/limits.py's UploadsBusy
}


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _HTTP_TITLES.get(exc.status_code, ("http-error", "The request failed"))
    detail = str(exc.detail) if exc.detail else title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.method} {request.url.path}"
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        allowed = allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            detail += f"; allowed: {headers['Allow']}"
    return problem_response(
        request,
        status=exc.status_code,
        code=code,
        title=title,
        detail=detail,
        headers=headers or None,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at the request's path, for a 405's ``Allow``.

    Starlette names only the first route whose path matches (``/v1/predictions`` has a POST and
    a GET route: it said POST). Here every path of the OpenAPI document is asked, and one that
    matches literally wins over one that matches through a path parameter
    (``/v1/predictions/dicom-sr`` is POST only: ``dicom-sr`` is no prediction id). Empty for a
    path the document does not describe (then Starlette's own ``Allow`` stays).
    """
    path = request.scope.get("path", request.url.path)
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    literal: set[str] = set()
    by_parameter: set[str] = set()
    for template, operations in (request.app.openapi().get("paths") or {}).items():
        if _path_pattern(template).fullmatch(path):
            found = by_parameter if "{" in template else literal
            found.update(method.upper() for method in operations if method.upper() in _METHODS)
    allowed = literal or by_parameter
    if "GET" in allowed:  # answered as GET without the body (app/head.py)
        allowed.add("HEAD")
    return [method for method in _METHODS if method in allowed]


@functools.lru_cache(maxsize=256)
def _path_pattern(template: str) -> re.Pattern[str]:
    """``/v1/predictions/{prediction_id}`` -> a regex matching one concrete path."""
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile(
        "".join(
            (".+" if part.endswith(":path}") else "[^/]+")
            if part.startswith("{")
            else re.escape(part)
            for part in parts
        )
    )


# nginx's "client closed request": the status recorded (metrics, audit trail, log) when the client
# goes away before its request body is complete. Nobody receives the answer; a 500 there would
# log a traceback and count as a server error for every client that aborts an upload.
CLIENT_CLOSED_REQUEST = 499


async def _client_disconnect_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClientDisconnect)
    logger.info(
        "request abandoned: %s %s -> %d (the client closed the connection before the body "
        "was complete)",
        request.method,
        _route(request),
        CLIENT_CLOSED_REQUEST,
    )
    return problem_response(
        request,
        status=CLIENT_CLOSED_REQUEST,
        code="client-disconnected",
        title="The connection closed before the request body was complete; send it again",
        detail="the client disconnected while the request body was being read",
    )


async def _database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    exc = _full_database_cause(exc)
    # Only the driver's own message: SQLAlchemy's text adds the statement and its parameters.
    orig = getattr(exc, "orig", None)
    reason = " ".join(str(orig).split())[:200] if orig is not None else ""
    kind = type(orig).__name__ if orig is not None else type(exc).__name__
    logger.warning("database error in %s %s: %s", request.method, _route(request), kind)
    detail = f"{kind}: {reason}" if reason else kind
    code, title = database_problem(exc) or (
        DatabaseUnavailableError.code,
        DatabaseUnavailableError.title,
    )
    _count_database_error(request, code)
    return problem_response(
        request, status=503, code=code, title=title, detail=detail, headers={"Retry-After": "1"}
    )


async def _database_refusal_handler(request: Request, exc: Exception) -> JSONResponse:
    """A database error other than OperationalError: a database that refuses writes
    (PostgreSQL read-only, SQLSTATE 25006, comes as InternalError) is a 503 like an outage;
    anything else (a bad statement: a bug) goes on to CatchAllMiddleware's 500."""
    if database_problem(exc) is None:
        raise exc
    return await _database_error_handler(request, exc)


def _count_database_error(request: Request, code: str) -> None:
    """Count a request the database failed (``radlens_database_errors_total{code}``)."""
    metrics = getattr(request.app.state, "metrics", None)
    counter = getattr(metrics, "database_errors", None)
    if counter is not None:
        counter.labels(code=code).inc()


def _out_of_space(orig: object) -> bool:
    """Whether a driver error says the database is out of space; SQLite that could not grow
    its -shm file (ENOSPC) says only "disk I/O error", with SQLITE_IOERR_SHMSIZE."""
    if orig is None:
        return False
    if getattr(orig, "sqlite_errorname", None) == "SQLITE_IOERR_SHMSIZE":
        return True
    return database_full(f"{type(orig).__name__}: {orig}")


def _full_database_cause(exc: Exception) -> Exception:
    """The error in ``exc``'s chain that says the database is full, read-only or failing, else
    ``exc``: SQLite rolls the whole transaction back on SQLITE_FULL, so leaving the savepoint
    the insert ran in fails next ("no such savepoint"), and that is the error that reaches the
    handler."""
    found = _problem_in_chain(exc)
    if found is not None and isinstance(found[0], Exception):
        return found[0]
    return exc


def install_error_handlers(app: FastAPI) -> None:
    from sqlalchemy.exc import DBAPIError, OperationalError

    app.add_exception_handler(OperationalError, _database_error_handler)
    app.add_exception_handler(DBAPIError, _database_refusal_handler)
    app.add_exception_handler(RadlensError, _radlens_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(ClientDisconnect, _client_disconnect_handler)


class CatchAllMiddleware:
    """Turn an unexpected exception into a 500 problem; log it without request data.

    Starlette's own last-resort handler re-raises after answering, which makes the server log
    the exception message (which may quote input); this one logs only the exception type, the
    route template and the stack frames, and does not re-raise.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _one_line_startup_failures(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            route = getattr(scope.get("route"), "path", "<unmatched>")
            frames = "".join(traceback.format_tb(exc.__traceback__))
            logger.error(
                "unexpected %s in %s %s (message withheld: it may quote input)\n%s",
                type(exc).__name__,
                scope.get("method"),
                route,
                frames,
            )
            if started:
                return
            request = Request(scope)
            response = problem_response(
                request,
                status=500,
                code="internal-error",
                title="Internal error in radlens; the error was logged, please report it",
                detail=f"unexpected {type(exc).__name__} while handling {route}",
            )
            await response(scope, receive, send)


def _one_line_startup_failures(send: Send) -> Send:
    """An expected start-up failure (missing model, database not migrated, ...) is reported
    to the server as one line, not a traceback; a bug keeps its traceback.

    Starlette sends ``lifespan.startup.failed`` from inside its ``except`` block, so the
    exception being handled is the one that stopped start-up.
    """

    async def wrapped(message: Message) -> None:
        if message["type"] == "lifespan.startup.failed":
            exc = sys.exc_info()[1]
            if isinstance(exc, RadlensError):
                message = {**message, "message": f"radlens: error: {exc}"}
        await send(message)

    return wrapped


def _route(request: Request) -> str:
    return getattr(request.scope.get("route"), "path", "<unmatched>")


def _short(value: Any, limit: int = 80) -> str:
    if value is None:
        return ""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NotAcceptableError(AppError):
    """406: no media type of the request's Accept header is one the resource can be sent as
    (RFC 9110 12.5.1; DICOMweb: PS3.18 8.7). Subclasses name what the resource is sent as."""

    code = "not-acceptable"
    title = (
        "None of the media types the Accept header lists can be sent; accept one the detail names"
    )
    status_code = 406

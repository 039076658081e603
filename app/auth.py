"""Authentication, authorisation, rate limiting and auditing of API requests.

Every /v1 route (and /dicomweb) depends on ``authorize``: the request must carry
``Authorization: Bearer <key>`` with an active key holding the scope the method needs —
``read`` for GET/HEAD/OPTIONS, ``predict`` for POST; no key may use any other method (no
route has one) — else 401 (with ``WWW-Authenticate: Bearer``) or 403. A known key's token
bucket is charged before its scope is checked, so a 403 (which writes an audit row) costs a
token too (429 with Retry-After when empty; app/ratelimit.py: in the database, shared by
replicas, unless RADLENS_RATE_LIMIT_STORE=memory). ``RADLENS_AUTH=disabled``
turns authentication off for development (logged as a warning at start-up); requests then
act as the anonymous principal with every scope.

The read routes also depend on ``audit``, which records each request's action and outcome in
the append-only audit trail (see app/audit.py for the transaction design). The upload routes
(``POST /v1/predictions``, ``/v1/predictions/dicom-sr``, STOW-RS) depend on ``audit_failure``
instead: each prediction's "prediction.create" row is written with it by the writer
(app/ingest.py), and only a failed request is recorded here. Both run after ``authorize``
and before the route reads the body: a request without a valid key is never parsed.
/healthz, /readyz and /metrics stay open (metrics hold counts, no identifiers).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from radlens.app import audit as audit_log
from radlens.app.db import READ_ONLY
from radlens.app.deps import SessionDep, get_resources
from radlens.app.errors import CLIENT_CLOSED_REQUEST, AppError, status_for
from radlens.app.keycache import KeyCache
from radlens.app.keys import SCOPES, authenticate, hash_key, key_id_of
from radlens.models.errors import RadlensError

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"

# A key's secret wherever it appears in text: ``rl_<key id>_`` and what follows it, its
# underscores percent-encoded too (``%5F`` in a query string: QA round 50)
_SECRET_IN_TEXT = re.compile(
    r"(rl(?:_|%5[fF])[0-9a-f]{12}(?:_|%5[fF]))(?:[A-Za-z0-9_-]|%[0-9A-Fa-f]{2})+"
)


def redact_keys(text: str) -> str:
    """``text`` with every API key's secret replaced (the public key id is kept)."""
    return _SECRET_IN_TEXT.sub(r"\1<redacted>", text) if "rl" in text else text


class RedactKeysFilter(logging.Filter):
    """Removes API key secrets from a log record's message and arguments.

    The key is read from the Authorization header only, but a client may still put it in the
    query string (``?api_key=``: a 401); uvicorn's access log (RADLENS_ACCESS_LOG=true) wrote
    that line, the secret of a valid key included, to the log (QA round 49).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_keys(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_keys(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_key_redaction() -> None:
    """Put :class:`RedactKeysFilter` on uvicorn's access logger (once; idempotent).

    Called when this module is imported, i.e. when ``create_app`` builds the app: uvicorn has
    configured its logging by then (in each worker too), and ``dictConfig`` leaves an existing
    logger's filters in place."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactKeysFilter) for f in access.filters):
        access.addFilter(RedactKeysFilter())


install_key_redaction()

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="rl_<key id>_<secret>",
    description="An API key from `radlens keys create`, sent as `Authorization: Bearer <key>`.",
)


class UnauthorizedError(AppError):
    code = "unauthorized"
    title = "Send a valid API key as 'Authorization: Bearer <key>' (see `radlens keys create`)"
    status_code = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": 'Bearer realm="radlens"'}


class ForbiddenError(AppError):
    code = "forbidden"
    title = "This API key lacks the scope this request needs; use a key that has it"
    status_code = 403


class RateLimitedError(AppError):
    code = "rate-limited"
    title = "Too many requests for this API key; retry after the Retry-After seconds"
    status_code = 429

    def __init__(self, detail: str, retry_after: str) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": retry_after}


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (id, name, scopes) or the anonymous development user."""

    key_id: str | None
    name: str
    scopes: frozenset[str]


def required_scope(method: str) -> str | None:
    """The scope ``method`` needs; None: no key may use it (the app has no such route)."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if method == "POST":
        return "predict"
    return None


def _route_path(request: Request) -> str:
    return str(getattr(request.scope.get("route"), "path", request.url.path))


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """Authenticate the bearer key, check its scope, charge its rate limit.

    ``async``: a key found in the in-process cache (app/keycache.py) costs no thread hop and
    no database round trip; only a cache miss looks the key up, in the thread pool.
    """
    settings = request.app.state.settings
    if settings.auth == "disabled":
        return await admit(request, Principal(None, ANONYMOUS, frozenset(SCOPES)), scoped=False)
    return await admit(request, await authenticate_bearer(request, credentials))


async def admit(request: Request, principal: Principal, *, scoped: bool = True) -> Principal:
    """What a request of a known key goes through (the API's bearer key here, the /ui
    session's key in app/ui/routes.py): charge its rate limit, then check the scope the
    method needs (``scoped``; not with RADLENS_AUTH=disabled). A refusal is audited and
    raised as ForbiddenError."""
    needed = required_scope(request.method) if scoped else None
    denied = scoped and (needed is None or needed not in principal.scopes)
    # A known key is charged before its scope is checked: a refusal (403) writes an audit
    # row, so an uncharged 403 let a key with the wrong scope write rows to the append-only
    # table as fast as it could send requests (QA round 49: 998 rows in 10 s under a
    # 600-per-minute limit); over its allowance it gets the 429, which is not audited.
    await _charge(request, principal)
    if denied:
        await run_in_threadpool(_record_denied, request, principal)
        raise ForbiddenError(
            f"key {principal.key_id!r} ({principal.name}) has scopes "
            f"{','.join(sorted(principal.scopes))}; {request.method} {_route_path(request)} "
            + (f"needs {needed!r}" if needed else "is not open to any key")
        )
    request.state.principal = principal
    return principal


async def _charge(request: Request, principal: Principal) -> None:
    """Take one token from the key's bucket (app/ratelimit.py); RateLimitedError when empty."""
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    key = principal.key_id or ANONYMOUS
    # the database limiter is a round trip (a thread); the in-memory one is not
    wait = (
        await run_in_threadpool(limiter.acquire, key) if limiter.blocking else limiter.acquire(key)
    )
    if wait is not None:
        retry_after = limiter.retry_after_header(wait)
        logger.warning("rate limited: key %s", key)
        raise RateLimitedError(
            f"key {key!r} is over {request.app.state.settings.rate_limit_per_minute} requests "
            f"per minute; retry in {retry_after} s",
            retry_after,
        )


def key_cache(request: Request) -> KeyCache[Principal]:
    """The app's cache of authenticated keys (built on first use from the settings)."""
    cache: KeyCache[Principal] | None = getattr(request.app.state, "key_cache", None)
    if cache is None:
        cache = KeyCache(float(getattr(request.app.state.settings, "auth_cache_ttl_s", 0.0)))
        request.app.state.key_cache = cache
    return cache


async def authenticate_bearer(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The principal of a bearer key (cached, else looked up), with no scope check and no
    rate limit: :func:`authorize` adds those for the API; the /ui login checks the key
    itself (app/ui/routes.py). Raises UnauthorizedError saying what is wrong with the key."""
    if len(request.headers.getlist("authorization")) > 1:
        # one field, never a list (RFC 9110 11.6.2): the first was taken, where a proxy in
        # front may have checked another
        raise UnauthorizedError(
            "the request has more than one Authorization header; send exactly one"
        )
    if credentials is None:
        header = request.headers.get("authorization")
        if header is None:
            raise UnauthorizedError("the request has no Authorization header")
        scheme = header.split(" ", 1)[0]
        if scheme.lower() == "bearer":
            raise UnauthorizedError("the Authorization header has the Bearer scheme but no key")
        if key_id_of(scheme) is not None or len(scheme) > 20 or not scheme.isalpha():
            # a key sent without "Bearer " (or another secret): never echo any of it
            raise UnauthorizedError(
                "the Authorization header has no scheme: send 'Authorization: Bearer <key>'"
            )
        raise UnauthorizedError(f"the Authorization scheme is {scheme!r}; expected 'Bearer'")
    token = credentials.credentials.strip()
    key_id = key_id_of(token)
    if key_id is None:
        # Never echo the token: it may be a real secret pasted in the wrong place.
        raise UnauthorizedError(
            f"the bearer token is not a radlens key (expected rl_<key id>_<secret>, "
            f"received {len(token)} characters)"
        )
    cache = key_cache(request)
    token_hash = hash_key(token) if cache.enabled else ""
    principal = cache.get(token_hash)
    if principal is None:
        principal = await run_in_threadpool(_look_up, request, token)
        if principal is None:
            raise UnauthorizedError(f"key {key_id!r} is unknown or revoked")
        cache.put(token_hash, principal)
    return principal


def _look_up(request: Request, token: str) -> Principal | None:
    with get_resources(request).sessionmaker() as session:
        # Only reads: on SQLite a WAL snapshot that never queues behind the writers.
        session.connection(execution_options=READ_ONLY)
        row = authenticate(session, token)
        return None if row is None else Principal(row.key_id, row.name, row.scope_set)


def _record_denied(request: Request, principal: Principal) -> None:
    _record_apart(
        request,
        actor=principal.key_id,
        action="auth.denied",
        target=f"{request.method} {_route_path(request)}",
        status=ForbiddenError.status_code,
    )


def _record_apart(request: Request, **fields: object) -> None:
    """Write one audit row in its own transaction; a failure is logged, never raised."""
    try:
        sessionmaker = get_resources(request).sessionmaker
    except RadlensError as exc:  # start-up has not finished
        logger.warning("audit row not written: %s", type(exc).__name__)
        return
    audit_log.record_apart(sessionmaker, **fields)


_ACTIONS = {
    ("POST", "/v1/predictions"): audit_log.PREDICTION_CREATE,
    ("GET", "/v1/predictions"): "prediction.list",
    ("GET", "/v1/predictions/{prediction_id}"): "prediction.read",
    ("DELETE", "/v1/predictions/{prediction_id}"): "prediction.delete",
}


def action_name(method: str, route_path: str) -> str:
    return _ACTIONS.get((method, route_path), f"{method} {route_path}")


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, RadlensError):
        return status_for(exc)
    if isinstance(exc, RequestValidationError):
        return 422
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    if isinstance(exc, OperationalError):
        return 503
    if isinstance(exc, ClientDisconnect):
        return CLIENT_CLOSED_REQUEST
    return 500


async def audit(request: Request, response: Response, session: SessionDep) -> AsyncIterator[None]:
    """Record the request's action and outcome (see app/audit.py for the design).

    ``async``: on success the row is only added to the request's session (no I/O on the
    event loop); the session dependency's commit, in the same thread-pool call as the rest
    of the transaction's end, flushes and commits it. A failure is recorded in the pool.
    """
    principal: Principal | None = getattr(request.state, "principal", None)
    actor = principal.key_id if principal is not None else None
    path = _route_path(request)
    action = action_name(request.method, path)
    try:
        yield
    except Exception as exc:
        await run_in_threadpool(_rollback_and_record, session, request, action, actor, exc)
        raise
    status = response.status_code or _declared_status(request)
    audit_log.add(
        session,
        actor=actor,
        action=action,
        target=_target(request, response),
        query=_query(request, action),
        status=status,
    )


async def audit_failure(request: Request) -> AsyncIterator[None]:
    """For the upload routes: record a failed request (its own short transaction); a
    success's "prediction.create" rows are the writer's (app/ingest.py). No session, so the
    upload's hot path pays no thread hop for it."""
    try:
        yield
    except Exception as exc:
        await record_outcome(request, _status_of(exc))
        raise


async def record_outcome(request: Request, status: int) -> None:
    """Record an upload request's failed outcome in its own transaction: an error, or a
    STOW-RS answer in which some instances failed (202, 409)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    action = action_name(request.method, _route_path(request))
    await run_in_threadpool(
        _record_apart,
        request,
        actor=principal.key_id if principal is not None else None,
        action=action,
        target=_target(request, None),
        query=_query(request, action),
        status=status,
    )


def _rollback_and_record(
    session: Session, request: Request, action: str, actor: str | None, exc: Exception
) -> None:
    _rollback(session)
    _record_apart(
        request,
        actor=actor,
        action=action,
        target=_target(request, None),
        query=_query(request, action),
        status=_status_of(exc),
    )


def _rollback(session: Session) -> None:
    # Release the request's write lock (SQLite) before the failure row is written apart.
    # If the connection is gone the rollback fails too; the failure row is then best effort.
    with contextlib.suppress(SQLAlchemyError):
        session.rollback()


def _declared_status(request: Request) -> int:
    return int(getattr(request.scope.get("route"), "status_code", None) or 200)


def _target(request: Request, response: Response | None) -> str | None:
    prediction_id = request.path_params.get("prediction_id")
    if prediction_id is not None:
        return str(prediction_id)[:64]
    if response is not None:
        location = response.headers.get("location")
        if location:
            return location.rstrip("/").rsplit("/", 1)[-1][:64]
    return None


def _query(request: Request, action: str) -> str | None:
    if action != "prediction.list":
        return None
    return audit_log.minimal_query(request.query_params.multi_items())


PrincipalDep = Annotated[Principal, Depends(authorize)]
AUTHORIZED = [Depends(authorize)]
AUDITED = [Depends(authorize), Depends(audit, scope="function")]
UPLOADS = [Depends(authorize), Depends(audit_failure, scope="function")]

"""The /ui session: a random token in a cookie, its hash in the database; CSRF tokens for forms.

The browser logs in with an API key (the same keys as the REST API, app/keys.py). The login
stores a row in ``ui_sessions`` (app/security_tables.py, migration 0017) and sets the
``radlens_session`` cookie to a random token (``secrets.token_urlsafe(32)``, 256 bits) that
holds nothing else: not the key, not a time. The row keeps the token's sha256 (never the
token: a copy of the table opens no session), the id of the key (never the key) and when the
session began, expires (``RADLENS_UI_SESSION_MINUTES`` later) and was ended. Every /ui request
looks the token up: no row, an expired or ended one, or a key revoked since is no session, and
the key's scopes are checked again as the API checks them (app/ui/routes.py). So a stolen cookie
is no API key, its expiry is the server's and cannot be rewritten, and "Log out" ends the row:
every copy of the cookie stops working, on every replica sharing the database.

Whose clock: the database's. A session's begin and expiry are computed by the INSERT and its
expiry compared by the lookup's SELECT, on the database server (PostgreSQL ``now()``; SQLite
the host's clock, one file on one host), never with a replica's clock: replicas whose clocks
differ agree on every session. A token is 43 URL-safe characters; anything else in the cookie
is refused before any query. The lookup is by the token's sha256, the primary key: an index
search that reveals nothing about a token that is not a stored one's preimage.

Expired rows are deleted at each login, in its transaction, and an expired session's row at
its logout: the table holds the sessions begun in the last ``RADLENS_UI_SESSION_MINUTES``.
Revoking a key deletes its sessions (app/keys.py ``revoke_key``). A login and a revocation of
its key are exclusive (QA 82): the login checks the key again inside the transaction that
inserts the session, under a lock on the key's row that the revocation's ``FOR UPDATE`` waits
for (and the other way round), so either the login is refused or its session is deleted by the
revocation; before, a login racing the revocation began a session that was refused as "revoked"
until it expired. Two logins at once never wait for
each other (QA 62: on PostgreSQL each locked the expired session its browser held, then waited
for the other's in its cleanup: a deadlock, one login's 503): a login ends its browser's
previous session only while it is live (an expired one is refused anyway), and its cleanup
deletes only the expired rows no other transaction holds (``FOR UPDATE SKIP LOCKED``; a row
skipped goes at a later login). A logout ends a live session; an expired one's row it deletes
the same way, never updating it (QA 68: the UPDATE locked it, and waited for a login's cleanup
holding it). SQLite serialises the writers.

CSRF: every form carries a hidden ``csrf_token`` that must equal the ``radlens_csrf`` cookie
(random, HttpOnly, SameSite=Strict; a new one at each login). A page of another site can
neither read that cookie nor make the browser send it, so it cannot forge the field.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from radlens.app.security_tables import ApiKey, UiSession

SESSION_COOKIE = "radlens_session"
CSRF_COOKIE = "radlens_csrf"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/ui"
TOKEN_BYTES = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32): 43 characters, ASCII
_SQLITE_TIME = "%Y-%m-%d %H:%M:%f"  # the text form UTCDateTime stores on SQLite (UTC)


@dataclass(frozen=True)
class SessionKey:
    """The key behind a live session, as stored now."""

    key_id: str
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Lookup:
    """A session's key, or why there is none: ``expired`` (also: no such session), ``ended``
    (logged out) or ``revoked`` (its key)."""

    key: SessionKey | None
    reason: str = ""


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(value: str | None) -> str | None:
    """The sha256 (hex) of a well-formed session token; None for anything else."""
    if not value or len(value) != 43 or _TOKEN.fullmatch(value) is None:
        return None
    return hashlib.sha256(value.encode("ascii")).hexdigest()


def _now(session: Session, minutes: int = 0) -> ColumnElement[Any]:
    """The database's current time (plus ``minutes``), as an SQL expression."""
    if session.get_bind().dialect.name == "sqlite":
        return func.strftime(_SQLITE_TIME, "now", f"+{int(minutes)} minutes")
    now: ColumnElement[Any] = func.now()
    return now + timedelta(minutes=minutes) if minutes else now


def start(
    session: Session, key_id: str, *, minutes: int, replacing: str | None = None
) -> str | None:
    """Store a new session of ``key_id`` lasting ``minutes``; returns its token (the cookie's
    value, never stored), or None when the key is revoked (or gone) by now. Ends the session the
    browser held before (``replacing``: its token's digest) if it is still live, and deletes the
    expired ones no other transaction holds (an indexed range; module docstring).

    The key is checked again here, first, in this transaction and under a lock on its row
    (``FOR SHARE`` on PostgreSQL; SQLite's transactions hold the write lock from their BEGIN
    IMMEDIATE): a revocation (app/keys.py ``revoke_key``, which locks the row ``FOR UPDATE``)
    either committed before, and the login is refused, or waits for this commit and then
    deletes the session begun here. Before QA 82 the key was checked by the login's
    authentication only (a separate transaction, or the key cache), and a login racing the
    revocation began a session that outlived it."""
    active = session.execute(
        select(ApiKey.key_id)
        .where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
        .with_for_update(read=True)  # PostgreSQL FOR SHARE; SQLite renders none
    ).one_or_none()
    if active is None:
        return None
    if replacing is not None:
        session.execute(
            update(UiSession)
            .where(
                UiSession.token_sha256 == replacing,
                UiSession.ended_at.is_(None),
                UiSession.expires_at > _now(session),
            )
            .values(ended_at=_now(session))
        )
    expired = (
        select(UiSession.token_sha256)
        .where(UiSession.expires_at <= _now(session))
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders none (one writer)
    )
    session.execute(delete(UiSession).where(UiSession.token_sha256.in_(expired.scalar_subquery())))
    token = new_token()
    session.execute(
        insert(UiSession).values(
            token_sha256=token_digest(token),
            key_id=key_id,
            created_at=_now(session),
            expires_at=_now(session, minutes),
        )
    )
    return token


def look_up(session: Session, digest: str) -> Lookup:
    """The key of the session whose token hashes to ``digest``, if it is live."""
    row = session.execute(
        select(
            UiSession.ended_at,
            (UiSession.expires_at > _now(session)).label("live"),
            ApiKey.key_id,
            ApiKey.name,
            ApiKey.scopes,
            ApiKey.revoked_at,
        )
        .join(ApiKey, ApiKey.key_id == UiSession.key_id)
        .where(UiSession.token_sha256 == digest)
    ).one_or_none()
    if row is None or not row.live:
        return Lookup(None, "expired")
    if row.ended_at is not None:
        return Lookup(None, "ended")
    if row.revoked_at is not None:
        return Lookup(None, "revoked")
    scopes = frozenset(s for s in str(row.scopes).split(",") if s)
    return Lookup(SessionKey(str(row.key_id), str(row.name), scopes))


def end(session: Session, digest: str) -> None:
    """Log out of the session whose token hashes to ``digest``; unknown: nothing.

    A live session is ended (its row marked, so every copy of the cookie is refused as
    "ended"). An expired one is refused anyway: its row is deleted, unless another transaction
    holds it (a login's clean-up deleting it), which is skipped, never waited for. It is not
    updated, so no lock is taken on it for that (QA 62/68: an UPDATE locked the expired row of
    every logout, and a login's clean-up then skipped it or, before SKIP LOCKED, waited)."""
    session.execute(
        update(UiSession)
        .where(
            UiSession.token_sha256 == digest,
            UiSession.ended_at.is_(None),
            UiSession.expires_at > _now(session),
        )
        .values(ended_at=_now(session))
    )
    expired = (
        select(UiSession.token_sha256)
        .where(UiSession.token_sha256 == digest, UiSession.expires_at <= _now(session))
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders none (one writer)
    )
    session.execute(delete(UiSession).where(UiSession.token_sha256.in_(expired.scalar_subquery())))


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_valid(cookie: str | None, submitted: object) -> bool:
    """The form's token equals the cookie's (constant-time); both must be present."""
    if not cookie or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())

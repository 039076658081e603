"""API keys: creation, lookup in constant time, revocation (with the key's /ui sessions).

A key is ``rl_<key id>_<secret>``: the key id (12 hex characters) is public and used to find
the row; the secret is 32 random bytes (``secrets.token_urlsafe``). With that much entropy a
single sha256 of the whole key is the right stored form (no slow password hash is needed:
nothing can be guessed), and it is compared with ``hmac.compare_digest``.

Services flush and never commit; the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from radlens.app.db import utcnow
from radlens.app.errors import AppError
from radlens.app.security_tables import KEY_ID_LENGTH, ApiKey, UiSession

SCOPES = ("predict", "read")
# "admin" guarded no route (every route is GET/HEAD or POST): it was removed rather than kept
# as a scope that promises a protection nothing enforces. Keys stored with it keep working.
REMOVED_SCOPES = {"admin": "no route needs it: read (GET) and predict (POST) cover every route"}
KEY_PREFIX = "rl_"
_KEY = re.compile(rf"^rl_([0-9a-f]{{{KEY_ID_LENGTH}}})_([A-Za-z0-9_-]{{43}})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")


class InvalidKeyRequestError(AppError):
    code = "invalid-key-request"
    title = "The API key request is invalid; check the name and scopes"
    status_code = 422


class KeyNotFoundError(AppError):
    code = "key-not-found"
    title = "No such API key; list them with `radlens keys list`"
    status_code = 404


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: ``secret`` is the full key, shown once and never stored."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    secret: str
    created_at: datetime


def parse_scopes(text: str) -> tuple[str, ...]:
    """``"predict,read"`` -> ``("predict", "read")`` (sorted, unique); unknown scopes refused."""
    scopes = sorted({part.strip().lower() for part in text.split(",") if part.strip()})
    removed = [s for s in scopes if s in REMOVED_SCOPES]
    if removed:
        raise InvalidKeyRequestError(
            f"the {removed[0]!r} scope was removed ({REMOVED_SCOPES[removed[0]]}); scopes must "
            f"be a comma-separated subset of {','.join(SCOPES)}. Received: {text!r}"
        )
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise InvalidKeyRequestError(
            f"scopes must be a comma-separated subset of {','.join(SCOPES)}. Received: {text!r}"
        )
    return tuple(scopes)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(token: str) -> str | None:
    """The public key id of a well-formed key, else None (nothing else is read from it)."""
    match = _KEY.match(token)
    return match.group(1) if match else None


def create_key(session: Session, *, name: str, scopes: str | tuple[str, ...]) -> NewKey:
    """Store a new key's hash and return the key (the only time it is visible)."""
    if not _NAME.match(name):
        raise InvalidKeyRequestError(
            "name must be 1-64 letters, digits, spaces or ._@- and start with a letter or "
            f"digit. Received: {name!r}"
        )
    parsed = parse_scopes(scopes) if isinstance(scopes, str) else parse_scopes(",".join(scopes))
    key_id = secrets.token_hex(KEY_ID_LENGTH // 2)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        key_id=key_id,
        name=name,
        scopes=",".join(parsed),
        key_sha256=hash_key(secret),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return NewKey(key_id, name, parsed, secret, row.created_at)


def authenticate(session: Session, token: str) -> ApiKey | None:
    """The active key matching ``token``, or None (unknown, malformed or revoked)."""
    key_id = key_id_of(token)
    if key_id is None:
        return None
    row = session.get(ApiKey, key_id)
    # Hash and compare even when there is no row, so timing does not tell ids apart.
    stored = row.key_sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(hash_key(token), stored) or row is None:
        return None
    if row.revoked_at is not None:
        return None
    return row


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.key_id)))


@dataclass(frozen=True)
class Revocation:
    """A revoked key and the number of its /ui sessions deleted with it."""

    key: ApiKey
    ui_sessions: int


def revoke_key(session: Session, key_id: str) -> Revocation:
    """Mark a key revoked (idempotent); it stops working on the next request. What only the
    key used goes with it, in the same transaction (the caller's, which audits the revocation):
    its rate-limit bucket (app/ratelimit.py, keyed by the key id: a revoked key is never
    charged again, so the row would only linger) and its /ui sessions (``ui_sessions``: a
    revoked key's session is refused anyway, so its row, the hash of a browser's token, would
    only wait for its expiry). A key revoked before is revoked again without a new time: the
    sessions a login racing its revocation began are deleted then.

    The key's row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite's BEGIN IMMEDIATE holds
    the write lock): a login beginning a session for it (app/ui/session.py ``start``, which
    locks the row ``FOR SHARE``) either committed before, and its session is deleted here, or
    waits for this commit and is then refused (QA 82)."""
    from radlens.app.ratelimit import RateLimitBucket

    row = session.get(ApiKey, key_id.strip(), with_for_update=True, populate_existing=True)
    if row is None:
        raise KeyNotFoundError(f"no API key with id {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.execute(delete(RateLimitBucket).where(RateLimitBucket.key == row.key_id))
    ended = session.execute(delete(UiSession).where(UiSession.key_id == row.key_id))
    session.flush()
    return Revocation(row, int(getattr(ended, "rowcount", 0) or 0))

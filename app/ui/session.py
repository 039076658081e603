"""The /ui session: the API key in a cookie, and CSRF tokens for every form.

The browser logs in with an API key (the same keys as the REST API, app/keys.py). The key is
kept in the ``radlens_session`` cookie as ``<issued at, Unix seconds>.<key>``: HttpOnly (no
script can read it), SameSite=Strict (no other site's page sends it), Secure when
``RADLENS_UI_SECURE_COOKIES`` is set (HTTPS deployments), and no longer than
``RADLENS_UI_SESSION_MINUTES``: an older cookie is an expired session, whatever the browser
kept. Each request authenticates the key again (app/auth.py), so a revoked key ends every
session that holds it.

CSRF: every form carries a hidden ``csrf_token`` that must equal the ``radlens_csrf`` cookie
(random, HttpOnly, SameSite=Strict; a new one at each login). A page of another site can
neither read that cookie nor make the browser send it, so it cannot forge the field.
"""

from __future__ import annotations

import hmac
import secrets
import time

SESSION_COOKIE = "radlens_session"
CSRF_COOKIE = "radlens_csrf"
CSRF_FIELD = "csrf_token"
COOKIE_PATH = "/ui"
ISSUED_DIGITS = 12  # the most digits a session's issue time (Unix seconds) may have


def session_value(key: str, now: float | None = None) -> str:
    """The session cookie's value for ``key``, issued ``now``."""
    issued = int(time.time() if now is None else now)
    return f"{issued}.{key}"


def session_key(value: str | None, *, max_age_s: float, now: float | None = None) -> str | None:
    """The API key of a session cookie still within ``max_age_s``; None when absent,
    malformed or expired."""
    if not value:
        return None
    issued_text, dot, key = value.partition(".")
    # ASCII digits, at most 12 (Unix seconds have 10 until the year 2286): str.isdigit also
    # takes "²" and other digits int() refuses, and int() refuses more than 4300 digits; each
    # was a 500 for a cookie anyone can send (QA round 49)
    if (
        not dot
        or not key
        or not issued_text.isascii()
        or not issued_text.isdigit()
        or len(issued_text) > ISSUED_DIGITS
    ):
        return None
    age = (time.time() if now is None else now) - int(issued_text)
    if age < 0 or age > max_age_s:
        return None
    return key


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_valid(cookie: str | None, submitted: object) -> bool:
    """The form's token equals the cookie's (constant-time); both must be present."""
    if not cookie or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())

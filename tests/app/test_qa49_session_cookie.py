"""A /ui session cookie that is not a token this service issues is no session (a redirect to
the login form), never a 500, and is refused before any query. QA round 49 found three 500s
from one forged cookie (its issue time: ``str.isdigit`` accepted superscripts and other
Unicode digits that ``int()`` refuses, and ``int()`` refuses more than 4300 digits); since QA 52
the cookie holds only a random token (app/ui/session.py), and the forged forms stay refused."""

from __future__ import annotations

import base64
import hashlib

import pytest

from radlens.app.ui import session as ui_session
from tests.app.conftest import Service, TestClient

KEY = "rl_0123456789ab_" + "A" * 43
FORGED = [
    f"\u00b2.{KEY}",
    f"\u00b9\u00b2\u00b3.{KEY}",
    f"{'1' * 5000}.{KEY}",
    f"{'1' * 13}.{KEY}",
    KEY,
    "\u0661" * 43,  # Arabic-Indic digits: 43 characters, none ASCII
    "A" * 42 + "\u00b2",
    "A" * 42,
    "A" * 44,
]


@pytest.mark.parametrize(
    "value", FORGED, ids=["sup2", "sup123", "5000", "13", "key", "arabic", "sup-end", "42", "44"]
)
def test_a_forged_cookie_is_no_token(value: str) -> None:
    assert ui_session.token_digest(value) is None


def test_a_token_of_the_service_is_one() -> None:
    # every token the service issues is accepted, and its digest is the token's sha256 (what
    # the table stores): tokens of the alphabet's edges ("-" and "_" first) and random ones
    edges = [
        base64.urlsafe_b64encode(bytes([b]) * ui_session.TOKEN_BYTES).rstrip(b"=").decode()
        for b in (0x00, 0xFB, 0xFF)  # "AAA...A", "-_v7...s", "___...8"
    ]
    assert any(t.startswith("-") for t in edges) and any(t.startswith("_") for t in edges)
    for token in [*edges, *(ui_session.new_token() for _ in range(500))]:
        assert len(token) == 43, token
        digest = ui_session.token_digest(token)
        assert digest == hashlib.sha256(token.encode("ascii")).hexdigest(), token


def test_the_pages_redirect_a_forged_cookie_to_the_login_form(service: Service) -> None:
    client = TestClient(service.app, follow_redirects=False)
    for value in (f"\u00b2.{KEY}", f"{'1' * 5000}.{KEY}", "A" * 42 + "\u00b2"):
        # the header as a browser (or anyone) may send it: latin-1 bytes
        cookie = f"{ui_session.SESSION_COOKIE}={value}".encode("latin-1")
        response = client.get("/ui/predictions", headers={"Cookie": cookie})
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/ui/login")

"""A /ui session cookie whose issue time is not plain ASCII digits is no session (a redirect
to the login form), never a 500: ``str.isdigit`` accepted superscripts and other Unicode
digits that ``int()`` refuses, and ``int()`` refuses more than 4300 digits (QA round 49, a
live service: three 500s from one forged cookie each)."""

from __future__ import annotations

import pytest

from radlens.app.ui import session as ui_session
from tests.app.conftest import Service, TestClient

KEY = "rl_0123456789ab_" + "A" * 43
FORGED_ISSUE_TIMES = ["\u00b2", "\u00b9\u00b2\u00b3", "\u0661\u0662\u0663", "1" * 5000, "1" * 13]


@pytest.mark.parametrize(
    "issued", FORGED_ISSUE_TIMES, ids=["sup2", "sup123", "arabic", "5000", "13"]
)
def test_a_forged_issue_time_is_no_session(issued: str) -> None:
    assert ui_session.session_key(f"{issued}.{KEY}", max_age_s=10**12) is None


def test_a_valid_cookie_still_opens_a_session() -> None:
    value = ui_session.session_value(KEY, now=1_800_000_000)
    assert ui_session.session_key(value, max_age_s=60, now=1_800_000_030) == KEY
    assert ui_session.session_key(value, max_age_s=60, now=1_800_000_061) is None


def test_the_pages_redirect_a_forged_cookie_to_the_login_form(service: Service) -> None:
    client = TestClient(service.app, follow_redirects=False)
    for issued in ("\u00b2", "1" * 5000):
        # the header as a browser (or anyone) may send it: latin-1 bytes
        cookie = f"{ui_session.SESSION_COOKIE}={issued}.{KEY}".encode("latin-1")
        response = client.get("/ui/predictions", headers={"Cookie": cookie})
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/ui/login")

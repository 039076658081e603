"""/ui sessions across replicas whose clocks differ by seconds (QA 47): a session cookie
issued by one replica is taken by another whose clock is behind, right after the login's
redirect, and still lasts its RADLENS_UI_SESSION_MINUTES less at most a minute."""

from __future__ import annotations

import re
import time

from tests.app.conftest import Service


def _session_cookie(service: Service) -> str:
    client = service.client
    client.cookies.clear()
    try:
        page = client.get("/ui/login")
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, page.text
        response = client.post(
            "/ui/login",
            data={"csrf_token": match.group(1), "api_key": service.api_key or ""},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        value = response.cookies.get("radlens_session")
        assert value, response.headers
        return value
    finally:
        client.cookies.clear()


def test_a_replica_whose_clock_is_behind_takes_a_new_session(service: Service) -> None:
    from radlens.app.ui import session as ui_session

    value = _session_cookie(service)
    max_age = service.app.state.settings.ui_session_minutes * 60
    now = time.time()
    # the replica that issued it, and one 30 s behind (the login's redirect lands there)
    assert ui_session.session_key(value, max_age_s=max_age, now=now) is not None
    assert ui_session.session_key(value, max_age_s=max_age, now=now - 30) is not None
    # ... and the session still lasts its length, less at most the minute of leeway
    assert ui_session.session_key(value, max_age_s=max_age, now=now + max_age - 61) is not None


def test_the_leeway_is_at_most_a_quarter_of_a_short_session() -> None:
    from radlens.app.ui.routes import session_clock_leeway_s

    assert session_clock_leeway_s(480) == 60
    assert session_clock_leeway_s(1) == 15

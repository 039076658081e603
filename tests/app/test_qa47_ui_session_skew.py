"""/ui sessions across replicas whose clocks differ (QA 47): a session begun on one replica is
taken by another whose clock is behind, right after the login's redirect, or ahead, and lasts
its RADLENS_UI_SESSION_MINUTES. Since QA 52 the database's clock decides (app/ui/session.py):
the session's begin and expiry are computed and compared by the database server, so no
replica's clock is read and no leeway is needed."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest

from tests.app.conftest import Service, TestClient


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


def test_a_replica_whose_clock_is_off_takes_a_new_session(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = _session_cookie(service)
    max_age = service.app.state.settings.ui_session_minutes * 60
    client = TestClient(service.app, follow_redirects=False)
    real = time.time
    # a replica 30 s behind the one that logged in, and ones ahead by nearly the session's
    # length and by more than it: the session is a minute old by the database's clock
    for offset in (-30, max_age - 61, max_age + 3600):
        monkeypatch.setattr(time, "time", lambda offset=offset: real() + offset)
        response = client.get("/ui/predictions", headers={"Cookie": f"radlens_session={value}"})
        monkeypatch.setattr(time, "time", real)
        assert response.status_code == 200, (offset, response.headers.get("location"))


def test_a_session_lasts_its_minutes_by_the_database_clock(service: Service) -> None:
    from sqlalchemy import select

    from radlens.app.security_tables import UiSession
    from radlens.app.ui.session import token_digest

    value = _session_cookie(service)
    with service.app.state.resources.sessionmaker() as session:
        row = session.scalars(
            select(UiSession).where(UiSession.token_sha256 == token_digest(value))
        ).one()
    minutes = service.app.state.settings.ui_session_minutes
    assert row.expires_at - row.created_at == timedelta(minutes=minutes)

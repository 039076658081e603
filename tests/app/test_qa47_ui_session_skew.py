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


def _replica_clock(monkeypatch: pytest.MonkeyPatch, offset_s: float) -> None:
    """This process (the replica taking the request) reads a clock ``offset_s`` off: time.time
    and the service's ``utcnow`` wherever a radlens module holds it. QA 63: the session code
    reads neither (the database's clock decides); were it to, the tests below would see it."""
    import sys

    from radlens.app import db

    real_time, real_utcnow = time.time, db.utcnow
    monkeypatch.setattr(time, "time", lambda: real_time() + offset_s)
    monkeypatch.setattr(time, "time_ns", lambda: int((real_time() + offset_s) * 1e9))
    for name, module in list(sys.modules.items()):
        if name.startswith("radlens.") and getattr(module, "utcnow", None) is real_utcnow:
            monkeypatch.setattr(
                module, "utcnow", lambda: real_utcnow() + timedelta(seconds=offset_s)
            )


def _page(service: Service, value: str) -> tuple[int, str]:
    client = TestClient(service.app, follow_redirects=False)
    response = client.get("/ui/predictions", headers={"Cookie": f"radlens_session={value}"})
    return response.status_code, response.headers.get("location", "")


def test_a_replica_whose_clock_is_off_takes_a_new_session(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = _session_cookie(service)
    max_age = service.app.state.settings.ui_session_minutes * 60
    # a replica 30 s or a day behind the one that logged in, and ones ahead by nearly the
    # session's length, by more than it and by a day: the session is seconds old by the
    # database's clock, and live on every one of them
    for offset in (-86_400, -30, max_age - 61, max_age + 3600, 86_400):
        with monkeypatch.context() as patch:
            _replica_clock(patch, offset)
            assert _page(service, value)[0] == 200, offset


def test_a_session_expired_by_the_database_clock_is_refused_on_any_replica(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import update

    from radlens.app.security_tables import UiSession
    from radlens.app.ui.session import token_digest

    value = _session_cookie(service)
    with service.app.state.resources.sessionmaker() as session:
        session.execute(
            update(UiSession)
            .where(UiSession.token_sha256 == token_digest(value))
            .values(expires_at=UiSession.created_at)  # expired at its start, database time
        )
        session.commit()
    # a replica a day behind would still see the session as live by its own clock
    for offset in (-86_400, -30, 0):
        with monkeypatch.context() as patch:
            _replica_clock(patch, offset)
            status, location = _page(service, value)
        assert status == 303 and location.startswith("/ui/login"), (offset, status, location)


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

"""QA 52: /ui sessions kept in the database (app/ui/session.py, migration 0017), on SQLite and
PostgreSQL.

The ``radlens_session`` cookie held ``<issued at>.<key>``: a stolen cookie was the API key
itself, its unsigned issue time could be rewritten to extend it, and "Log out" deleted it in one
browser while a copy kept working. It now holds a random token; the database keeps only the
token's sha256 and the key's id, and decides expiry by its own clock; logout ends the row.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.app.conftest import Service, TestClient, create_api_key, png_bytes


@pytest.fixture()
def browser(service: Service) -> Iterator[TestClient]:
    """A client of the running app that sends no Authorization header and follows no redirect
    (the pages read only the session cookie)."""
    with_client = TestClient(service.app, follow_redirects=False)
    yield with_client
    with_client.cookies.clear()


def _csrf(page: Any) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def _login(client: TestClient, key: str) -> str:
    """Log in through the form; returns the session cookie's value."""
    response = client.post(
        "/ui/login",
        data={"csrf_token": _csrf(client.get("/ui/login")), "api_key": key},
    )
    assert response.status_code == 303, response.text
    value = response.cookies.get("radlens_session")
    assert value, response.headers
    return value


def _page(service: Service, cookie: str, path: str = "/ui/predictions") -> Any:
    """GET a page as another browser (or replica's client) holding a copy of ``cookie``."""
    client = TestClient(service.app, follow_redirects=False)
    return client.get(path, headers={"Cookie": f"radlens_session={cookie}"})


def _rows(service: Service) -> list[dict[str, Any]]:
    return [row for row in service.rows() if row["table"] == "ui_sessions"]


def test_the_cookie_holds_a_random_token_not_the_key(service: Service, browser: TestClient) -> None:
    key = create_api_key(service.database_url, "read", name="qa52 cookie")
    cookie = _login(browser, key)
    secret = key.split("_", 2)[2]  # rl_<id>_<secret>: the secret may itself hold "_"
    assert key not in cookie and secret not in cookie and key.split("_")[1] not in cookie
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie), cookie  # token_urlsafe(32)
    assert _page(service, cookie).status_code == 200
    # the cookie is no credential of the API
    api = TestClient(service.app).get(
        "/v1/predictions", headers={"Authorization": f"Bearer {cookie}"}
    )
    assert api.status_code == 401
    again = _login(browser, key)  # a new token at each login; the one it replaced ends
    assert again != cookie
    assert _page(service, again).status_code == 200
    assert _page(service, cookie).headers.get("location") == "/ui/login?reason=ended"


def test_the_database_holds_only_the_tokens_hash_and_the_keys_id(
    service: Service, browser: TestClient
) -> None:
    from radlens.app.keys import key_id_of

    key = create_api_key(service.database_url, "read", name="qa52 row")
    cookie = _login(browser, key)
    digest = hashlib.sha256(cookie.encode()).hexdigest()
    (row,) = [r for r in _rows(service) if r["token_sha256"] == digest]
    assert row["key_id"] == key_id_of(key)
    assert row["ended_at"] is None
    dump = repr(service.rows())  # every row of every table
    # booleans first: pytest's explanation of a failed `not in` diffs the whole dump (quadratic)
    found = {what: what in dump for what in (cookie, key, key.split("_", 2)[2])}
    assert not any(found.values()), "the token or the key is in the database"


@pytest.mark.parametrize("tamper", ["edited", "unknown", "old-form", "empty"])
def test_a_tampered_or_unknown_token_is_sent_to_the_login_form(
    service: Service, browser: TestClient, tamper: str
) -> None:
    import secrets
    import time

    cookie = _login(browser, service.api_key or "")
    forged = {
        "edited": cookie[:-1] + ("A" if cookie[-1] != "A" else "B"),
        "unknown": secrets.token_urlsafe(32),
        # the old form, its issue time rewritten to now: no session any more
        "old-form": f"{int(time.time())}.{service.api_key}",
        "empty": "",
    }[tamper]
    response = _page(service, forged)
    assert response.status_code == 303
    reason = "login" if tamper == "empty" else "expired"
    assert response.headers["location"] == f"/ui/login?reason={reason}"
    assert _page(service, cookie).status_code == 200  # the real one still works


def test_a_session_expires_by_its_row_and_expired_rows_are_cleaned_at_login(
    service: Service, browser: TestClient
) -> None:
    from sqlalchemy import update

    from radlens.app.security_tables import UiSession

    key = create_api_key(service.database_url, "read", name="qa52 expiry")
    cookie = _login(browser, key)
    digest = hashlib.sha256(cookie.encode()).hexdigest()
    with service.app.state.resources.sessionmaker() as session:
        row = session.get(UiSession, digest)
        assert row is not None
        length = row.expires_at - row.created_at
        assert length == timedelta(minutes=service.app.state.settings.ui_session_minutes)
        session.execute(
            update(UiSession)
            .where(UiSession.token_sha256 == digest)
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=5))
        )
        session.commit()
    response = _page(service, cookie)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?reason=expired"
    _login(TestClient(service.app, follow_redirects=False), key)  # any login cleans
    assert digest not in {r["token_sha256"] for r in _rows(service)}


def test_logout_ends_every_copy_of_the_cookie(service: Service, browser: TestClient) -> None:
    key = create_api_key(service.database_url, "read", name="qa52 logout")
    cookie = _login(browser, key)
    other = _login(TestClient(service.app, follow_redirects=False), key)  # another browser
    assert _page(service, cookie).status_code == 200  # a copy, taken before the logout
    token = _csrf(browser.get("/ui/upload"))
    response = browser.post("/ui/logout", data={"csrf_token": token})
    assert response.status_code == 303
    copied = _page(service, cookie)
    assert copied.status_code == 303
    assert copied.headers["location"] == "/ui/login?reason=ended"
    digest = hashlib.sha256(cookie.encode()).hexdigest()
    (row,) = [r for r in _rows(service) if r["token_sha256"] == digest]
    assert row["ended_at"] is not None
    assert _page(service, other).status_code == 200  # the key's other session is another


def test_a_revoked_key_ends_its_sessions_at_once(service: Service, browser: TestClient) -> None:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.keys import key_id_of, revoke_key

    key = create_api_key(service.database_url, "read", name="qa52 revoked")
    cookie = _login(browser, key)
    assert _page(service, cookie).status_code == 200
    engine = make_engine(service.database_url)  # as `radlens keys revoke` on another host
    try:
        with make_sessionmaker(engine)() as session:
            revoke_key(session, key_id_of(key) or "")
            session.commit()
    finally:
        engine.dispose()
    # no in-process cache stands between a revocation and the pages; the revocation deleted
    # the session (QA 68), so there is none: "expired"
    response = _page(service, cookie)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?reason=expired"


def test_scopes_still_apply_to_a_session(service: Service, browser: TestClient) -> None:
    key = create_api_key(service.database_url, "read", name="qa52 reader")
    _login(browser, key)
    token = _csrf(browser.get("/ui/upload"))
    before = service.count()
    response = browser.post(
        "/ui/upload",
        files={"file": ("scan.png", png_bytes(seed=52), "image/png")},
        data={"csrf_token": token},
    )
    assert response.status_code == 403
    assert "lacks the scope" in response.text
    assert service.count() == before


def test_no_token_or_key_is_logged(
    service: Service, browser: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    key = create_api_key(service.database_url, "read", name="qa52 logs")
    with caplog.at_level(logging.DEBUG):
        cookie = _login(browser, key)
        browser.get("/ui/predictions")
        browser.post("/ui/logout", data={"csrf_token": _csrf(browser.get("/ui/upload"))})
        _page(service, cookie)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert cookie not in text and key not in text


def test_0017_down_and_up(migrated_database_url: str) -> None:
    from sqlalchemy import inspect

    from radlens.app.db import make_engine
    from radlens.app.migrate import current_revision, downgrade, head_revision, upgrade

    engine = make_engine(migrated_database_url)
    try:
        assert "ui_sessions" in inspect(engine).get_table_names()
        downgrade(migrated_database_url, "0016")
        assert "ui_sessions" not in inspect(engine).get_table_names()
        upgrade(migrated_database_url, "0017")
        assert "ui_sessions" in inspect(engine).get_table_names()
        upgrade(migrated_database_url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()

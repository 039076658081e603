"""QA 82: a /ui login and the revocation of its key are exclusive (SQLite and PostgreSQL).

The login authenticated the key (in its own transaction, or from the key cache) and then began
the session in another: a revocation committed in between, or running while the session was
inserted, left a session of a revoked key (refused as "revoked", deleted only by revoking the
key again). Now the login checks the key again inside the transaction that inserts the session,
under a lock on the key's row (``FOR SHARE``) that the revocation's ``FOR UPDATE`` conflicts
with (app/ui/session.py ``start``, app/keys.py ``revoke_key``); SQLite serialises the writers.
Each interleaving below is forced, not hoped for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from radlens.app.db import make_engine, make_sessionmaker
from radlens.app.keys import create_key, key_id_of, revoke_key
from radlens.app.security_tables import UiSession
from radlens.app.ui import session as ui_session
from tests.app.conftest import Service, create_api_key
from tests.app.test_ui import csrf_of

JOIN_S = 30  # a hung thread fails the test instead of hanging the run


@pytest.fixture()
def engine_and_sessions(migrated_database_url: str) -> Iterator[tuple[Any, Callable[[], Session]]]:
    engine = make_engine(migrated_database_url)
    try:
        yield engine, make_sessionmaker(engine)
    finally:
        engine.dispose()


def _key(sessionmaker: Callable[[], Session]) -> str:
    with sessionmaker() as s:
        key = create_key(s, name="qa82 race", scopes="read")
        s.commit()
        return key.key_id


def _session_keys(sessionmaker: Callable[[], Session], key_id: str) -> list[str]:
    with sessionmaker() as s:
        return list(s.scalars(select(UiSession.key_id).where(UiSession.key_id == key_id)))


def _wait_until_blocked(engine: Any, thread: threading.Thread) -> None:
    """Return once ``thread``'s transaction waits for the other one's lock: on PostgreSQL a
    backend of this database waiting on a lock (at most 10 s); on SQLite (BEGIN IMMEDIATE waits
    in the busy handler, which no view shows) after half a second."""
    if engine.dialect.name != "postgresql":
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 10
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline and thread.is_alive():
        with engine.connect() as conn:
            if conn.execute(query).scalar():
                return
        time.sleep(0.05)


def test_a_login_waits_for_a_revocation_in_progress_and_is_refused(
    engine_and_sessions: tuple[Any, Callable[[], Session]],
) -> None:
    engine, sessionmaker = engine_and_sessions
    key_id = _key(sessionmaker)
    outcome: dict[str, Any] = {}

    def login() -> None:
        try:
            with sessionmaker() as s:
                outcome["token"] = ui_session.start(s, key_id, minutes=60)
                s.commit()
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    with sessionmaker() as revoking:
        revoke_key(revoking, key_id)  # flushed: the key's row is locked, not yet committed
        thread = threading.Thread(target=login)
        thread.start()
        _wait_until_blocked(engine, thread)
        revoking.commit()
    thread.join(JOIN_S)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["token"] is None  # refused: the key was revoked by the time it looked
    assert _session_keys(sessionmaker, key_id) == []


def test_a_revocation_waits_for_a_login_in_progress_and_deletes_its_session(
    engine_and_sessions: tuple[Any, Callable[[], Session]],
) -> None:
    engine, sessionmaker = engine_and_sessions
    key_id = _key(sessionmaker)
    outcome: dict[str, Any] = {}

    def revoke() -> None:
        try:
            with sessionmaker() as s:
                outcome["ended"] = revoke_key(s, key_id).ui_sessions
                s.commit()
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    with sessionmaker() as logging_in:
        token = ui_session.start(logging_in, key_id, minutes=60)  # inserted, not committed
        assert token is not None
        thread = threading.Thread(target=revoke)
        thread.start()
        _wait_until_blocked(engine, thread)
        logging_in.commit()
    thread.join(JOIN_S)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["ended"] == 1  # it saw the committed session, and deleted it
    assert _session_keys(sessionmaker, key_id) == []


def test_a_key_revoked_after_the_login_authenticated_it_begins_no_session(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the login form: the key authenticates (and is cached), then is revoked before
    the session is inserted; the form answers 401 and no session row exists."""
    from radlens.app.ui import routes

    key = create_api_key(service.database_url, scopes="read", name="qa82 form")
    key_id = key_id_of(key)
    assert key_id is not None
    sessionmaker = service.app.state.resources.sessionmaker
    original = routes._start_session

    def revoked_first(request: Any, kid: str, held: str | None) -> Any:
        with sessionmaker() as s:
            revoke_key(s, kid)
            s.commit()
        return original(request, kid, held)

    monkeypatch.setattr(routes, "_start_session", revoked_first)
    client = service.client
    client.cookies.clear()
    try:
        token = csrf_of(client.get("/ui/login"))
        response = client.post(
            "/ui/login", data={"csrf_token": token, "api_key": key}, follow_redirects=False
        )
        assert response.status_code == 401, response.text
        assert "unknown or revoked" in response.text
        assert ui_session.SESSION_COOKIE not in response.cookies
        assert _session_keys(sessionmaker, key_id) == []
    finally:
        client.cookies.clear()

"""QA 68: a revoked key's /ui sessions, and logging out of an expired session (SQLite and
PostgreSQL).

A revoked key's sessions stayed in ``ui_sessions`` (refused as "revoked" on use, kept until
they expired): `radlens keys revoke` (app/keys.py ``revoke_key``) now deletes them in the
revocation's transaction, which its ``key.revoke`` audit row is part of (``ui_sessions=N``).
Logging out of an expired session updated its row (an UPDATE: a row lock on PostgreSQL, even on
an expired row, and a wait when a login's clean-up held it); it is now deleted, skipping a row
another transaction holds, and never updated.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from radlens.app.db import make_engine, make_sessionmaker
from radlens.app.keys import create_key, revoke_key
from radlens.app.security_tables import AuditEvent, UiSession
from radlens.app.ui import session as ui_session
from radlens.cli.main import main
from tests.app.conftest import Service, TestClient, create_api_key

JOIN_S = 30  # a hung thread fails the test instead of hanging the run


@pytest.fixture()
def sessionmaker(migrated_database_url: str) -> Iterator[Callable[[], Session]]:
    engine = make_engine(migrated_database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _key(sessionmaker: Callable[[], Session], name: str) -> str:
    with sessionmaker() as s:
        key = create_key(s, name=name, scopes="read")
        s.commit()
        return key.key_id


def _start(sessionmaker: Callable[[], Session], key_id: str, n: int = 1) -> list[str]:
    """``n`` sessions of ``key_id``; their tokens' digests."""
    with sessionmaker() as s:
        tokens = [ui_session.start(s, key_id, minutes=60) for _ in range(n)]
        s.commit()
    return [str(ui_session.token_digest(t)) for t in tokens]


def _expire(sessionmaker: Callable[[], Session], digests: list[str]) -> None:
    with sessionmaker() as s:
        s.execute(
            update(UiSession)
            .where(UiSession.token_sha256.in_(digests))
            .values(expires_at=datetime.now(UTC) - timedelta(hours=1))
        )
        s.commit()


def _session_keys(sessionmaker: Callable[[], Session]) -> list[str]:
    with sessionmaker() as s:
        return sorted(s.scalars(select(UiSession.key_id)))


# --- revocation ---------------------------------------------------------------------------


def test_revoking_a_key_deletes_its_sessions_in_the_same_transaction(
    sessionmaker: Callable[[], Session],
) -> None:
    revoked, other = _key(sessionmaker, "qa68 revoked"), _key(sessionmaker, "qa68 other")
    digests = _start(sessionmaker, revoked, 2)
    _start(sessionmaker, other)
    with sessionmaker() as s:
        result = revoke_key(s, revoked)
        assert s.scalars(select(UiSession.key_id)).all() == [other]  # seen inside it
        assert result.ui_sessions == 2
        s.rollback()  # nothing of a revocation that did not commit
    assert _session_keys(sessionmaker) == sorted([revoked, revoked, other])
    with sessionmaker() as s:
        revoke_key(s, revoked)
        s.commit()
    assert _session_keys(sessionmaker) == [other]
    with sessionmaker() as s:
        for digest in digests:  # no row: no session (the login form says "expired")
            assert ui_session.look_up(s, digest) == ui_session.Lookup(None, "expired")


def test_revoking_again_deletes_a_session_begun_since(
    sessionmaker: Callable[[], Session],
) -> None:
    """A session of a key revoked before it began: refused as "revoked", and deleted by
    revoking the key again. Since QA 82 a login checks the key in the session's transaction
    and begins no such session (tests/app/test_qa82_login_revocation_race.py); a replica of an
    earlier version still running beside this one (a rolling update) can, so the row is
    inserted here as its login did."""
    key_id = _key(sessionmaker, "qa68 again")
    with sessionmaker() as s:
        revoke_key(s, key_id)
        s.commit()
    late = str(ui_session.token_digest(ui_session.new_token()))
    with sessionmaker() as s:
        now = datetime.now(UTC)
        s.add(
            UiSession(
                token_sha256=late,
                key_id=key_id,
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
        s.commit()
    with sessionmaker() as s:
        assert ui_session.look_up(s, late) == ui_session.Lookup(None, "revoked")
        result = revoke_key(s, key_id)
        s.commit()
    assert _session_keys(sessionmaker) == []
    assert result.ui_sessions == 1


def _audit_rows(sessionmaker: Callable[[], Session], action: str) -> list[tuple[Any, ...]]:
    with sessionmaker() as s:
        query = select(AuditEvent.actor, AuditEvent.target, AuditEvent.query, AuditEvent.status)
        return [tuple(r) for r in s.execute(query.where(AuditEvent.action == action))]


def test_the_cli_revokes_deletes_and_audits_in_one_transaction(
    migrated_database_url: str,
    sessionmaker: Callable[[], Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_id = _key(sessionmaker, "qa68 cli")
    _start(sessionmaker, key_id, 2)
    code = main(["keys", "revoke", key_id, "--database-url", migrated_database_url])
    assert code == 0, capsys.readouterr().err
    assert (
        capsys.readouterr().out.strip() == f"revoked key {key_id} (qa68 cli); 2 /ui sessions ended"
    )
    assert _session_keys(sessionmaker) == []
    assert _audit_rows(sessionmaker, "key.revoke") == [("cli", key_id, "ui_sessions=2", 200)]


def test_a_failed_audit_row_keeps_the_sessions_and_the_key(
    migrated_database_url: str,
    sessionmaker: Callable[[], Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The audit row is written in the revocation's transaction: when it fails, nothing of
    the revocation is kept (no session deleted without its audit row)."""
    from sqlalchemy.exc import OperationalError

    from radlens.app import audit

    def refused(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT INTO audit_events", {}, Exception("disk I/O error"))

    key_id = _key(sessionmaker, "qa68 audit")
    _start(sessionmaker, key_id, 1)
    monkeypatch.setattr(audit, "record", refused)
    code = main(["keys", "revoke", key_id, "--database-url", migrated_database_url])
    assert code != 0
    assert "nothing was written" in capsys.readouterr().err
    assert _session_keys(sessionmaker) == [key_id]
    with sessionmaker() as s:
        assert (
            s.execute(
                text("SELECT revoked_at FROM api_keys WHERE key_id = :k"), {"k": key_id}
            ).scalar_one()
            is None
        )


def test_a_revoked_keys_page_is_refused_and_its_row_is_gone(service: Service) -> None:
    """Through the app, as `radlens keys revoke` on another host: the page is refused at once
    (no row: the login form), and no row of the key is left."""
    from radlens.app.keys import key_id_of

    key = create_api_key(service.database_url, "read", name="qa68 page")
    browser = TestClient(service.app, follow_redirects=False)
    page = browser.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    login = browser.post("/ui/login", data={"csrf_token": csrf.group(1), "api_key": key})
    assert login.status_code == 303, login.text
    assert browser.get("/ui/predictions").status_code == 200
    engine = make_engine(service.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            revoke_key(s, key_id_of(key) or "")
            s.commit()
        with make_sessionmaker(engine)() as s:
            left = s.scalars(select(UiSession).where(UiSession.key_id == key_id_of(key)))
            assert left.all() == []
    finally:
        engine.dispose()
    response = browser.get("/ui/predictions")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/ui/login?reason=")


# --- logout of an expired session ---------------------------------------------------------


def test_logging_out_of_an_expired_session_deletes_its_row(service: Service) -> None:
    key = create_api_key(service.database_url, "read", name="qa68 logout")
    browser = TestClient(service.app, follow_redirects=False)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/ui/login").text)
    assert csrf is not None
    login = browser.post("/ui/login", data={"csrf_token": csrf.group(1), "api_key": key})
    cookie = login.cookies.get("radlens_session")
    assert cookie
    digest = hashlib.sha256(cookie.encode()).hexdigest()
    sessions = service.app.state.resources.sessionmaker
    _expire(sessions, [digest])
    # the CSRF cookie of the login; the logout form is posted with it
    token = browser.cookies.get("radlens_csrf")
    response = browser.post("/ui/logout", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    with sessions() as s:
        assert s.get(UiSession, digest) is None


def test_logging_out_of_a_live_session_ends_it_and_keeps_its_row(
    sessionmaker: Callable[[], Session],
) -> None:
    key_id = _key(sessionmaker, "qa68 live")
    (live,) = _start(sessionmaker, key_id)
    with sessionmaker() as s:
        ui_session.end(s, live)
        s.commit()
        row = s.get(UiSession, live)
        assert row is not None and row.ended_at is not None
        assert ui_session.look_up(s, live) == ui_session.Lookup(None, "ended")


def test_a_logout_does_not_wait_for_an_expired_row_another_transaction_holds(
    sessionmaker: Callable[[], Session], databases: Any
) -> None:
    """A login's clean-up holds an expired row (``FOR UPDATE SKIP LOCKED``) while that
    session's browser logs out: the logout's UPDATE waited for the login's transaction (here,
    under a lock_timeout, it fails at once). Now the logout skips the held row and takes no
    other lock on it."""
    if databases.backend != "postgresql":
        pytest.skip("SQLite serialises writers: no row lock to wait for")
    key_id = _key(sessionmaker, "qa68 held")
    (expired,) = _start(sessionmaker, key_id)
    _expire(sessionmaker, [expired])
    holder = sessionmaker()
    try:
        held = holder.execute(
            select(UiSession.token_sha256)
            .where(UiSession.token_sha256 == expired)
            .with_for_update(skip_locked=True)
        ).all()
        assert len(held) == 1
        errors: list[BaseException] = []

        def logout() -> None:
            try:
                with sessionmaker() as s:
                    s.execute(text("SET LOCAL lock_timeout = '3s'"))
                    ui_session.end(s, expired)
                    s.commit()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=logout, daemon=True)
        thread.start()
        thread.join(JOIN_S)
        assert not thread.is_alive(), "the logout hung"
        assert errors == [], errors
    finally:
        holder.rollback()
        holder.close()


def test_a_logout_of_an_expired_session_holds_no_lock_a_login_needs(
    sessionmaker: Callable[[], Session], databases: Any
) -> None:
    """While a logout of an expired session is open, its row is deleted (not updated, so not
    left locked and present); a login's clean-up (SKIP LOCKED) and a new login go on."""
    if databases.backend != "postgresql":
        pytest.skip("SQLite serialises writers: no row lock to wait for")
    key_id = _key(sessionmaker, "qa68 open")
    (expired,) = _start(sessionmaker, key_id)
    _expire(sessionmaker, [expired])
    logout = sessionmaker()
    try:
        ui_session.end(logout, expired)
        with sessionmaker() as s:
            s.execute(text("SET LOCAL lock_timeout = '3s'"))
            token = ui_session.start(s, key_id, minutes=60, replacing=expired)
            s.commit()
        logout.commit()
    finally:
        logout.close()
    with sessionmaker() as s:
        assert s.get(UiSession, expired) is None
        digest = ui_session.token_digest(token)
        assert digest is not None and ui_session.look_up(s, digest).key is not None

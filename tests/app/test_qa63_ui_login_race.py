"""Two /ui logins at the same moment both succeed (QA 62/63). On PostgreSQL each login ended
the session its browser held (an UPDATE: a row lock, even on an expired row), then deleted
every expired row, the other login's locked one included: each waited for the other, and
PostgreSQL's deadlock detector failed one of them (a 503 at the login form). Now a login ends
only a live previous session and its cleanup skips the rows another transaction holds
(app/ui/session.py ``start``). SQLite serialises writers: there the behaviour is checked."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from radlens.app.db import make_engine, make_sessionmaker
from radlens.app.keys import create_key
from radlens.app.security_tables import UiSession
from radlens.app.ui import session as ui_session

JOIN_S = 30  # a hung thread fails the test instead of hanging the run


@pytest.fixture()
def sessions(migrated_database_url: str) -> Iterator[tuple[Any, Callable[[], Session], str]]:
    engine = make_engine(migrated_database_url)
    sessionmaker = make_sessionmaker(engine)
    with sessionmaker() as s:
        key = create_key(s, name="qa63", scopes="read")
        s.commit()
    try:
        yield engine, sessionmaker, key.key_id
    finally:
        engine.dispose()


def _sessions_held(sessionmaker: Callable[[], Session], key_id: str, *, expired: bool) -> list[str]:
    """Two browsers' sessions (their tokens' digests), expired an hour ago if ``expired``."""
    with sessionmaker() as s:
        tokens = [ui_session.start(s, key_id, minutes=60) for _ in range(2)]
        s.commit()
        digests = [ui_session.token_digest(t) for t in tokens]
        if expired:
            s.execute(
                update(UiSession)
                .where(UiSession.token_sha256.in_(digests))
                .values(expires_at=datetime.now(UTC) - timedelta(hours=1))
            )
            s.commit()
    return [d for d in digests if d is not None]


def _run_both(work: Callable[[int], None]) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None, None]

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # reported by the assertion below
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
        assert not t.is_alive(), "a login hung"
    return errors


def test_two_logins_replacing_expired_sessions_both_commit(
    sessions: tuple[Any, Callable[[], Session], str], databases: Any
) -> None:
    if databases.backend != "postgresql":
        pytest.skip("SQLite serialises the two logins' transactions: no interleaving to test")
    engine, sessionmaker, key_id = sessions
    held = _sessions_held(sessionmaker, key_id, expired=True)
    # both logins have run their first statement (ending the browser's previous session)
    # before either goes on to its cleanup: the interleaving that deadlocked
    barrier = threading.Barrier(2, timeout=10)
    workers: set[threading.Thread] = set()

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread() in workers and statement.lstrip().startswith(
            "UPDATE ui_sessions"
        ):
            barrier.wait()

    event.listen(engine, "after_cursor_execute", after)
    tokens: list[str | None] = [None, None]

    def login(i: int) -> None:
        workers.add(threading.current_thread())
        with sessionmaker() as s:
            tokens[i] = ui_session.start(s, key_id, minutes=60, replacing=held[i])
            s.commit()

    try:
        errors = _run_both(login)
    finally:
        event.remove(engine, "after_cursor_execute", after)
    assert errors == [None, None], errors
    with sessionmaker() as s:
        for token in tokens:
            digest = ui_session.token_digest(token)
            assert digest is not None and ui_session.look_up(s, digest).key is not None
        # the expired rows are gone (one login or the other deleted them)
        assert s.scalars(select(UiSession).where(UiSession.token_sha256.in_(held))).all() == []


def test_a_login_does_not_wait_for_expired_rows_another_transaction_holds(
    sessions: tuple[Any, Callable[[], Session], str], databases: Any
) -> None:
    """QA 62's reproducer: two browsers log out with expired cookies (their rows locked by the
    logout's UPDATE) and log in again before those transactions end."""
    if databases.backend != "postgresql":
        pytest.skip("SQLite serialises the two logins' transactions: no interleaving to test")
    _, sessionmaker, key_id = sessions
    held = _sessions_held(sessionmaker, key_id, expired=True)
    both = [sessionmaker(), sessionmaker()]
    try:
        for s, digest in zip(both, held, strict=True):
            ui_session.end(s, digest)  # each transaction now holds one expired row

        def login(i: int) -> None:
            ui_session.start(both[i], key_id, minutes=60)
            both[i].commit()

        errors = _run_both(login)
    finally:
        for s in both:
            s.rollback()
            s.close()
    assert errors == [None, None], errors


def test_a_login_ends_a_live_previous_session_and_deletes_expired_ones(
    sessions: tuple[Any, Callable[[], Session], str],
) -> None:
    _, sessionmaker, key_id = sessions
    live = _sessions_held(sessionmaker, key_id, expired=False)
    expired = _sessions_held(sessionmaker, key_id, expired=True)
    with sessionmaker() as s:
        token = ui_session.start(s, key_id, minutes=60, replacing=live[0])
        s.commit()
        assert ui_session.look_up(s, live[0]) == ui_session.Lookup(None, "ended")
        assert ui_session.look_up(s, live[1]).key is not None  # another browser's: untouched
        left = s.scalars(select(UiSession.token_sha256).where(UiSession.token_sha256.in_(expired)))
        assert left.all() == []
        digest = ui_session.token_digest(token)
        assert digest is not None and ui_session.look_up(s, digest).key is not None

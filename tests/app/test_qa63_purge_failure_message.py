"""A `radlens purge` that fails part-way says what it did (QA 62/63). Its batches commit one by
one, but the failure went through `database_session`'s handler, which said "nothing was
written" while the batches before the failure stayed deleted (with their audit rows). Now it
says how many predictions were deleted and that a re-run finishes it; a dry run, which writes
nothing, still says so. Both backends; the failure is an OperationalError raised in the second
batch (a lock, a full disk, a lost connection)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from radlens.app import audit
from radlens.app.db import make_engine, make_sessionmaker
from radlens.app.security_tables import AuditEvent
from radlens.app.tables import Prediction
from tests.app.conftest import prediction_row

EXPIRED = 4


@pytest.fixture()
def database(migrated_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("RADLENS_DICOM_OUTBOX_DIR", "RADLENS_DIMSE_INBOX_DIR"):
        monkeypatch.delenv(name, raising=False)
    engine = make_engine(migrated_database_url)
    sessionmaker = make_sessionmaker(engine)
    with sessionmaker() as s:
        for i in range(EXPIRED):
            row = prediction_row(f"qa63-fail-{i}")
            row.created_at = datetime.now(UTC) - timedelta(days=30)
            s.add(row)
        s.commit()
    try:
        yield migrated_database_url, sessionmaker
    finally:
        engine.dispose()


def _counts(sessionmaker: Any) -> tuple[int, int]:
    with sessionmaker() as s:
        left = s.scalar(select(func.count()).select_from(Prediction))
        audited = s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == audit.PREDICTION_PURGE)
        )
    return int(left or 0), int(audited or 0)


def _purge(url: str, *extra: str) -> int:
    from radlens.cli.main import main

    return main(["purge", "--database-url", url, "--retention-days", "7", *extra])


def test_a_purge_failing_in_its_second_batch_says_what_was_deleted(
    database: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sessionmaker = database
    real = audit._purge_rows
    calls: list[int] = []

    def second_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise OperationalError("DELETE ...", {}, Exception("database is locked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(audit, "_purge_rows", second_fails)
    assert _purge(url, "--batch-size", "2") != 0
    err = capsys.readouterr().err
    assert _counts(sessionmaker) == (2, 2)  # the first batch committed, the second not
    assert "nothing was written" not in err
    assert "database is locked" in err
    assert "2 prediction(s) were deleted" in err
    assert "run `radlens purge` again to finish" in err
    assert len(err.strip().splitlines()) == 1, err

    monkeypatch.setattr(audit, "_purge_rows", real)
    assert _purge(url, "--batch-size", "2") == 0  # the re-run finishes it
    assert _counts(sessionmaker) == (0, EXPIRED)


def test_a_purge_failing_in_its_first_batch_says_none_was_deleted(
    database: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sessionmaker = database

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("DELETE ...", {}, Exception("disk I/O error"))

    monkeypatch.setattr(audit, "_purge_rows", fails)
    assert _purge(url) != 0
    err = capsys.readouterr().err
    assert "0 prediction(s) were deleted" in err, err
    assert _counts(sessionmaker) == (EXPIRED, 0)


def test_a_dry_run_that_fails_still_says_nothing_was_written(
    database: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sessionmaker = database

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("SELECT ...", {}, Exception("database is locked"))

    monkeypatch.setattr(audit, "_would_purge", fails)
    assert _purge(url, "--dry-run") != 0
    assert "nothing was written" in capsys.readouterr().err
    assert _counts(sessionmaker) == (EXPIRED, 0)


def test_a_purge_whose_database_stays_out_of_reach_says_the_batches_stay_deleted(
    database: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.cli import audit_cmds

    url, sessionmaker = database
    real_rows, real_sessionmaker_of = audit._purge_rows, audit_cmds._sessionmaker_of
    lost: list[bool] = []
    calls: list[int] = []

    def sessionmaker_of(session: Any) -> Any:
        real = real_sessionmaker_of(session)

        def make() -> Any:
            if lost:  # the connection is gone, and a new one cannot be made
                raise OperationalError("connect", {}, Exception("connection refused"))
            return real()

        return make

    def second_loses_the_database(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            lost.append(True)
            raise OperationalError("DELETE ...", {}, Exception("server closed the connection"))
        return real_rows(*args, **kwargs)

    monkeypatch.setattr(audit_cmds, "_sessionmaker_of", sessionmaker_of)
    monkeypatch.setattr(audit, "_purge_rows", second_loses_the_database)
    assert _purge(url, "--batch-size", "2") != 0
    err = capsys.readouterr().err
    assert _counts(sessionmaker) == (2, 2)
    assert "nothing was written" not in err
    assert "the batches committed before it stay deleted" in err, err
    assert "run `radlens purge` again to finish" in err

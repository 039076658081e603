"""app.series.register_instance in a writer group: the series' row is inserted/read once per
transaction, however many of its instances the group holds (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from radlens.app.series import SeriesMismatchError, register_instance
from tests.app.conftest import new_uid, prediction_row


def instance(series: str, study: str, **changes: Any) -> Any:
    row = prediction_row(new_uid())
    row.series_instance_uid, row.study_instance_uid, row.modality = series, study, "CT"
    for name, value in changes.items():
        setattr(row, name, value)
    return row


@pytest.fixture()
def session_and_log(migrated_database_url: str) -> Iterator[tuple[Session, list[str]]]:
    from radlens.app.db import make_engine

    engine = make_engine(migrated_database_url)
    statements: list[str] = []

    def log(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "prediction_series" in statement:
            statements.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", log)
    with Session(engine) as session:
        yield session, statements
    engine.dispose()


def test_a_series_is_queried_once_per_transaction(
    session_and_log: tuple[Session, list[str]],
) -> None:
    session, statements = session_and_log
    series, study = new_uid(), new_uid()
    for _ in range(5):
        register_instance(session, instance(series, study))
    # one statement, not two per instance: the insert returns the new row (QA round 75: a
    # SELECT FOR KEY SHARE followed it)
    assert statements == ["INSERT"]
    # a mismatch is still found, from what the transaction read
    with pytest.raises(SeriesMismatchError, match="Rows x Columns is 9x8"):
        register_instance(session, instance(series, study, rows=9))
    assert statements == ["INSERT"]
    session.rollback()
    # a new transaction reads the series again (the rolled-back insert is gone)
    register_instance(session, instance(series, study))
    register_instance(session, instance(series, study))
    assert statements == ["INSERT", "INSERT"]
    session.commit()
    register_instance(session, instance(series, study))
    assert statements[2:] == ["INSERT", "SELECT"]  # stored: the insert returns none, then read

"""QA 75: a new series' first instance records the series in one statement (INSERT ... ON
CONFLICT DO NOTHING RETURNING: app/series.py ``_record_series``); it was inserted, then read
back FOR KEY SHARE by a second statement, though a row its own transaction inserted is not
visible to `radlens purge` and needs no lock. A series recorded before is still read back
locked (the purge race, tests/app/test_qa61_series_purge_race.py). SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from radlens.app import series
from radlens.app.errors import AppError
from radlens.app.tables import Prediction, PredictionSeries
from tests.app.conftest import new_uid, prediction_row


@pytest.fixture()
def db(migrated_database_url: str) -> Iterator[tuple[Engine, Any]]:
    from radlens.app.db import make_engine, make_sessionmaker

    engine = make_engine(migrated_database_url)
    try:
        yield engine, make_sessionmaker(engine)
    finally:
        engine.dispose()


def _instance(series_uid: str, *, size: int = 8) -> Prediction:
    row = prediction_row(f"sop:{new_uid()}")
    row.series_instance_uid = series_uid
    row.study_instance_uid = "2.25.75"
    row.modality = "CT"
    row.rows = row.columns = size
    return row


def _series_statements(engine: Engine, sessionmaker: Any, prediction: Prediction) -> list[str]:
    """The statements on prediction_series of register_instance, in a committed upload."""
    seen: list[str] = []

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "prediction_series" in statement:
            seen.append(" ".join(statement.split())[:60])

    event.listen(engine, "before_cursor_execute", spy)
    try:
        with sessionmaker() as session:
            series.register_instance(session, prediction)
            session.add(prediction)
            session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    return seen


def test_a_new_series_is_recorded_in_one_statement(db: tuple[Engine, Any]) -> None:
    engine, sessionmaker = db
    uid = new_uid()
    statements = _series_statements(engine, sessionmaker, _instance(uid))
    assert len(statements) == 1, statements  # was 2: the INSERT, then a SELECT FOR KEY SHARE
    assert statements[0].startswith("INSERT INTO prediction_series")
    with sessionmaker() as session:
        record = session.get(PredictionSeries, uid)
        assert (record.modality, record.rows, record.columns) == ("CT", 8, 8)


def test_a_known_series_is_read_back_and_checked(db: tuple[Engine, Any]) -> None:
    engine, sessionmaker = db
    uid = new_uid()
    _series_statements(engine, sessionmaker, _instance(uid))
    statements = _series_statements(engine, sessionmaker, _instance(uid))
    assert [s.split()[0] for s in statements] == ["INSERT", "SELECT"]  # read back, locked
    with sessionmaker() as session, pytest.raises(AppError, match="Rows x Columns is 9x9"):
        series.register_instance(session, _instance(uid, size=9))


def test_the_first_instance_is_the_reference_in_its_own_transaction(
    db: tuple[Engine, Any],
) -> None:
    """Two instances of a new series in one transaction (a writer's group): the second is
    checked against what the first inserted (returned, not read back)."""
    _engine, sessionmaker = db
    uid = new_uid()
    with sessionmaker() as session, pytest.raises(AppError, match="Rows x Columns is 9x9"):
        series.register_instance(session, _instance(uid))
        series.register_instance(session, _instance(uid, size=9))

"""app/writer.py: the uploads' predictions are committed in groups, each caller gets its own row.

Runs on SQLite and on the PostgreSQL at 127.0.0.1:5432 (the ``migrated_database_url``
fixture), with the real tables and the real lookup-or-insert.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select

from radlens.app import services
from radlens.app.db import make_engine, make_sessionmaker
from radlens.app.security_tables import AuditEvent
from radlens.app.tables import Prediction
from radlens.app.writer import PredictionWriter, WriterStoppedError
from tests.app.conftest import prediction_row

row = prediction_row


@pytest.fixture()
def sessions(migrated_database_url: str) -> Iterator[Any]:
    engine = make_engine(migrated_database_url)
    commits: list[int] = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    maker = make_sessionmaker(engine)
    maker.commits = commits  # type: ignore[attr-defined]
    yield maker
    engine.dispose()


def count(sessions: Any, table: Any) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(table)))


async def write_all(writer: PredictionWriter, rows: list[Prediction]) -> list[Any]:
    writer.start()
    try:
        return await asyncio.gather(
            *(writer.write(r, f"key-{i}") for i, r in enumerate(rows)), return_exceptions=True
        )
    finally:
        await writer.stop()


def test_waiting_rows_share_a_transaction_and_each_caller_gets_its_own(sessions: Any) -> None:
    writer = PredictionWriter(sessions)
    rows = [row(f"sop:{uuid.uuid4()}") for _ in range(24)]
    results = asyncio.run(write_all(writer, rows))
    assert [created for _, created in results] == [True] * 24
    assert [stored.id for stored, _ in results] == [r.id for r in rows]
    assert count(sessions, Prediction) == 24
    assert count(sessions, AuditEvent) == 24  # one "prediction.create" row each
    # All 24 were queued before the thread got going: far fewer transactions than rows.
    assert writer.transactions == len(sessions.commits) < 24


def test_the_same_input_twice_in_one_group_is_stored_once(sessions: Any) -> None:
    key = f"sop:{uuid.uuid4()}"
    writer = PredictionWriter(sessions)
    results = asyncio.run(write_all(writer, [row(key), row(key), row(f"sop:{uuid.uuid4()}")]))
    assert writer.transactions == 1
    (first, created1), (second, created2), (_, created3) = results
    assert (created1, created2, created3) == (True, False, True)
    assert second.id == first.id  # the re-post gets the stored row
    assert count(sessions, Prediction) == 2
    with sessions() as session:
        statuses = session.scalars(select(AuditEvent.status).order_by(AuditEvent.id)).all()
    assert statuses == [201, 200, 201]


def test_a_row_the_database_refuses_fails_only_its_own_request(
    sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = services.record_prediction
    bad = row(f"sop:{uuid.uuid4()}")

    def refuse_one(session: Any, prediction: Prediction) -> Any:
        if prediction is bad:
            raise ValueError("this row is refused (test)")
        return real(session, prediction)

    monkeypatch.setattr(services, "record_prediction", refuse_one)
    rows = [row(f"sop:{uuid.uuid4()}") for _ in range(3)] + [bad, row(f"sop:{uuid.uuid4()}")]
    writer = PredictionWriter(sessions)
    results = asyncio.run(write_all(writer, rows))
    assert isinstance(results[3], ValueError)
    assert [results[i][1] for i in (0, 1, 2, 4)] == [True] * 4
    assert count(sessions, Prediction) == 4  # the group was rolled back, then written row by row
    assert count(sessions, AuditEvent) == 4  # and the refused row left no audit row either


def test_stop_writes_what_is_queued_then_refuses(sessions: Any) -> None:
    writer = PredictionWriter(sessions)

    async def main() -> None:
        writer.start()
        tasks = [asyncio.ensure_future(writer.write(row(f"sop:{uuid.uuid4()}"), None))]
        await asyncio.sleep(0)  # queued
        await writer.stop()
        ((_, created),) = await asyncio.gather(*tasks)
        assert created
        with pytest.raises(WriterStoppedError, match="stopping"):
            await writer.write(row(f"sop:{uuid.uuid4()}"), None)

    asyncio.run(main())
    assert count(sessions, Prediction) == 1
    assert WriterStoppedError.status_code == 503


def test_bad_group_size() -> None:
    with pytest.raises(ValueError, match=r"max_group should be >= 1\. Received: 0"):
        PredictionWriter(lambda: None, max_group=0)  # type: ignore[arg-type, return-value]

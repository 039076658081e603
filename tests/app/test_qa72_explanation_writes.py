"""The explanation of a new prediction is one INSERT in the writer's transaction (QA 72).

Every new upload with ``?explain=true`` looked its explanation up and inserted it in a
SAVEPOINT (SELECT, SAVEPOINT, INSERT, RELEASE), as a stored prediction's explanation needs;
a prediction inserted by the same transaction cannot have one, so three of those four
statements (round trips on PostgreSQL) were waste. Counted with a SQLAlchemy event listener
on SQLite and PostgreSQL (the ``migrated_database_url`` fixture); the other cases keep their
answers: a re-post in the same group gets the first one's explanation, a stored prediction
without one gets it once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, func, select

from radlens.app.db import make_engine, make_sessionmaker
from radlens.app.explain import ExplanationOutput
from radlens.app.tables import Explanation, Prediction
from radlens.app.writer import PredictionWriter, Written
from tests.app.conftest import prediction_row


@pytest.fixture()
def recorded(migrated_database_url: str) -> Iterator[tuple[Any, list[str]]]:
    """A sessionmaker on a migrated database and the SQL statements run through it."""
    engine = make_engine(migrated_database_url)
    statements: list[str] = []

    def on_execute(*args: Any) -> None:
        statements.append(" ".join(str(args[2]).split()))

    event.listen(engine, "before_cursor_execute", on_execute)
    yield make_sessionmaker(engine), statements
    engine.dispose()


def output(name: str = "abnormal") -> ExplanationOutput:
    return ExplanationOutput(
        png=b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes,
        layer="conv2d",
        class_index=1,
        class_name=name,
        score=0.4,
        scores=np.array([0.6, 0.4], dtype=np.float32),
        seconds=0.01,
    )


async def commit_all(
    writer: PredictionWriter, items: list[tuple[Prediction, ExplanationOutput | None]]
) -> list[Written]:
    writer.start()
    try:
        return list(
            await asyncio.gather(
                *(writer.commit(p, f"key-{i}", e) for i, (p, e) in enumerate(items))
            )
        )
    finally:
        await writer.stop()


def explanation_rows(sessions: Any) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Explanation)))


def test_a_new_predictions_explanation_is_one_insert(recorded: tuple[Any, list[str]]) -> None:
    sessions, statements = recorded
    writer = PredictionWriter(sessions)
    (written,) = asyncio.run(
        commit_all(writer, [(prediction_row(f"sop:{uuid.uuid4()}"), output())])
    )
    assert written.created and written.explanation_created
    assert written.explanation is not None
    assert written.explanation.prediction_id == written.prediction.id
    touching = [s for s in statements if "explanations" in s.lower()]
    assert len(touching) == 1 and touching[0].upper().startswith("INSERT INTO EXPLANATIONS"), (
        touching
    )
    assert not [s for s in statements if "SAVEPOINT" in s.upper()], statements
    assert explanation_rows(sessions) == 1


def test_a_repost_in_the_same_group_gets_the_first_ones_explanation(
    recorded: tuple[Any, list[str]],
) -> None:
    sessions, _ = recorded
    key = f"sop:{uuid.uuid4()}"
    writer = PredictionWriter(sessions)
    first, second = asyncio.run(
        commit_all(writer, [(prediction_row(key), output()), (prediction_row(key), output())])
    )
    assert writer.transactions == 1
    assert (first.created, second.created) == (True, False)
    assert (first.explanation_created, second.explanation_created) == (True, False)
    assert first.explanation is not None and second.explanation is not None
    assert second.prediction.id == first.prediction.id
    assert second.explanation.id == first.explanation.id
    assert explanation_rows(sessions) == 1


def test_a_stored_prediction_without_one_gets_its_explanation_once(
    recorded: tuple[Any, list[str]],
) -> None:
    sessions, _ = recorded
    key = f"sop:{uuid.uuid4()}"
    (stored,) = asyncio.run(commit_all(PredictionWriter(sessions), [(prediction_row(key), None)]))
    assert stored.created and stored.explanation is None
    (added,) = asyncio.run(
        commit_all(PredictionWriter(sessions), [(prediction_row(key), output())])
    )
    assert not added.created and added.explanation_created
    (again,) = asyncio.run(
        commit_all(PredictionWriter(sessions), [(prediction_row(key), output("other"))])
    )
    assert not again.explanation_created
    assert again.explanation is not None and again.explanation.class_name == "abnormal"
    assert explanation_rows(sessions) == 1

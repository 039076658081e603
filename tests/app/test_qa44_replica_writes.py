"""Two replicas' writers storing the same instances at once (QA round 44): a study sent to two
replicas made their group transactions wait for each other's uncommitted rows, taken in arrival
order, and PostgreSQL broke the deadlock after its deadlock_timeout by failing one group (the
writer then wrote it again row by row: a 1 s stall for every upload in it). Each writer now
takes its rows in one order. Two writers on one database, each storing two instances of two
series in the opposite order, both paused after their first row so that each holds one."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.app.conftest import new_uid, prediction_row


@pytest.fixture()
def sessionmaker(migrated_database_url: str) -> Iterator[Any]:
    from radlens.app.db import make_engine, make_sessionmaker

    engine = make_engine(migrated_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _instance(series_uid: str, key: str) -> Any:
    row = prediction_row(key)
    row.series_instance_uid = series_uid
    row.study_instance_uid = "2.25.1"
    row.modality = "CT"
    return row


def _copy(row: Any) -> Any:
    """The same instance as predicted by another replica (its own row object and id)."""
    from radlens.app.tables import Prediction

    other = Prediction(**{c.key: getattr(row, c.key) for c in Prediction.__table__.columns})
    other.id = uuid.uuid4()
    return other


def test_two_writers_storing_the_same_instances_in_opposite_orders_do_not_deadlock(
    sessionmaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app import services
    from radlens.app.writer import PredictionWriter, _Write

    first, second = _instance(new_uid(), "a" * 40), _instance(new_uid(), "b" * 40)
    record = services.record_prediction
    paused = threading.Barrier(2)
    calls: dict[int, int] = {}

    def record_then_pause(session: Any, prediction: Any) -> Any:
        result = record(session, prediction)
        me = threading.get_ident()
        calls[me] = calls.get(me, 0) + 1
        if calls[me] == 1:  # each writer holds its first row: the other one wants it next
            # broken: the other writer waits for this one's rows, so nothing is held
            with contextlib.suppress(threading.BrokenBarrierError):
                paused.wait(timeout=1)  # with the lock order the other never comes
        return result

    monkeypatch.setattr(services, "record_prediction", record_then_pause)

    def group(*rows: Any) -> list[Any]:
        return [_Write(r, "test", None, None, None) for r in rows]  # type: ignore[arg-type]

    outcomes: dict[str, Any] = {}

    def write(name: str, rows: list[Any]) -> None:
        writer = PredictionWriter(sessionmaker)
        try:
            outcomes[name] = writer._transaction(rows)
        except Exception as exc:  # the deadlock's loser
            outcomes[name] = exc

    threads = [
        threading.Thread(target=write, args=("a", group(first, second))),
        threading.Thread(target=write, args=("b", group(_copy(second), _copy(first)))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    for name in ("a", "b"):
        assert isinstance(outcomes[name], list), f"writer {name}: {outcomes[name]!r}"
    a, b = outcomes["a"], outcomes["b"]
    # one row per instance; each writer answers in its group's order
    assert [w.prediction.dedupe_key for w in a] == ["a" * 40, "b" * 40]
    assert [w.prediction.dedupe_key for w in b] == ["b" * 40, "a" * 40]
    assert {w.prediction.id for w in a} == {w.prediction.id for w in b}
    assert sorted(w.created for w in a + b) == [False, False, True, True]

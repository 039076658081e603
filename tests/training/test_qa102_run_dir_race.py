"""Two runs of one name started in the same second get two run directories (QA round 102).

The directory name was chosen with ``exists()`` and then created with ``mkdir()``: a second
``radlens train`` (a job array, another terminal) that looked between the two saw the name
free and stopped with "file exists" instead of taking the next name.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from radlens.training import rundir
from radlens.training.config import TrainConfig


class _FrozenClock:
    @staticmethod
    def now(tz: object = None) -> datetime:
        return datetime(2026, 12, 7, 22, 0, 0, tzinfo=UTC)


def test_a_name_taken_after_the_check_gives_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(name="chest", runs_dir=str(tmp_path / "runs"))
    monkeypatch.setattr(rundir, "datetime", _FrozenClock)
    taken = tmp_path / "runs" / "chest-20261207-220000"
    taken.mkdir(parents=True)  # the other run, created just after this one looked
    # as this run saw it: the name still free when it checked
    monkeypatch.setattr(Path, "exists", lambda self: False)

    path = rundir.open_run_dir(config, None)

    assert path == tmp_path / "runs" / "chest-20261207-220000-2"
    assert (path / "config.json").is_file() and not (taken / "config.json").exists()


def test_runs_started_at_once_each_get_their_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(name="chest", runs_dir=str(tmp_path / "runs"))
    monkeypatch.setattr(rundir, "datetime", _FrozenClock)
    start = threading.Barrier(6)
    paths: list[Path] = []
    errors: list[BaseException] = []

    def one() -> None:
        start.wait()
        try:
            paths.append(rundir.open_run_dir(config, None))
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert len(set(paths)) == 6
    assert sorted(p.name for p in paths)[0] == "chest-20261207-220000"

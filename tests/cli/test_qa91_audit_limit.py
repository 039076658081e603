"""`radlens audit --limit N` shows the newest N matching events, oldest first, and says so on
stderr when older ones were left out (QA 91: a long `--since` was cut to its newest 1000 rows
without a word, and the help said only "At most this many")."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer

from radlens.cli.main import app, main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RADLENS_"):
            monkeypatch.delenv(key)


def _database_with_events(tmp_path: Path, n: int) -> str:
    from radlens.app import audit
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'radlens.db'}"
    upgrade(url)
    engine = make_engine(url)
    start = datetime(2026, 1, 15, 0, 0, tzinfo=UTC)
    with make_sessionmaker(engine)() as session:
        for i in range(n):
            audit.record(
                session,
                actor="cli",
                action="key.create",
                status=201,
                target=f"{i:012x}",
                at=start + timedelta(minutes=i),
            )
        session.commit()
    engine.dispose()
    return url


def test_a_cut_listing_is_the_newest_rows_and_says_older_ones_were_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _database_with_events(tmp_path, 5)
    assert main(["audit", "--database-url", url, "--limit", "3", "--json"]) == 0
    out, err = capsys.readouterr()
    targets = [row["target"] for row in json.loads(out)]
    assert targets == [f"{i:012x}" for i in (2, 3, 4)]  # the newest three, oldest first
    assert "showing the newest 3 matching audit events; older ones match too" in err
    assert "--limit" in err


@pytest.mark.parametrize("limit", ["5", "9"])
def test_a_whole_listing_says_nothing_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    url = _database_with_events(tmp_path, 5)
    assert main(["audit", "--database-url", url, "--limit", limit]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5
    assert "older ones" not in err


def test_the_help_says_which_rows_the_limit_keeps() -> None:
    command = typer.main.get_command(app).commands["audit"]  # type: ignore[attr-defined]
    [param] = [p for p in command.params if "--limit" in getattr(p, "opts", [])]
    text = " ".join((param.help or "").split())
    assert "newest" in text, text

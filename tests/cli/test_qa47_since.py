"""`radlens audit --since` / `radlens drift --since` for a site in another time zone (QA 47):
an offset selects the same instant as UTC, a time without one is UTC, and the help says so."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer

from radlens.cli.main import app, main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RADLENS_"):
            monkeypatch.delenv(key)


def _help(command: str, option: str) -> str:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    [param] = [p for p in click_command.params if option in getattr(p, "opts", [])]
    return " ".join((param.help or "").split())


@pytest.mark.parametrize("command", ["audit", "drift"])
def test_since_help_says_a_time_without_offset_is_utc(command: str) -> None:
    text = _help(command, "--since")
    assert "UTC" in text and "offset" in text, text


def test_audit_since_with_an_offset_selects_the_same_instant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows at 00:59:59Z and 01:00:01Z (02:00 Berlin winter time, 06:30 Kolkata): each
    spelling of 01:00Z lists the second only."""
    from radlens.app import audit
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'radlens.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        for at, target in (
            (datetime(2026, 1, 15, 0, 59, 59, tzinfo=UTC), "a" * 12),
            (datetime(2026, 1, 15, 1, 0, 1, tzinfo=UTC), "b" * 12),
        ):
            audit.record(
                session, actor="cli", action="key.create", status=200, target=target, at=at
            )
        session.commit()
    engine.dispose()
    for since in (
        "2026-01-15T01:00:00Z",
        "2026-01-15T01:00:00",
        "2026-01-15T02:00:00+01:00",
        "2026-01-15T06:30:00+05:30",
    ):
        main(["audit", "--since", since, "--json", "--database-url", url])
        rows = json.loads(capsys.readouterr().out)
        assert [r["target"] for r in rows] == ["b" * 12], since
        assert rows[0]["at"] == "2026-01-15T01:00:01+00:00"

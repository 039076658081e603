"""QA round 24: every command's --help works and carries the not-for-clinical-use notice the
top-level help carries."""

from __future__ import annotations

import re

import pytest
import typer

from radlens.cli.main import app, main

NOTICE = "not for clinical use unless a model's manifest says it was validated"


def _command_paths(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for command in group.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        paths.append((*prefix, name.replace("_", "-")))
    for sub in group.registered_groups:
        assert sub.name and sub.typer_instance is not None
        paths.append((*prefix, sub.name))
        paths.extend(_command_paths(sub.typer_instance, (*prefix, sub.name)))
    return paths


PATHS = [(), *_command_paths(app)]


def test_every_command_is_covered() -> None:
    names = {path[0] for path in PATHS if path}
    assert {"serve", "train", "evaluate", "inspect", "models", "db", "keys"} <= names
    assert ("models", "seal") in PATHS and ("keys", "create") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "radlens")
def test_help_works_and_says_not_for_clinical_use(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert main([*path, "--help"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    text = re.sub(r"[\s│╭╮╰╯─]+", " ", captured.out).lower()
    assert "usage: radlens" in text
    assert NOTICE in text, captured.out

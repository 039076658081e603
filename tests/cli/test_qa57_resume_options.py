"""`radlens train --resume RUN` with another option names the option as typed (`--epochs`), not
the config field it sets (QA round 57: "received: epochs_head")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from radlens.cli.main import app, main


def _train_options() -> list[tuple[list[str], str]]:
    """(arguments, the option the refusal must name) for every option of `radlens train`."""
    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    cases: list[tuple[list[str], str]] = []
    for param in train.params:
        if param.name in ("resume", "json_out", "help"):
            continue
        if getattr(param, "is_flag", False):
            cases.append(([param.opts[0]], param.opts[0]))
            if param.secondary_opts:  # --no-augment, --single-label, --keep-split
                cases.append(([param.secondary_opts[0]], param.secondary_opts[0]))
            continue
        cases.append(([param.opts[0], "1"], param.opts[0]))  # "1" is a valid value of each
    return cases


CASES = _train_options()


def test_the_options_are_found() -> None:
    named = {flag for _, flag in CASES}
    assert {"--epochs", "--image-size", "--config", "--no-augment", "--keep-split"} <= named


@pytest.mark.parametrize(("args", "flag"), CASES, ids=[flag for _, flag in CASES])
def test_resume_with_another_option_names_it_as_typed(
    args: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[Any]
) -> None:
    assert main(["train", "--resume", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radlens: error: --resume continues a run with its own config.json")
    assert f"(received: {flag})" in err, err
    assert len(err.splitlines()) == 1


def test_json_output_still_goes_with_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[Any]
) -> None:
    # --json only changes what is printed: not refused (the run folder is then checked)
    assert main(["train", "--resume", str(tmp_path / "not-a-run"), "--json"]) == 2
    err = capsys.readouterr().err
    assert "do not combine" not in err
    assert "not a radlens run directory" in err

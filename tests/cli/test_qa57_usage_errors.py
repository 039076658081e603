"""A bad option or value is one line, `radlens: error: ...`, and exit 2, as the README says of
every expected failure (QA round 57: typer printed a usage line, a hint and a six-line box)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("radlens: error: "), captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["train", "--epochs", "abc"], "'--epochs'"),
        (["train", "--image-size", "big"], "'--image-size'"),
        (["train", "--learning-rate", "fast"], "'--learning-rate'"),
        (["train", "--bogus"], "--bogus"),
        (["train", "--epochs"], "--epochs"),
        (["evaluate", "--data", "x", "--batch-size", "0"], "'--batch-size'"),
    ],
)
def test_a_bad_option_or_value_is_one_line_naming_it(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert says in line
    # what to do: the command's own help
    assert f"radlens {argv[0]} --help" in line


def test_a_missing_required_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate"]) == 2
    line = _one_error_line(capsys)
    assert "--data" in line


def test_an_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    line = _one_error_line(capsys)
    assert "trian" in line and "radlens --help" in line


def test_an_unknown_subcommand_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "lsit"]) == 2
    line = _one_error_line(capsys)
    assert "lsit" in line and "radlens models --help" in line


def test_help_and_a_bare_group_still_print_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    assert "--epochs" in capsys.readouterr().out
    assert main(["models"]) == 2  # no subcommand: the group's help, as before
    captured = capsys.readouterr()
    assert "list" in captured.out + captured.err
    assert "radlens: error" not in captured.err


def test_the_commands_own_refusals_and_exit_codes_are_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-folder"
    assert main(["train", "--data", str(missing)]) == 2
    assert "data path does not exist" in _one_error_line(capsys)
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("radlens ")

"""`radlens train --help` says where run directories go by default: under the current
directory, unlike the model store (QA 91: a series run started from its data's folder left
its run there, where `tensorboard --logdir runs` in the checkout never saw it, while its model
went to the checkout's store; the help said only "default runs/")."""

from __future__ import annotations

import typer

from radlens.cli.main import app


def test_the_runs_dir_help_says_the_default_is_under_the_current_directory() -> None:
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    [param] = [p for p in command.params if "--runs-dir" in getattr(p, "opts", [])]
    text = " ".join((param.help or "").split())
    assert "default runs/ under the current directory" in text, text

"""Shared CLI helpers: one-line errors and exit codes."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


class CliError(Exception):
    """An expected failure detected by the CLI itself (bad option, missing file)."""


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line message and exit status 2."""
    raise CliError(message)


def report_error(exc: BaseException) -> int:
    """Print one line for an exception and return the exit status.

    Expected failures (``CliError``, any ``models.errors.RadlensError``, a missing file,
    a bad value) exit 2; anything else is a bug in radlens and exits 1, still without a
    traceback unless ``RADLENS_DEBUG=1``.
    """
    from models.errors import RadlensError  # light module, no TensorFlow

    if isinstance(
        exc,
        CliError
        | RadlensError
        | FileNotFoundError
        | IsADirectoryError
        | NotADirectoryError
        | PermissionError,
    ):
        typer.echo(f"radlens: error: {_one_line(exc)}", err=True)
        return EXIT_BAD_INPUT
    if _debug():
        raise exc
    typer.echo(
        f"radlens: internal error: {type(exc).__name__}: {_one_line(exc)} "
        "(set RADLENS_DEBUG=1 for the traceback and please report it)",
        err=True,
    )
    return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _debug() -> bool:
    import os

    return os.environ.get("RADLENS_DEBUG", "") not in ("", "0")


def exit_with(code: int) -> NoReturn:
    sys.exit(code)

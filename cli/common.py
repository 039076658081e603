"""Shared CLI helpers: one-line errors and exit codes, the service settings with overrides."""

from __future__ import annotations

import errno
import os
import re
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from radlens.app.settings import Settings

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


class CliError(Exception):
    """An expected failure detected by the CLI itself (bad option, missing file)."""


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line message and exit status 2."""
    raise CliError(message)


def settings_for(**overrides: Any) -> Settings:
    """The service settings with the command's overrides (None = not given); a bad value is
    one line, exit 2."""
    from pydantic import ValidationError

    from radlens.app.settings import Settings, describe_validation_error

    values = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**values)
    except ValidationError as exc:
        fail(describe_validation_error(exc))


def report_error(exc: BaseException) -> int:
    """Print one line for an exception and return the exit status.

    Expected failures (``CliError``, any ``models.errors.RadlensError``, a missing file or
    any other ``OSError`` naming a path, a write refused for want of space, a bad value) exit
    2; anything else is a bug in radlens and exits 1, still without a traceback unless
    ``RADLENS_DEBUG=1``.
    """
    from radlens.models.errors import RadlensError  # light module, no TensorFlow

    if isinstance(
        exc,
        CliError
        | RadlensError
        | FileNotFoundError
        | IsADirectoryError
        | NotADirectoryError
        | PermissionError,
    ) or (isinstance(exc, OSError) and getattr(exc, "filename", None) is not None):
        # any other OSError naming a path (name too long, file exists, read-only file
        # system, disk full) is the environment's answer about that path, not a bug
        typer.echo(f"radlens: error: {_os_error(exc) or _one_line(exc)}", err=True)
        return EXIT_BAD_INPUT
    full = disk_full(exc)
    if full is not None:  # a write() that failed names no file, and is no bug either
        typer.echo(f"radlens: error: {describe_disk_full(full)}", err=True)
        return EXIT_BAD_INPUT
    if _debug():
        raise exc
    typer.echo(
        f"radlens: internal error: {type(exc).__name__}: {_one_line(exc)} "
        "(set RADLENS_DEBUG=1 for the traceback and please report it)",
        err=True,
    )
    return EXIT_INTERNAL


def report_usage_error(exc: typer.TyperException, command: str = "radlens") -> int:
    """Print one line for a bad option, value or command name (click's usage errors), with
    the help to read, and return exit status 2.

    ``command`` is the command the arguments named, for an error that carries no context
    (``--epochs`` given without its value). A group given no command has printed its help
    already (typer prints it while building the error): nothing more is said.
    """
    if type(exc).__name__ == "NoArgsIsHelpError":  # not exported by typer; typer checks so too
        shown = exc.format_message()
        if shown.strip():  # without rich, the help is the message
            typer.echo(shown, err=True)
        return EXIT_BAD_INPUT
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command_path:
        command = ctx.command_path
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message.endswith("?"):  # "No such command 'trian'. Did you mean 'train'?"
        line = f"{message} See '{command} --help'"
    else:
        line = f"{message}; see '{command} --help'"
    typer.echo(f"radlens: error: {line}", err=True)
    return EXIT_BAD_INPUT


_OS_ERROR_HINTS = (
    (FileNotFoundError, "no such file or folder; check the path"),
    (IsADirectoryError, "a folder; give a file"),
    (NotADirectoryError, "a part of the path is a file, not a folder; check the path"),
    (PermissionError, "permission denied; check the file's permissions or run as its owner"),
)


def _os_error(exc: BaseException) -> str | None:
    """The path and what to do for a file-system error (Python says "[Errno 2] No such file
    or directory: '...'"), or None for another exception."""
    filename = getattr(exc, "filename", None)
    if not isinstance(exc, OSError) or filename is None:
        return None
    shown = str(filename)
    if len(shown) > 200:  # e.g. ENAMETOOLONG: the path itself is the problem
        shown = f"{shown[:100]}...{shown[-40:]} ({len(shown)} characters)"
    for kind, hint in _OS_ERROR_HINTS:
        if isinstance(exc, kind):
            return f"{shown}: {hint}"
    reason = (exc.strerror or type(exc).__name__).lower()
    if exc.errno in DISK_FULL_ERRNOS:
        return f"{shown}: {reason}; {FREE_SPACE}"
    return f"{shown}: {reason}; check the path and the file system"


# the file system refused a write: full, over quota, or over the file size limit (ulimit -f)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
FREE_SPACE = (
    "free space on that file system (or raise its quota or the file size limit), then run the "
    "command again"
)
_H5_FILE = re.compile(r"filename = '([^']*)'")  # h5py: "file write failed: ..., filename = '...'"


def disk_full(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or the one it was raised from: pydicom re-raises a
    write's error with the tag it was writing) when a file system refused a write for want of
    space, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def written_file(exc: OSError) -> str | None:
    """The file a failed write was writing, when the error names it (h5py names it in its
    message only)."""
    if exc.filename2 is not None:  # a copy (shutil): filename2 is the file being written
        return str(exc.filename2)
    if exc.filename is not None:
        return str(exc.filename)
    found = _H5_FILE.search(str(exc))
    return found.group(1) if found else None


def describe_disk_full(exc: OSError, *, then: str | None = None, note: str = "") -> str:
    """One line for a write refused for want of space: the file (when known), ``note`` and
    what to do (``then``: after freeing space; by default, run the command again)."""
    filename = written_file(exc)
    where = f"writing {filename!r} failed" if filename else "a write failed"
    reason = os.strerror(exc.errno or errno.ENOSPC).lower() + (f" ({note})" if note else "")
    if then is None:
        return f"{where}: {reason}; {FREE_SPACE}"
    return f"{where}: {reason}; {FREE_SPACE.replace('run the command again', then)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _debug() -> bool:
    import os

    return os.environ.get("RADLENS_DEBUG", "") not in ("", "0")


MALLOC_KEEP_ENV = "RADLENS_MALLOC_KEEP_MIB"
# app.settings.Settings.malloc_keep_mib's default and bounds (not read from there: importing
# the service's settings costs ~0.6 s; tests/cli/test_qa106_cli.py checks they agree)
DEFAULT_MALLOC_KEEP_MIB = 64
MAX_MALLOC_KEEP_MIB = 4096


def keep_freed_memory_for_jobs() -> bool:
    """Tune glibc's malloc for a data job (train, evaluate, data-check) as the service tunes
    it at start-up (``app.memory.keep_freed_memory``, ``RADLENS_MALLOC_KEEP_MIB``, default 64,
    0 = glibc's defaults): every large radiograph is decoded through several multi-megabyte
    buffers, and with glibc's defaults each is faulted in afresh. Over real radiographs and CT
    (``bench/training_malloc.py``, QA round 106, two runs on a loaded 2-core machine) a
    training data pass -- the decode check at 32 px and a tf.data epoch at 224 px -- took
    0.83x and 0.94x the CPU with it (the check alone 0.75x, its 13,000 page faults gone), for
    a peak RSS 1.10x. True when applied; a value that is not a whole number of MiB in range
    is one line, exit 2."""
    raw = os.environ.get(MALLOC_KEEP_ENV, "").strip()
    try:
        keep = int(raw) if raw else DEFAULT_MALLOC_KEEP_MIB
    except ValueError:
        keep = -1
    if not 0 <= keep <= MAX_MALLOC_KEEP_MIB:
        fail(
            f"{MALLOC_KEEP_ENV} must be a whole number of MiB from 0 (glibc's defaults) to "
            f"{MAX_MALLOC_KEEP_MIB}; got {raw!r}"
        )
    from radlens.app.memory import keep_freed_memory  # ctypes only: no web stack

    return keep_freed_memory(keep)

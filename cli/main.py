"""The `radlens` command: one entry point for every job.

Each area registers its commands from its own module (``cli/imaging.py``, ``cli/training_cmds.py``,
...). Those modules import only typer and the standard library at import time and import
``app``, ``training`` or ``models`` inside the command bodies, so ``radlens inspect`` does not
load the web stack and ``radlens serve`` does not load the trainer.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from radlens.cli.common import report_error, report_usage_error

COMMAND_MODULES = (
    "radlens.cli.imaging",
    "radlens.cli.models_cmds",
    "radlens.cli.data_cmds",
    "radlens.cli.training_cmds",
    "radlens.cli.experiment_cmds",
    "radlens.cli.service_cmds",
    "radlens.cli.keys_cmds",
    "radlens.cli.audit_cmds",
    "radlens.cli.drift_cmds",
)

app = typer.Typer(
    name="radlens",
    help="radlens: medical imaging diagnosis (training, serving, inspection). "
    "Not for clinical use unless a model's manifest says it was validated.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """radlens: train, serve and inspect medical imaging models. Not for clinical use."""


@app.command("version")
def version() -> None:
    """Print the radlens, TensorFlow-free version string."""
    from importlib.metadata import version as dist_version

    typer.echo(f"radlens {dist_version('radlens')}")


def _register_commands(modules: tuple[str, ...] = COMMAND_MODULES) -> None:
    # Every listed module must exist: a mistyped name is an import error, not a silently
    # missing group of commands.
    for module_name in modules:
        importlib.import_module(module_name).register(app)


CLINICAL_NOTICE = "Not for clinical use unless a model's manifest says it was validated."


def _add_notice(group: typer.Typer) -> None:
    """Every command's and group's --help ends with the not-for-clinical-use notice, as the
    top-level help says it (an epilog a command sets itself is kept)."""
    for command in group.registered_commands:
        if not isinstance(command.epilog, str):
            command.epilog = CLINICAL_NOTICE
    for sub in group.registered_groups:
        if not isinstance(sub.epilog, str):
            sub.epilog = CLINICAL_NOTICE
        if sub.typer_instance is not None:
            _add_notice(sub.typer_instance)


_register_commands()
_add_notice(app)


def _command_path(argv: list[str]) -> str:
    """``radlens`` and the command and sub-command names ``argv`` starts with."""
    names = ["radlens"]
    command: Any = typer.main.get_command(app)
    for word in argv:
        commands = getattr(command, "commands", None)
        if not isinstance(commands, dict) or word not in commands:
            break
        names.append(word)
        command = commands[word]
    return " ".join(names)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected failures become one line on stderr and exit status 2."""
    try:
        # not standalone: a bad option or value comes back here as an exception rather than
        # being printed by typer as a usage line, a hint and a boxed message
        result = app(args=argv, prog_name="radlens", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except typer.TyperException as exc:  # click's usage errors: bad option, value, command
        return report_usage_error(exc, _command_path(sys.argv[1:] if argv is None else argv))
    except typer.Abort:  # a prompt's input ended (EOF), as typer reports it
        typer.echo("Aborted!", err=True)
        return 1
    except Exception as exc:  # the CLI boundary: no traceback for the user
        return report_error(exc)
    # an exit status (typer.Exit, Ctrl-C's 130) is returned, not raised, when not standalone;
    # the commands themselves return None
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Alembic, driven from code: upgrade, downgrade, current revision, and the start-up check.

The Config is built programmatically (script_location = the installed ``migrations``
package), so ``radlens db upgrade`` works from any directory and from an installed wheel.

Start-up policy (documented in the README's service section): a SQLite database is upgraded
to head automatically, because SQLite is the zero-setup default of a fresh clone and its file
belongs to this one service; a PostgreSQL database is shared by replicas and owned by an
operator, so the service refuses to start and says to run ``radlens db upgrade``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from radlens.app.db import make_engine
from radlens.app.errors import DatabaseNotMigratedError, DatabaseUnavailableError, MigrationError


def migrations_dir() -> Path:
    spec = importlib.util.find_spec("radlens.migrations")
    if spec is None or spec.origin is None:  # pragma: no cover - broken install
        raise DatabaseNotMigratedError("the 'migrations' package is not installed with radlens")
    return Path(spec.origin).parent


def alembic_config(database_url: str) -> Config:
    """An Alembic Config for ``database_url`` without any alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Passed as an attribute, not an ini option: configparser would choke on '%' in URLs.
    config.attributes["database_url"] = database_url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:  # pragma: no cover - migrations/versions is empty
        raise DatabaseNotMigratedError("no migration revisions found in migrations/versions")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(
            f"{_safe_url(engine)}: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def upgrade(database_url: str, revision: str = "head") -> None:
    _check_revision(revision)
    _run(database_url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(database_url: str, revision: str) -> None:
    _check_revision(revision)
    _run(database_url, lambda cfg: command.downgrade(cfg, revision))


def _check_revision(revision: str) -> None:
    # Alembic asserts on a blank revision (an AssertionError, not a CommandError)
    if not revision.strip():
        raise MigrationError(
            "the revision is empty; give head, base, a revision id such as 0013, or a "
            "relative step such as -1"
        )


def _run(database_url: str, action: Callable[[Config], None]) -> None:
    from alembic.util.exc import CommandError

    try:
        action(alembic_config(database_url))
    except CommandError as exc:
        raise MigrationError(_first_line(exc)) from exc
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(
            f"{_safe_url_str(database_url)}: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def ensure_schema(database_url: str, engine: Engine) -> str:
    """Make sure the database is at head before serving; returns the revision.

    SQLite is upgraded automatically; any other database must be upgraded by an operator.
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    if engine.dialect.name == "sqlite":
        upgrade(database_url, "head")
        return head
    raise DatabaseNotMigratedError(
        f"database {_safe_url(engine)} is at revision {current or 'none (empty)'}, "
        f"the code needs {head}: run `radlens db upgrade`"
    )


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _safe_url_str(database_url: str) -> str:
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by the settings validator
        return "<database url>"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "make_engine",
    "migrations_dir",
    "upgrade",
]

"""Alembic environment: runs radlens migrations against the URL given by app.migrate.

The Config is built in code (app/migrate.py), never from an alembic.ini, so migrations run
from any working directory and from the installed package. The target metadata is the
service's own (app.tables), which the autogenerate comparison test checks against.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import radlens.app.tables  # noqa: F401  (registers the tables on Base.metadata)
from radlens.app.db import Base, make_engine
from radlens.app.errors import MigrationError

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=sqlite,
        compare_type=True,
    )
    if not sqlite:
        with context.begin_transaction():
            context.run_migrations()
        return
    # A batch migration that rebuilds a table copies it, drops it and renames the copy; with
    # foreign keys on (app/db.py) the DROP TABLE deletes every row that references it by ON
    # DELETE CASCADE (rebuilding predictions lost every explanation and finding). SQLite
    # ignores this pragma inside a transaction: it is set on the driver's connection before
    # the migration's transaction begins, and the references are checked before it commits.
    # Only what the migration broke stops it: a row already referencing a missing one (a
    # prediction deleted with the sqlite3 shell, whose foreign keys are off) is not its doing.
    _foreign_keys(connection, on=False)
    try:
        with context.begin_transaction():
            before = _broken_references(connection)
            context.run_migrations()
            after = _broken_references(connection)
            new = {t: n - before.get(t, 0) for t, n in after.items() if n > before.get(t, 0)}
            if new:
                raise MigrationError(
                    f"the migration left {sum(new.values())} row(s) referencing a missing row "
                    f"(table {', '.join(sorted(new))}); it was rolled back"
                )
    finally:
        _foreign_keys(connection, on=True)


def _broken_references(connection: Connection) -> dict[str, int]:
    """SQLite's ``PRAGMA foreign_key_check``: per table, how many rows reference a missing
    row."""
    counts: dict[str, int] = {}
    for row in connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall():
        counts[row[0]] = counts.get(row[0], 0) + 1
    return counts


def _foreign_keys(connection: Connection, *, on: bool) -> None:
    """Set SQLite's foreign key enforcement on the driver's connection, outside any
    transaction (the driver runs in autocommit: app/db.py)."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cursor.close()


def run_migrations_offline() -> None:
    context.configure(
        url=config.attributes["database_url"],
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.attributes["database_url"])
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

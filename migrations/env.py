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

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


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

"""`radlens serve` and `radlens db upgrade|downgrade|current`.

Imports only typer and the standard library at module level; the web stack, SQLAlchemy and
Alembic are imported inside the commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from radlens.cli.common import fail, settings_for

if TYPE_CHECKING:
    pass

db_app = typer.Typer(
    help="Database schema migrations (Alembic). PostgreSQL must be upgraded before serving; "
    "the default SQLite database is upgraded automatically at start-up.",
    no_args_is_help=True,
)

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL; default RADLENS_DATABASE_URL, else SQLite under var/.",
        show_default=False,
    ),
]


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: Annotated[str | None, typer.Option(help="Bind address [RADLENS_HOST].")] = None,
        port: Annotated[int | None, typer.Option(help="Port [RADLENS_PORT].")] = None,
        workers: Annotated[
            int | None, typer.Option(help="Worker processes [RADLENS_WORKERS].")
        ] = None,
        reload: Annotated[
            bool, typer.Option("--reload/--no-reload", help="Restart on code changes (dev).")
        ] = False,
    ) -> None:
        """Run the prediction service (uvicorn on app.main:create_app).

        Checks the configuration, the database and the model first, so a missing, corrupt or
        incompatible model or an un-migrated database stops here with one line (exit 2).
        """
        settings = settings_for(host=host, port=port, workers=workers)
        if reload and settings.workers > 1:
            fail(f"--reload runs one process; drop --workers. Received: workers={settings.workers}")

        import logging

        import uvicorn

        from radlens.app.startup import preflight

        report = preflight(settings)
        logging.basicConfig(
            level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
            format="%(levelname)s:     %(name)s: %(message)s",
        )
        typer.echo(
            f"radlens: serving model {report.model.ref} on http://{settings.host}:{settings.port} "
            f"(database {_safe(settings.database_url)}, schema {report.schema_revision})",
            err=True,
        )
        try:
            uvicorn.run(
                "radlens.app.main:create_app",
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=settings.workers if not reload else None,
                reload=reload,
                log_level=settings.log_level,
                access_log=settings.access_log,  # RADLENS_ACCESS_LOG; off: no raw query strings
            )
        except SystemExit as exc:
            if exc.code not in (0, None):
                fail(f"the service stopped during start-up (uvicorn exit status {exc.code})")
            raise

    @db_app.command("upgrade")
    def db_upgrade(
        revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
        database_url: DatabaseUrlOption = None,
    ) -> None:
        """Upgrade the database schema (default: to the newest revision)."""
        from radlens.app import migrate

        settings = settings_for(database_url=database_url)
        migrate.upgrade(settings.database_url, revision)
        typer.echo(f"database {_safe(settings.database_url)} upgraded to {revision}")

    @db_app.command("downgrade")
    def db_downgrade(
        revision: Annotated[str, typer.Argument(help="Target revision, e.g. base or -1.")],
        database_url: DatabaseUrlOption = None,
    ) -> None:
        """Downgrade the database schema to REVISION ('base' drops every radlens table)."""
        from radlens.app import migrate

        settings = settings_for(database_url=database_url)
        migrate.downgrade(settings.database_url, revision)
        typer.echo(f"database {_safe(settings.database_url)} downgraded to {revision}")

    @db_app.command("current")
    def db_current(database_url: DatabaseUrlOption = None) -> None:
        """Print the database's revision and the code's head revision."""
        from radlens.app import migrate

        settings = settings_for(database_url=database_url)
        engine = migrate.make_engine(settings.database_url)
        try:
            current = migrate.current_revision(engine)
        finally:
            engine.dispose()
        head = migrate.head_revision()
        state = "up to date" if current == head else "run `radlens db upgrade`"
        typer.echo(f"current: {current or 'none (empty database)'}; head: {head} ({state})")

    app.add_typer(db_app, name="db")

"""`radlens serve` and `radlens db upgrade|downgrade|current`.

Imports only typer and the standard library at module level; the web stack, SQLAlchemy and
Alembic are imported inside the commands.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from radlens.cli.common import fail, settings_for

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


def _url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, as it was again afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


LOG_FORMAT = "%(levelname)s:     %(name)s: %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's own logging configuration plus a root handler in radlens' format at ``level``
    (a ``logging.config.dictConfig`` dict, as ``uvicorn.run(log_config=...)`` takes it)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["radlens"] = {"format": LOG_FORMAT}
    config["handlers"]["radlens"] = {
        "class": "logging.StreamHandler",
        "formatter": "radlens",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["radlens"], "level": level}
    # alembic announces each of its plugins when first imported (in a worker: after this)
    config["loggers"]["alembic.runtime.plugins"] = {"level": "WARNING"}
    return config


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

        Checks the configuration, the addresses and ports (HTTP and DICOM), the spool
        directories, the database and the model first, so a typo, a port in use, a missing,
        corrupt or incompatible model or an un-migrated database stops here with one line
        (exit 2), before the model is loaded. --host/--port/--workers override RADLENS_HOST,
        RADLENS_PORT and RADLENS_WORKERS, whose values are then ignored.
        """
        settings = settings_for(host=host, port=port, workers=workers)
        if reload and settings.workers > 1:
            fail(f"--reload runs one process; drop --workers. Received: workers={settings.workers}")
        flags = {
            field: flag
            for field, flag, value in (("host", "--host", host), ("port", "--port", port))
            if value is not None
        }

        import logging

        import uvicorn

        from radlens.app.httpserver import HTTP_PROTOCOL
        from radlens.app.startup import check_listeners, preflight

        # the addresses, ports and spool directories first (milliseconds), then the database
        # and the model artifact: each a one-line error naming the variable or flag
        report = preflight(settings, flags=flags)
        level = settings.log_level.upper() if settings.log_level != "trace" else "DEBUG"
        logging.basicConfig(level=level, format=LOG_FORMAT)
        typer.echo(
            f"radlens: serving model {report.model.ref} on {_url(settings.host, settings.port)} "
            f"(database {_safe(settings.database_url)}, schema {report.schema_revision})",
            err=True,
        )
        # The app (uvicorn's factory, in this process or in each worker) reads its settings
        # from the environment again: the flags' values go there, so a variable they override
        # is ignored, as it was here.
        overridden = {"host": settings.host, "port": settings.port, "workers": settings.workers}
        try:
            with _environment({f"RADLENS_{k.upper()}": str(v) for k, v in overridden.items()}):
                uvicorn.run(
                    "radlens.app.main:create_app",
                    factory=True,
                    host=settings.host,
                    port=settings.port,
                    workers=settings.workers if not reload else None,
                    reload=reload,
                    log_level=settings.log_level,
                    access_log=settings.access_log,  # RADLENS_ACCESS_LOG; off: no raw queries
                    # applied by uvicorn here and in each worker process it spawns, whose root
                    # logger would otherwise have no handler: radlens' own INFO lines were lost
                    # with --workers 2, its warnings printed without level or logger
                    log_config=log_config(level),
                    http=HTTP_PROTOCOL,  # httptools with a head size limit and timeout
                )
        except SystemExit as exc:
            if exc.code not in (0, None):
                # uvicorn binds after the lifespan loaded the model: a port another process
                # took in the meantime is named here (uvicorn's own line says only the errno)
                check_listeners(settings, flags=flags)
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

"""`radlens keys create|list|revoke`: API keys for the service (docs/security.md).

A key is printed once, at creation; the database keeps only its sha256. Imports only typer
and the standard library at module level; the database code is imported inside commands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from radlens.cli.common import settings_for

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


keys_app = typer.Typer(
    help="API keys: every /v1 and /dicomweb request sends one as 'Authorization: Bearer <key>'.",
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
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextmanager
def database_session(database_url: str) -> Iterator[Session]:
    """A session on a database at the migration head (SQLite is upgraded, as at start-up);
    committed when the block succeeds."""
    from sqlalchemy.exc import OperationalError

    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.errors import DatabaseUnavailableError
    from radlens.app.migrate import ensure_schema

    engine = make_engine(database_url)
    try:
        ensure_schema(database_url, engine)
        with make_sessionmaker(engine)() as session:
            try:
                yield session
                session.commit()
            except OperationalError as exc:  # read-only, locked, disk full, connection lost
                # the first line only: the statement's parameters (a key's hash) stay out
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise DatabaseUnavailableError(
                    f"{engine.url.render_as_string(hide_password=True)}: {reason}; nothing "
                    "was written"
                ) from exc
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    @keys_app.command("create")
    def create(
        name: Annotated[str, typer.Option("--name", help="Who or what uses the key.")],
        scopes: Annotated[
            str,
            typer.Option("--scopes", help="Comma-separated: predict (POST), read (GET)."),
        ] = "predict,read",
        database_url: DatabaseUrlOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Create a key and print it once (only its hash is stored)."""
        from radlens.app import audit
        from radlens.app.keys import create_key

        settings = settings_for(database_url=database_url)
        with database_session(settings.database_url) as session:
            key = create_key(session, name=name, scopes=scopes)
            audit.record(
                session, actor=audit.CLI_ACTOR, action="key.create", target=key.key_id, status=201
            )
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "key_id": key.key_id,
                        "name": key.name,
                        "scopes": list(key.scopes),
                        "key": key.secret,
                    }
                )
            )
            return
        typer.echo(key.secret)
        typer.echo(
            f"radlens: created key {key.key_id} ({key.name}; scopes {','.join(key.scopes)}). "
            "It is shown only now: store it; send it as 'Authorization: Bearer <key>'.",
            err=True,
        )

    @keys_app.command("list")
    def list_(database_url: DatabaseUrlOption = None, as_json: JsonOption = False) -> None:
        """List keys (id, name, scopes, created, revoked); never the keys themselves."""
        from radlens.app.keys import list_keys

        settings = settings_for(database_url=database_url)
        with database_session(settings.database_url) as session:
            rows: list[dict[str, Any]] = [
                {
                    "key_id": k.key_id,
                    "name": k.name,
                    "scopes": sorted(k.scope_set),
                    "created_at": k.created_at.isoformat(),
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for k in list_keys(session)
            ]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo("no API keys: create one with `radlens keys create --name NAME`")
            return
        for row in rows:
            state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
            typer.echo(
                f"{row['key_id']}  {row['name']:<24} {','.join(row['scopes']):<20} "
                f"created {row['created_at']}  {state}"
            )

    @keys_app.command("revoke")
    def revoke(
        key_id: Annotated[str, typer.Argument(help="The key id shown by `radlens keys list`.")],
        database_url: DatabaseUrlOption = None,
    ) -> None:
        """Revoke a key: the service refuses it (401) within RADLENS_AUTH_CACHE_TTL_S (5 s).

        Each service process keeps a verified key cached that long; with 0, the key is refused
        from the next request on. Its /ui sessions are deleted with it, at once."""
        from radlens.app import audit
        from radlens.app.keys import revoke_key

        settings = settings_for(database_url=database_url)
        with database_session(settings.database_url) as session:
            revoked = revoke_key(session, key_id)
            # one transaction: the revocation, its deleted sessions and this row, or nothing
            audit.record(
                session,
                actor=audit.CLI_ACTOR,
                action="key.revoke",
                target=revoked.key.key_id,
                status=200,
                query=f"ui_sessions={revoked.ui_sessions}",
            )
        row = revoked.key
        ended = revoked.ui_sessions
        sessions = f"; {ended} /ui session{'s' if ended != 1 else ''} ended" if ended else ""
        typer.echo(f"revoked key {row.key_id} ({row.name}){sessions}")

    app.add_typer(keys_app, name="keys")

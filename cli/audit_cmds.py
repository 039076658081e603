"""`radlens audit` (read the audit trail) and `radlens purge` (retention).

Imports only typer and the standard library at module level.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from radlens.cli.common import fail, settings_for
from radlens.cli.keys_cmds import DatabaseUrlOption, JsonOption, database_session

_RELATIVE = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``24h``, ``7d`` (before now) or an ISO 8601 time (UTC when no zone is given)."""
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        try:
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:  # before the year 1 (or beyond a C int of days)
            fail(
                f"--since {text.strip()!r} reaches back before any date; give a shorter "
                "duration or an ISO 8601 time like 2026-11-26T21:00:00Z"
            )
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(
            "--since must be a duration like 30m, 24h, 7d or an ISO 8601 time like "
            f"2026-11-26T21:00:00Z. Received: {text!r}"
        )
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def register(app: typer.Typer) -> None:
    @app.command("audit")
    def audit_(
        since: Annotated[
            str | None,
            typer.Option(
                help="Only events at or after this: 24h, 7d or an ISO 8601 time (UTC unless "
                "it carries an offset, e.g. 2026-03-29T03:00:00+02:00)."
            ),
        ] = None,
        action: Annotated[
            str | None,
            typer.Option(help="Only this action, e.g. prediction.create, prediction.read."),
        ] = None,
        actor: Annotated[str | None, typer.Option(help="Only this API key id (or 'cli').")] = None,
        limit: Annotated[
            int,
            typer.Option(
                min=1,
                max=100_000,
                help="At most this many: the newest that match, printed oldest first (a note "
                "on stderr says when older ones were left out).",
            ),
        ] = 1000,
        database_url: DatabaseUrlOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Show the audit trail (newest last): who did what to which prediction, and the outcome."""
        from radlens.app.audit import AuditFilter, events

        where = AuditFilter(
            since=parse_since(since) if since is not None else None,
            action=action,
            actor=actor,
            limit=limit + 1,  # one more than shown: whether older events were left out
        )
        settings = settings_for(database_url=database_url)
        with database_session(settings.database_url) as session:
            matched = events(session, where)
            left_out = len(matched) > limit
            rows = [
                {
                    "id": e.id,
                    "at": e.at.isoformat(),
                    "actor": e.actor,
                    "action": e.action,
                    "target": e.target,
                    "query": e.query,
                    "status": e.status,
                }
                for e in matched[-limit:]
            ]
        if left_out:
            typer.echo(
                f"radlens: showing the newest {limit} matching audit events; older ones match "
                "too (raise --limit, or narrow with --since, --action or --actor)",
                err=True,
            )
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            extra = f" ?{row['query']}" if row["query"] else ""
            typer.echo(
                f"{row['at']}  {row['actor'] or '-':<12} {row['action']:<20} "
                f"{row['status']}  {row['target'] or '-'}{extra}"
            )
        if not rows:
            typer.echo("no audit events match", err=True)

    @app.command("purge")
    def purge(
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
        ] = False,
        retention_days: Annotated[
            int | None,
            typer.Option(
                "--retention-days", min=1, help="Override RADLENS_RETENTION_DAYS for this run."
            ),
        ] = None,
        batch_size: Annotated[
            int,
            typer.Option(
                "--batch-size", min=1, max=100_000, help="Predictions deleted per transaction."
            ),
        ] = 1000,
        database_url: DatabaseUrlOption = None,
    ) -> None:
        """Delete predictions older than RADLENS_RETENTION_DAYS and all radlens keeps of them.

        With them go their explanations, findings, series records and queued SR/SC in the
        outbox (each deletion is audited). Run it where the service's spool directories are
        mounted."""
        from radlens.app import audit

        settings = settings_for(database_url=database_url, retention_days=retention_days)
        days = settings.retention_days
        if days == 0:
            fail(
                "RADLENS_RETENTION_DAYS is 0 (keep predictions forever): set it, or pass "
                "--retention-days N, to purge"
            )
        from sqlalchemy.exc import OperationalError

        from radlens.app.db import utcnow

        now = utcnow()  # also the `at` of this run's prediction.purge rows
        with database_session(settings.database_url) as session:
            # the schema checked (and SQLite upgraded) once; each batch is a transaction of its own
            sessionmaker = _sessionmaker_of(session)
            try:
                counts = audit.retention_purge(
                    sessionmaker,
                    retention_days=days,
                    outbox_dir=settings.dicom_outbox_dir,
                    inbox_dir=settings.dimse_inbox_dir,
                    now=now,
                    dry_run=dry_run,
                    batch_size=batch_size,
                    inbox_key=settings.uid_pseudonym_key_bytes,
                )
            except OperationalError as exc:  # locked, disk full, connection lost
                if dry_run:
                    raise  # wrote nothing: database_session says so
                url = session.get_bind().engine.url.render_as_string(hide_password=True)
                raise _purge_failed(sessionmaker, url, now, exc) from exc
        verb = "would delete" if dry_run else "deleted"
        typer.echo(
            f"{verb} {counts.predictions} prediction(s) older than {days} day(s), with "
            f"{counts.explanations} explanation(s), {counts.findings} finding row(s) and "
            f"{counts.series} series record(s); {counts.outbox_entries} queued SR/SC outbox "
            f"entr{'y' if counts.outbox_entries == 1 else 'ies'} "
            f"{'to drop' if dry_run else 'dropped'} undelivered; "
            f"{counts.inbox_files} unreadable DIMSE inbox file(s), {counts.inbox_predicted} "
            f"queued one(s) of purged predictions; {counts.orphans} orphaned "
            "explanation/finding row(s)"
        )
        if counts.outbox_busy:
            typer.echo(
                f"radlens: {counts.outbox_busy} outbox entr"
                f"{'y' if counts.outbox_busy == 1 else 'ies'} of purged predictions were being "
                "sent by the service; run `radlens purge` again to drop any not delivered",
                err=True,
            )


def _purge_failed(sessionmaker: Any, url: str, now: datetime, exc: Exception) -> Exception:
    """The error of a purge that failed part-way: its batches committed before the failure
    stay deleted (QA 62: it said "nothing was written"), counted by this run's audit rows."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from radlens.app.audit import CLI_ACTOR, PREDICTION_PURGE
    from radlens.app.errors import DatabaseUnavailableError
    from radlens.app.security_tables import AuditEvent

    # the first line only, as database_session does: the statement's parameters stay out
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        with sessionmaker() as session:
            deleted: int | None = session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.action == PREDICTION_PURGE,
                    AuditEvent.actor == CLI_ACTOR,
                    AuditEvent.at == now,
                )
            )
    except SQLAlchemyError:  # the database is still out of reach
        deleted = None
    done = (
        "the batches committed before it stay deleted (`radlens audit --action "
        "prediction.purge` lists them)"
        if deleted is None
        else f"{deleted} prediction(s) were deleted (the batches committed before it)"
    )
    return DatabaseUnavailableError(
        f"{url}: {reason}; the purge stopped part-way: {done}, the others not, each prediction "
        "whole or gone; run `radlens purge` again to finish"
    )


def _sessionmaker_of(session: Any) -> Any:
    """A sessionmaker on ``session``'s engine (the one `database_session` opened)."""
    from radlens.app.db import make_sessionmaker

    return make_sessionmaker(session.get_bind())

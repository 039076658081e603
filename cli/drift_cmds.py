"""`radlens drift`: the stored predictions of a model since a time, against the reference
distributions its manifest carries (app/drift.py): their scores, labels and input intensity
statistics (stored per prediction since 0014; older rows count for the scores only), read
as the service's drift window reads them (app.drift.recent).

Imports only typer and the standard library at module level.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from radlens.cli.audit_cmds import parse_since
from radlens.cli.common import fail, settings_for
from radlens.cli.keys_cmds import DatabaseUrlOption, JsonOption, database_session

MAX_ROWS = 1_000_000


def register(app: typer.Typer) -> None:
    @app.command("drift")
    def drift(
        since: Annotated[
            str,
            typer.Option(
                help="Predictions at or after this: 24h, 7d or an ISO 8601 time (UTC unless it "
                "carries an offset, e.g. 2026-03-29T03:00:00+02:00)."
            ),
        ] = "7d",
        model: Annotated[
            str | None,
            typer.Option(help="NAME or NAME:VERSION; default RADLENS_MODEL, else the newest."),
        ] = None,
        database_url: DatabaseUrlOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Compare a model's recent scores, inputs and labels with its training reference.

        Scores, input statistics and label rates, by PSI and KS per feature; it says which
        changed."""
        from radlens.app.drift import reference_of, summarise
        from radlens.app.startup import registry_for

        start = parse_since(since)
        settings = settings_for(database_url=database_url)
        registry = registry_for(settings)
        name, version = registry.resolve(model or settings.model)
        manifest = registry.check_seal(name, version)
        reference = reference_of(manifest)
        if reference is None:
            fail(
                f"model {manifest.ref} has no drift reference in its manifest (exported before "
                "radlens wrote one); retrain it to get one"
            )
        from radlens.app.drift import recent

        with database_session(settings.database_url) as session:
            rows = recent(
                session,
                manifest.name,
                manifest.version,
                manifest.class_names,
                limit=MAX_ROWS,
                since=start,
            )
        summary = {
            "model": manifest.ref,
            "since": start.isoformat(),
            **summarise(
                reference,
                manifest.class_names,
                rows.scores,
                rows.features,
                rows.labels,
                finding_thresholds=(manifest.finding_thresholds if manifest.multi_label else None),
            ),
        }
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        _print(summary)


def _print(summary: dict[str, Any]) -> None:
    typer.echo(
        f"model {summary['model']}: {summary['n']} prediction(s) since {summary['since']}, "
        f"reference: {summary['reference']['split']} split "
        f"({summary['reference']['split_size']} images)"
    )
    for feature in summary["features"]:
        typer.echo(
            f"  {feature['feature']:<24} PSI {feature['psi']:.3f}  KS {feature['ks']:.3f}"
            + ("  DRIFTED" if feature["drifted"] else "")
        )
    for label, pair in summary["label_rates"].items():
        recent = "-" if pair["recent"] is None else f"{pair['recent']:.3f}"
        reference = "-" if pair["reference"] is None else f"{pair['reference']:.3f}"
        typer.echo(f"  label {label:<18} recent {recent}  reference {reference}")
    status = summary["status"]
    if status == "collecting":
        typer.echo(f"too few predictions to compare (need {summary['min_samples']})")
    elif status == "drift":
        typer.echo(f"drift: {', '.join(summary['drifted'])} changed (PSI >= 0.2)")
    else:
        typer.echo("stable: no distribution changed (every PSI below 0.2)")

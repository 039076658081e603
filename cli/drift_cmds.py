"""`radlens drift`: the stored predictions of a model since a time, against the reference
distributions its manifest carries (app/drift.py; scores and labels only: the database keeps
no input pixels, so the input statistics are the service's, on /metrics and GET /v1/drift).

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
            str, typer.Option(help="Predictions after this: 24h, 7d or an ISO 8601 time.")
        ] = "7d",
        model: Annotated[
            str | None,
            typer.Option(help="NAME or NAME:VERSION; default RADLENS_MODEL, else the newest."),
        ] = None,
        database_url: DatabaseUrlOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Compare a model's recent scores and label rates with its training reference
        (PSI and KS per class score) and say which changed."""
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
        with database_session(settings.database_url) as session:
            scores, labels = _recent(session, manifest.name, manifest.version, start)
        import numpy as np

        matrix = np.asarray(
            [[float(s.get(c, 0.0)) for c in manifest.class_names] for s in scores]
        ).reshape(-1, len(manifest.class_names))
        summary = {
            "model": manifest.ref,
            "since": start.isoformat(),
            **summarise(reference, manifest.class_names, matrix, None, labels),
        }
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        _print(summary)


def _recent(session: Any, name: str, version: int, start: Any) -> tuple[list[Any], list[str]]:
    from sqlalchemy import select

    from radlens.app.tables import Prediction

    stmt = (
        select(Prediction.scores, Prediction.label)
        .where(
            Prediction.model_name == name,
            Prediction.model_version == version,
            Prediction.created_at >= start,
        )
        .order_by(Prediction.created_at.desc())
        .limit(MAX_ROWS)
    )
    rows = session.execute(stmt).all()
    return [dict(r.scores) for r in rows], [str(r.label) for r in rows]


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
        typer.echo("stable: no score distribution changed (every PSI below 0.2)")

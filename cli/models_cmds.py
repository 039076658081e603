"""Model store commands: ``radlens models list`` and ``radlens models show NAME[:VERSION]``.

Only typer and the standard library are imported here; ``models.registry`` (numpy, no
TensorFlow until a model is loaded) is imported inside the command bodies, so listing the
store is fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from models.manifest import ModelManifest
    from models.registry import ModelRegistry

StoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Model store directory (default: $RADLENS_MODEL_STORE, else models/store).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

models_app = typer.Typer(
    name="models",
    help="List and show the models in the model store.",
    no_args_is_help=True,
)


def _registry(store: Path | None) -> ModelRegistry:
    from models.registry import ModelRegistry, default_store_path

    return ModelRegistry(store if store is not None else default_store_path())


def val_auc(manifest: ModelManifest) -> float | None:
    """The validation AUC recorded in a manifest (``metrics.val.auc``), if any."""
    value = manifest.metrics.get("val", {}).get("auc")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _format_auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@models_app.command("list")
def list_models(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List every model version in the store, with classes and validation AUC."""
    registry = _registry(store)
    manifests = registry.list()
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in manifests], indent=2))
        return
    if not manifests:
        typer.echo(f"no models in {registry.root}")
        return
    rows = [["NAME", "VERSION", "ARCHITECTURE", "CREATED", "CLASSES", "VAL AUC"]]
    for m in manifests:
        rows.append(
            [
                m.name,
                str(m.version),
                m.architecture,
                m.created_at[:19].replace("T", " "),
                ",".join(m.class_names),
                _format_auc(val_auc(m)),
            ]
        )
    typer.echo(_table(rows))


def _text(manifest: ModelManifest, path: Path) -> str:
    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, dict | list):
            return json.dumps(value, sort_keys=True) if value else "-"
        return str(value)

    lines = [
        f"model: {manifest.ref}",
        f"path: {path}",
        f"created: {manifest.created_at}",
        f"architecture: {manifest.architecture}",
        f"input shape: {'x'.join(str(d) for d in manifest.input_shape)}",
        f"classes: {', '.join(manifest.class_names)}",
        f"threshold: {fmt(manifest.threshold)}",
        f"preprocessing version: {manifest.preprocessing_version}",
        f"window: {fmt(manifest.window)}",
        f"filters: {', '.join(manifest.filters) or '-'}",
    ]
    for split, values in sorted(manifest.metrics.items()):
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={fmt(v)}"
            for k, v in sorted(values.items())
        )
        lines.append(f"metrics ({split}): {shown or '-'}")
    lines += [
        f"data fingerprint: {fmt(manifest.data_fingerprint)}",
        "frameworks: "
        + ", ".join(f"{k} {v}" for k, v in sorted(manifest.framework_versions.items())),
        f"model sha256: {manifest.model_sha256}",
        "validated for clinical use: "
        + ("yes" if manifest.validated_for_clinical_use else "no (not for clinical use)"),
        f"training config: {fmt(manifest.training_config)}",
    ]
    if manifest.description:
        lines.append(f"description: {manifest.description}")
    return "\n".join(lines)


@models_app.command("show")
def show_model(
    ref: Annotated[
        str, typer.Argument(metavar="NAME[:VERSION]", help="Model name, optionally :version.")
    ],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Also check model.keras against the manifest's sha256."),
    ] = False,
) -> None:
    """Show a model's manifest (newest version when no :VERSION is given)."""
    registry = _registry(store)
    name, version = registry.resolve(ref)
    read = registry.verify if verify else registry.read_manifest
    manifest = read(name, version)
    path = registry.root / name / str(version)
    if as_json:
        typer.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    typer.echo(_text(manifest, path))
    if verify:
        typer.echo("integrity: model.keras matches the manifest's sha256")


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to the ``radlens`` command."""
    app.add_typer(models_app, name="models")

"""Model store commands: ``radlens models list``, ``show NAME[:VERSION]``, ``convert`` (add an
OpenVINO runtime with measured parity), ``ood`` (add an out-of-distribution detector) and
``seal`` (seal a legacy or deliberately edited manifest).

Only typer and the standard library are imported here; ``models.registry`` (numpy, no
TensorFlow until a model is loaded) is imported inside the command bodies, so listing the
store is fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from radlens.cli.common import fail

if TYPE_CHECKING:
    from radlens.models.manifest import ModelManifest
    from radlens.models.registry import ModelRegistry

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
    help=(
        "List, show, convert, add OOD detectors to, seal and finish the models in the model store."
    ),
    no_args_is_help=True,
)


def _registry(store: Path | None) -> ModelRegistry:
    from radlens.models.registry import ModelRegistry, default_store_path

    if store is not None and store.exists() and not store.is_dir():
        fail(f"--store {str(store)!r} is a file, not a folder; give the model store folder")
    return ModelRegistry(store if store is not None else default_store_path())


def _named(ref: str) -> str:
    """NAME[:VERSION] as given; a blank one (an unset shell variable) is refused rather than
    taken for the newest model, which these commands would then change or describe."""
    if not ref.strip():
        fail("NAME[:VERSION] is empty; name the model (`radlens models list` shows them)")
    return ref


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
    states = {m.ref: registry.unfinished(m.name, m.version) for m in manifests}
    if as_json:
        listed = [
            {**m.to_dict(), **({"unfinished": states[m.ref]} if states[m.ref] else {})}
            for m in manifests
        ]
        typer.echo(json.dumps(listed, indent=2))
        return
    if not manifests:
        typer.echo(f"no models in {registry.root}")
        return
    rows = [["NAME", "VERSION", "ARCHITECTURE", "CREATED", "CLASSES", "VAL AUC"]]
    for m in manifests:
        rows.append(
            [
                m.name,
                str(m.version) + (f" (unfinished: {states[m.ref]})" if states[m.ref] else ""),
                m.architecture,
                _created_utc(m.created_at),
                ",".join(m.class_names),
                _format_auc(val_auc(m)),
            ]
        )
    typer.echo(_table(rows))


def _created_utc(created_at: str) -> str:
    """A manifest's ``created_at`` in UTC to the second, saying so (``2026-12-07 18:19:43
    UTC``): the manifest's own offset may be another (a loaded manifest always has one), and
    a time cut from it would read as local."""
    from datetime import UTC, datetime

    stamp = datetime.fromisoformat(created_at)
    if stamp.tzinfo is None:  # not loadable, but never shown as another zone's time
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
    if manifest.multi_label:  # independent scores, a threshold per finding
        cuts = ", ".join(f"{k} {v:.4g}" for k, v in manifest.finding_thresholds.items())
        lines.append(f"findings (multi-label, independent scores): thresholds {cuts}")
    lines += _use_and_data_lines(manifest)
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
        *_runtime_lines(manifest),
        "validated for clinical use: "
        + ("yes" if manifest.validated_for_clinical_use else "no (not for clinical use)"),
        f"training config: {fmt(manifest.training_config)}",
    ]
    if manifest.description:
        lines.append(f"description: {manifest.description}")
    return "\n".join(lines)


def _use_and_data_lines(manifest: ModelManifest) -> list[str]:
    """What the service gates on (intended use, OOD detector) and how the model was
    calibrated and split, in a line each (found missing by QA 32: only --json showed them)."""
    lines = []
    use = manifest.intended_use
    if use is None:
        lines.append("intended use: not stated (the gate accepts any image)")
    else:
        accepts = use.get("accepts") or {}
        shown = "; ".join(
            f"{key.replace('_', ' ')} {', '.join(values)}" for key, values in accepts.items()
        )
        lines.append(f"intended use: {shown or 'any image'} (from {use.get('source', '?')})")
    ood = manifest.ood
    if ood:
        flagged = ood.get("val_flagged_fraction")
        threshold = ood.get("threshold")
        lines.append(
            f"OOD detector: {ood.get('method')}"
            + (f", threshold {threshold:.6g}" if isinstance(threshold, int | float) else "")
            + (f", {flagged:.1%} of validation flagged" if isinstance(flagged, float) else "")
        )
        lines.append(f"OOD layers: {ood_layers(ood)}")
    else:
        lines.append("OOD detector: none (no out-of-distribution check)")
    calibration = manifest.calibration
    if calibration:
        details = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in calibration.items()
            if k != "method"
        )
        lines.append(f"calibration: {calibration.get('method')} ({details})")
    split = manifest.data_split
    if split:
        sizes = split.get("sizes") or {}
        lines.append(
            f"data split: {split.get('method', '?')}; "
            + ", ".join(f"{k} {v}" for k, v in sizes.items())
        )
    leakage = manifest.leakage_check
    if leakage:
        verdict = "passed" if leakage.get("passed") else "FAILED"
        lines.append(
            f"leakage check: {verdict} ({leakage.get('patients_in_two_splits', '?')} patients "
            "in two splits)"
        )
    return lines


def ood_layers(ood: dict[str, Any]) -> str:
    """The layers a manifest's OOD detector reads (``ood.layers``, a
    models.ood.LayeredOodDetector's, in feature order, each at its own level); a detector
    without them reads the last convolutional layer (an ensemble's: each member's)."""
    layers = ood.get("layers")
    if layers:
        level = ood.get("layer_quantile")
        shown = f"the {level:.2%} level" if isinstance(level, int | float) else "its own level"
        return (
            f"{', '.join(str(layer) for layer in layers)}, one detector each at {shown}; an "
            "image is flagged when any layer flags it"
        )
    if ood.get("members"):  # models.ood.EnsembleOodDetector
        return "each member's last convolutional layer"
    return "the last convolutional layer"


def _runtime_lines(manifest: ModelManifest) -> list[str]:
    from radlens.models.runtime import recorded_parity

    lines = []
    for runtime, entry in sorted(manifest.runtimes.items()):
        lines.append(
            f"runtime {runtime}: {', '.join(sorted(entry['files']))} "
            f"({entry.get('openvino_version', '?')}, CPU {entry.get('cpu', '?')})"
        )
        for precision in ("fp32", "bf16"):
            parity = recorded_parity(manifest, precision)
            shown = parity.summary() if parity else "not measured"
            lines.append(f"  {precision} parity: {shown}")
    return lines


@models_app.command("show")
def show_model(
    ref: Annotated[
        str, typer.Argument(metavar="NAME[:VERSION]", help="Model name, optionally :version.")
    ],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also check the seal, and model.keras, the runtime files and the OOD detector "
            "against their sha256.",
        ),
    ] = False,
) -> None:
    """Show a model's manifest (newest finished version when no :VERSION is given)."""
    registry = _registry(store)
    name, version = registry.resolve(_named(ref))
    read = registry.verify if verify else registry.read_manifest
    manifest = read(name, version)
    path = registry.root / name / str(version)
    if as_json:
        typer.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    typer.echo(_text(manifest, path))
    state = registry.unfinished(name, version)
    if state:
        typer.echo(f"state: unfinished ({state}); not served as the newest version")
    if verify:
        typer.echo("integrity: the manifest matches its seal")
        typer.echo("integrity: model.keras matches the manifest's sha256")
        for runtime in sorted(manifest.runtimes):
            registry.runtime_files(manifest, runtime)
            typer.echo(f"integrity: the {runtime} files match their sha256")
        if registry.ood_detector_file(manifest) is not None:
            typer.echo("integrity: the OOD detector file matches its sha256")


@models_app.command("convert")
def convert_model(
    ref: Annotated[
        str, typer.Argument(metavar="NAME[:VERSION]", help="Model name, optionally :version.")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Data set for parity (folder, CSV or .npz, as `radlens evaluate`); without "
            "it no parity is recorded and RADLENS_RUNTIME=auto keeps TensorFlow.",
        ),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Split of --data to measure parity on.")
    ] = "val",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert a stored model to OpenVINO IR beside model.keras and record parity.

    Keeps the version's name, number and model.keras; the converted files and their sha256
    (and the parity on --data) are added to its manifest, which is sealed again, in one
    atomic step.
    """
    from radlens.models.runtime import add_openvino_runtime, recorded_parity

    registry = _registry(store)
    name, version = registry.resolve(_named(ref))
    manifest = registry.verify(name, version)
    images = labels = None
    note = ""
    if data is not None:
        from radlens.training.data.pipeline import load_examples
        from radlens.training.evaluate import open_for_model, select_split

        # a findings model: multi-hot targets, parity per finding (models.runtime)
        source = open_for_model(manifest, data)
        examples = select_split(
            source, split, manifest.training_config, manifest.preprocessing_version
        )
        images, labels = load_examples(
            source,
            examples,
            size=manifest.input_size,
            window=manifest.window,
            version=manifest.preprocessing_version,
        )
        note = f"{data} ({split}, {len(labels)} images)"
    updated = add_openvino_runtime(
        registry, manifest.ref, images=images, labels=labels, data_note=note
    )
    if as_json:
        typer.echo(json.dumps(updated.runtimes["openvino"], indent=2))
        return
    typer.echo(f"converted {updated.ref} to OpenVINO IR in {registry.root / name / str(version)}")
    for precision in ("fp32", "bf16"):
        parity = recorded_parity(updated, precision)
        typer.echo(f"{precision} parity: {parity.summary() if parity else 'not measured'}")


@models_app.command("ood")
def add_ood_detector(
    ref: Annotated[
        str, typer.Argument(metavar="NAME[:VERSION]", help="Model name, optionally :version.")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="The model's training data (folder, CSV or .npz): its train split fits the "
            "detector, its val split sets the threshold, split as the training run did.",
        ),
    ],
    method: Annotated[
        str, typer.Option("--method", help="mahalanobis or knn (docs/benchmarks/ood.md).")
    ] = "mahalanobis",
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Comma-separated layers the detector reads, one detector each, flagged when "
            "any flags (e.g. conv2_block3_out,conv5_block3_out); 'last' for the last "
            "convolutional layer alone. Default: as training (ResNet50: first and last stage).",
        ),
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit an out-of-distribution detector for a stored model and store it with the model.

    For models saved before training fitted one: the version keeps its name, number and
    model.keras; the detector file and its sha256 are added to its manifest, which is sealed
    again. The service scores every prediction with it (RADLENS_OOD).
    """
    from radlens.models.ensemble import ensemble_members
    from radlens.models.errors import ConfigurationError
    from radlens.models.ood import METHODS, resolve_layers
    from radlens.training.evaluate import (
        as_trained,
        copies_in_training,
        open_for_model,
        select_split,
    )
    from radlens.training.ood import attach_from_source

    if method not in METHODS:
        raise ConfigurationError(
            f"--method must be one of {', '.join(METHODS)}. Received: {method!r}"
        )
    registry = _registry(store)
    name, version = registry.resolve(_named(ref))
    loaded = registry.load(f"{name}:{version}")
    manifest = loaded.manifest
    config = manifest.training_config
    chosen: tuple[str, ...] | str | None = "auto"  # training.ood.AUTO
    if layers is not None:
        names = [n.strip() for n in layers.split(",") if n.strip()]
        if ensemble_members(loaded.model) and names != ["last"]:
            fail(
                f"{manifest.ref} is an ensemble: its detector reads each member's last "
                "convolutional layer (leave out --layers, or give --layers last)"
            )
        # checked before any image is decoded; the message lists the model's valid layers
        chosen = None if names == ["last"] else resolve_layers(loaded.model, names)
    if "folds" in config and "members" in config:  # training.recipe.export_ensemble
        raise ConfigurationError(
            f"{manifest.ref} is a cross-validated ensemble: its members trained on the "
            "validation split, so no split here is unseen by all of them; its detector is "
            "fitted at export on each member's held-out fold (training.recipe.export_ensemble)"
        )
    # read as the training run read it (a multi-label model's findings column, separator,
    # ignored findings; a series CSV's DICOM root), so the split rebuilt is the run's
    source = open_for_model(manifest, data)
    source = as_trained(source, config, manifest.preprocessing_version)  # decoded once
    splits = {
        split: select_split(source, split, config, for_fitting=True) for split in ("train", "val")
    }
    # a split given whole (npz keys, a split column) is read, not rebuilt and size-checked:
    # other data would fit the model's detector to images it was not trained on
    recorded = (config.get("split") or {}).get("sizes") or {}
    differ = {s: len(splits[s]) for s in splits if s in recorded and len(splits[s]) != recorded[s]}
    if differ:
        fail(
            f"--data is not {manifest.ref}'s training data: its split sizes {differ} differ "
            f"from the run's {recorded}; give the data the model was trained on"
        )
    copies = copies_in_training(source, splits["val"], splits["train"])
    updated = attach_from_source(
        registry,
        manifest.ref,
        loaded.model,
        source,
        splits,
        size=manifest.input_size,
        window=manifest.window,
        method=method,
        version=manifest.preprocessing_version,
        seed=int(config.get("seed", 0)),
        layers=chosen,
    )
    assert updated.ood is not None
    hint = _reconvert_hint(registry, updated, data)
    if as_json:
        typer.echo(json.dumps(updated.ood, indent=2))
        if hint:
            typer.echo(hint, err=True)  # stdout stays the JSON
        return
    ood = updated.ood
    typer.echo(
        f"added an OOD detector to {updated.ref}: {ood['method']}, threshold "
        f"{ood['threshold']:.4g} ({ood['quantile']:.0%} quantile of "
        f"{ood['fitted_on']['val_images']} validation images; "
        f"{ood['val_flagged_fraction']:.1%} of them flagged)"
    )
    typer.echo(f"OOD layers: {ood_layers(ood)}")  # as `radlens models show` says it
    if "nominal_flag_rate" in ood:  # an ensemble's pooled ranks (models.ood.EnsembleOodDetector)
        typer.echo(
            f"{ood['members']} member detectors; nominally flags "
            f"{ood['nominal_flag_rate']:.1%} of new in-distribution images (at most "
            f"{ood['flag_rate_bound']:.1%})"
        )
    if "expected_flag_rate" in ood:  # conformal: what it flags of NEW in-distribution images
        typer.echo(
            f"expected to flag {ood['expected_flag_rate']:.1%} of new in-distribution images "
            f"(under {ood['expected_flag_rate_upper_95']:.1%} for 95% of calibration draws)"
        )
    if copies:
        typer.echo(
            f"note: {copies} of the {len(splits['val'])} validation images have an identical "
            "copy in the train split the detector was fitted on, so they are not new to it: "
            "the threshold set on them may sit a little low"
        )
    if hint:
        typer.echo(hint)


def _reconvert_hint(registry: ModelRegistry, manifest: ModelManifest, data: Path) -> str | None:
    """A one-line hint when the version's OpenVINO IR was converted without the features its
    new detector reads: OpenVINO serving then runs a second (Keras) forward pass per batch for
    them (app/predictor.py) until the version is converted again. None when there is no IR,
    it returns those features, or OpenVINO (which serving needs for the IR) is absent; and
    when the IR's files fail their sha256 check (the detector is attached all the same;
    `radlens models verify` names what is wrong)."""
    import shlex

    from radlens.models.errors import ModelStoreError
    from radlens.models.ood import load_detector
    from radlens.models.runtime import IR_XML, OPENVINO, ir_has_ood_features, openvino_version

    if OPENVINO not in manifest.runtimes or openvino_version() is None:
        return None
    detector_file = registry.ood_detector_file(manifest)
    try:
        files = registry.runtime_files(manifest, OPENVINO)
    except ModelStoreError:
        return None
    xml = next((path for path in files.values() if path.name == IR_XML), None)
    if detector_file is None or xml is None:
        return None
    detector = load_detector(detector_file)
    if ir_has_ood_features(xml, detector.layers, detector.dimension):
        return None
    return (
        f"note: {manifest.ref}'s OpenVINO model was converted before this detector and does not "
        "return its features, so OpenVINO serving runs a second (Keras) forward pass per batch "
        f"for them; convert it again: radlens models convert {manifest.ref} --data "
        f"{shlex.quote(str(data))}"
    )


@models_app.command("seal")
def seal_model(
    ref: Annotated[
        str, typer.Argument(metavar="NAME[:VERSION]", help="Model name, optionally :version.")
    ],
    store: StoreOpt = None,
) -> None:
    """Seal a manifest as it is now: one saved before seals, or deliberately edited.

    Check the manifest first (`radlens models show`): the seal makes its current fields the
    reference that every load verifies. With RADLENS_MODEL_SIGNING_KEY set, the seal is signed.
    """
    registry = _registry(store)
    sealed = registry.seal(_named(ref))
    signed = "signed" if registry.signing_key else "unsigned (no RADLENS_MODEL_SIGNING_KEY)"
    typer.echo(f"sealed {sealed.ref}: {signed}")


@models_app.command("finish")
def finish_model(
    ref: Annotated[
        str, typer.Argument(metavar="NAME:VERSION", help="The unfinished version, e.g. chest:3.")
    ],
    store: StoreOpt = None,
) -> None:
    """Finish a version its training run left unfinished, so it can be served as the newest.

    Its run stopped before it attached the OOD detector and OpenVINO runtime. Attach what is
    missing first (`radlens models ood`, `radlens models convert`): a version finished without
    its detector is served without the out-of-distribution check.
    """
    if ":" not in ref:
        fail(f"name the version to finish, e.g. {ref.strip() or 'chest'}:3 (`radlens models list`)")
    registry = _registry(store)
    name, version = registry.resolve(_named(ref))
    state = registry.unfinished(name, version)
    manifest = registry.finish(f"{name}:{version}")
    if state is None:
        typer.echo(f"{manifest.ref} is finished already")
        return
    missing = [
        part
        for part, present in (
            ("OOD detector", manifest.ood),
            ("OpenVINO runtime", manifest.runtimes),
        )
        if not present
    ]
    typer.echo(
        f"finished {manifest.ref}" + (f" (without an {' or an '.join(missing)})" if missing else "")
    )


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to the ``radlens`` command."""
    app.add_typer(models_app, name="models")

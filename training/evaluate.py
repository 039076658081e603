"""Evaluate a stored model on a data set, preprocessing exactly as its manifest says.

``evaluate("chest:3", "data/", split="test", out=Path("eval/"))`` loads the model from the
store, reads the input size and window preset from its manifest (never guessed), rebuilds the
data split the model was trained with (same fractions and seed from its training config),
predicts, and returns metrics at the model's saved decision threshold. With ``out`` it writes
``metrics.json``, ``confusion_matrix.png``, ``reliability.png`` and (binary) ``roc_curve.png``
there (a multi-label model: ``metrics.json``, ``findings.txt``, ``roc/roc_<finding>.png``;
its table also measures each finding's operating points from the manifest on this data,
``operating_points_per_finding``), and removes the files of those names that an earlier
evaluation left there and this one did not write (:func:`remove_stale_report`), so the folder
holds this evaluation's report only.

Data is opened and decoded as training does it (``training.data.sources.open_data``,
``training.data.pipeline.load_examples``). Skipped files are logged summarised (the count per
kind of reason and a few examples, ``training.data.sources.skipped_report``); ``out`` gets
their full list, ``skipped.csv``. A version its training run left unfinished (named as
NAME:VERSION) is evaluated with a warning and ``"unfinished"`` in the result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import (
    SKIPPED_FILE,
    DataSource,
    Example,
    SkippedFile,
    check_dicom_root,
    drop_undecodable,
    open_data,
    patient_key_check,
    skip_kinds,
    skip_lines_held,
    skipped_csv,
    skipped_report,
    split_source,
    unique_skipped,
)
from radlens.training.series import decoded

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("train", "val", "test", "all")
# every file `evaluate --out` writes, single-label or multi-label (remove_stale_report)
REPORT_FILES = (
    "metrics.json",
    "confusion_matrix.png",
    "reliability.png",
    "roc_curve.png",
    "findings.txt",
    SKIPPED_FILE,
)
ROC_FOLDER = "roc"  # a multi-label model's roc_<finding>.png
ROC_PATTERN = "roc_*.png"


def as_trained(
    source: DataSource, training_config: dict[str, Any], version: str | None = None
) -> DataSource:
    """``source`` as the model's training run split it: a run that decoded every image before
    its split (``split.decode_checked``, since training refuses what it cannot read up front)
    split only the images that decode, so they are dropped here too (into ``skipped``), decoded
    with the model's preprocessing ``version`` (the one its run decoded with). A run that left
    out the colour images its gate refuses (``split.colour_checked``) split without them, so
    they are left out here too (training.data.intended.drop_colour)."""
    record = training_config.get("split") or {}
    if not record.get("decode_checked"):
        return source
    decoded = drop_undecodable(source, version=version)
    if not record.get("colour_checked") or decoded.colour_checked:
        return decoded
    from radlens.training.data.intended import drop_colour

    return drop_colour(
        decoded,
        modalities=training_config.get("intended_modalities") or (),
        body_parts=training_config.get("intended_body_parts") or (),
    )[0]


def select_split(
    source: DataSource,
    split: str,
    training_config: dict[str, Any],
    version: str | None = None,
    *,
    for_fitting: bool = False,
) -> list[Example]:
    """The examples of ``split``, re-split exactly as the model's training run did (the
    model's preprocessing ``version`` decides which files decode, see :func:`as_trained`).
    ``for_fitting``: the caller needs the run's own split (``radlens models ood`` fits on
    train and calibrates on val), so a refusal does not suggest another split.

    Raises:
        models.errors.ConfigurationError: an unknown or empty split, another patient-hash key,
            or a rebuilt split whose sizes differ from the run's record (the data, or how
            radlens reads it, changed since training: its "test" would hold trained images).
    """
    return _select(source, split, training_config, version, for_fitting=for_fitting)[0]


def _select(
    source: DataSource,
    split: str,
    training_config: dict[str, Any],
    version: str | None = None,
    *,
    for_fitting: bool = False,
) -> tuple[list[Example], list[Example] | None]:
    """:func:`select_split`, and the training split it was rebuilt beside (None when the
    data was not re-split: ``all``, or a file holding only the chosen split)."""
    if split not in SPLIT_CHOICES:
        raise ConfigurationError(f"split must be one of {', '.join(SPLIT_CHOICES)}; got {split!r}")
    if split == "all":
        return list(source.examples), None
    source = as_trained(source, training_config, version)  # no-op on a decoded source
    if {e.split for e in source.examples} == {split}:
        # a file holding only this split (the official test npz: test_* keys alone) is that
        # split whatever the model's training did: re-splitting it (a --resplit model) would
        # score a fraction of it and call that the test split
        return list(source.examples), None
    recorded = (training_config.get("split") or {}).get("patient_key_check")
    if recorded and source.has_patients and recorded != patient_key_check():
        raise ConfigurationError(
            "the patient-hash key differs from the one this model was trained with, so the "
            f"{split!r} split cannot be rebuilt; set RADLENS_PATIENT_HASH_KEY (or the key file) "
            "as it was for training"
            + ("" if for_fitting else ", or use --split all on data the model never saw")
        )
    splits = split_source(
        source,
        val_fraction=float(training_config.get("val_fraction", 0.15)),
        test_fraction=float(training_config.get("test_fraction", 0.15)),
        seed=int(
            training_config["split_seed"]
            if training_config.get("split_seed") is not None
            else training_config.get("seed", 0)
        ),
        keep_given=not training_config.get("resplit", False),
        # a run since copies were grouped split them as one group (older runs did not)
        copies_together=bool((training_config.get("split") or {}).get("copies_together")),
    )
    recorded_sizes = (training_config.get("split") or {}).get("sizes")
    sizes = {k: len(v) for k, v in splits.items()}
    # a split given whole (a split column on every row, npz keys) is not rebuilt but read, so
    # data with more given splits than the run had (a test npz added) is still that split
    given = not training_config.get("resplit", False) and all(e.split for e in source.examples)
    if recorded_sizes and sizes != recorded_sizes and not given:
        raise ConfigurationError(
            f"the split rebuilt from this data ({sizes}) is not the training run's "
            f"({recorded_sizes}): the data, or how this radlens reads it, changed since "
            f"training, so its {split!r} split could hold images the model was trained on; "
            + (
                "give the data the model was trained on, unchanged"
                if for_fitting
                else "evaluate on data the model never saw with --split all"
            )
        )
    chosen = splits[split]
    if not chosen:
        counts = {k: len(v) for k, v in splits.items()}
        raise ConfigurationError(
            f"the {split!r} split of this data set is empty (split sizes: {counts}); "
            + (
                "the detector is fitted on the run's train split and calibrated on its val "
                "split: give the data the model was trained on"
                if for_fitting
                else "choose another --split or 'all'"
            )
        )
    return chosen, splits["train"]


def copies_in_training(
    source: DataSource, chosen: Sequence[Example], train: Sequence[Example] | None
) -> int | None:
    """How many of ``chosen`` have an identical copy (the same pixels) in ``train``: images
    the model was trained on under another name, whose figures are inflated. None when
    unknown (no training split rebuilt beside them, or no pixels compared)."""
    if train is None or not source.digests:
        return None
    trained = {source.digests.get(e.key) for e in train} - {None}
    return sum(source.digests.get(e.key) in trained for e in chosen)


def _copies_scored(
    source: DataSource, split: str, chosen: Sequence[Example], train: Sequence[Example] | None
) -> int | None:
    """:func:`copies_in_training` of the split evaluate scores (None for ``train`` itself),
    logged as a warning when there are any."""
    count = None if split == "train" else copies_in_training(source, chosen, train)
    if count:
        log.warning(
            "%d of the %d %s image(s) have an identical copy in the training split: the "
            "model saw them under another name, and their figures are inflated",
            count,
            len(chosen),
            split,
        )
    return count


def evaluate(
    model_ref: str | None,
    data: str | Path,
    *,
    split: str = "test",
    store: str | Path | None = None,
    out: Path | None = None,
    batch_size: int = 32,
    label_column: str | None = None,
    dicom_root: str | Path | None = None,
    series_aggregation: str | None = None,
    series_top_k: int | None = None,
) -> dict[str, Any]:
    """Metrics of a stored model on a split of a data set (see the module docstring).

    A series-labelled CSV (``training.data.series``) is evaluated per slice and per series:
    the result's ``series`` holds the series-level figures (slice scores aggregated by
    ``models.aggregation``, as the service aggregates them; method and k from the arguments,
    else the model's training config, else the service's defaults) and ``series_table`` one
    row per series. ``dicom_root``: where ``series_uid`` values are looked up (default: as
    in training, else the CSV's folder).

    A multi-label findings model reads the data's findings as its training did (column,
    separator, no-finding name from its training config; ``label_column`` overrides the
    column) and reports per-finding figures at each finding's threshold (its series figures at
    the finding's series threshold when the run chose one for this aggregation, as the service
    decides; ``series.per_finding[name].threshold_source`` says which); ``out`` then gets
    ``metrics.json``, ``findings.txt`` (the table) and ``roc/roc_<finding>.png``.

    Returns:
        JSON-ready dict: model, split, data, auc, accuracy, sensitivity, specificity, precision,
        confusion_matrix, n, threshold (the model's saved one), class_names, skipped_files
        (per-class figures under per_class for multi-class models).

    Raises:
        models.errors.ModelNotFoundError / ModelCorruptError / ModelIncompatibleError: the store.
        models.errors.ConfigurationError: the data does not match the model's classes, an empty
            split, or no readable image.
    """
    from radlens.models.registry import ModelRegistry, default_store_path
    from radlens.training.metrics import classification_metrics

    check_dicom_root(data, dicom_root)  # the run's own is used only where it applies
    store_path = Path(store) if store is not None else default_store_path()
    if store_path.exists() and not store_path.is_dir():  # else: "no model named ... in" it
        raise ConfigurationError(
            f"the model store {str(store_path)!r} is a file, not a folder; pass --store FOLDER "
            "(or set RADLENS_MODEL_STORE)"
        )
    registry = ModelRegistry(store_path)
    loaded = registry.load(model_ref)
    manifest = loaded.manifest
    notes = _unfinished_note(registry, manifest)
    series = _SeriesOptions.of(
        manifest.training_config, dicom_root, series_aggregation, series_top_k
    )
    if manifest.multi_label:
        return _evaluate_findings(
            loaded,
            data,
            split=split,
            out=out,
            batch_size=batch_size,
            label_column=label_column,
            series=series,
            notes=notes,
        )
    if label_column is not None:  # read nowhere for a single-label model: not ignored silently
        raise ConfigurationError(
            f"--label-column {label_column!r} names the findings column of a multi-label "
            f"model; {manifest.ref} is single-label (classes {list(manifest.class_names)!r}), "
            "its CSV labels are read from the 'label' column: drop --label-column"
        )
    with skip_lines_held():  # summarised below, not one line per file (QA round 60)
        source, examples, copies, skipped, inputs, labels = _open_and_decode(
            data, manifest, split, series, batch_size
        )
    probabilities = np.asarray(loaded.model.predict(inputs, batch_size=batch_size, verbose=0))
    metrics = classification_metrics(
        labels, probabilities, manifest.class_names, manifest.threshold
    )
    from radlens.training.metrics import expected_calibration_error

    metrics["ece"] = expected_calibration_error(labels, probabilities)
    result: dict[str, Any] = {
        "model": manifest.ref,
        "split": split,
        "data": str(data),
        "class_names": list(manifest.class_names),
        **metrics,
        **_skip_figures(skipped, out),
        "copies_in_training": copies,
        **notes,
    }
    if source.has_series:
        result.update(
            series.figures(
                [e.series for e in decoded(examples, skipped)],
                labels,
                probabilities,
                manifest.class_names,
                # the run's series threshold when chosen for this aggregation (as the service)
                threshold=series.threshold_for(manifest),
            )
        )
    if out is not None:
        files = write_report(out, result, labels, probabilities, manifest.class_names, skipped)
        remove_stale_report(out, files.values())
    return result


def _unfinished_note(registry: Any, manifest: Any) -> dict[str, Any]:
    """``{"unfinished": state}`` for a version its training run has not finished (named by
    NAME:VERSION: the newest is always a finished one), said in one warning; else ``{}``.
    Evaluated, not refused: its model.keras is complete (and checked against the manifest's
    sha256); what it lacks (the OOD detector, a converted runtime) is what serving needs,
    which is why `radlens serve` refuses it (QA round 60)."""
    state = registry.unfinished(manifest.name, manifest.version)
    if state is None:
        return {}
    why = (
        "its training run is still attaching its OOD detector and runtime"
        if state == "being written"
        else "its training run stopped before it attached its OOD detector and runtime"
    )
    log.warning(
        "%s is unfinished (%s: %s): these figures are its model.keras's; `radlens serve` "
        "refuses it until it is finished (`radlens models finish %s`)",
        manifest.ref,
        state,
        why,
        manifest.ref,
    )
    return {"unfinished": state}


def _skip_figures(skipped: Sequence[SkippedFile], out: Path | None) -> dict[str, Any]:
    """The result's skipped-file figures (the count, and the count per kind of reason),
    after logging the summary: a few examples, and where the full list is."""
    unique = unique_skipped(skipped)
    where = (
        f"the full list: {Path(out) / SKIPPED_FILE}"
        if out is not None
        else f"--out FOLDER writes the full list to FOLDER/{SKIPPED_FILE}"
    )
    for line in skipped_report(unique, full_list=where):
        log.warning("%s", line)
    return {"skipped_files": len(unique), "skipped_reasons": skip_kinds(unique)}


def _open_and_decode(
    data: str | Path, manifest: Any, split: str, series: Any, batch_size: int
) -> tuple[Any, ...]:
    """A single-label model's data: opened, split as trained, decoded for the model."""
    source = open_data(data, manifest.class_names, dicom_root=series.dicom_root)
    if source.class_names != list(manifest.class_names):
        raise ConfigurationError(
            f"the data's classes {source.class_names!r} differ from the model's "
            f"{list(manifest.class_names)!r}"
        )
    return _split_and_decode(source, manifest, split, batch_size)


def _split_and_decode(source: Any, manifest: Any, split: str, batch_size: int) -> tuple[Any, ...]:
    """``source`` split as the model was trained, its ``split`` selected and decoded as the
    service feeds this model: (source, examples, copies, skipped, inputs, targets)."""
    from radlens.training.data.pipeline import load_examples

    if split != "all":
        source = as_trained(source, manifest.training_config, manifest.preprocessing_version)
    examples, train = _select(source, split, manifest.training_config)
    copies = _copies_scored(source, split, examples, train)
    skipped: list[SkippedFile] = list(source.skipped)
    inputs, targets = load_examples(
        source,
        examples,
        size=manifest.input_size,
        window=manifest.window,
        version=manifest.preprocessing_version,  # fed as the service feeds this model
        batch_size=batch_size,
        skipped=skipped,
    )
    return source, examples, copies, skipped, inputs, targets


@dataclass(frozen=True)
class _SeriesOptions:
    """How a series-labelled data set is opened and aggregated for one evaluation."""

    dicom_root: str | None
    method: str
    k: int

    @classmethod
    def of(
        cls,
        training_config: dict[str, Any],
        dicom_root: str | Path | None,
        method: str | None,
        k: int | None,
    ) -> _SeriesOptions:
        from radlens.models.aggregation import AGGREGATIONS

        chosen = method or str(training_config.get("series_aggregation") or "max")
        if chosen not in AGGREGATIONS:
            raise ConfigurationError(
                f"series aggregation must be one of {', '.join(AGGREGATIONS)}; got {chosen!r}"
            )
        top_k = int(k if k is not None else training_config.get("series_top_k") or 3)
        if top_k < 1:
            raise ConfigurationError(f"series top k must be >= 1; got {top_k}")
        root = dicom_root if dicom_root is not None else training_config.get("dicom_root")
        return cls(None if root is None else str(root), chosen, top_k)

    def threshold_for(self, manifest: Any) -> float | None:
        """The threshold a binary model's series are decided at with this aggregation: the
        run's series threshold if it was chosen for it, else the model threshold."""
        from radlens.models.aggregation import recorded_series_threshold

        found = recorded_series_threshold(manifest.metrics, self.method, self.k)
        return found if found is not None else manifest.threshold

    def finding_cuts_for(self, manifest: Any) -> tuple[dict[str, float], dict[str, str]]:
        """The thresholds a multi-label model's series findings are decided at with this
        aggregation, and their sources: each finding's series threshold if the run chose one
        for it ("series"), else its instance threshold ("model") -- as the service decides."""
        from radlens.models.aggregation import recorded_finding_series_thresholds
        from radlens.training.series import finding_series_cuts

        found = recorded_finding_series_thresholds(manifest.metrics, self.method, self.k)
        return finding_series_cuts(manifest.finding_thresholds, found)

    def figures(
        self,
        series_of: list[str | None],
        targets: np.ndarray,
        scores: np.ndarray,
        class_names: Sequence[str],
        *,
        threshold: float | None = None,
        thresholds: dict[str, float] | None = None,
        threshold_sources: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``{"series": metrics, "series_table": rows}`` (training.series)."""
        from radlens.training.series import series_metrics, series_rows

        args = (series_of, targets, scores, class_names)
        options: dict[str, Any] = {
            "method": self.method,
            "k": self.k,
            "threshold": threshold,
            "thresholds": thresholds,
            "multi_label": thresholds is not None,
        }
        return {
            "series": series_metrics(*args, **options, threshold_sources=threshold_sources),
            "series_table": series_rows(*args, **options),
        }


def write_report(
    out: Path,
    metrics: dict[str, Any],
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    skipped: Sequence[SkippedFile] = (),
) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.png, reliability.png (the reliability diagram of
    the scores), (binary) roc_curve.png and (when files were skipped) skipped.csv, the full
    list of them, into ``out``."""
    from radlens.training.callbacks import (
        confusion_matrix_png,
        reliability_diagram_png,
        roc_curve_png,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    contents = {
        "metrics": (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode(),
        "confusion_matrix": confusion_matrix_png(
            np.asarray(metrics["confusion_matrix"]), class_names
        ),
        "reliability": reliability_diagram_png(
            labels, probabilities, title=f"Reliability ({metrics['split']})"
        ),
    }
    if len(class_names) == 2:
        contents["roc_curve"] = roc_curve_png(labels, probabilities[:, 1], metrics.get("auc"))
    files = {key: out / ("metrics.json" if key == "metrics" else f"{key}.png") for key in contents}
    if skipped:
        contents["skipped"] = skipped_csv(skipped)
        files["skipped"] = out / SKIPPED_FILE
    write_all(out, {files[key]: data for key, data in contents.items()})
    return files


def write_all(out: Path, contents: dict[Path, bytes]) -> None:
    """Write every file of a report, or none: each goes to a temporary name first and all are
    renamed into place once every one is written, so a full disk leaves the folder as it was
    (no truncated PNG or JSON beside an earlier report's files). An OSError names ``out``."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in contents.items():
            partial = path.with_name(f".{path.name}.partial")
            staged.append((partial, path))
            partial.write_bytes(data)
        for partial, path in staged:
            partial.replace(path)
    except OSError as exc:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
        reason = exc.strerror or type(exc).__name__
        raise OSError(exc.errno, f"the report was not written ({reason})", str(out)) from exc


def remove_stale_report(out: Path, written: Iterable[Path]) -> list[Path]:
    """Remove from ``out`` the report files an earlier ``evaluate --out`` wrote there that
    this evaluation did not write (``written``): a binary model's ``roc_curve.png`` beside a
    multi-class model's report, a single-label report's figures beside a multi-label one's,
    the ROC curve of a finding this evaluation could not draw. Only radlens' own names are
    touched (:data:`REPORT_FILES`, and ``roc/roc_*.png``; ``roc/`` itself when that leaves it
    empty); any other file in ``out`` is left as it is. Each removal is logged (a warning).

    Returns:
        The removed files.
    """
    out = Path(out)
    kept = {Path(p).absolute() for p in written}
    candidates = [out / name for name in REPORT_FILES]
    roc = out / ROC_FOLDER
    if roc.is_dir() and not roc.is_symlink():
        candidates += sorted(roc.glob(ROC_PATTERN))
    removed = []
    for path in candidates:
        if path.absolute() in kept or not (path.is_file() or path.is_symlink()):
            continue
        path.unlink()
        removed.append(path)
    if roc.is_dir() and not roc.is_symlink() and not any(roc.iterdir()):
        roc.rmdir()
    if removed:
        log.warning(
            "removed %d file(s) an earlier evaluation left in %s, which this one does not "
            "write: %s",
            len(removed),
            out,
            ", ".join(str(p.relative_to(out)) for p in removed),
        )
    return removed


def open_for_model(
    manifest: Any,
    data: str | Path,
    *,
    label_column: str | None = None,
    dicom_root: str | Path | None = None,
) -> DataSource:
    """``data`` opened as the model's training run read it, for a command that rebuilds its
    split (``radlens models ood``, ``models convert``): a multi-label model's findings from
    the column, separator, no-finding name and ignored findings its training config records
    (:func:`findings_spec`), a single-label model's classes in its order; a series-labelled
    CSV's ``series_uid`` looked up under ``dicom_root``, else the run's."""
    root = dicom_root if dicom_root is not None else manifest.training_config.get("dicom_root")
    if manifest.multi_label:
        return open_data(data, multi_label=findings_spec(manifest, label_column), dicom_root=root)
    return open_data(data, manifest.class_names, dicom_root=root)


def findings_spec(manifest: Any, label_column: str | None = None) -> Any:
    """How to read a findings model's labels from a data set, as its training run read them
    (``MultiLabelSpec``): a finding the model does not know is refused."""
    from radlens.training.data.sources import MultiLabelSpec

    config = manifest.training_config
    return MultiLabelSpec(
        column=label_column or str(config.get("label_column", "label")),
        separator=str(config.get("label_separator", "|")),
        none_name=str((manifest.findings or {}).get("none_name", "No Finding")),
        findings=tuple(manifest.class_names),  # a finding the model does not know: refused
        ignore=tuple(config.get("ignore_findings", ())),  # unless training left it out
    )


def _finding_points(
    manifest: Any, targets: np.ndarray, scores: np.ndarray, split: str
) -> dict[str, Any] | None:
    """Each finding's operating points from the manifest (thresholds chosen on validation in
    training) measured on this data (``training.metrics.point_figures``), with the points
    training left out and why; None for a manifest without the table."""
    from radlens.models.decision import finding_point_tables, finding_points_not_computed
    from radlens.training.metrics import point_figures

    tables = finding_point_tables(manifest)
    if not tables:
        return None
    y = np.asarray(targets).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    column = {name: j for j, name in enumerate(manifest.class_names)}
    return {
        "fitted_on": "val",
        "evaluated_on": split,
        "per_finding": {
            name: {
                point: point_figures(y[:, column[name]], s[:, column[name]], threshold)
                for point, threshold in table.items()
            }
            for name, table in tables.items()
        },
        "not_computed": finding_points_not_computed(manifest.metrics),
    }


def _evaluate_findings(
    loaded: Any,
    data: str | Path,
    *,
    split: str,
    out: Path | None,
    batch_size: int,
    label_column: str | None,
    series: _SeriesOptions,
    notes: dict[str, Any],
) -> dict[str, Any]:
    """:func:`evaluate` for a multi-label findings model."""
    from radlens.training import findings

    manifest = loaded.manifest
    spec = findings_spec(manifest, label_column)
    with skip_lines_held():  # summarised below, not one line per file (QA round 60)
        source, examples, copies, skipped, inputs, targets = _split_and_decode(
            open_data(data, multi_label=spec, dicom_root=series.dicom_root),
            manifest,
            split,
            batch_size,
        )
    scores = np.asarray(loaded.model.predict(inputs, batch_size=batch_size, verbose=0))
    names = list(manifest.class_names)
    metrics = findings.finding_metrics(targets, scores, names, manifest.finding_thresholds)
    result: dict[str, Any] = {
        "model": manifest.ref,
        "split": split,
        "data": str(data),
        "class_names": names,
        "findings": names,
        **metrics,
        "table": findings.format_table(metrics),
        **_skip_figures(skipped, out),
        "copies_in_training": copies,
        **notes,
    }
    points = _finding_points(manifest, targets, scores, split)
    if points is not None:  # a model trained before the table has none
        result["operating_points_per_finding"] = points
        result["table"] = [
            *result["table"],
            f"operating points per finding (thresholds chosen on validation in training; "
            f"figures on {split}):",
            *findings.format_points_table(points),
        ]
    if source.has_series:
        # each finding at its series threshold when the run chose one for this aggregation
        cuts, sources = series.finding_cuts_for(manifest)
        result.update(
            series.figures(
                [e.series for e in decoded(examples, skipped)],
                targets,
                scores,
                names,
                thresholds=cuts,
                threshold_sources=sources,
            )
        )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = findings.write_roc_curves(out / ROC_FOLDER, targets, scores, names)
        report = {
            out / "metrics.json": (json.dumps(result, indent=2, sort_keys=True) + "\n").encode(),
            out / "findings.txt": ("\n".join(result["table"]) + "\n").encode(),
        }
        if skipped:  # the full list (the log showed a few)
            report[out / SKIPPED_FILE] = skipped_csv(skipped)
        write_all(out, report)  # last: a report whose metrics.json is new is complete
        remove_stale_report(out, [*report, *written])
    return result

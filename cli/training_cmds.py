"""Training commands: ``radlens train`` and ``radlens evaluate``.

Only typer and the standard library are imported here; ``training`` (and so TensorFlow) is
imported inside the command bodies. Bad options, config values or data layouts raise
``models.errors.ConfigurationError`` before any training starts; ``cli.main`` prints them as
one line and exits 2.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, NoReturn

import typer

from radlens.cli import training_options as shared
from radlens.cli.common import (
    EXIT_BAD_INPUT,
    describe_disk_full,
    disk_full,
    fail,
    keep_freed_memory_for_jobs,
    written_file,
)

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM ended


class _Terminated(KeyboardInterrupt):
    """SIGTERM received while training: stopped as Ctrl-C stops it."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Stop on SIGTERM as on Ctrl-C (SIGINT): the clean-up that an interrupt runs (a model
    version being written is left marked unfinished, a checkpoint's temporary file removed)
    runs, and the command says how to resume. SIGTERM is what ``docker stop``, ``docker
    compose stop``, Kubernetes and batch schedulers send; by default it ended the process
    at once, saying nothing (exit -15)."""

    def stop(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (the CLI called from a thread): left as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _h5py_teardown_quiet() -> Iterator[None]:
    """Keep h5py's clean-up errors off the terminal while training runs.

    When a checkpoint's write fails (a full disk), Keras leaves the HDF5 file open, and h5py's
    finalizers print a traceback for each object they then fail to close (``Can't decrement id
    ref count``), through ``sys.excepthook`` and ``sys.unraisablehook``, before the CLI's one
    line. Those are logged at debug level instead; any other error is printed as before.
    """

    def from_h5py(tb: TracebackType | None) -> bool:
        while tb is not None:
            if "h5py" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        return False

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, RuntimeError) and from_h5py(tb):
            log.debug("h5py could not close an object: %s", value)
            return
        previous_excepthook(kind, value, tb)

    def unraisablehook(unraisable: Any) -> None:
        if isinstance(unraisable.object, str) and unraisable.object.startswith("h5py."):
            log.debug("h5py could not close an object: %s", unraisable.exc_value)
            return
        previous_unraisablehook(unraisable)

    previous_excepthook, previous_unraisablehook = sys.excepthook, sys.unraisablehook
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = previous_excepthook, previous_unraisablehook


def _remove_unfinished_weights(failed: str | None, run_dir: Path) -> str:
    """Remove a weights file of ``run_dir`` whose write failed, and say so ("" when none).

    h5py empties a file before it writes it, so what is left cannot be read. Not the phase
    backup (``backup/phase<N>/``): training.callbacks.PhaseBackup falls back on the state Keras
    keeps beside it, or starts the phase again; removing it threw that state away, and, when
    the failed write was Keras' copy of it, the intact backup itself (QA round 34).
    """
    if failed is None:
        return ""
    path = Path(failed)
    try:
        relative = path.resolve().relative_to(run_dir.resolve())
    except (OSError, ValueError):  # not in the run folder
        return ""
    if "backup" in relative.parts or not path.name.endswith(".weights.h5"):
        return ""
    if not path.is_file():
        return ""
    path.unlink(missing_ok=True)
    return f"the incomplete {path.name} was removed"


def _fail_past_broken_hdf5(message: str) -> NoReturn:
    """``fail(message)``, or, when a failed write left HDF5 objects open, print it and exit 2
    at once: the HDF5 library's exit handler then crashes (SIGSEGV in ``H5_term_library``)
    closing a group whose file could not be flushed, which would turn the one line and exit
    status 2 into a segmentation fault."""
    h5py = sys.modules.get("h5py")
    if h5py is not None:
        gc.collect()
        kinds = h5py.h5f.OBJ_FILE | h5py.h5f.OBJ_GROUP | h5py.h5f.OBJ_DATASET | h5py.h5f.OBJ_ATTR
        if h5py.h5f.get_obj_ids(types=kinds):
            typer.echo(f"radlens: error: {message}", err=True)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_BAD_INPUT)
    fail(message)


# a boolean option given as its "off" form, where that is not --no-<name>
_OFF_FLAGS = {"multi_label": "--single-label", "resplit": "--keep-split"}


def _flag(param: str, value: Any) -> str:
    """The command-line option a parameter of ``train`` came from, as the user typed it
    (``--epochs``, ``--no-augment``), not the config field it sets (``epochs_head``)."""
    if value is False:
        return _OFF_FLAGS.get(param, f"--no-{param.replace('_', '-')}")
    return f"--{param.replace('_', '-')}"


def train(
    config: shared.ConfigOption = None,
    data: shared.DataOption = None,
    arch: shared.ArchOption = None,
    filters: Annotated[
        str | None,
        typer.Option("--filters", help="Fixed filter front-end, e.g. sobel_h,blur (default none)."),
    ] = None,
    center: Annotated[
        bool | None,
        typer.Option(
            "--center/--no-center",
            help="simple_cnn: subtract each image's mean in the model (exposure-blind).",
        ),
    ] = None,
    batchnorm: Annotated[
        bool | None,
        typer.Option(
            "--batchnorm/--no-batchnorm",
            help="simple_cnn: a BatchNormalization after each convolution.",
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="ResNet50 start weights: imagenet, a .h5 path, or none "
            "(default none: from scratch).",
        ),
    ] = None,
    image_size: shared.ImageSizeOption = None,
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help="CT window preset (lung, bone, ...) or none "
            "(default none: the file's window, else min-max).",
        ),
    ] = None,
    epochs: shared.EpochsOption = None,
    finetune_epochs: Annotated[
        int | None,
        typer.Option(
            "--finetune-epochs",
            help="ResNet50 phase-2 epochs (default 5; pretrained weights only).",
        ),
    ] = None,
    unfreeze_blocks: Annotated[
        int | None,
        typer.Option("--unfreeze-blocks", help="ResNet50 blocks unfrozen in phase 2 (default 3)."),
    ] = None,
    batch_size: shared.BatchSizeOption = None,
    learning_rate: shared.LearningRateOption = None,
    finetune_learning_rate: Annotated[
        float | None,
        typer.Option("--finetune-learning-rate", help="Phase-2 learning rate (default 1e-05)."),
    ] = None,
    class_weights: Annotated[
        str | None,
        typer.Option("--class-weights", help="auto (inverse frequency) or none (default auto)."),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            "--patience",
            help="Early stopping on val AUC after N epochs without a gain (default 5; 0 = off).",
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            "--val-fraction",
            help="Share of each class for validation where the data gives no split "
            "(by patient; default 0.15).",
        ),
    ] = None,
    resplit: Annotated[
        bool | None,
        typer.Option(
            "--resplit/--keep-split",
            help="Redo a CSV's (or npz's) given split at patient level (default: keep it).",
        ),
    ] = None,
    min_calibration_positives: Annotated[
        int | None,
        typer.Option(
            "--min-calibration-positives",
            help="Refuse to train with fewer validation positives than this "
            "(calibration; default 10).",
        ),
    ] = None,
    test_fraction: Annotated[
        float | None,
        typer.Option(
            "--test-fraction",
            help="Share of each class for the test split where the data gives none "
            "(by patient; default 0.15; 0 = no test split).",
        ),
    ] = None,
    openvino: Annotated[
        bool | None,
        typer.Option(
            "--openvino/--no-openvino",
            help="Also store an OpenVINO IR of the model with its parity on val (default: on).",
        ),
    ] = None,
    intended_modalities: Annotated[
        str | None,
        typer.Option(
            "--intended-modalities",
            help="Stated intended use, e.g. CR,DX (default: what the DICOM headers show).",
        ),
    ] = None,
    intended_body_parts: Annotated[
        str | None,
        typer.Option("--intended-body-parts", help="Stated intended use, e.g. CHEST."),
    ] = None,
    intended_view_positions: Annotated[
        str | None,
        typer.Option(
            "--intended-view-positions",
            help="Stated views, e.g. PA,AP: a model trained on PNG/JPEG films then refuses a "
            "lateral DICOM (default: what the DICOM headers show).",
        ),
    ] = None,
    ood_method: Annotated[
        str | None,
        typer.Option(
            "--ood-method",
            help="Out-of-distribution detector: mahalanobis, knn or none (default mahalanobis).",
        ),
    ] = None,
    augment: shared.AugmentOption = None,
    deterministic: Annotated[
        bool | None,
        typer.Option(
            "--deterministic/--no-deterministic", help="Deterministic TF ops (default off)."
        ),
    ] = None,
    seed: shared.SeedOption = None,
    lr_schedule: Annotated[
        str | None,
        typer.Option("--lr-schedule", help="constant or cosine (decay to 0; default constant)."),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", help="AdamW weight decay (default 0: Adam).")
    ] = None,
    label_smoothing: Annotated[
        float | None,
        typer.Option("--label-smoothing", help="Cross-entropy label smoothing (default 0)."),
    ] = None,
    threshold_rule: Annotated[
        str | None,
        typer.Option(
            "--threshold-rule",
            help="Decision threshold on val: youden (max sens+spec) or balanced (sens = spec) "
            "(default youden).",
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="tf.distribute: auto, mirrored (one host), multiworker (TF_CONFIG), default "
            "(default auto).",
        ),
    ] = None,
    mixed_precision: Annotated[
        str | None,
        typer.Option(
            "--mixed-precision", help="off, on (mixed_float16, GPU only) or auto (default off)."
        ),
    ] = None,
    multi_label: Annotated[
        bool | None,
        typer.Option(
            "--multi-label/--single-label",
            help="Labels are sets of findings: a sigmoid head, a threshold per finding.",
        ),
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option(
            "--label-column", help="Multi-label: the CSV column of findings (default label)."
        ),
    ] = None,
    label_separator: Annotated[
        str | None,
        typer.Option(
            "--label-separator", help="Multi-label: joins findings in a cell (default |)."
        ),
    ] = None,
    no_finding: Annotated[
        str | None,
        typer.Option(
            "--no-finding",
            help="Multi-label: the label of an image without findings (default No Finding).",
        ),
    ] = None,
    findings: Annotated[
        str | None,
        typer.Option("--findings", help="Multi-label: the finding list, comma-separated."),
    ] = None,
    positive_weights: Annotated[
        str | None,
        typer.Option(
            "--positive-weights", help="Multi-label: auto (n_neg / n_pos) or none (default none)."
        ),
    ] = None,
    ignore_findings: Annotated[
        str | None,
        typer.Option("--ignore-findings", help="Multi-label: findings left out, comma-separated."),
    ] = None,
    dicom_root: shared.DicomRootOption = None,
    series_aggregation: shared.SeriesAggregationOption = None,
    series_top_k: shared.SeriesTopKOption = None,
    select_by: Annotated[
        str | None,
        typer.Option(
            "--select-by",
            help="Best epoch (and early stopping) by validation: auc (images, the default) or "
            "series-auc (series scores aggregated as --series-aggregation; series data only).",
        ),
    ] = None,
    name: shared.NameOption = None,
    store: Annotated[
        str | None, typer.Option("--store", help="Model store (default $RADLENS_MODEL_STORE).")
    ] = None,
    runs_dir: shared.RunsDirOption = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue an interrupted run from its directory."),
    ] = None,
    json_out: shared.JsonOption = False,
) -> None:
    """Train a model (ResNet50 two-phase fine-tuning or the small CNN) and export it."""
    params = dict(locals())  # the options as given, before any other name is bound
    overrides: dict[str, Any] = {
        **shared.overrides(params),
        "filters": filters,
        "center": center,
        "batchnorm": batchnorm,
        "weights": weights,
        "window": window,
        "epochs_finetune": finetune_epochs,
        "unfreeze_blocks": unfreeze_blocks,
        "learning_rate_finetune": finetune_learning_rate,
        "class_weights": class_weights,
        "early_stopping_patience": patience,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "resplit": resplit,
        "min_calibration_positives": min_calibration_positives,
        "openvino": openvino,
        "intended_modalities": intended_modalities,
        "intended_body_parts": intended_body_parts,
        "intended_view_positions": intended_view_positions,
        "ood_method": ood_method,
        "deterministic": deterministic,
        "lr_schedule": lr_schedule,
        "weight_decay": weight_decay,
        "label_smoothing": label_smoothing,
        "threshold_rule": threshold_rule,
        "strategy": strategy,
        "mixed_precision": mixed_precision,
        "store": store,
        "multi_label": multi_label,
        "label_column": label_column,
        "label_separator": label_separator,
        "no_finding": no_finding,
        "findings": findings,
        "positive_weights": positive_weights,
        "ignore_findings": ignore_findings,
        "dicom_root": dicom_root,
        "series_aggregation": series_aggregation,
        "series_top_k": series_top_k,
        "select_by": select_by,
    }
    if resume is not None:
        given = [
            _flag(name, value)
            for name, value in params.items()
            if value is not None and name not in ("resume", "json_out")
        ]
        if given:
            fail(
                "--resume continues a run with its own config.json; do not combine it with "
                f"--config or other options (received: {', '.join(sorted(given))})"
            )

    if resume is None:
        cfg = shared.base_config(config, overrides)
    else:
        # a finished run, or a folder that is no run, is refused before TensorFlow is imported
        # (seconds): the same one line training's resume would give after it (QA round 106)
        from radlens.training.rundir import config_for_resume  # no TensorFlow

        config_for_resume(resume)
    # before TensorFlow and the data: large radiographs decode without faulting in fresh
    # pages for each copy, as in the service (QA round 106)
    keep_freed_memory_for_jobs()

    started: list[Path] = []

    def announce(path: Path) -> None:
        started.append(path)
        typer.echo(f"run directory: {path}", err=json_out)

    # with --json, stdout holds the JSON alone (a pipe into jq or json.load): the run
    # directory's line and Keras' per-epoch progress go to stderr (QA round 102)
    progress = contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()
    try:
        with _h5py_teardown_quiet(), _sigterm_as_interrupt(), progress:
            # the trainer (TensorFlow) is imported only now that the options are known to be
            # sound, and within these handlers: a Ctrl-C or SIGTERM during its import (seconds)
            # gets the same one line as one later (QA round 57: exit 130 said nothing)
            from radlens.training import run as run_module

            if resume is not None:
                result = run_module.resume(resume, on_start=announce)
            else:
                result = run_module.train(cfg, on_start=announce)
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if isinstance(exc, _Terminated) else "interrupted"
        if started or resume is not None:  # a resume stopped before it started: the same run
            then = f"continue with: radlens train --resume {started[0] if started else resume}"
        else:  # stopped before the run directory was written: nothing to resume
            then = "no run directory was written yet; start the run again"
        typer.echo(f"\nradlens: {how}; {then}", err=True)
        raise typer.Exit(
            EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
        ) from None
    except OSError as exc:
        full = disk_full(exc)
        if full is None:
            raise
        then, note = None, ""
        if started:
            note = _remove_unfinished_weights(written_file(full), started[0])
            then = f"continue with: radlens train --resume {started[0]}"
        _fail_past_broken_hdf5(describe_disk_full(full, then=then, note=note))

    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    if not result.exported:
        typer.echo(f"worker run finished in {result.run_dir}; the chief exports the model")
        return
    typer.echo(f"model: {result.model_ref} (store {result.store})")
    typer.echo(f"split: {result.split.get('method')}; leakage check passed")
    copies = result.split.get("copies") or {}
    if copies.get("groups_across_splits"):
        spanning = ", ".join(f"{k}: {v}" for k, v in copies["spanning"].items())
        typer.echo(
            f"copies: {copies['groups_across_splits']} group(s) of identical images across the "
            f"given splits ({spanning}): val and test figures are inflated by them; --resplit "
            "keeps copies in one split"
        )
    typer.echo(f"val: {_summary(result.val_metrics)} (used for selection)")
    if result.test_metrics is not None:
        typer.echo(f"test: {_summary(result.test_metrics)}")
    reported = result.reported
    typer.echo(f"reported figures: {reported.get('label')}: {_summary(reported)}")
    cal = result.calibration
    if cal and "temperatures" in cal:  # multi-label: one temperature per finding
        shown = ", ".join(f"{k} {v:.3f}" for k, v in cal["temperatures"].items())
        typer.echo(f"calibration: temperature per finding (fitted on val): {shown}")
        for line in _findings_table(reported):
            typer.echo(f"  {line}")
    elif cal:
        typer.echo(
            f"calibration: temperature {cal['temperature']:.4f} (fitted on val); "
            f"ECE on {cal['evaluated_on']} {cal['ece_before']:.4f} before, "
            f"{cal['ece_after']:.4f} after"
        )
    for point, figures in result.operating_points.items():
        typer.echo(f"  operating point {point}: {_point(figures)}")
    for point, why in result.operating_points_not_computed.items():
        typer.echo(f"  operating point {point}: not computed ({why})")
    if isinstance(reported.get("series"), dict):
        typer.echo(f"series-level ({reported.get('split')}): {_series_summary(reported['series'])}")
    from radlens.training.data.sources import (
        SKIPPED_FILE,
        describe_ignored,
        describe_skip_kinds,
        skip_kinds,
        skipped_report,
    )

    # the count by kind, a few examples (each kind's first among them) and where the full
    # list is: one line per file made hundreds for a CD export with its viewer (QA round 60)
    listed = result.run_dir / SKIPPED_FILE
    where = listed if listed.is_file() else result.run_dir / "train.log"
    kinds = describe_skip_kinds(skip_kinds(result.skipped))
    typer.echo(
        f"best epoch: {result.best_epoch} of {result.epochs_run}; "
        f"skipped files: {len(result.skipped)}" + (f" ({kinds})" if kinds else "")
    )
    for line in skipped_report(result.skipped, full_list=f"the full list: {where}")[1:]:
        typer.echo(line)  # "  skipped path: reason"
    if result.ignored:  # .DS_Store, Thumbs.db, ...: counted, so none goes unexplained
        typer.echo(describe_ignored(result.ignored))


def evaluate(
    data: Annotated[str, typer.Option("--data", help="Folder, .csv or .npz to evaluate on.")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="NAME or NAME:VERSION in the store (default: newest)."),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="test, val, train (as in training) or all.")
    ] = "test",
    store: Annotated[
        str | None, typer.Option("--store", help="Model store (default $RADLENS_MODEL_STORE).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write metrics.json, roc_curve.png, reliability.png, confusion_matrix.png "
            "(multi-label: metrics.json, findings.txt, roc/roc_<finding>.png) and skipped.csv "
            "(the files left out, when any); the files of those names an earlier evaluation "
            "left there are removed.",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, help="Images per model call (memory, not results)."),
    ] = 32,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    label_column: Annotated[
        str | None,
        typer.Option(
            "--label-column",
            help="Multi-label models: the CSV column of findings (default: as in training).",
        ),
    ] = None,
    dicom_root: shared.DicomRootOption = None,
    series_aggregation: shared.SeriesAggregationOption = None,
    series_top_k: shared.SeriesTopKOption = None,
) -> None:
    """Evaluate a stored model on a data set at its saved threshold(s)."""
    from radlens.training.evaluate import SPLIT_CHOICES  # no TensorFlow

    if split not in SPLIT_CHOICES:
        fail(f"--split must be one of {', '.join(SPLIT_CHOICES)}; received {split!r}")
    if not Path(data).exists():
        fail(f"data path does not exist: {data!r}")
    if out is not None and out.exists() and not out.is_dir():
        # before the model is loaded and the data scored, not after
        fail(f"--out is a folder for the report; {str(out)!r} is a file: give a folder")
    keep_freed_memory_for_jobs()  # as train: the data are decoded as training decodes them

    from radlens.training.evaluate import evaluate as run_evaluation

    metrics = run_evaluation(
        model,
        data,
        split=split,
        store=store,
        out=out,
        batch_size=batch_size,
        label_column=label_column,
        dicom_root=dicom_root,
        series_aggregation=series_aggregation,
        series_top_k=series_top_k,
    )
    if json_out:
        typer.echo(json.dumps(metrics, indent=2, sort_keys=True))
        return
    if metrics.get("label_mode") == "multi-label":
        typer.echo(
            f"model: {metrics['model']}{_unfinished(metrics)}  split: {split}  n: {metrics['n']}  "
            "(multi-label)"
        )
        for line in metrics["table"]:
            typer.echo(line)
        _echo_series(metrics)
        _echo_data_notes(metrics)
        if out is not None:
            typer.echo(f"report: {out} (per-finding ROC curves in {out / 'roc'})")
        return
    model_line = f"model: {metrics['model']}{_unfinished(metrics)}"
    typer.echo(f"{model_line}  split: {split}  n: {metrics['n']}")
    typer.echo(_summary(metrics))
    typer.echo(
        f"confusion matrix (rows = truth {metrics['class_names']}): {metrics['confusion_matrix']}"
    )
    _echo_series(metrics)
    _echo_data_notes(metrics)
    if out is not None:
        typer.echo(f"report: {out}")


def _unfinished(metrics: dict[str, Any]) -> str:
    """`` (unfinished: abandoned)`` after a version its training run did not finish."""
    return f" (unfinished: {metrics['unfinished']})" if metrics.get("unfinished") else ""


def _echo_data_notes(metrics: dict[str, Any]) -> None:
    """Skipped files, a split holding one class only, and images with an identical copy
    among the training images."""
    if metrics.get("skipped_files"):
        from radlens.training.data.sources import describe_skip_kinds

        kinds = describe_skip_kinds(metrics.get("skipped_reasons") or {})
        typer.echo(f"skipped files: {metrics['skipped_files']}" + (f" ({kinds})" if kinds else ""))
    matrix = metrics.get("confusion_matrix")
    if metrics.get("label_mode") != "multi-label" and matrix is not None:
        present = [
            name for name, row in zip(metrics["class_names"], matrix, strict=False) if sum(row)
        ]
        if len(present) == 1:
            typer.echo(
                f"note: every scored image is {present[0]!r}, so AUC and the rates of the "
                "other class are undefined (n/a); score data holding every class for them"
            )
    if metrics.get("copies_in_training"):
        typer.echo(
            f"copies of training images: {metrics['copies_in_training']} of {metrics['n']} "
            "(identical pixels under another name; their figures are inflated)"
        )


def _echo_series(metrics: dict[str, Any]) -> None:
    """A series-labelled data set: the series table and the series-level figures."""
    if not isinstance(metrics.get("series"), dict):
        return
    from radlens.training.series import format_series_table

    typer.echo(f"series-level: {_series_summary(metrics['series'])}")
    for line in format_series_table(metrics.get("series_table", []), metrics["series"]):
        typer.echo(f"  {line}")


def _series_summary(figures: dict[str, Any]) -> str:
    """One line of series figures, with the slice AUC for contrast."""
    head = f"{figures['n_series']} series, {figures['aggregation']} (k={figures['top_k']}); "
    slice_auc = figures.get("slice_auc")
    tail = f" slice_auc={slice_auc:.4f}" if isinstance(slice_auc, float) else ""
    return head + _summary({k: v for k, v in figures.items() if k != "n"}) + tail


def _findings_table(metrics: dict[str, Any]) -> list[str]:
    from radlens.training.findings import format_table

    return format_table(metrics)


def _summary(metrics: dict[str, Any]) -> str:
    keys = ("auc", "accuracy", "sensitivity", "specificity", "precision", "threshold", "n")
    parts = []
    for key in keys:
        value = metrics.get(key)
        if value is None:
            continue
        parts.append(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def _point(figures: dict[str, Any]) -> str:
    parts = [f"threshold={figures['threshold']:.4f}"]
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        value, ci = figures.get(key), figures.get(f"{key}_ci95")
        if value is None:
            parts.append(f"{key}=n/a")
        elif ci is None:
            parts.append(f"{key}={value:.3f}")
        else:
            parts.append(f"{key}={value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    return " ".join(parts)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``evaluate`` to the radlens CLI."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)

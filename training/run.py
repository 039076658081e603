"""One training run: data -> phases -> best epoch -> threshold -> export to the store.

``train(config)`` does, in order (each step lives in the module named):

1. ``training.distribute.set_up``: the tf.distribute strategy (resolved once) and precision,
   first, before any other TensorFlow op;
2. ``training.data``: open the data, split it by patient, check the splits, build the
   training ``tf.data`` pipeline and decode the validation set;
3. ``training.rundir``: the run directory (new, or the interrupted one to resume), its
   ``train.log`` and ``state.json``;
4. ``training.phases``: build the model, then train each phase (head, then fine-tune; or one
   phase from scratch) through ``training.loop.fit_phase`` with the callbacks of
   ``training.callbacks`` (best checkpoint by validation AUC, history.csv, TensorBoard, early
   stopping on validation AUC with ``early_stopping_patience``, per phase);
5. restore the best epoch's weights; fit the temperature on validation
   (``training.metrics.fit_temperature``) and fold it into the final Dense
   (``training.phases.fold_temperature``), so the exported model outputs calibrated
   probabilities; choose the decision threshold and the operating points on the calibrated
   validation scores (``decision_threshold`` with ``threshold_rule``); only then decode the
   test split and measure it -- the **reported** figures (labelled; validation's, labelled
   optimistic, when there is no test split), the ECE before/after and the operating points;
6. export with ``ModelRegistry.save`` (on the chief only) with metrics
   ``{"val", "test", "reported", "operating_points"}`` (and ``operating_points_not_computed``
   when validation has too few positives for a point: ``training.metrics.
   recorded_operating_points``), the manifest's own ``data_split``,
   ``leakage_check`` and ``calibration`` records, the training config (with the split
   record), the data fingerprint
   (``training.data.sources.data_fingerprint``), window and filters, and the drift reference
   (``metrics["drift_reference"]``); then fit and attach the out-of-distribution detector
   (``training.ood``); write result.json. A multi-label run (``_finish_findings``) exports the
   same way, with a temperature and a threshold per finding, each finding's operating points
   (``metrics["operating_points_per_finding"]``, ``training.findings.
   finding_operating_points``; on series-labelled data also a
   series threshold per finding, ``metrics["series_threshold"]["thresholds"]``), the drift
   reference's label rates per finding and the detector's class means per finding.

Step 2 also refuses a split that puts one patient in two splits (``check_leakage``; the
``resplit`` option redoes a given split by patient) and a validation split too small to
calibrate (``min_calibration_positives``); how the split was made goes to config.json and
``splits.csv`` (hashed patient ids only).

``resume(run_dir)`` continues an interrupted run (see ``training.rundir``). Unreadable images
are skipped and counted in the result: logged as a count per kind of reason with a few
examples once the run folder exists, listed in full in its ``skipped.csv`` (and, at the end,
in train.log).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from radlens.models.errors import ConfigurationError
from radlens.training import rundir
from radlens.training.config import TrainConfig
from radlens.training.data.sources import DataSource, Example, SkippedFile, unique_skipped
from radlens.training.distribute import Distribution, set_up

log = logging.getLogger(__name__)

REPORTED_LABELS = {
    "test": "held-out test split (no selection step saw it)",
    "val": "optimistic (validation-selected): this data set has no test split",
}
MAX_FIGURE_EXAMPLES = 512  # validation examples drawn into the per-epoch figures


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    model_ref: str  # "name:version" in the store ("" on a worker that is not the chief)
    store: Path
    class_names: list[str]
    threshold: float | None
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    best_epoch: int | None  # 1-based
    epochs_run: int
    skipped: list[SkippedFile] = field(default_factory=list)
    # system and hidden files the data scan passed by, per kind (DataSource.ignored)
    ignored: dict[str, int] = field(default_factory=dict)
    split_sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    reported: dict[str, Any] = field(default_factory=dict)  # the figures to quote, labelled
    calibration: dict[str, Any] = field(default_factory=dict)
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    # binary models: the points validation could not choose, with why
    operating_points_not_computed: dict[str, str] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)  # how the split was made

    @property
    def exported(self) -> bool:
        """False on a multiworker worker that is not the chief (it trains, the chief exports)."""
        return bool(self.model_ref)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "model": self.model_ref,
            "store": str(self.store),
            "class_names": self.class_names,
            "threshold": self.threshold,
            "val": self.val_metrics,
            "test": self.test_metrics,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "skipped_files": [str(s) for s in self.skipped],
            "ignored_files": self.ignored,
            "split_sizes": self.split_sizes,
            "seconds": round(self.seconds, 1),
            "reported": self.reported,
            "calibration": self.calibration,
            "operating_points": self.operating_points,
            "operating_points_not_computed": self.operating_points_not_computed,
            "split": self.split,
        }


def resume(run_dir: str | Path, **kwargs: Any) -> RunResult:
    """Continue an interrupted run from its directory (reads its config.json)."""
    return train(rundir.config_for_resume(run_dir), run_dir=Path(run_dir), **kwargs)


def train(
    config: TrainConfig,
    *,
    run_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    on_start: Callable[[Path], None] | None = None,
) -> RunResult:
    """Run one training job end to end (see the module docstring).

    Args:
        config: the validated configuration; ``config.data`` is required.
        run_dir: an existing run directory to resume; None starts a new run.
        callbacks: extra Keras callbacks, run after the run's own (tests use one to interrupt).
        verbose: Keras verbosity; "auto" shows the progress bar on a TTY and one line per
            epoch otherwise.
        on_start: called with the run directory once it exists (the CLI prints it, so an
            interrupted run can be resumed).

    Returns:
        The :class:`RunResult` (also written to ``result.json`` in the run directory).

    Raises:
        models.errors.ConfigurationError: no data path, or data unusable for training (fewer
            than 2 classes in train, an empty or single-class validation split, ...).
    """
    if config.data is None:
        raise ConfigurationError("no training data given; pass --data PATH or set data:")
    if run_dir is None:  # config.json must find the data again from anywhere (--resume)
        config = config.with_overrides({"data": str(Path(config.data).resolve())})
    dist = set_up(config.strategy, config.mixed_precision)  # FIRST: before any other TF op
    if dist.chief:  # the exporter: a store it cannot write would fail after the training
        _check_store(config)
    if config.architecture == "resnet50" and config.weights == "imagenet":
        # fetched (or found in Keras's cache) now, before the seed is set (its throwaway model
        # draws no seeded numbers): offline, the run stops before it reads data or writes
        from radlens.models.architectures import ensure_imagenet_weights

        ensure_imagenet_weights()
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    from radlens.training.data.sources import skip_lines_held

    # the per-file "skipping" lines are held back: a CD export's viewer folder made hundreds
    # of them; they are summarised once the run folder (and its skipped.csv) exists
    with skip_lines_held() as held:
        try:
            data = _RunData.open(config)
        except ConfigurationError:
            _log_held_skips(held, config.data)
            raise
    if config.select_by == "series-auc" and not data.source.has_series:
        raise ConfigurationError(
            "select_by='series-auc' picks the best epoch by the validation series AUC; "
            f"{config.data} is not series-labelled (no series_uid column): use select_by='auc'"
        )
    if run_dir is not None:  # the resumed part must train on the split the first part did
        rundir.check_resumed_split(run_dir, data.splits)
    run_path = rundir.open_run_dir(config, run_dir, chief=dist.chief, task=dist.task)
    # one process trains a run at a time: a second --resume of it is refused (QA round 102)
    with rundir.held(run_path):
        if run_dir is None and dist.chief:
            rundir.record_split(
                run_path,
                data.split_record,
                (
                    (name, e.key, e.label, e.patient_id)
                    for name, items in data.splits.items()
                    for e in items
                ),
            )
        skipped_list = _report_skipped(run_path, data.skipped, chief=dist.chief)
        with rundir.run_log(run_path):
            if on_start is not None:
                on_start(run_path)
            log.info("%s run %s", "resuming" if run_dir is not None else "starting", run_path)
            if skipped_list is not None:
                from radlens.training.data.sources import describe_skip_kinds, skip_kinds

                log.info(
                    "%d file(s) skipped (%s); listed in %s",
                    len(unique_skipped(data.skipped)),
                    describe_skip_kinds(skip_kinds(data.skipped)),
                    skipped_list.name,
                )
            if data.source.ignored:
                from radlens.training.data.sources import describe_ignored

                log.info("%s", describe_ignored(data.source.ignored))
            if dist.distributed:
                log.info(
                    "strategy %s: %d replica(s), %s",
                    type(dist.strategy).__name__,
                    dist.strategy.num_replicas_in_sync,
                    "chief (exports)" if dist.chief else f"{dist.task} (trains, does not export)",
                )
            data.report()
            data.load_validation()
            state = rundir.read_state(run_path)
            with dist.strategy.scope():  # variables are mirrored under a distribution strategy
                from radlens.training.phases import build_model_for, export_model

                model = build_model_for(config, data.num_classes)
                network = export_model(model)
            run = _Run(config, data, dist, run_path, state, model, network)
            _train_phases(run, callbacks, verbose)
            return _finish(run, started)


def _log_held_skips(held: Sequence[SkippedFile], data: object) -> None:
    """A refused data set: how many files were skipped while it was opened, by kind (the
    per-file lines were held back), and the command that lists them."""
    from radlens.training.data.sources import describe_skip_kinds, skip_kinds

    if held:
        log.warning(
            "%d file(s) were skipped while the data was opened (%s); `radlens data-check %s "
            "--all-skipped` lists them",
            len(unique_skipped(held)),
            describe_skip_kinds(skip_kinds(held)),
            data,
        )


def _report_skipped(run_path: Path, skipped: Sequence[SkippedFile], *, chief: bool) -> Path | None:
    """Write the run's skipped files to ``skipped.csv`` in its folder (the chief; None when
    none was skipped) and log a summary: the count by kind and a few examples. Logged before
    the run's train.log is attached, so a command without logging set up shows it on stderr
    (in place of one line per file)."""
    from radlens.training.data.sources import SKIPPED_FILE, skipped_report, write_skipped_csv

    if not skipped:
        return None
    path = write_skipped_csv(run_path / SKIPPED_FILE, skipped) if chief else None
    where = f"the full list: {path}" if path is not None else "the full list is in train.log"
    for line in skipped_report(skipped, full_list=where):
        log.warning("%s", line)
    return path


@dataclass
class _RunData:
    """The run's data: the source, its splits, the training pipeline, the decoded val set."""

    config: TrainConfig
    source: DataSource
    splits: dict[str, list[Example]]
    skipped: list[SkippedFile]
    split_record: dict[str, Any]  # how the split was made (config.json, the manifest)
    x_val: np.ndarray = field(default_factory=lambda: np.empty((0, 0, 0, 1), np.float32))
    y_val: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    # series-labelled data: the series of each decoded validation slice (x_val's rows)
    val_series: list[str | None] = field(default_factory=list)
    # the surveyed headers of every image (source.examples' order; read once, at open): what
    # the manifest's intended use accepts is read from every split, so no val/test image the
    # run scores is outside it
    headers: list[dict[str, Any]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    def split_headers(self, split: str) -> list[dict[str, Any]]:
        """The surveyed headers of ``split``'s images, in its order (read again if not held)."""
        examples = self.splits.get(split) or []
        if self.headers is None or len(self.headers) != len(self.source.examples):
            from radlens.training.data.intended import image_header

            return [image_header(self.source, e) for e in examples]
        by_key = {e.key: h for e, h in zip(self.source.examples, self.headers, strict=True)}
        return [by_key[e.key] for e in examples]

    def intended_use(self) -> dict[str, Any]:
        """The manifest's intended use: what the run's statement names, else what the images'
        headers show, accepting what every split holds (so no val/test image the run scores
        is one the served model refuses), observed over the train split."""
        from radlens.training.data.intended import intended_use_for

        return intended_use_for(
            self.source,
            self.splits["train"],
            modalities=self.config.intended_modalities,
            body_parts=self.config.intended_body_parts,
            view_positions=self.config.intended_view_positions,
            headers=self.split_headers("train"),
            held_out=[*self.split_headers("val"), *self.split_headers("test")],
        )

    @property
    def size(self) -> tuple[int, int]:
        return (self.config.image_size, self.config.image_size)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.splits["train"]) / self.config.batch_size))

    @classmethod
    def open(cls, config: TrainConfig) -> _RunData:
        """Open, decode-check and split the data; refuse data and splits a run cannot train
        on (before the run directory is written)."""
        from radlens.training.data.sources import (
            check_copies,
            check_decodable,
            check_dicom_root,
            check_leakage,
            check_splits,
            copies_report,
            describe_split,
            drop_undecodable,
            open_data,
            positive_class_guessed,
            positive_class_note,
            split_source,
        )

        check_dicom_root(str(config.data), config.dicom_root)
        opened = open_data(
            str(config.data),
            config.class_names,
            multi_label=config.multi_label_spec(),
            dicom_root=config.dicom_root,
        )
        # every image decoded once (at 32 px, as `radlens data-check` does) before the split:
        # the split, the checks and the manifest's survey see only what training can read
        source = drop_undecodable(opened)
        from radlens.training.data.intended import check_stated_use_is_trained, drop_colour

        # a colour image the model's gate would refuse (a palette-colour DICOM, a photograph
        # in a CR set) is left out, as a blank one is: the model never sees what it refuses
        source, headers = drop_colour(
            source, modalities=config.intended_modalities, body_parts=config.intended_body_parts
        )
        check_decodable(opened, source)
        if positive_class_guessed(source):  # said before the run: a wrong guess inverts it
            log.warning("%s", positive_class_note(source))
        check_copies(source)  # one image under two labels: one of them is wrong
        splits = split_source(
            source,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed if config.split_seed is None else config.split_seed,
            keep_given=not config.resplit,
        )
        leakage = check_leakage(splits)  # one patient in two splits inflates every figure
        by_key = {e.key: h for e, h in zip(source.examples, headers, strict=True)}
        check_stated_use_is_trained(  # a model its gate would refuse: not trained
            source,
            splits["train"],
            modalities=config.intended_modalities,
            body_parts=config.intended_body_parts,
            view_positions=config.intended_view_positions,
            headers=[by_key[e.key] for e in splits["train"]],
        )
        check_splits(source, splits, min_calibration_positives=config.min_calibration_positives)
        record = describe_split(source, splits, resplit=config.resplit)
        # what evaluate and `models ood` must know to rebuild this split (select_split)
        record["decode_checked"] = True
        # colour images the gate refuses were left out before the split (drop_colour), and the
        # intended use is surveyed over every split: evaluate and `models ood` do the same
        record["colour_checked"] = True
        record["intended_use_from"] = "all splits"
        record["copies_together"] = True  # identical images were split as one group
        record["copies"] = copies_report(source, splits)
        if source.has_series:  # series-labelled: how many series (and slices) each split got
            from radlens.training.data.series import series_counts

            record["series"] = {k: series_counts(source, v) for k, v in splits.items()}
        record["leakage_check"] = leakage
        return cls(config, source, splits, list(source.skipped), record, headers=headers)

    def report(self) -> None:
        """The data report's lines about the split (train.log), each said once."""
        r = self.split_record
        from radlens.training.data.sources import positive_class_note

        note = positive_class_note(self.source)
        if note is not None:
            log.info("%s", note)
        log.info(
            "split %s; patients from %s; leakage check passed (no patient in two splits)",
            r["method"],
            r["patient_source"],
        )
        if not self.source.has_patients:
            log.warning(
                "the data carries no patient information: images were split one by one, so "
                "images of one patient may sit in two splits"
            )
        elif r["images_without_patient"]:
            log.warning(
                "%d image(s) carry no patient information and were split one by one",
                r["images_without_patient"],
            )
        if not r["test_split"]:
            log.warning("no test split: the figures reported are optimistic (validation-selected)")
        copies = r["copies"]
        if copies["groups_across_splits"]:
            pairs = ", ".join(f"{k}: {v}" for k, v in copies["spanning"].items())
            log.warning(
                "%d group(s) of identical images sit in more than one given split (%s): the "
                "figures of val and test are inflated by them; pass --resplit to keep copies in "
                "one split",
                copies["groups_across_splits"],
                pairs,
            )
        elif copies["groups"]:
            log.info(
                "%d image(s) are identical copies (%d group(s)); each group was kept in one split",
                copies["images"],
                copies["groups"],
            )

    def load_validation(self) -> None:
        """Decode the validation split into memory (it is small; figures and metrics use it)."""
        self.x_val, self.y_val = self.load("val")
        self.val_series = self.series_of("val")

    def series_of(self, split: str) -> list[str | None]:
        """The series of each decoded example of ``split`` (call right after ``load``)."""
        from radlens.training.series import decoded

        return [e.series for e in decoded(self.splits[split], self.skipped)]

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of a split, decoded as the training pipeline does, augmentation off."""
        from radlens.training.data.pipeline import load_examples

        return load_examples(
            self.source,
            self.splits[split],
            size=self.size,
            window=self.config.window,
            batch_size=self.config.batch_size,
            skipped=self.skipped,
        )

    def train_dataset(self) -> Any:
        from radlens.training.data.pipeline import make_dataset

        c = self.config
        return make_dataset(
            self.source,
            self.splits["train"],
            size=self.size,
            window=c.window,
            batch_size=c.batch_size,
            training=True,
            seed=c.seed,
            augment=c.augment,
            cache=c.cache,
            deterministic=c.deterministic,
            skipped=self.skipped,
        )


@dataclass
class _Run:
    """A run in progress: what its steps share."""

    config: TrainConfig
    data: _RunData
    dist: Distribution
    path: Path
    state: dict[str, Any]  # state.json, updated as epochs and phases end
    model: keras.Model  # built in the strategy's scope, compiled per phase
    network: keras.Model  # the same layers without the optimizer: checkpoints, export


def _check_store(config: TrainConfig) -> None:
    """Refuse, before any data is read or run directory written, a model store the export
    could not write: a file where the folder should be, or a folder without write access."""
    import os

    from radlens.models.registry import default_store_path, signing_key_from_env

    signing_key_from_env()  # a key the service would refuse: before training, not at export
    store = Path(config.store) if config.store is not None else default_store_path()
    probe = store
    while not probe.exists() and probe.parent != probe:  # export creates the rest
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigurationError(
            f"the model store {str(store)!r} cannot be created: {str(probe)!r} is a file; "
            "pass --store FOLDER (or set RADLENS_MODEL_STORE)"
        )
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"the model store {str(store)!r} is not writable ({str(probe)!r}: permission "
            "denied); pass --store FOLDER you can write (or set RADLENS_MODEL_STORE)"
        )


def _train_phases(
    run: _Run, extra_callbacks: Sequence[keras.callbacks.Callback], verbose: int | str
) -> None:
    """Train every phase not finished before (``state["phase_done"]``), saving progress."""
    config, data, dist, run_path, state = run.config, run.data, run.dist, run.path, run.state
    model, network = run.model, run.network
    from radlens.training import callbacks as cb
    from radlens.training.loop import fit_phase
    from radlens.training.phases import (
        Phase,
        class_weights,
        compile_model,
        make_loss,
        make_optimizer,
        plan_phases,
    )

    class_names = list(data.source.class_names)
    log.info(
        "data %s: classes %s, split sizes %s, train class counts %s",
        config.data,
        class_names,
        {k: len(v) for k, v in data.splits.items()},
        data.source.class_counts(data.splits["train"]),
    )
    weights = class_weights(config, data.splits["train"], data.num_classes)
    if weights:
        log.info("class weights %s", {class_names[k]: round(v, 3) for k, v in weights.items()})
    loss = make_loss(data.num_classes, config.label_smoothing)
    if config.multi_label:
        loss = _findings_loss(config, data)
    train_ds = data.train_dataset()
    tb_callbacks: list[keras.callbacks.Callback] = []
    # multi-label: the exact macro AUC that train.log prints becomes the epoch's val_auc, so it
    # runs before everything that reads val_auc (checkpoint, early stopping, history, TensorBoard)
    finding_aucs: list[keras.callbacks.Callback] = []
    if config.multi_label:
        per_finding, tb_callbacks = _findings_callbacks(
            config, data, run_path, chief=dist.chief, custom_loop=dist.distributed
        )
        finding_aucs = [per_finding]
    elif dist.chief:  # one TensorBoard run per training run, written by the chief only
        tb_callbacks = cb.tensorboard_callbacks(
            run_path / rundir.TENSORBOARD,
            validation=(data.x_val[:MAX_FIGURE_EXAMPLES], data.y_val[:MAX_FIGURE_EXAMPLES]),
            class_names=class_names,
            hparams=_hparams(config),
            histogram_freq=config.histogram_freq,
            samples=config.tensorboard_samples,
            custom_loop=dist.distributed,
        )
    steps = data.steps_per_epoch
    series_callbacks = _series_callbacks(config, data, run_path, dist)

    def fit(phase: Phase) -> None:
        log.info(
            "phase %d: epochs %d-%d, learning rate %g, %d trainable weights",
            phase.number,
            phase.first_epoch + 1,
            phase.last_epoch,
            phase.learning_rate,
            len(model.trainable_weights),
        )
        history_csv = keras.callbacks.CSVLogger(str(run_path / rundir.HISTORY_FILE), append=True)
        callbacks: list[keras.callbacks.Callback] = [
            # the custom loop has no mid-phase resume; its phases restart when interrupted
            _validation_metrics(config, data, loss)
            if dist.distributed
            else cb.PhaseBackup(str(run_path / "backup" / f"phase{phase.number}")),
            *series_callbacks,  # before the checkpoint and history.csv: val_series_auc
            *finding_aucs,  # before the checkpoint and early stopping: the exact val_auc
            cb.BestCheckpoint(
                run_path,
                state,
                network,
                monitor=_monitor(config),
                # equal series AUCs (few series, often 1.0 early): the slice AUC decides
                tie_break="val_auc" if config.select_by == "series-auc" else None,
            ),
            history_csv,
            cb.EpochLog(phase.number),
            *tb_callbacks,
        ]
        if config.early_stopping_patience > 0:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=_monitor(config), mode="max", patience=config.early_stopping_patience
                )
            )
        callbacks.extend(extra_callbacks)
        phase_steps = steps * phase.epochs
        try:
            fit_phase(
                model,
                train_ds,
                dist=dist,
                compile_fn=lambda: compile_model(
                    model,
                    phase.learning_rate,
                    data.num_classes,
                    config,
                    steps=phase_steps,
                    loss=loss if config.multi_label else None,
                ),
                optimizer_fn=lambda: make_optimizer(config, phase.learning_rate, steps=phase_steps),
                loss=loss,
                first_epoch=phase.first_epoch,
                last_epoch=phase.last_epoch,
                steps_per_epoch=steps,
                global_batch_size=config.batch_size,
                validation=(data.x_val, data.y_val),
                class_weight=weights,
                callbacks=callbacks,
                verbose=_verbosity(verbose),
                multi_label=config.multi_label,
            )
        finally:  # an interrupted fit skips on_train_end, which closes these
            cb.close_files(history_csv, *finding_aucs, *tb_callbacks)

    phases = plan_phases(config)
    phase1_weights = run_path / rundir.CHECKPOINTS / rundir.PHASE1_WEIGHTS
    resumed_after_phase1 = state.get("phase_done", 0) >= 1
    for phase, step in phases:
        if phase.epochs == 0 or state.get("phase_done", 0) >= phase.number:
            continue  # nothing to do, or finished before an interruption
        if phase.number == 2 and resumed_after_phase1 and phase1_weights.is_file():
            network.load_weights(phase1_weights)  # the model holds freshly built weights
        step(model, config, phase, fit)
        if phase.number == 1 and len(phases) > 1:
            cb.save_weights_atomically(network, phase1_weights)
        state["phase_done"] = phase.number
        rundir.write_state(run_path, state)


def _finish(run: _Run, started: float) -> RunResult:
    """Restore the best epoch, choose the threshold, measure val/test, export, write result."""
    config, data, dist, run_path, state = run.config, run.data, run.dist, run.path, run.state
    model, network = run.model, run.network
    from radlens.models.drift import build_reference
    from radlens.models.registry import ModelRegistry, default_store_path
    from radlens.training.data.sources import data_fingerprint
    from radlens.training.loop import predict
    from radlens.training.metrics import (
        apply_temperature,
        classification_metrics,
        decision_threshold,
        expected_calibration_error,
        fit_temperature,
        recorded_operating_points,
    )
    from radlens.training.phases import fold_temperature

    if data.source.multi_label:
        return _finish_findings(run, started)
    class_names = list(data.source.class_names)
    best = run_path / rundir.CHECKPOINTS / rundir.BEST_WEIGHTS
    if best.is_file():
        network.load_weights(best)
        _log_restored(config, state, "series AUC" if config.select_by == "series-auc" else "AUC")
    raw_val = predict(model, data.x_val, dist=dist, batch_size=config.batch_size)
    # calibration: T fitted on validation only, then folded into the exported model
    temperature = fit_temperature(data.y_val, raw_val)
    fold_temperature(network, temperature)
    val_probs = predict(model, data.x_val, dist=dist, batch_size=config.batch_size)
    log.info("temperature scaling: T = %.4f (fitted on validation)", temperature)
    threshold = (
        decision_threshold(config.threshold_rule, data.y_val, val_probs[:, 1])
        if len(class_names) == 2
        else None
    )
    val_metrics = classification_metrics(data.y_val, val_probs, class_names, threshold)
    val_metrics["best_epoch"] = state.get("best_epoch")
    val_metrics["selected_by"] = config.select_by
    series_record = _series_threshold(config, data, val_probs, threshold)
    series_cut = series_record["threshold"] if series_record is not None else threshold
    if data.source.has_series:
        val_metrics["series"] = _series_figures(
            config, "val", data.val_series, data.y_val, val_probs, class_names, threshold=series_cut
        )
    test_metrics = None
    # the figures reported: the test split, which no selection step (epoch, early stopping,
    # threshold, temperature, operating points) has seen; else validation, labelled optimistic
    eval_split, y_eval, eval_probs, raw_eval = "val", data.y_val, val_probs, raw_val
    if data.splits["test"]:
        x_test, y_test = data.load("test")
        test_probs = predict(model, x_test, dist=dist, batch_size=config.batch_size)  # calibrated
        test_metrics = classification_metrics(y_test, test_probs, class_names, threshold)
        if data.source.has_series:
            test_metrics["series"] = _series_figures(
                config,
                "test",
                data.series_of("test"),
                y_test,
                test_probs,
                class_names,
                threshold=series_cut,
            )
        eval_split, y_eval, eval_probs = "test", y_test, test_probs
        raw_eval = apply_temperature(test_probs, 1.0 / temperature)  # the uncalibrated scores
    calibration = {
        "method": "temperature scaling",
        "temperature": temperature,
        "fitted_on": "val",
        "evaluated_on": eval_split,
        "ece_before": expected_calibration_error(y_eval, raw_eval),
        "ece_after": expected_calibration_error(y_eval, eval_probs),
    }
    reported = {
        "split": eval_split,
        "label": REPORTED_LABELS[eval_split],
        **(test_metrics if test_metrics is not None else val_metrics),
    }
    points: dict[str, dict[str, Any]] = {}
    points_missing: dict[str, str] = {}  # points validation cannot choose, with why
    if threshold is not None:
        points, points_missing = recorded_operating_points(
            data.y_val, val_probs[:, 1], y_eval, eval_probs[:, 1], threshold, config.threshold_rule
        )
        for point, why in points_missing.items():
            log.info("operating point %s not computed: %s", point, why)
    log.info(
        "reported figures: %s; ECE on %s %.4f before calibration, %.4f after",
        reported["label"],
        eval_split,
        calibration["ece_before"],
        calibration["ece_after"],
    )
    if dist.chief:
        from radlens.training.callbacks import reliability_diagram_png, write_figure

        write_figure(
            run_path / rundir.TENSORBOARD / rundir.TENSORBOARD_VALIDATION,
            f"calibration/reliability_{eval_split}",
            reliability_diagram_png(y_eval, eval_probs, title=f"Reliability ({eval_split})"),
        )

    skipped = unique_skipped(data.skipped)
    for item in skipped:
        log.warning("skipped %s", item)
    store = Path(config.store) if config.store is not None else default_store_path()
    sizes = {k: len(v) for k, v in data.splits.items()}
    model_ref = ""
    if dist.chief:  # every worker holds the same weights; exactly one creates the version
        intended_use = data.intended_use()
        manifest = ModelRegistry(store).save(
            network,
            name=config.name,
            architecture=config.architecture,
            class_names=class_names,
            threshold=threshold,
            window=config.window,
            filters=list(config.filters),
            metrics={
                "val": val_metrics,
                **({"test": test_metrics} if test_metrics else {}),
                "reported": reported,
                "operating_points": points,
                **({"operating_points_not_computed": points_missing} if points_missing else {}),
                # series-labelled binary data: the threshold the service decides a series at
                **({"series_threshold": series_record} if series_record is not None else {}),
                # what the service's drift check compares recent inputs and scores with
                "drift_reference": build_reference(val_probs, data.x_val, class_names, threshold),
            },
            training_config={
                **config.to_dict(),
                "run_dir": str(run_path),
                "split_sizes": sizes,
                "split": data.split_record,
            },
            data_fingerprint=data_fingerprint(data.source, data.splits),
            description=config.description,
            data_split={k: v for k, v in data.split_record.items() if k != "leakage_check"},
            leakage_check=data.split_record["leakage_check"],
            calibration=calibration,
            intended_use=intended_use,
            finish_later=True,  # nobody's newest model until its detector is attached
        )
        model_ref = f"{manifest.name}:{manifest.version}"
        _attach_ood(config, data, ModelRegistry(store), model_ref, network)
        if config.openvino:
            _add_openvino(ModelRegistry(store), model_ref, data)
        ModelRegistry(store).finish(model_ref)
    result = RunResult(
        run_dir=run_path,
        model_ref=model_ref,
        store=store,
        class_names=class_names,
        threshold=threshold,
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        best_epoch=state.get("best_epoch"),
        epochs_run=int(state.get("last_epoch", 0)),
        skipped=skipped,
        ignored=dict(data.source.ignored),
        split_sizes=sizes,
        seconds=time.monotonic() - started,
        reported=reported,
        calibration=calibration,
        operating_points=points,
        operating_points_not_computed=points_missing,
        split=data.split_record,
    )
    rundir.write_result(run_path, result.to_dict())
    log.info(
        "%s %s to %s (val auc %s, threshold %s, %d skipped file(s), %.0f s)",
        "exported" if dist.chief else "not exported (not the chief):",
        result.model_ref or config.name,
        store,
        val_metrics.get("auc"),
        threshold,
        len(skipped),
        result.seconds,
    )
    return result


def _series_callbacks(
    config: TrainConfig, data: _RunData, run_path: Path, dist: Distribution
) -> list[keras.callbacks.Callback]:
    """Series-labelled data: the per-epoch validation series AUC (training.series)."""
    if not data.source.has_series:
        return []
    from radlens.training.series import series_callback

    return [
        series_callback(
            # tags in Keras' validation sub-run: a run keeps its two entries in TensorBoard
            run_path / rundir.TENSORBOARD / rundir.TENSORBOARD_VALIDATION if dist.chief else None,
            data.x_val,
            data.y_val,
            data.val_series,
            data.source.class_names,
            method=config.series_aggregation,
            k=config.series_top_k,
            batch_size=config.batch_size,
            multi_label=data.source.multi_label,
            local=dist.distributed,  # the custom loop: predict on this process only
        )
    ]


def _log_restored(config: TrainConfig, state: dict[str, Any], what: str) -> None:
    """train.log: which epoch was restored, and its figure as the epoch's line printed it."""
    value = state.get(f"best_{_monitor(config)}")
    log.info(
        "restored the best epoch (%s) by validation %s%s",
        state.get("best_epoch"),
        what,
        "" if value is None else f" {float(value):.4f}",
    )


def _monitor(config: TrainConfig) -> str:
    """The epoch-log entry that picks the best epoch and stops early (``select_by``)."""
    return "val_series_auc" if config.select_by == "series-auc" else "val_auc"


def _series_threshold(
    config: TrainConfig, data: _RunData, val_probs: np.ndarray, threshold: float | None
) -> dict[str, Any] | None:
    """Series-labelled binary data: the series threshold on the calibrated validation series
    scores (``training.series.choose_series_threshold``), logged; None otherwise."""
    if not data.source.has_series or threshold is None:
        return None
    from radlens.training.series import choose_series_threshold

    record = choose_series_threshold(
        config.threshold_rule,
        data.val_series,
        data.y_val,
        val_probs,
        method=config.series_aggregation,
        k=config.series_top_k,
    )
    if record is None:
        log.warning(
            "the validation series hold one class only: no series threshold; the service "
            "decides series at the model threshold %.4f",
            threshold,
        )
        return None
    log.info(
        "series threshold %.4f (%s on %d validation series, %s, k=%d); slice threshold %.4f",
        record["threshold"],
        record["rule"],
        record["n_series"],
        record["aggregation"],
        record["top_k"],
        threshold,
    )
    return record


def _finding_series_thresholds(
    config: TrainConfig,
    data: _RunData,
    val_scores: np.ndarray,
    names: Sequence[str],
    thresholds: dict[str, float],
) -> dict[str, Any] | None:
    """Series-labelled multi-label data: a series threshold per finding on the calibrated
    validation series scores (``training.series.choose_finding_series_thresholds``), logged
    beside each finding's instance threshold; None for data without series."""
    if not data.source.has_series:
        return None
    from radlens.training.series import choose_finding_series_thresholds

    record = choose_finding_series_thresholds(
        config.threshold_rule,
        data.val_series,
        data.y_val,
        val_scores,
        names,
        method=config.series_aggregation,
        k=config.series_top_k,
    )
    for name, value in record["thresholds"].items():
        log.info(
            "series threshold %s %.4f (%s on %d validation series, %d positive, %s, k=%d); "
            "instance threshold %.4f",
            name,
            value,
            record["rule"],
            record["n_series"],
            record["n_positive"][name],
            record["aggregation"],
            record["top_k"],
            thresholds[name],
        )
    if record["instance_threshold_kept"]:
        log.warning(
            "finding(s) %s have no validation series positive or no negative: no series "
            "threshold; the service decides their series at the instance threshold",
            record["instance_threshold_kept"],
        )
    return record


def _series_figures(
    config: TrainConfig,
    split: str,
    series_of: Sequence[str | None],
    targets: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    threshold: float | None = None,
    thresholds: dict[str, float] | None = None,
    threshold_sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Series-level figures of one split (training.series), logged to train.log."""
    from radlens.training.series import _fmt, series_metrics

    figures = series_metrics(
        series_of,
        targets,
        scores,
        class_names,
        method=config.series_aggregation,
        k=config.series_top_k,
        threshold=threshold,
        thresholds=thresholds,
        multi_label=thresholds is not None,
        threshold_sources=threshold_sources,
    )
    log.info(
        "%s series-level: AUC %s over %d series (%s, k=%d); slice AUC %s over %d slices",
        split,
        _fmt(figures["auc"]),
        figures["n_series"],
        figures["aggregation"],
        figures["top_k"],
        _fmt(figures["slice_auc"]),
        figures["n_slices"],
    )
    for name, m in (figures.get("per_finding") or {}).items():  # multi-label
        log.info(
            "%s series-level %s: threshold %.4f (%s), sensitivity %s, specificity %s",
            split,
            name,
            m["threshold"],
            m.get("threshold_source", "model"),
            _fmt(m["sensitivity"]),
            _fmt(m["specificity"]),
        )
    return figures


def _hparams(config: TrainConfig) -> dict[str, Any]:
    keys = (
        "architecture",
        "filters",
        "center",
        "batchnorm",
        "weights",
        "image_size",
        "window",
        "batch_size",
        "epochs_head",
        "epochs_finetune",
        "unfreeze_blocks",
        "learning_rate_head",
        "learning_rate_finetune",
        "dropout",
        "class_weights",
        "augment",
        "seed",
    )
    values = config.to_dict()
    return {k: values[k] for k in keys}


def _verbosity(verbose: int | str) -> int:
    if verbose != "auto":
        return int(verbose)
    return 1 if sys.stdout.isatty() else 2


def _attach_ood(
    config: TrainConfig, data: _RunData, registry: Any, model_ref: str, network: keras.Model
) -> None:
    """Fit the exported model's out-of-distribution detector on its training split, threshold
    it on validation and store it with the version (training.ood; a multi-label model's
    class means are per finding, models.ood.finding_groups). ``ood_method: none`` skips it,
    said in train.log."""
    if config.ood_method == "none":
        log.info("%s: no OOD detector fitted (ood_method: none)", model_ref)
        return
    from radlens.training.ood import attach_from_source

    attach_from_source(
        registry,
        model_ref,
        network,
        data.source,
        data.splits,
        size=data.size,
        window=config.window,
        method=config.ood_method,
        x_val=data.x_val,
        seed=config.seed,
        batch_size=config.batch_size,
    )


def _add_openvino(registry: Any, model_ref: str, data: _RunData) -> None:
    """Store an OpenVINO IR beside the exported model, with its parity on the validation
    split (what lets the service serve it in bf16, models.runtime). The exported model is
    already complete: a missing OpenVINO or a failed conversion is a warning, not a failure."""
    from radlens.models.errors import ModelStoreError, RuntimeUnavailableError
    from radlens.models.runtime import add_openvino_runtime

    try:
        manifest = add_openvino_runtime(
            registry,
            model_ref,  # loaded back from the store: parity of what the service will serve
            images=data.x_val,
            labels=data.y_val,
            data_note=f"validation split ({len(data.y_val)} images)",
        )
    except (RuntimeUnavailableError, ModelStoreError) as exc:
        log.warning("%s stored without an OpenVINO runtime: %s", model_ref, exc)
        return
    parity = manifest.runtimes.get("openvino", {}).get("parity", {})
    log.info("%s: OpenVINO runtime stored; parity on val: %s", model_ref, parity)


# --- multi-label findings (training.findings) ------------------------------------------------


def _findings_loss(config: TrainConfig, data: _RunData) -> Any:
    """Per-finding binary cross-entropy, positives weighted as ``positive_weights`` says."""
    from radlens.training import findings

    targets = data.source.targets(data.splits["train"])
    weights = findings.positive_weights(targets, config.positive_weights)
    if weights is not None:
        log.info(
            "positive weights (n_neg / n_pos on train) %s",
            {n: round(float(w), 3) for n, w in zip(data.source.class_names, weights, strict=True)},
        )
    return findings.make_loss(weights)


def _validation_metrics(config: TrainConfig, data: _RunData, loss: Any) -> Any:
    """The custom loop's validation callback: ``val_loss``, ``val_auc``, ... in the epoch logs
    (multi-label: ``val_auc`` is the macro AUC over findings, as Keras' compiled ``auc``)."""
    from radlens.training import callbacks as cb

    if config.multi_label:
        from radlens.training.findings import FindingValidationMetrics

        return FindingValidationMetrics(
            data.x_val, data.y_val, data.source.class_names, config.batch_size, loss
        )
    return cb.ValidationMetrics(data.x_val, data.y_val, data.source.class_names, config.batch_size)


def _findings_callbacks(
    config: TrainConfig,
    data: _RunData,
    run_path: Path,
    *,
    chief: bool,
    custom_loop: bool = False,
) -> tuple[keras.callbacks.Callback, list[keras.callbacks.Callback]]:
    """The per-finding validation AUC each epoch (train.log and TensorBoard ``findings/...``
    tags; its exact macro AUC is the epoch's ``val_auc``, so the caller puts it before the
    checkpoint and early stopping), and TensorBoard (scalars, graph, histograms, hparams,
    sample images; none on a worker that is not the chief), in Keras' ``train`` and
    ``validation`` sub-runs only, the rest being tags in the validation one. The single-label
    figures (confusion matrix, one ROC curve, Grad-CAM of a class) do not apply. Under a
    distribution strategy (the custom loop, ``custom_loop``) the epoch scalars come from
    ``EpochScalarsCallback`` (Keras' TensorBoard callback, with its histograms, needs ``fit``)
    and the per-finding AUC predicts on this process only."""
    from radlens.training import callbacks as cb
    from radlens.training.findings import FindingMetricsCallback

    log_dir = run_path / rundir.TENSORBOARD
    # everything besides Keras' scalars and histograms is a tag in its validation sub-run (as
    # single-label runs, training.callbacks): a run adds two entries to the run selector
    validation_run = log_dir / rundir.TENSORBOARD_VALIDATION
    x = data.x_val[:MAX_FIGURE_EXAMPLES]
    per_finding = FindingMetricsCallback(
        validation_run if chief else None,  # tags, not a sub-run
        data.x_val,  # the whole split: its macro AUC picks the best epoch (val_auc)
        data.y_val,
        data.source.class_names,
        config.batch_size,
        local=custom_loop,
    )
    if not chief:
        return per_finding, []
    made: list[keras.callbacks.Callback] = [
        cb.EpochScalarsCallback(log_dir)
        if custom_loop
        else keras.callbacks.TensorBoard(
            log_dir=str(log_dir), histogram_freq=config.histogram_freq, update_freq="epoch"
        ),
        cb.HParamsCallback(validation_run, _hparams(config), cb.HPARAM_METRICS_MULTI_LABEL),
        cb.ModelGraphCallback(validation_run),
    ]
    if config.tensorboard_samples > 0:
        made.append(cb.SampleImagesCallback(validation_run, x[: config.tensorboard_samples]))
    return per_finding, made


def _finish_findings(run: _Run, started: float) -> RunResult:
    """Multi-label end of a run: best epoch, a temperature and a threshold per finding on
    validation (series-labelled data: and a series threshold per finding on the validation
    series, which the series figures are measured at), then the test split measured once;
    export with the findings record."""
    config, data, dist, run_path, state = run.config, run.data, run.dist, run.path, run.state
    model, network = run.model, run.network
    from radlens.models.registry import ModelRegistry, default_store_path
    from radlens.training import findings
    from radlens.training.data.sources import data_fingerprint
    from radlens.training.loop import predict

    names = list(data.source.class_names)
    best = run_path / rundir.CHECKPOINTS / rundir.BEST_WEIGHTS
    if best.is_file():
        network.load_weights(best)
        # by AUC: the exact macro AUC of that epoch's "findings: macro AUC" line in train.log
        what = "series macro AUC" if config.select_by == "series-auc" else "macro AUC"
        _log_restored(config, state, what)
    raw_val = predict(model, data.x_val, dist=dist, batch_size=config.batch_size)
    temperatures, uncalibrated = findings.fit_temperatures(
        data.y_val, raw_val, names, min_positives=config.min_calibration_positives
    )
    findings.fold_temperatures(network, temperatures)
    val_scores = predict(model, data.x_val, dist=dist, batch_size=config.batch_size)
    thresholds, undecided = findings.choose_thresholds(
        config.threshold_rule, data.y_val, val_scores, names
    )
    if uncalibrated:
        log.warning(
            "finding(s) %s have fewer than %d validation positives (or no negative): "
            "not temperature-scaled (T = 1)",
            uncalibrated,
            config.min_calibration_positives,
        )
    if undecided:
        log.warning(
            "finding(s) %s have no validation positive or no negative: threshold 0.5, "
            "not chosen on data",
            undecided,
        )
    val_metrics = findings.finding_metrics(data.y_val, val_scores, names, thresholds)
    val_metrics["best_epoch"] = state.get("best_epoch")
    series_record = _finding_series_thresholds(config, data, val_scores, names, thresholds)
    # each finding's series figures at its series threshold where the run chose one, as the
    # service will decide them
    from radlens.training.series import finding_series_cuts

    series_cuts, series_sources = finding_series_cuts(
        thresholds, (series_record or {}).get("thresholds") or {}
    )
    if data.source.has_series:
        val_metrics["series"] = _series_figures(
            config,
            "val",
            data.val_series,
            data.y_val,
            val_scores,
            names,
            thresholds=series_cuts,
            threshold_sources=series_sources,
        )
    test_metrics = None
    eval_split, y_eval, eval_scores = "val", data.y_val, val_scores
    if data.splits["test"]:
        x_test, y_test = data.load("test")
        test_scores = predict(model, x_test, dist=dist, batch_size=config.batch_size)
        y_eval, eval_scores = y_test, test_scores
        test_metrics = findings.finding_metrics(y_test, test_scores, names, thresholds)
        if data.source.has_series:
            test_metrics["series"] = _series_figures(
                config,
                "test",
                data.series_of("test"),
                y_test,
                test_scores,
                names,
                thresholds=series_cuts,
                threshold_sources=series_sources,
            )
        eval_split = "test"
    reported = {
        "split": eval_split,
        "label": REPORTED_LABELS[eval_split],
        **(test_metrics if test_metrics is not None else val_metrics),
    }
    calibration = {
        "method": "temperature scaling per finding (sigmoid)",
        "temperatures": dict(zip(names, temperatures.tolist(), strict=True)),
        "fitted_on": "val",
        "not_calibrated": uncalibrated,
        "min_calibration_positives": config.min_calibration_positives,
    }
    for line in findings.format_table(reported):
        log.info("%s: %s", eval_split, line)
    # each finding's operating points, as a binary model's (thresholds on validation, figures
    # on the reported split): what RADLENS_OPERATING_POINT serves a finding at
    points = findings.finding_operating_points(
        data.y_val,
        val_scores,
        y_eval,
        eval_scores,
        names,
        thresholds,
        rule=config.threshold_rule,
        undecided=undecided,
        evaluated_on=eval_split,
    )
    log.info(
        "operating points per finding (thresholds chosen on validation, figures on %s):",
        eval_split,
    )
    for line in findings.format_points_table({"per_finding": points["per_finding"]}):
        log.info("%s: %s", eval_split, line)
    for name, missing in points["not_computed"].items():
        log.warning(
            "finding %s has no operating point %s (%s): a service set to one of them "
            "(RADLENS_OPERATING_POINT) decides it at its own threshold",
            name,
            ", ".join(missing),
            "; ".join(f"{point}: {why}" for point, why in missing.items()),
        )
    record = {
        "label_mode": "multi-label",
        "scores": "independent",  # one sigmoid per finding: they do not sum to one
        "none_name": data.source.none_name or config.no_finding,
        "thresholds": thresholds,
        "threshold_rule": config.threshold_rule,
        "thresholds_not_chosen_on_data": undecided,
        "positive_weights": config.positive_weights,
    }
    skipped = unique_skipped(data.skipped)
    for item in skipped:
        log.warning("skipped %s", item)
    store = Path(config.store) if config.store is not None else default_store_path()
    sizes = {k: len(v) for k, v in data.splits.items()}
    model_ref = ""
    if dist.chief:
        # what the service's gate checks an upload's metadata against, as for single-label
        # (it was not written: a multi-label model accepted every modality and body part)
        intended_use = data.intended_use()
        manifest = ModelRegistry(store).save(
            network,
            name=config.name,
            architecture=config.architecture,
            class_names=names,
            threshold=None,
            window=config.window,
            filters=list(config.filters),
            metrics={
                "val": val_metrics,
                **({"test": test_metrics} if test_metrics else {}),
                "reported": reported,
                "calibration": calibration,
                "split": data.split_record,
                # per finding, the table a binary model keeps in "operating_points"
                # (models.decision.operating_point serves a finding at one of them)
                "operating_points_per_finding": points,
                # series-labelled data: the threshold per finding the service decides a
                # series' finding at (training.series.choose_finding_series_thresholds)
                **({"series_threshold": series_record} if series_record is not None else {}),
                # what the service's drift check compares recent inputs and scores with:
                # per finding, its score histogram and the rate it is decided positive
                "drift_reference": findings.drift_reference(
                    val_scores, data.x_val, names, thresholds
                ),
            },
            training_config={
                **config.to_dict(),
                "run_dir": str(run_path),
                "split_sizes": sizes,
                "split": data.split_record,
            },
            data_fingerprint=data_fingerprint(data.source, data.splits),
            description=config.description,
            data_split={k: v for k, v in data.split_record.items() if k != "leakage_check"},
            leakage_check=data.split_record.get("leakage_check"),
            intended_use=intended_use,
            findings=record,
            finish_later=True,  # nobody's newest model until its detector is attached
        )
        model_ref = f"{manifest.name}:{manifest.version}"
        log.info(
            "%s: drift reference written (validation split, %d images: per finding its score "
            "histogram and positive rate; input intensity histograms)",
            model_ref,
            len(data.y_val),
        )
        _attach_ood(config, data, ModelRegistry(store), model_ref, network)
        if config.openvino:  # parity per finding on validation (models.runtime)
            _add_openvino(ModelRegistry(store), model_ref, data)
        ModelRegistry(store).finish(model_ref)
    result = RunResult(
        run_dir=run_path,
        model_ref=model_ref,
        store=store,
        class_names=names,
        threshold=None,
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        best_epoch=state.get("best_epoch"),
        epochs_run=int(state.get("last_epoch", 0)),
        skipped=skipped,
        ignored=dict(data.source.ignored),
        split_sizes=sizes,
        seconds=time.monotonic() - started,
        reported=reported,
        calibration=calibration,
        split=data.split_record,
    )
    rundir.write_result(
        run_path,
        {**result.to_dict(), "findings": record, "operating_points_per_finding": points},
    )
    log.info(
        "exported %s to %s (val macro AUC %s, %d finding(s), %d skipped file(s), %.0f s)",
        result.model_ref or config.name,
        store,
        val_metrics.get("macro_auc"),
        len(names),
        len(skipped),
        result.seconds,
    )
    return result

"""One training run: data -> (two-phase) fit with TensorBoard -> threshold -> export to the store.

``train(config)`` creates ``<runs_dir>/<name>-<UTC timestamp>/`` holding::

    config.json        the TrainConfig (what ``radlens train --resume RUN_DIR`` reads)
    train.log          the run's log: data summary, skipped files, one line per epoch, result
    history.csv        every epoch's train/validation metrics (appended across resumes)
    state.json         phase progress and the best epoch so far (for resuming)
    checkpoints/       best.weights.h5 (best epoch by validation AUC), phase1.weights.h5
    backup/phase<N>/   keras.callbacks.BackupAndRestore state while a phase is running
    tensorboard/       the TensorBoard callbacks' log directory (see training.callbacks)
    result.json        the exported model ref, metrics and counts, once the run has finished

Phases. ResNet50 is fine-tuned in two phases (keras-io transfer-learning recipe): phase 1
trains the head for ``epochs_head`` epochs with the backbone frozen (the graph calls it with
``training=False``, so its BatchNorm layers stay in inference mode); phase 2 unfreezes the top
``unfreeze_blocks`` residual blocks (BatchNorm stays frozen), recompiles with
``learning_rate_finetune`` and trains ``epochs_finetune`` more epochs, the epoch counter
continuing. simple_cnn trains in one phase of ``epochs_head`` epochs.

Selection and export. The weights of the epoch with the best validation AUC are restored
(``checkpoints/best.weights.h5``), the decision threshold is chosen on validation by
``training.metrics.choose_threshold`` (Youden's J), and the model is exported with
``ModelRegistry.save`` with metrics ``{"val": ..., "test": ...}``, the training config, a data
fingerprint (sha256 over the sorted relative example keys and labels), window and filters.
Early stopping (per phase) watches validation AUC with ``early_stopping_patience``.

Resume. Interrupted runs continue with ``resume(run_dir)``: BackupAndRestore restores the
running phase's weights, optimizer and epoch; a finished phase 1 is reloaded from
``checkpoints/phase1.weights.h5``; the best-so-far AUC is read from ``state.json`` so the best
checkpoint is only replaced by a better epoch. (Early-stopping patience restarts on resume.)

Unreadable images are logged with their path and reason, skipped, and counted in the result.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models.errors import ConfigurationError
from training.config import TrainConfig
from training.data.sources import DataSource, Example, SkippedFile, split_source
from training.evaluate import load_examples, open_data, predict_examples

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
RESULT_FILE = "result.json"
BEST_WEIGHTS = "best.weights.h5"
PHASE1_WEIGHTS = "phase1.weights.h5"
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
    split_sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

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
            "split_sizes": self.split_sizes,
            "seconds": round(self.seconds, 1),
        }


def resume(run_dir: str | Path, **kwargs: Any) -> RunResult:
    """Continue an interrupted run from its directory (reads its config.json)."""
    run_path = Path(run_dir)
    config_path = run_path / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigurationError(
            f"not a radlens run directory (no {CONFIG_FILE}): {str(run_path)!r}"
        )
    if (run_path / RESULT_FILE).is_file():
        raise ConfigurationError(f"the run in {str(run_path)!r} has finished already")
    return train(TrainConfig.load(config_path), run_dir=run_path, **kwargs)


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
    data_path = Path(config.data)
    if run_dir is None:  # config.json must find the data again from anywhere (--resume)
        data_path = data_path.resolve()
        config = config.with_overrides({"data": str(data_path)})
    # FIRST, before any other TensorFlow op: the multiworker strategy configures the process's
    # collective runtime, which cannot change once TensorFlow's context is initialised
    strategy, distributed, chief, task = _make_strategy(config)
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    source = open_data(data_path, config.class_names)
    splits = split_source(
        source,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed if config.split_seed is None else config.split_seed,
    )
    _check_splits(source, splits)

    resuming = run_dir is not None
    if run_dir is not None:
        run_path = Path(run_dir) if chief else Path(f"{run_dir}.{task}")
        run_path.mkdir(parents=True, exist_ok=True)
    else:  # a worker that is not the chief keeps its files apart (the chief's are the run's)
        run_path = _new_run_dir(config, suffix="" if chief else f".{task}")
    (run_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    if not resuming:
        config.write_json(run_path / CONFIG_FILE)
    handler = _attach_log(run_path / "train.log")
    if on_start is not None:
        on_start(run_path)
    try:
        log.info("%s run %s", "resuming" if resuming else "starting", run_path)
        if distributed:
            log.info(
                "strategy %s: %d replica(s), %s",
                type(strategy).__name__,
                strategy.num_replicas_in_sync,
                "chief (exports)" if chief else f"{task} (trains, does not export)",
            )
        dist = _Distribution(strategy, distributed, chief)
        return _run(config, source, splits, run_path, callbacks, verbose, started, dist)
    finally:
        logging.getLogger("training").removeHandler(handler)
        handler.close()


def _run(
    config: TrainConfig,
    source: DataSource,
    splits: dict[str, list[Example]],
    run_path: Path,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    verbose: int | str,
    started: float,
    dist: _Distribution,
) -> RunResult:
    from models.registry import ModelRegistry, default_store_path
    from training.callbacks import tensorboard_callbacks
    from training.data.pipeline import make_dataset
    from training.metrics import classification_metrics, decision_threshold

    class_names = list(source.class_names)
    sizes = {k: len(v) for k, v in splits.items()}
    log.info(
        "data %s: classes %s, split sizes %s, train class counts %s",
        config.data,
        class_names,
        sizes,
        source.class_counts(splits["train"]),
    )
    skipped: list[SkippedFile] = list(source.skipped)
    size = (config.image_size, config.image_size)
    train_ds = make_dataset(
        source,
        splits["train"],
        size=size,
        window=config.window,
        batch_size=config.batch_size,
        training=True,
        seed=config.seed,
        augment=config.augment,
        cache=config.cache,
        deterministic=config.deterministic,
        skipped=skipped,
    )
    x_val, y_val = load_examples(
        source,
        splits["val"],
        size=size,
        window=config.window,
        batch_size=config.batch_size,
        skipped=skipped,
    )
    class_weight = _class_weights(config, splits["train"], len(class_names))
    if class_weight:
        log.info("class weights %s", {class_names[k]: round(v, 3) for k, v in class_weight.items()})

    state = _read_state(run_path)
    with dist.strategy.scope():  # variables are mirrored under a distribution strategy
        model = build_model_for(config, len(class_names))
        # the same layers without the optimizer: checkpoints must load whichever phase (and so
        # whichever optimizer state) wrote them
        network = _export_model(model)
    tb_callbacks: list[keras.callbacks.Callback] = []
    if dist.chief:  # one TensorBoard run per training run, written by the chief only
        tb_callbacks = tensorboard_callbacks(
            run_path / "tensorboard",
            validation=(x_val[:MAX_FIGURE_EXAMPLES], y_val[:MAX_FIGURE_EXAMPLES]),
            class_names=class_names,
            hparams=_hparams(config),
            histogram_freq=config.histogram_freq,
            samples=config.tensorboard_samples,
            custom_loop=dist.distributed,
        )
    fit_kwargs: dict[str, Any] = {
        # a fixed number of steps over a repeated stream: the pipeline may drop unreadable
        # files, so its length is unknown to Keras (which would warn every epoch)
        "steps_per_epoch": max(1, math.ceil(len(splits["train"]) / config.batch_size)),
        "validation_data": (x_val, y_val),
        "class_weight": class_weight or None,
        "verbose": _verbosity(verbose),
        "shuffle": False,  # the tf.data pipeline shuffles (seeded)
    }

    phases = [(1, config.epochs_head)]
    if config.two_phase and config.epochs_finetune > 0:
        phases.append((2, config.epochs_finetune))
    first_epoch = 0
    fresh = True  # the model holds freshly built weights (no phase trained in this process)
    for phase, epochs in phases:
        last_epoch = first_epoch + epochs
        if epochs == 0 or state.get("phase_done", 0) >= phase:
            first_epoch = last_epoch  # nothing to do, or finished before an interruption
            continue
        if phase == 1 and config.two_phase:
            _set_backbone(model, 0)  # head only
        elif config.architecture == "resnet50":  # from scratch: everything, BatchNorm too
            _set_backbone(model, "all", freeze_batchnorm=False)
            _track_recent_batches(model)
        if phase == 2:
            phase1 = run_path / "checkpoints" / PHASE1_WEIGHTS
            if fresh and phase1.is_file():  # resumed after phase 1 had finished
                network.load_weights(phase1)
            _set_backbone(model, config.unfreeze_blocks)  # top blocks, BatchNorm stays frozen
        lr = config.learning_rate_head if phase == 1 else config.learning_rate_finetune
        if not dist.distributed:  # the custom loop builds its optimizer in the strategy scope
            _compile(
                model, lr, len(class_names), config, steps=fit_kwargs["steps_per_epoch"] * epochs
            )
        log.info(
            "phase %d: epochs %d-%d, learning rate %g, %d trainable weights",
            phase,
            first_epoch + 1,
            last_epoch,
            lr,
            len(model.trainable_weights),
        )
        history_csv = keras.callbacks.CSVLogger(str(run_path / "history.csv"), append=True)
        callbacks: list[keras.callbacks.Callback] = [
            # the custom loop has no mid-phase resume; its phases restart when interrupted
            ValidationMetrics(x_val, y_val, class_names, config.batch_size)
            if dist.distributed
            else keras.callbacks.BackupAndRestore(str(run_path / "backup" / f"phase{phase}")),
            BestCheckpoint(run_path, state, network),
            history_csv,
            EpochLog(phase),
            *tb_callbacks,
        ]
        if config.early_stopping_patience > 0:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_auc", mode="max", patience=config.early_stopping_patience
                )
            )
        callbacks.extend(extra_callbacks)
        try:
            if dist.distributed:
                _fit_custom_loop(
                    model,
                    train_ds,
                    dist,
                    config,
                    learning_rate=lr,
                    num_classes=len(class_names),
                    first_epoch=first_epoch,
                    last_epoch=last_epoch,
                    steps_per_epoch=fit_kwargs["steps_per_epoch"],
                    class_weight=class_weight,
                    callbacks=callbacks,
                )
            else:
                model.fit(
                    train_ds.repeat(),
                    epochs=last_epoch,
                    initial_epoch=first_epoch,
                    callbacks=callbacks,
                    **fit_kwargs,
                )
        finally:  # an interrupted fit skips on_train_end, which closes these
            _close_files(history_csv, *tb_callbacks)
        fresh = False
        if phase == 1 and len(phases) > 1:
            network.save_weights(run_path / "checkpoints" / PHASE1_WEIGHTS)
        state["phase_done"] = phase
        _write_state(run_path, state)
        first_epoch = last_epoch

    best = run_path / "checkpoints" / BEST_WEIGHTS
    if best.is_file():
        network.load_weights(best)
        log.info("restored the best epoch (%s) by validation AUC", state.get("best_epoch"))
    predictor = _LocalPredictor(model) if dist.distributed else model
    val_probs = np.asarray(predictor.predict(x_val, batch_size=config.batch_size, verbose=0))
    threshold = (
        decision_threshold(config.threshold_rule, y_val, val_probs[:, 1])
        if len(class_names) == 2
        else None
    )
    val_metrics = classification_metrics(y_val, val_probs, class_names, threshold)
    val_metrics["best_epoch"] = state.get("best_epoch")
    test_metrics = None
    if splits["test"]:
        y_test, test_probs = predict_examples(
            predictor,
            source,
            splits["test"],
            size=size,
            window=config.window,
            batch_size=config.batch_size,
            skipped=skipped,
        )
        test_metrics = classification_metrics(y_test, test_probs, class_names, threshold)

    unique_skipped = _unique(skipped)
    for item in unique_skipped:
        log.warning("skipped %s", item)
    store = Path(config.store) if config.store is not None else default_store_path()
    training_config = {**config.to_dict(), "run_dir": str(run_path), "split_sizes": sizes}
    model_ref = ""
    if dist.chief:  # every worker holds the same weights; exactly one creates the version
        manifest = ModelRegistry(store).save(
            network,
            name=config.name,
            architecture=config.architecture,
            class_names=class_names,
            threshold=threshold,
            window=config.window,
            filters=list(config.filters),
            metrics={"val": val_metrics, **({"test": test_metrics} if test_metrics else {})},
            training_config=training_config,
            data_fingerprint=data_fingerprint(source, splits),
            description=config.description,
        )
        model_ref = f"{manifest.name}:{manifest.version}"
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
        skipped=unique_skipped,
        split_sizes=sizes,
        seconds=time.monotonic() - started,
    )
    (run_path / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    log.info(
        "%s %s to %s (val auc %s, threshold %s, %d skipped file(s), %.0f s)",
        "exported" if dist.chief else "not exported (not the chief):",
        result.model_ref or config.name,
        store,
        val_metrics.get("auc"),
        threshold,
        len(unique_skipped),
        result.seconds,
    )
    return result


# --- distribution ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Distribution:
    strategy: Any  # a tf.distribute.Strategy (the default one when not distributed)
    distributed: bool  # train with training.distribute's custom loop instead of model.fit
    chief: bool  # this process writes the shared outputs (TensorBoard, the exported model)


def _make_strategy(config: TrainConfig) -> tuple[Any, bool, bool, str]:
    """(strategy, distributed, chief, task name) for ``config.strategy`` and its precision.

    ``auto`` resolves to the default strategy (``model.fit``) unless several GPUs are visible.
    ``mirrored`` mirrors over the GPUs, or, without a GPU, over the logical CPUs when the
    process split its CPU before TensorFlow started (``training.distribute.split_cpu``; tests).
    """
    from training import distribute

    name = config.strategy
    devices = None
    if name == "auto":
        name = distribute.resolve_strategy_name(
            name, gpu_count=len(tf.config.list_physical_devices("GPU"))
        )
    if name == "mirrored" and not tf.config.list_physical_devices("GPU"):
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        devices = cpus if len(cpus) > 1 else None
    strategy = distribute.make_strategy(name, devices=devices)
    distribute.configure_mixed_precision(config.mixed_precision)
    chief = distribute.is_chief(strategy)
    task = "chief"
    resolver = getattr(strategy, "cluster_resolver", None)
    if name == "multiworker" and resolver is not None:
        task = f"{resolver.task_type}{resolver.task_id}"
    return strategy, name != "default", chief, task


class _LocalPredictor:
    """``model.predict`` done on this process (``training.distribute.predict_local``)."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model

    def predict(self, inputs: np.ndarray, *, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        from training.distribute import predict_local

        return np.asarray(predict_local(self.model, inputs, batch_size=batch_size))


def _fit_custom_loop(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    dist: _Distribution,
    config: TrainConfig,
    *,
    learning_rate: float,
    num_classes: int,
    first_epoch: int,
    last_epoch: int,
    steps_per_epoch: int,
    class_weight: dict[int, float],
    callbacks: Sequence[keras.callbacks.Callback],
) -> None:
    """One phase with ``training.distribute.distributed_train`` (what ``model.fit`` does else).

    Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585); the
    custom loop runs under every strategy. ``train_ds`` is batched with ``config.batch_size``,
    the GLOBAL batch (all replicas together).
    """
    from training.distribute import distributed_train

    steps = steps_per_epoch * (last_epoch - first_epoch)
    distributed_train(
        lambda: model,
        lambda: train_ds,
        strategy=dist.strategy,
        epochs=last_epoch,
        initial_epoch=first_epoch,
        steps_per_epoch=steps_per_epoch,
        global_batch_size=config.batch_size,
        optimizer_fn=lambda: make_optimizer(config, learning_rate, steps=steps),
        loss=make_loss(num_classes, config.label_smoothing),
        class_weight=class_weight or None,
        callbacks=callbacks,
    )


class ValidationMetrics(keras.callbacks.Callback):
    """Adds ``val_loss``, ``val_auc``, ``val_accuracy``, ... to the epoch logs (custom loop).

    Predicts on this process only (``predict_local``): every worker holds the same weights, so
    every worker computes the same figures and takes the same decisions (best epoch, early
    stop) without a collective.
    """

    def __init__(
        self, inputs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], batch_size: int
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.labels = np.asarray(labels).astype(np.int64)
        self.class_names = list(class_names)
        self.batch_size = batch_size

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from training.distribute import predict_local
        from training.metrics import DEFAULT_THRESHOLD, classification_metrics

        if logs is None:
            return
        probs = np.asarray(predict_local(self.model, self.inputs, batch_size=self.batch_size))
        picked = probs[np.arange(len(self.labels)), self.labels]
        logs["val_loss"] = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
        metrics = classification_metrics(
            self.labels, probs, self.class_names, DEFAULT_THRESHOLD if probs.shape[1] == 2 else None
        )
        for key in ("accuracy", "auc", "precision", "sensitivity", "specificity"):
            value = metrics.get(key)
            if isinstance(value, int | float):
                logs[f"val_{key}"] = float(value)


# --- model ----------------------------------------------------------------------------------


def build_model_for(config: TrainConfig, num_classes: int) -> keras.Model:
    """Build the configured architecture (the one place a strategy scope will wrap later)."""
    from models.architectures import build_model

    return build_model(
        config.architecture,
        input_shape=config.input_shape,
        num_classes=num_classes,
        filters=config.filters,
        weights=config.weights,
        dropout=config.dropout,
    )


def _compile(
    model: keras.Model, learning_rate: float, num_classes: int, config: TrainConfig, *, steps: int
) -> None:
    from training.metrics import keras_metrics

    model.compile(
        optimizer=make_optimizer(config, learning_rate, steps=steps),
        loss=make_loss(num_classes, config.label_smoothing),
        metrics=keras_metrics(num_classes),
    )


def make_optimizer(config: TrainConfig, learning_rate: float, *, steps: int) -> Any:
    """Adam (AdamW with ``weight_decay``), at a constant rate or cosine-decayed over ``steps``."""
    rate: Any = learning_rate
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps))
    if config.weight_decay > 0:
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def make_loss(num_classes: int, label_smoothing: float = 0.0) -> Any:
    """Per-example cross-entropy on integer labels (class weights apply), optionally smoothed."""
    if label_smoothing <= 0:
        return keras.losses.SparseCategoricalCrossentropy()

    def smoothed_crossentropy(y_true: Any, y_pred: Any) -> Any:
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        return keras.losses.categorical_crossentropy(
            keras.ops.one_hot(labels, num_classes), y_pred, label_smoothing=label_smoothing
        )

    return smoothed_crossentropy


def _close_files(*callbacks: keras.callbacks.Callback) -> None:
    from training.callbacks import EpochScalarsCallback, EvaluationFiguresCallback

    for callback in callbacks:
        csv_file = getattr(callback, "csv_file", None)
        if csv_file is not None and not csv_file.closed:
            csv_file.close()
        if isinstance(callback, keras.callbacks.TensorBoard):
            for writer in callback._writers.values():
                writer.close()
        elif isinstance(callback, EvaluationFiguresCallback | EpochScalarsCallback):
            callback.on_train_end()


def _set_backbone(model: keras.Model, blocks: int | str, *, freeze_batchnorm: bool = True) -> None:
    """Train the backbone's top ``blocks`` residual blocks (0 = frozen, "all").

    BatchNorm stays frozen (pretrained statistics) unless ``freeze_batchnorm=False``, which is
    for a randomly initialised backbone whose statistics must be learned.
    """
    from models.architectures import set_backbone_trainable

    set_backbone_trainable(
        model, "all" if blocks == "all" else int(blocks), freeze_batchnorm=freeze_batchnorm
    )


SCRATCH_BN_MOMENTUM = 0.9


def _track_recent_batches(model: keras.Model) -> None:
    """BatchNorm moving statistics that follow the last ~10 batches (momentum 0.9, not 0.99).

    From scratch the weights move fast, and with Keras' default momentum (0.99, a memory of
    ~100 steps, several epochs of a small data set) the moving statistics that inference uses
    describe the network of several epochs ago: training accuracy climbs while validation,
    which runs in inference mode, stays at one class. A shorter memory keeps them current.
    """
    from models.architectures import get_backbone

    for layer in get_backbone(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_BN_MOMENTUM


def _export_model(model: keras.Model) -> keras.Model:
    """The trained network without its training state (optimizer, compiled custom metrics)."""
    return keras.Model(model.inputs, model.outputs, name=model.name)


# --- callbacks ------------------------------------------------------------------------------


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the weights of the best epoch by val AUC; the best survives resumes (state.json)."""

    def __init__(self, run_path: Path, state: dict[str, Any], network: keras.Model) -> None:
        super().__init__()
        self.run_path = run_path
        self.state = state
        self.network = network  # the trained layers without the optimizer

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        auc = (logs or {}).get("val_auc")
        self.state["last_epoch"] = epoch + 1
        best = self.state.get("best_val_auc")
        if auc is not None and math.isfinite(float(auc)) and (best is None or auc > best):
            self.network.save_weights(self.run_path / "checkpoints" / BEST_WEIGHTS)
            self.state["best_val_auc"] = float(auc)
            self.state["best_epoch"] = epoch + 1
        _write_state(self.run_path, self.state)


class EpochLog(keras.callbacks.Callback):
    """One line per epoch in train.log."""

    def __init__(self, phase: int) -> None:
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        figures = " ".join(f"{k}={float(v):.4f}" for k, v in sorted((logs or {}).items()))
        log.info("epoch %d (phase %d): %s", epoch + 1, self.phase, figures)


# --- helpers --------------------------------------------------------------------------------


def _check_splits(source: DataSource, splits: dict[str, list[Example]]) -> None:
    names = source.class_names
    train_counts = source.class_counts(splits["train"])
    missing = [n for n, c in train_counts.items() if c == 0]
    if missing:
        raise ConfigurationError(
            f"class(es) {missing!r} have no training image; train split counts {train_counts}"
        )
    val_counts = source.class_counts(splits["val"])
    present = [n for n, c in val_counts.items() if c > 0]
    if len(present) < 2:
        raise ConfigurationError(
            "the validation split needs images of at least 2 classes to choose the best epoch "
            f"and the threshold; it has {val_counts} (classes {names!r}). "
            "Add data or raise val_fraction"
        )


def _class_weights(
    config: TrainConfig, examples: Sequence[Example], num_classes: int
) -> dict[int, float]:
    """'auto': n / (k * n_c) per class (inverse frequency, mean weight 1); 'none': {}."""
    if config.class_weights == "none":
        return {}
    counts = np.bincount([e.label for e in examples], minlength=num_classes)
    n = counts.sum()
    return {k: float(n / (num_classes * c)) for k, c in enumerate(counts) if c > 0}


def data_fingerprint(source: DataSource, splits: dict[str, list[Example]]) -> str:
    """sha256 over the sorted (split, key relative to the data root, label) lines."""
    root = Path(source.root)
    base = root if root.is_dir() else root.parent
    lines = []
    for split, examples in splits.items():
        for e in examples:
            key = e.key
            if not key.startswith("npz:"):
                with contextlib.suppress(ValueError):  # outside the root: keep it absolute
                    key = Path(key).resolve().relative_to(base.resolve()).as_posix()
            lines.append(f"{split}\t{key}\t{e.label}")
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(lines)).encode())
    return f"sha256:{digest.hexdigest()}"


def _hparams(config: TrainConfig) -> dict[str, Any]:
    keys = (
        "architecture",
        "filters",
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


def _new_run_dir(config: TrainConfig, suffix: str = "") -> Path:
    root = Path(config.runs_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = root / f"{config.name}-{stamp}{suffix}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{config.name}-{stamp}-{n}{suffix}"
    path.mkdir(parents=True)
    return path


def _read_state(run_path: Path) -> dict[str, Any]:
    path = run_path / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"the run's {STATE_FILE} is unreadable: {exc}") from exc
    return state if isinstance(state, dict) else {}


def _write_state(run_path: Path, state: dict[str, Any]) -> None:
    tmp = run_path / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(run_path / STATE_FILE)


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("training")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def _verbosity(verbose: int | str) -> int:
    if verbose != "auto":
        return int(verbose)
    return 1 if sys.stdout.isatty() else 2


def _unique(skipped: Sequence[SkippedFile]) -> list[SkippedFile]:
    seen: dict[str, SkippedFile] = {}
    for item in skipped:
        seen.setdefault(item.path, item)
    return list(seen.values())


def read_history(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's history.csv (one per epoch, across resumes)."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))

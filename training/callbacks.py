"""The callbacks of a training run: its bookkeeping, and TensorBoard with the course's extras.

The run's own (``training.run`` adds them to every phase):

- :class:`BestCheckpoint`: the weights of the best epoch by validation AUC, kept across resumes;
- :class:`EpochLog`: one line per epoch in train.log;
- :class:`ValidationMetrics`: ``val_*`` figures for the custom loop (``model.fit`` computes
  its own);
- :func:`close_files`: closes what an interrupted phase left open.

TensorBoard: ``tensorboard_callbacks(log_dir, ...)`` returns the callbacks that together own
``log_dir``. They write into two sub-runs only, Keras' ``train`` and ``validation``
(``rundir.TENSORBOARD_TRAIN`` / ``TENSORBOARD_VALIDATION``), so each run adds two entries to
TensorBoard's run selector and many runs can be compared at a glance; everything else is a
tag in the ``validation`` run (what it shows is computed on validation data or is the
inference graph):

- ``keras.callbacks.TensorBoard``: scalars for train and validation (loss, every compiled
  metric, the learning rate), the conceptual Keras model graph (``write_graph``), weight
  histograms and distributions (``histogram_freq``), in ``train`` and ``validation``;
- :class:`ModelGraphCallback`: the op-level graph of the model's forward pass (Keras 3
  writes only the conceptual graph for its own train function), the ``validation`` run's graph;
- :class:`SampleImagesCallback`: sample validation inputs exactly as the model sees them
  (tag ``inputs/as_model_sees_them``) and their classic filter responses (``filters/<name>``,
  ``models.ops.apply_filter`` with the image mirrored at its border, each scaled min-max);
- :class:`EvaluationFiguresCallback`: a confusion matrix and a ROC curve on the validation
  data each epoch (``validation/confusion_matrix``, ``validation/roc_curve``), drawn with
  matplotlib (Agg) to PNG and logged with ``tf.summary.image``;
- ``GradCamCallback`` (training/gradcam_callback.py): ``gradcam/<k>_<class>`` each epoch;
- :class:`HParamsCallback`: the hparams dashboard; the session lives in the ``validation``
  run, so its metrics are the validation ones (``epoch_auc``, ``epoch_accuracy``,
  ``epoch_loss``).
"""

from __future__ import annotations

import io
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from radlens.training.metrics import DEFAULT_THRESHOLD, classification_metrics, roc_curve_points
from radlens.training.rundir import (
    BEST_WEIGHTS,
    CHECKPOINTS,
    TENSORBOARD_TRAIN,
    TENSORBOARD_VALIDATION,
    write_state,
)

log = logging.getLogger(__name__)

HPARAM_METRICS = ("epoch_auc", "epoch_accuracy", "epoch_loss")
# a multi-label run's compiled accuracy is Keras' binary_accuracy (training.findings)
HPARAM_METRICS_MULTI_LABEL = ("epoch_auc", "epoch_binary_accuracy", "epoch_loss")


def tensorboard_callbacks(
    log_dir: Path,
    *,
    validation: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
    hparams: Mapping[str, Any],
    histogram_freq: int = 1,
    samples: int = 4,
    custom_loop: bool = False,
) -> list[keras.callbacks.Callback]:
    """All TensorBoard callbacks of a run, writing under ``log_dir``.

    Args:
        log_dir: the run's ``tensorboard/`` directory.
        validation: (inputs (N, H, W, 1) float32, integer labels (N,)) used for the figures.
        class_names: class names in label order.
        hparams: hyperparameters for the hparams dashboard (str/bool/int/float values).
        histogram_freq: epochs between weight histograms (0 = none).
        samples: how many validation inputs to log as images (0 = none).
        custom_loop: the run trains with ``training.loop.distributed_train`` (epoch-level
            callbacks, no ``fit``): :class:`EpochScalarsCallback` writes the scalars instead of
            Keras' TensorBoard callback (whose graph and histograms need ``fit``).
    """
    log_dir = Path(log_dir)
    validation_run = log_dir / TENSORBOARD_VALIDATION  # Keras' own validation sub-run
    x_val, y_val = validation
    callbacks: list[keras.callbacks.Callback] = [
        EpochScalarsCallback(log_dir)
        if custom_loop
        else keras.callbacks.TensorBoard(
            log_dir=str(log_dir),
            histogram_freq=histogram_freq,
            write_graph=True,
            update_freq="epoch",
        ),
        HParamsCallback(validation_run, hparams),
        ModelGraphCallback(validation_run),
        EvaluationFiguresCallback(validation_run, x_val, y_val, class_names),
    ]
    if samples > 0:
        from radlens.training.gradcam_callback import GradCamCallback

        callbacks.append(SampleImagesCallback(validation_run, x_val[:samples]))
        callbacks.append(GradCamCallback(validation_run, x_val, y_val, class_names, count=samples))
    return callbacks


class SampleImagesCallback(keras.callbacks.Callback):
    """Logs sample inputs and their classic filter responses once, when training begins."""

    def __init__(self, log_dir: Path, inputs: np.ndarray) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.inputs = np.asarray(inputs, dtype=np.float32)
        self._written = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._written or len(self.inputs) == 0:
            return
        from radlens.models.ops import FILTER_NAMES, apply_filter

        writer = tf.summary.create_file_writer(str(self.log_dir))
        with writer.as_default():
            tf.summary.image(
                "inputs/as_model_sees_them",
                np.clip(self.inputs, 0.0, 1.0),
                step=0,
                max_outputs=len(self.inputs),
            )
            for name in FILTER_NAMES:
                # mirrored at the border: zero padding (the front-end's) would draw a false
                # edge along the frame whose extremes take over the min-max scaling
                responses = np.stack(
                    [
                        _to_unit(apply_filter(img[..., 0], name, border="reflect"))
                        for img in self.inputs
                    ]
                )[..., None].astype(np.float32)
                tf.summary.image(f"filters/{name}", responses, step=0, max_outputs=len(self.inputs))
        writer.flush()
        writer.close()
        self._written = True


class ModelGraphCallback(keras.callbacks.Callback):
    """Writes the op graph of ``model(x, training=False)`` once, when training begins."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._written = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._written:
            return
        model = self.model
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        forward = tf.function(lambda x: model(x, training=False))
        graph = forward.get_concrete_function(spec).graph
        writer = tf.summary.create_file_writer(str(self.log_dir))
        with writer.as_default():
            tf.summary.graph(graph)
        writer.flush()
        writer.close()
        self._written = True


class EvaluationFiguresCallback(keras.callbacks.Callback):
    """Confusion matrix and ROC curve on the validation data, one PNG each per epoch."""

    def __init__(
        self, log_dir: Path, inputs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
    ) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.inputs = inputs
        self.labels = np.asarray(labels).astype(np.int64)
        self.class_names = list(class_names)
        self._writer: Any = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if len(self.inputs) == 0:
            return
        # called directly in batches (not model.predict): also right inside a custom
        # tf.distribute loop, where predict would go through the strategy
        probabilities = np.concatenate(
            [
                np.asarray(self.model(self.inputs[i : i + 64], training=False))
                for i in range(0, len(self.inputs), 64)
            ]
        )
        metrics = classification_metrics(
            self.labels, probabilities, self.class_names, DEFAULT_THRESHOLD
        )
        cm_png = confusion_matrix_png(
            np.asarray(metrics["confusion_matrix"]), self.class_names, title=f"epoch {epoch + 1}"
        )
        images = [("confusion_matrix", cm_png)]
        if len(self.class_names) == 2:
            images.append(
                (
                    "roc_curve",
                    roc_curve_png(self.labels, probabilities[:, 1], metrics["auc"], epoch + 1),
                )
            )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        with self._writer.as_default():
            for tag, png in images:
                tf.summary.image(f"validation/{tag}", png_to_batch(png), step=epoch)
        self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def learning_rates(optimizer: Any) -> dict[str, float]:
    """The optimizer's current learning rate as Keras' TensorBoard callback logs it:
    ``{"learning_rate": ...}`` (a schedule evaluated at the optimizer's step count; a
    ``LossScaleOptimizer`` read through to the optimizer it wraps), ``learning_rate_<name>``
    per optimizer of a multi-optimizer, ``{}`` without an optimizer."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(inner, "optimizers"):
        return {
            f"learning_rate_{each.name}": float(keras.ops.convert_to_numpy(each.learning_rate))
            for each in inner.optimizers
        }
    if isinstance(inner, keras.optimizers.Optimizer):
        return {"learning_rate": float(keras.ops.convert_to_numpy(inner.learning_rate))}
    return {}


class EpochScalarsCallback(keras.callbacks.Callback):
    """Epoch scalars as Keras' TensorBoard callback writes them, for the custom training loop.

    ``loss``, ``auc``, ... go to ``log_dir/train`` and ``val_loss``, ``val_auc``, ... to
    ``log_dir/validation``, each as ``epoch_<name>``, so runs trained either way overlay. The
    learning rate at the end of each epoch goes to ``train/epoch_learning_rate`` as in Keras'
    callback, read from the optimizer the custom loop hands over (:meth:`set_optimizer`; the
    model is not compiled there), else from the model's own.
    """

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}
        self.optimizer: Any = None

    def set_optimizer(self, optimizer: Any) -> None:
        """The optimizer the custom loop trains with (``training.loop.distributed_train``)."""
        self.optimizer = optimizer

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        optimizer = self.optimizer
        if optimizer is None and self.model is not None:
            optimizer = getattr(self.model, "optimizer", None)
        # the history keeps the loop's logs; the rates are scalars only, as in Keras' callback
        scalars = {**(logs or {}), **learning_rates(optimizer)}
        for key, value in scalars.items():
            group, name = (
                (TENSORBOARD_VALIDATION, key[4:])
                if key.startswith("val_")
                else (TENSORBOARD_TRAIN, key)
            )
            if group not in self._writers:
                self._writers[group] = tf.summary.create_file_writer(str(self.log_dir / group))
            with self._writers[group].as_default():
                tf.summary.scalar(f"epoch_{name}", float(value), step=epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class HParamsCallback(keras.callbacks.Callback):
    """Writes the hparams dashboard's experiment config and this run's values at train begin."""

    def __init__(
        self,
        log_dir: Path,
        hparams: Mapping[str, Any],
        metrics: Sequence[str] = HPARAM_METRICS,
    ) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.hparams = {k: _hparam_value(v) for k, v in hparams.items()}
        self.metrics = tuple(metrics)  # the validation run's epoch scalars the table lists
        self._written = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._written:
            return
        from tensorboard.plugins.hparams import api as hp

        writer = tf.summary.create_file_writer(str(self.log_dir))
        with writer.as_default():
            hp.hparams_config(
                hparams=[hp.HParam(name) for name in self.hparams],
                # the session is this (validation) run: its metrics are its own scalars;
                # a group names a sub-run of the session, so train's cannot be listed
                metrics=[
                    hp.Metric(tag, display_name=f"{tag[6:]} (validation)") for tag in self.metrics
                ],
            )
            hp.hparams(self.hparams)
        writer.flush()
        writer.close()
        self._written = True


# --- the run's own ------------------------------------------------------------------------


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the weights of the best epoch by val AUC; the best survives resumes (state.json).

    ``monitor``: the epoch-log entry to maximise, ``val_auc`` (the image AUC) or
    ``val_series_auc`` (the validation series AUC, ``TrainConfig.select_by="series-auc"``;
    a series callback must run before this one). The best value is kept in state.json as
    ``best_<monitor>``.

    ``tie_break``: another entry that decides between epochs with the same ``monitor`` value
    (the higher wins; kept as ``best_tie_break``). A series AUC over a few validation series
    takes few values and often reaches 1.0 early; then the slice AUC (``val_auc``) picks
    among the tied epochs instead of the first of them.
    """

    def __init__(
        self,
        run_path: Path,
        state: dict[str, Any],
        network: keras.Model,
        monitor: str = "val_auc",
        tie_break: str | None = None,
    ) -> None:
        super().__init__()
        self.run_path = run_path
        self.state = state
        self.network = network  # the trained layers without the optimizer
        self.monitor = monitor
        self.tie_break = tie_break

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        auc = logs.get(self.monitor)
        self.state["last_epoch"] = epoch + 1
        key = f"best_{self.monitor}"
        best = self.state.get(key)
        second = logs.get(self.tie_break) if self.tie_break else None
        if second is not None and not math.isfinite(float(second)):
            second = None
        best_second = self.state.get("best_tie_break")
        tied_better = (
            best is not None
            and auc == best
            and second is not None
            and (best_second is None or second > best_second)
        )
        if (
            auc is not None
            and math.isfinite(float(auc))
            and (best is None or auc > best or tied_better)
        ):
            save_weights_atomically(self.network, self.run_path / CHECKPOINTS / BEST_WEIGHTS)
            self.state[key] = float(auc)
            self.state["best_epoch"] = epoch + 1
            if self.tie_break:
                self.state["best_tie_break"] = None if second is None else float(second)
        write_state(self.run_path, self.state)


def save_weights_atomically(network: keras.Model, path: Path) -> None:
    """``network.save_weights(path)`` under a temporary name, then renamed over ``path``: h5py
    truncates the file it saves to first, so a full disk or a kill mid-save would otherwise
    leave neither the old weights nor the new ones (the best checkpoint, phase 1's weights:
    ``--resume`` could not finish the run). Nothing is left behind on failure."""
    partial = path.with_name(f".partial-{path.name}")  # Keras wants *.weights.h5
    try:
        network.save_weights(partial)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class PhaseBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` for ``--resume``, safe against a save cut short.

    Keras writes ``latest.weights.h5`` in place (h5py empties the file first), so a run killed,
    or out of disk, in the middle of that save left a file ``--resume`` could not open: "Unable
    to synchronously open file (truncated file ...)", an internal error (QA round 33). Here the
    state before is kept beside it (``double_checkpoint``: Keras falls back on it), and when
    no backup can be read at all, the phase starts again from its first epoch, said in
    train.log, instead of the resume failing.
    """

    def __init__(self, backup_dir: str) -> None:
        super().__init__(backup_dir, double_checkpoint=True)

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError) as exc:  # weights, or training_metadata.json
            log.warning(
                "the backup in %s cannot be read (%s, cut short by a kill or a full disk): this "
                "phase starts again from its first epoch",
                self.backup_dir,
                type(exc).__name__,
            )
            shutil.rmtree(self.backup_dir, ignore_errors=True)


class EpochLog(keras.callbacks.Callback):
    """One line per epoch in train.log."""

    def __init__(self, phase: int) -> None:
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        figures = " ".join(f"{k}={float(v):.4f}" for k, v in sorted((logs or {}).items()))
        log.info("epoch %d (phase %d): %s", epoch + 1, self.phase, figures)


class ValidationMetrics(keras.callbacks.Callback):
    """Adds ``val_loss``, ``val_auc``, ``val_accuracy``, ... to the epoch logs (custom loop).

    Predicts on this process only (``training.loop.predict_local``): every worker holds the
    same weights, so every worker computes the same figures and takes the same decisions (best
    epoch, early stop) without a collective.
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
        from radlens.training.loop import predict_local

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


def close_files(*callbacks: keras.callbacks.Callback) -> None:
    """Close the files of ``callbacks``: an interrupted fit skips on_train_end, which would."""
    for callback in callbacks:
        csv_file = getattr(callback, "csv_file", None)
        if csv_file is not None and not csv_file.closed:
            csv_file.close()
        if isinstance(callback, keras.callbacks.TensorBoard):
            for writer in callback._writers.values():
                writer.close()
        elif isinstance(callback, EvaluationFiguresCallback | EpochScalarsCallback):
            callback.on_train_end()


# --- figures ------------------------------------------------------------------------------


def confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], *, title: str = "") -> bytes:
    """A confusion matrix (rows = truth, columns = prediction) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(cm, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names), rotation=30)
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix {title}".strip())
    threshold = cm.max() / 2.0 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if cm[i, j] > threshold else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=colour)
    fig.tight_layout()
    return _figure_png(fig)


def roc_curve_png(
    labels: np.ndarray,
    scores: np.ndarray,
    auc: float | None,
    epoch: int | None = None,
    *,
    title: str | None = None,
) -> bytes:
    """The ROC curve of the positive-class scores as PNG bytes (``title``: replaces "ROC")."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fpr, tpr = roc_curve_points(labels, scores)
    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    label = "AUC n/a" if auc is None else f"AUC {auc:.3f}"
    ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    heading = title or "ROC"
    ax.set_title(heading if epoch is None else f"{heading}, epoch {epoch}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _figure_png(fig)


def reliability_diagram_png(
    labels: np.ndarray, probabilities: np.ndarray, *, title: str = "Reliability"
) -> bytes:
    """The reliability diagram (accuracy against top-label confidence per bin, with the
    expected calibration error) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from radlens.training.metrics import expected_calibration_error, reliability_bins

    bins = reliability_bins(labels, probabilities)
    ece = expected_calibration_error(labels, probabilities)
    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    used = [b for b in bins if int(b["n"]) > 0]
    width = 1.0 / len(bins)
    ax.bar(
        [float(b["lower"]) for b in used],
        [float(b["accuracy"]) for b in used],
        width=width,
        align="edge",
        edgecolor="black",
        label=f"accuracy (ECE {ece:.3f})",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _figure_png(fig)


def write_figure(log_dir: Path, tag: str, png: bytes, step: int = 0) -> None:
    """Write one PNG figure to a TensorBoard log directory (e.g. the run's reliability)."""
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        tf.summary.image(tag, png_to_batch(png), step=step)
    writer.flush()
    writer.close()


def png_to_batch(png: bytes) -> tf.Tensor:
    """PNG bytes -> a (1, H, W, 4) uint8 tensor for tf.summary.image."""
    return tf.expand_dims(tf.image.decode_png(png, channels=4), 0)


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _to_unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "none"
    return str(value)

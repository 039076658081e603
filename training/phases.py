"""The model, its optimizer and loss, and the fine-tuning phases as small functions.

ResNet50 with pretrained weights is fine-tuned in two phases, as the keras-io
transfer-learning guide writes them:

1. :func:`train_head`: the backbone frozen (the graph calls it with ``training=False`` and its
   BatchNorm layers are frozen, so they stay in inference mode), the new head trains for
   ``epochs_head`` epochs at ``learning_rate_head``;
2. :func:`fine_tune`: the top ``unfreeze_blocks`` residual blocks unfrozen (BatchNorm stays
   frozen), recompiled with the lower ``learning_rate_finetune``, ``epochs_finetune`` more
   epochs, the epoch counter continuing.

Everything else trains in one phase, :func:`train_whole`: simple_cnn as built, and ResNet50
from scratch (``weights=None``) with every layer and BatchNorm trainable.

Each step sets what trains and hands the phase to ``fit`` (``training.loop.fit_phase`` bound
to the run's data and callbacks by ``training.run``), which compiles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from radlens.training.config import TrainConfig
from radlens.training.data.sources import Example

log = logging.getLogger(__name__)

SCRATCH_BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Phase:
    """One phase: its number (1, 2), its epochs ``first_epoch + 1 .. last_epoch`` and rate."""

    number: int
    first_epoch: int
    last_epoch: int
    learning_rate: float

    @property
    def epochs(self) -> int:
        return self.last_epoch - self.first_epoch


PhaseStep = Callable[[keras.Model, TrainConfig, Phase, Callable[[Phase], None]], None]


def plan_phases(config: TrainConfig) -> list[tuple[Phase, PhaseStep]]:
    """The run's phases in order, each with the function that trains it."""
    head = Phase(1, 0, config.epochs_head, config.learning_rate_head)
    if not config.two_phase:
        return [(head, train_whole)]
    phases: list[tuple[Phase, PhaseStep]] = [(head, train_head)]
    if config.epochs_finetune > 0:
        last = head.last_epoch + config.epochs_finetune
        phases.append((Phase(2, head.last_epoch, last, config.learning_rate_finetune), fine_tune))
    return phases


def train_head(
    model: keras.Model, config: TrainConfig, phase: Phase, fit: Callable[[Phase], None]
) -> None:
    """Phase 1 of two: train the head with the pretrained backbone frozen."""
    set_backbone(model, 0)
    fit(phase)


def fine_tune(
    model: keras.Model, config: TrainConfig, phase: Phase, fit: Callable[[Phase], None]
) -> None:
    """Phase 2 of two: unfreeze the top ``unfreeze_blocks`` blocks (BatchNorm stays frozen)."""
    set_backbone(model, config.unfreeze_blocks)
    fit(phase)


def train_whole(
    model: keras.Model, config: TrainConfig, phase: Phase, fit: Callable[[Phase], None]
) -> None:
    """The one phase of a model trained from scratch: every layer, BatchNorm included."""
    if config.architecture == "resnet50":  # simple_cnn is all trainable as built
        set_backbone(model, "all", freeze_batchnorm=False)
        track_recent_batches(model)
    fit(phase)


def build_model_for(config: TrainConfig, num_classes: int) -> keras.Model:
    """Build the configured architecture (call it inside the strategy's scope)."""
    from radlens.models.architectures import build_model

    return build_model(
        config.architecture,
        input_shape=config.input_shape,
        num_classes=num_classes,
        filters=config.filters,
        weights=config.weights,
        dropout=config.dropout,
        multi_label=config.multi_label,
        center=config.center,
        batchnorm=config.batchnorm,
    )


def export_model(model: keras.Model) -> keras.Model:
    """The trained network without its training state (optimizer, compiled custom metrics).

    It shares the layers, so checkpoints saved from it load whichever phase (and so whichever
    optimizer state) wrote them.
    """
    # model.input / model.output (not the .inputs / .outputs lists): a single tensor in and
    # out, so callers pass a plain batch without Keras warning about the input structure
    return keras.Model(model.input, model.output, name=model.name)


def fold_temperature(network: keras.Model, temperature: float) -> None:
    """Divide the final softmax layer's logits by ``temperature``, in the weights.

    The ``predictions`` Dense computes softmax(x W + b); with W/T and b/T it computes
    softmax((x W + b) / T), the temperature-scaled probabilities -- so the exported model is
    self-describing and the service serves calibrated scores with no change.

    Raises:
        ValueError: the network has no softmax ``predictions`` Dense, or T is not positive.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0. Received: {temperature!r}")
    layer = network.get_layer("predictions")
    activation = getattr(layer, "activation", None)
    if not isinstance(layer, keras.layers.Dense) or getattr(activation, "__name__", "") != (
        "softmax"
    ):
        raise ValueError(f"the final layer must be a softmax Dense. Received: {layer!r}")
    layer.set_weights([w / np.float32(temperature) for w in layer.get_weights()])


def compile_model(
    model: keras.Model,
    learning_rate: float,
    num_classes: int,
    config: TrainConfig,
    *,
    steps: int,
    loss: Any = None,
) -> None:
    """Compile for ``model.fit``: :func:`make_optimizer`, :func:`make_loss`, the run's metrics.

    A multi-label run passes its findings loss (``training.findings.make_loss``) as ``loss``
    and gets the findings metrics (macro ``auc``)."""
    from radlens.training.metrics import keras_metrics

    if config.multi_label:
        from radlens.training import findings

        model.compile(
            optimizer=make_optimizer(config, learning_rate, steps=steps),
            loss=loss if loss is not None else findings.make_loss(),
            metrics=findings.keras_metrics(num_classes),
        )
        return
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


def class_weights(
    config: TrainConfig, examples: Sequence[Example], num_classes: int
) -> dict[int, float]:
    """'auto': n / (k * n_c) per class (inverse frequency, mean weight 1); 'none': {}.

    Multi-label runs weight positives per finding in the loss instead: {}."""
    if config.class_weights == "none" or config.multi_label:
        return {}
    counts = np.bincount([e.label for e in examples], minlength=num_classes)
    n = counts.sum()
    return {k: float(n / (num_classes * c)) for k, c in enumerate(counts) if c > 0}


def set_backbone(model: keras.Model, blocks: int | str, *, freeze_batchnorm: bool = True) -> None:
    """Train the backbone's top ``blocks`` residual blocks (0 = frozen, "all").

    BatchNorm stays frozen (pretrained statistics) unless ``freeze_batchnorm=False``, which is
    for a randomly initialised backbone whose statistics must be learned.
    """
    from radlens.models.architectures import set_backbone_trainable

    set_backbone_trainable(
        model, "all" if blocks == "all" else int(blocks), freeze_batchnorm=freeze_batchnorm
    )


def track_recent_batches(model: keras.Model) -> None:
    """BatchNorm moving statistics that follow the last ~10 batches (momentum 0.9, not 0.99).

    From scratch the weights move fast, and with Keras' default momentum (0.99, a memory of
    ~100 steps, several epochs of a small data set) the moving statistics that inference uses
    describe the network of several epochs ago: training accuracy climbs while validation,
    which runs in inference mode, stays at one class. A shorter memory keeps them current.
    """
    from radlens.models.architectures import get_backbone

    for layer in get_backbone(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_BN_MOMENTUM

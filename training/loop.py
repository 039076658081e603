"""The training loop: one phase of training, by ``model.fit`` or by one custom loop.

:func:`fit_phase` is the one call the trainer makes per phase, and the one place that chooses
between the two loops radlens keeps, and says why there are two:

- ``model.fit`` under the default strategy (one device, a CPU or one GPU). It is what the
  Keras guides use and what gives the run Keras' TensorBoard callback (op graph, weight
  histograms), compiled train metrics in ``history.csv`` and ``BackupAndRestore`` (resume in
  the middle of a phase).
- :func:`distributed_train` under a ``tf.distribute`` strategy (Mirrored,
  MultiWorkerMirrored): a custom ``strategy.run`` loop over
  ``strategy.experimental_distribute_dataset``, because Keras 3's ``model.fit`` fails under
  ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585). It runs under the default strategy
  too (the tests compare it with a single-device run), but has no batch-level callbacks, so
  the run gets scalars only and a phase restarts when interrupted.

When Keras' ``fit`` works under every strategy, :func:`distributed_train` can go.

Loss scaling in the custom loop: each replica's loss is divided by the GLOBAL batch size
(``tf.nn.compute_average_loss(..., global_batch_size=...)``) and the gradients are summed over
replicas by the optimizer, so a step is the same update as one large batch on one device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from radlens.models.errors import ConfigurationError
from radlens.training.distribute import Distribution, is_chief, wrap_optimizer

log = logging.getLogger(__name__)

SHARD_POLICIES = ("data", "file", "auto", "off")


def fit_phase(
    model: Any,
    train_ds: Any,
    *,
    dist: Distribution,
    compile_fn: Callable[[], None],
    optimizer_fn: Callable[[], Any],
    loss: Any,
    first_epoch: int,
    last_epoch: int,
    steps_per_epoch: int,
    global_batch_size: int,
    validation: tuple[Any, Any],
    class_weight: Mapping[int, float] | None,
    callbacks: Sequence[Any],
    verbose: int,
    multi_label: bool = False,
) -> None:
    """Train epochs ``first_epoch + 1 .. last_epoch`` of ``model`` on ``train_ds``.

    Args:
        model: built (and, for the custom loop, with its variables) in ``dist.strategy``.
        train_ds: batches of ``global_batch_size`` (all replicas together); repeated here, so
            an epoch is exactly ``steps_per_epoch`` steps (the pipeline may drop unreadable
            files, so its length is unknown to Keras, which would warn every epoch).
        dist: from :func:`training.distribute.set_up`; its ``distributed`` flag picks the loop.
        compile_fn: compiles ``model`` for ``model.fit`` (not called by the custom loop, which
            builds its optimizer with ``optimizer_fn`` inside the strategy scope).
        validation: ``(inputs, labels)``: ``model.fit``'s validation data. The custom loop
            leaves validation to a callback (``training.callbacks.ValidationMetrics``).
        class_weight: ``{class: weight}`` or None, applied by both loops alike.
        callbacks: Keras callbacks; the custom loop calls their epoch-level hooks only.
        verbose: Keras verbosity for ``model.fit``.
        multi_label: labels are multi-hot ``(N, findings)`` rows for a sigmoid head (the
            custom loop keeps them 2-D; see :func:`distributed_train`).
    """
    if not dist.distributed:
        compile_fn()
        model.fit(
            train_ds.repeat(),
            epochs=last_epoch,
            initial_epoch=first_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            class_weight=dict(class_weight) if class_weight else None,
            callbacks=list(callbacks),
            verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles (seeded)
        )
        return
    distributed_train(
        lambda: model,
        lambda: train_ds,
        strategy=dist.strategy,
        epochs=last_epoch,
        initial_epoch=first_epoch,
        steps_per_epoch=steps_per_epoch,
        global_batch_size=global_batch_size,
        optimizer_fn=optimizer_fn,
        loss=loss,
        class_weight=class_weight or None,
        callbacks=callbacks,
        multi_label=multi_label,
    )


def predict(model: Any, inputs: Any, *, dist: Distribution, batch_size: int = 32) -> Any:
    """Class scores (N, C) for ``inputs`` after training: ``model.predict``, or under a
    strategy :func:`predict_local` (``model.predict`` would distribute through it)."""
    import numpy as np

    if dist.distributed:
        return np.asarray(predict_local(model, inputs, batch_size=batch_size))
    return np.asarray(model.predict(inputs, batch_size=batch_size, verbose=0))


# --- the custom loop ---------------------------------------------------------------------


@dataclass
class DistributedTrainResult:
    """What :func:`distributed_train` returns."""

    model: Any  # keras.Model; its variables live in the strategy
    optimizer: Any
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    num_replicas: int = 1
    is_chief: bool = True
    stopped_early: bool = False


def _shard_policy(name: str) -> Any:
    import tensorflow as tf

    policies = tf.data.experimental.AutoShardPolicy
    return {
        "data": policies.DATA,
        "file": policies.FILE,
        "auto": policies.AUTO,
        "off": policies.OFF,
    }[name]


def _per_example_loss(loss: Any) -> Callable[[Any, Any], Any]:
    """A callable returning one loss value per example (no reduction)."""
    import keras

    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError as exc:
            raise ConfigurationError(f"unknown loss. Received: loss={loss!r}") from exc
    if isinstance(loss, keras.losses.Loss):
        config = {**loss.get_config(), "reduction": None}
        return type(loss).from_config(config)
    if callable(loss):
        return loss
    raise ConfigurationError(
        "loss should be a Keras loss name, a keras.losses.Loss or a callable "
        f"(y_true, y_pred) -> per-example losses. Received: loss={loss!r}"
    )


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} should be a positive integer. Received: {name}={value!r}")


def distributed_train(
    model_fn: Callable[[], Any],
    dataset_fn: Callable[[], Any],
    *,
    strategy: Any,
    epochs: int,
    steps_per_epoch: int,
    global_batch_size: int,
    optimizer_fn: Callable[[], Any],
    loss: Any = "sparse_categorical_crossentropy",
    class_weight: Mapping[int, float] | None = None,
    shard_policy: str = "data",
    initial_epoch: int = 0,
    callbacks: Sequence[Any] = (),
    on_epoch_end: Callable[[int, dict[str, float]], bool | None] | None = None,
    multi_label: bool = False,
) -> DistributedTrainResult:
    """Train a Keras model with a custom ``strategy.run`` loop, under any tf.distribute strategy.

    Works under the default strategy, ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``
    (where Keras 3's ``model.fit`` fails, keras-team/keras#20585). Under the multi-worker
    strategy every worker runs this same call with the same arguments; the collective
    all-reduce in the optimizer keeps their variables identical.

    Args:
        model_fn: builds the model (called inside ``strategy.scope()``), or returns one built
            earlier inside the same scope (phase 2 of fine-tuning: the model of phase 1 with
            more layers trainable, and a fresh optimizer). With a mixed policy keep the last
            layer in float32 (``dtype="float32"``); outputs are cast to float32 anyway.
        dataset_fn: returns a ``tf.data.Dataset`` of ``(images, labels)`` (a third element,
            sample weights, is ignored) batched with the GLOBAL batch size, ideally with
            ``drop_remainder=True``. It is repeated here, so an epoch is exactly
            ``steps_per_epoch`` steps and short data never leaves one worker waiting for
            another. Every worker must build the same dataset (same seed): it is sharded
            across workers by ``shard_policy`` and split across replicas by
            ``strategy.experimental_distribute_dataset``.
        strategy: from ``training.distribute.make_strategy`` (or ``set_up``).
        epochs, steps_per_epoch: how long to train. As in ``model.fit``, ``epochs`` is the
            index of the last epoch and ``initial_epoch`` the first (for a second phase that
            continues the epoch count of the first).
        global_batch_size: the batch size of ``dataset_fn``'s batches (all replicas together);
            each replica's loss is divided by it (``tf.nn.compute_average_loss``).
        optimizer_fn: builds the optimizer (inside the scope); wrapped in a
            ``LossScaleOptimizer`` when the global policy is mixed_float16.
        loss: a Keras loss name, a ``keras.losses.Loss`` (its reduction is turned off) or a
            callable ``(y_true, y_pred) -> per-example losses``. Labels are class indices and
            predictions softmax probabilities (a single sigmoid column also works for accuracy).
        class_weight: ``{class index: weight}``; each example's loss is multiplied by its
            class's weight (as ``model.fit(class_weight=...)`` does).
        shard_policy: how each worker takes its part of the data: ``"data"`` (every worker
            reads the whole dataset and keeps its share of the elements: right for in-memory
            arrays and lists of files), ``"file"``, ``"auto"`` or ``"off"``.
        callbacks: Keras callbacks, run at EPOCH level only (``on_train_begin/end``,
            ``on_epoch_begin/end``; no batch hooks): e.g. a callback that adds validation
            metrics to ``logs`` (see :func:`predict_local`), ``EarlyStopping`` (which sets
            ``model.stop_training``), ``CSVLogger``. They see the model and the same logs
            dict; entries they add are kept in the history. Under the multi-worker strategy
            give file-writing callbacks to the chief only (``training.distribute.is_chief``),
            and make sure a stopping decision is the same on every worker (it is when it
            depends on reduced metrics or on validation computed from the identical weights),
            or the others hang.
        on_epoch_end: a plain function alternative, called as ``on_epoch_end(epoch, metrics)``
            after the callbacks (``epoch`` counts from 0); it may add entries to ``metrics``;
            returning True stops training (same rule as above).
        multi_label: labels are multi-hot ``(N, findings)`` rows and predictions one sigmoid
            per finding (``training.findings``): the labels keep their shape, ``loss`` must
            return one value per example (the findings loss averages over findings), the
            accuracy is Keras' ``binary_accuracy`` (the fraction of all (image, finding)
            decisions at 0.5 that are right) and ``class_weight`` is refused (positives are
            weighted inside the findings loss).

    Returns:
        The model, the optimizer and one ``{"loss": ..., "accuracy": ...}`` per epoch, where
        loss is the mean of the global per-step losses and accuracy the fraction of all
        examples of the epoch (every worker, every replica) classified correctly.

    Raises:
        ConfigurationError: a non-positive epochs/steps/batch size, an unknown loss or shard
            policy, a class weight that is not a finite non-negative number, or a dataset that
            yields nothing.
    """
    _check_positive_int("epochs", epochs)
    _check_positive_int("steps_per_epoch", steps_per_epoch)
    _check_positive_int("global_batch_size", global_batch_size)
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int):
        raise ConfigurationError(
            f"initial_epoch should be an integer. Received: initial_epoch={initial_epoch!r}"
        )
    if not 0 <= initial_epoch < epochs:
        raise ConfigurationError(
            "initial_epoch should be >= 0 and below epochs (the index of the last epoch). "
            f"Received: initial_epoch={initial_epoch}, epochs={epochs}"
        )
    if shard_policy not in SHARD_POLICIES:
        raise ConfigurationError(
            f"shard_policy should be one of {', '.join(SHARD_POLICIES)}. "
            f"Received: shard_policy={shard_policy!r}"
        )
    if class_weight is not None and multi_label:
        raise ConfigurationError(
            "class_weight does not apply to multi-label training (weight the positives in the "
            f"findings loss). Received: class_weight={dict(class_weight)!r}"
        )
    if class_weight is not None:
        _class_weight_table(class_weight, num_classes=1)  # validate before building anything
    per_example_loss = _per_example_loss(loss)

    import tensorflow as tf

    with strategy.scope():
        model = model_fn()
        optimizer = wrap_optimizer(optimizer_fn())
        # Create the optimizer's slot variables now, inside the scope, so they are mirrored.
        optimizer.build(model.trainable_variables)
    weights_table: list[float] | None = None
    if class_weight is not None:
        weights_table = _class_weight_table(class_weight, num_classes=int(model.output_shape[-1]))

    dataset = dataset_fn()
    if not isinstance(dataset, tf.data.Dataset):
        raise ConfigurationError(
            f"dataset_fn should return a tf.data.Dataset. Received: {type(dataset).__name__}"
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = _shard_policy(shard_policy)
    dataset = dataset.repeat().with_options(options)
    distributed = strategy.experimental_distribute_dataset(dataset)
    iterator = iter(distributed)

    weights_const = (
        tf.constant(weights_table, dtype=tf.float32) if weights_table is not None else None
    )

    def step_fn(batch: Any) -> tuple[Any, Any, Any]:
        images, labels = batch[0], batch[1]
        if not multi_label:
            labels = tf.reshape(labels, [-1])
        with tf.GradientTape() as tape:
            predictions = tf.cast(model(images, training=True), tf.float32)
            losses = tf.cast(per_example_loss(labels, predictions), tf.float32)
            if weights_const is not None:
                losses = losses * tf.gather(weights_const, tf.cast(labels, tf.int32))
            step_loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)
            if model.losses:
                step_loss += tf.nn.scale_regularization_loss(
                    tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
                )
            scaled_loss = optimizer.scale_loss(step_loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        # The Keras optimizer all-reduces (sums) the gradients over replicas and workers.
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        if multi_label:  # every (image, finding) decision at 0.5, as binary_accuracy counts
            decided = tf.cast(predictions >= 0.5, tf.float32)
            correct = tf.reduce_sum(tf.cast(decided == tf.cast(labels, tf.float32), tf.float32))
            return step_loss, correct, tf.cast(tf.size(labels), tf.float32)
        if predictions.shape[-1] == 1:
            predicted = tf.cast(tf.reshape(predictions, [-1]) >= 0.5, tf.int64)
        else:
            predicted = tf.argmax(predictions, axis=-1)
        correct = tf.reduce_sum(tf.cast(predicted == tf.cast(labels, tf.int64), tf.float32))
        count = tf.cast(tf.size(labels), tf.float32)
        return step_loss, correct, count

    @tf.function
    def train_step(it: Any) -> tuple[Any, Any, Any]:
        per_replica = strategy.run(step_fn, args=(next(it),))
        loss_sum, correct, count = (
            strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in per_replica
        )
        return loss_sum, correct, count

    chief = is_chief(strategy)
    result = DistributedTrainResult(
        model=model,
        optimizer=optimizer,
        num_replicas=int(strategy.num_replicas_in_sync),
        is_chief=chief,
    )
    # Called directly rather than through keras.callbacks.CallbackList, which hands each hook
    # a copy of the logs: here entries a callback adds (validation metrics) reach the history.
    callback_params = {"epochs": epochs, "steps": steps_per_epoch, "verbose": 0}
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params(callback_params)
        if hasattr(callback, "set_optimizer"):  # the model is not compiled: the learning-rate
            callback.set_optimizer(optimizer)  # scalar reads this loop's optimizer
    model.stop_training = False
    for callback in callbacks:
        callback.on_train_begin({})
    for epoch in range(initial_epoch, epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch, {})
        total_loss = 0.0
        total_correct = 0.0
        total_count = 0.0
        for _ in range(steps_per_epoch):
            try:
                step_loss, correct, count = train_step(iterator)
            except (StopIteration, tf.errors.OutOfRangeError) as exc:
                raise ConfigurationError(
                    "the training dataset yielded no batch; check dataset_fn (empty data, or "
                    "fewer examples than the global batch size with drop_remainder=True). "
                    f"Received: global_batch_size={global_batch_size}"
                ) from exc
            total_loss += float(step_loss)
            total_correct += float(correct)
            total_count += float(count)
        metrics: dict[str, float] = {
            "loss": total_loss / steps_per_epoch,
            # named as model.fit's compiled metric of the same kind (binary_accuracy for findings)
            "binary_accuracy" if multi_label else "accuracy": (
                total_correct / total_count if total_count else math.nan
            ),
        }
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics)
        stop = bool(model.stop_training)
        if on_epoch_end is not None and on_epoch_end(epoch, metrics):
            stop = True
        result.history.append(metrics)
        log.info(
            "epoch %d/%d: %s",
            epoch + 1,
            epochs,
            ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()),
        )
        if stop:
            result.stopped_early = epoch + 1 < epochs
            break
    for callback in callbacks:
        callback.on_train_end(dict(result.history[-1]) if result.history else {})
    return result


def predict_local(model: Any, images: Any, *, batch_size: int = 32) -> Any:
    """Predict on this process only (no strategy, no collective): float32 numpy scores.

    For validation inside a distributed run: every worker holds identical weights, so every
    worker computes the same scores from the same validation arrays, and a decision taken from
    them (best epoch, early stopping) is the same everywhere. ``model.predict`` would try to
    distribute the work through the strategy the model was built in.
    """
    import numpy as np

    _check_positive_int("batch_size", batch_size)
    outputs = [
        np.asarray(model(images[start : start + batch_size], training=False), dtype=np.float32)
        for start in range(0, len(images), batch_size)
    ]
    if not outputs:
        raise ConfigurationError("predict_local needs at least one image. Received: 0 images")
    return np.concatenate(outputs, axis=0)


def _class_weight_table(class_weight: Mapping[int, float], *, num_classes: int) -> list[float]:
    """``{class: weight}`` -> a dense list indexed by class; classes not given weigh 1."""
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise ConfigurationError(
            "class_weight should be a non-empty mapping of class index to weight. "
            f"Received: class_weight={class_weight!r}"
        )
    for key, weight in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise ConfigurationError(
                f"class_weight keys should be class indices (integers >= 0). "
                f"Received: class_weight={dict(class_weight)!r}"
            )
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ConfigurationError(
                f"class_weight values should be finite numbers >= 0. "
                f"Received: class_weight={dict(class_weight)!r}"
            )
    table = [1.0] * max(max(class_weight) + 1, num_classes, 2)
    for key, weight in class_weight.items():
        table[key] = float(weight)
    return table

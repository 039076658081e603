"""A tiny, self-contained distributed training run: the tests' worker and a cluster smoke check.

Run the same command on every host of a cluster (each with its own ``TF_CONFIG``)::

    python -m radlens.training.distribute_worker --strategy multiworker --out /tmp/radlens-check

Each worker trains a small CNN on synthetic images for a few steps with
:func:`training.loop.distributed_train` and writes to ``--out``: ``initial.npz`` (the
weights it started from), ``weights.npz`` (the final weights) and ``report.json`` (strategy,
replicas, task, per-epoch metrics, a checksum of the data its replicas saw first). Identical
``weights.npz`` on every worker proves the collective all-reduce works; different data
checksums prove each worker trained on its own shard. Nothing is downloaded and nothing is
written anywhere but ``--out``.

With ``--tensorboard DIR`` the chief also writes the epoch scalars there, the learning rate
included (``--lr-schedule cosine`` makes it change), as ``radlens train`` does under a strategy.

``--logical-cpus N`` splits the CPU into N logical devices first, so ``--strategy mirrored``
runs a real ``MirroredStrategy`` on a machine without GPUs; the report then says whether every
replica holds the same value of every variable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from radlens.models.errors import RadlensError

IMAGE_SIZE = 16
NUM_EXAMPLES = 64


def synthetic_data(seed: int) -> tuple[Any, Any]:
    """``NUM_EXAMPLES`` gray images in [0, 1]; class 1 has a bright square, class 0 does not."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.4, size=(NUM_EXAMPLES, IMAGE_SIZE, IMAGE_SIZE, 1))
    labels = np.arange(NUM_EXAMPLES, dtype=np.int32) % 2
    for i in np.flatnonzero(labels):
        row, col = rng.integers(0, IMAGE_SIZE - 6, size=2)
        images[i, row : row + 6, col : col + 6, 0] = rng.uniform(0.8, 1.0)
    return images.astype(np.float32), labels


def build_tiny_model() -> Any:
    """A small CNN: two 3x3 convolutions, global average pooling, a float32 softmax head."""
    import keras

    return keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax", dtype="float32"),
        ],
        name="tiny_cnn",
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m radlens.training.distribute_worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--strategy", default="auto", help="auto|mirrored|multiworker|default")
    parser.add_argument("--out", required=True, type=Path, help="directory for the results")
    parser.add_argument("--logical-cpus", type=int, default=0, help="split the CPU first")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps per epoch")
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--mixed-precision", default="off", help="off|on|auto")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--lr-schedule",
        default="constant",
        choices=("constant", "cosine"),
        help="constant, or cosine decay to 0 over the run (as `radlens train --lr-schedule`)",
    )
    parser.add_argument(
        "--tensorboard",
        type=Path,
        help="the chief also writes the epoch scalars (loss, accuracy, learning rate) here, "
        "as `radlens train` does under a strategy",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the arguments say; write weights.npz and report.json; return the report."""
    started = time.monotonic()
    from radlens.training import distribute, loop  # TensorFlow is imported below, in this order

    devices = None
    if args.logical_cpus:
        devices = distribute.split_cpu(args.logical_cpus)
    # The strategy first, before any other TensorFlow op.
    strategy = distribute.make_strategy(
        args.strategy, devices=devices if args.strategy == "mirrored" else None
    )
    policy = distribute.configure_mixed_precision(args.mixed_precision)

    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    images, labels = synthetic_data(args.seed)

    def dataset_fn() -> Any:
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(
            args.global_batch_size, drop_remainder=True
        )

    # What this worker's replicas receive first (a separate iterator, same sharding rule).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    first = next(iter(strategy.experimental_distribute_dataset(dataset_fn().with_options(options))))
    digest = hashlib.sha256()
    for part in strategy.experimental_local_results(first[0]):
        digest.update(np.asarray(part).tobytes())

    initial: list[Any] = []

    def model_fn() -> Any:
        model = build_tiny_model()
        initial.extend(model.get_weights())
        return model

    class LocalValidation(keras.callbacks.Callback):
        """Accuracy on every synthetic image, computed on this process from its weights."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            scores = loop.predict_local(self.model, images, batch_size=16)
            if logs is not None:
                logs["val_accuracy"] = float(np.mean(scores.argmax(axis=1) == labels))

    def optimizer_fn() -> Any:
        rate: Any = args.learning_rate
        if args.lr_schedule == "cosine":
            rate = keras.optimizers.schedules.CosineDecay(
                args.learning_rate, decay_steps=args.epochs * args.steps
            )
        return keras.optimizers.SGD(learning_rate=rate)

    callbacks: list[Any] = [LocalValidation()]
    if args.tensorboard is not None and distribute.is_chief(strategy):
        from radlens.training.callbacks import EpochScalarsCallback

        callbacks.append(EpochScalarsCallback(args.tensorboard))
    result = loop.distributed_train(
        model_fn,
        dataset_fn,
        strategy=strategy,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        global_batch_size=args.global_batch_size,
        optimizer_fn=optimizer_fn,
        loss="sparse_categorical_crossentropy",
        callbacks=callbacks,
    )

    # Every replica's copy of every variable (``.value`` is the tf.distribute variable under
    # the Keras wrapper, which a strategy would see as one plain value).
    replicas_identical = True
    copies = []
    for variable in result.model.weights:
        values = [np.asarray(v) for v in strategy.experimental_local_results(variable.value)]
        copies.append(len(values))
        replicas_identical &= all(np.array_equal(values[0], v) for v in values[1:])
    resolver = getattr(strategy, "cluster_resolver", None)
    report = {
        "strategy": type(strategy).__name__,
        "num_replicas": result.num_replicas,
        "replica_devices": _replica_devices(strategy),
        "task": (
            f"{resolver.task_type}:{resolver.task_id}"
            if resolver is not None and resolver.task_type is not None
            else None
        ),
        "is_chief": result.is_chief,
        "policy": policy,
        "optimizer": type(result.optimizer).__name__,
        "history": result.history,
        "replicas_identical": bool(replicas_identical),
        "copies_per_variable": sorted(set(copies)),  # local copies: replicas on this worker
        "first_batch_sha256": digest.hexdigest(),
        "seconds": round(time.monotonic() - started, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out / "weights.npz",
        **{f"w{i:03d}": w for i, w in enumerate(result.model.get_weights())},
    )
    np.savez(args.out / "initial.npz", **{f"w{i:03d}": w for i, w in enumerate(initial)})
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _replica_devices(strategy: Any) -> list[str]:
    try:
        return [str(d) for d in strategy.extended.worker_devices]
    except RuntimeError:  # the default strategy has no device list: it runs where ops run
        return []


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 with one line on a configuration error."""
    args = _parse(argv)
    try:
        report = run(args)
    except RadlensError as exc:
        print(f"distribute_worker: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("strategy", "num_replicas", "task", "history")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

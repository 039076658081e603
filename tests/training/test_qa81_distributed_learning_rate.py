"""The custom (distributed) training loop logs the learning rate to TensorBoard as the
single-process path does (Keras' TensorBoard callback: ``train/epoch_learning_rate``), read
back from the event files (QA 81).

In process under the default strategy (a cosine schedule, also through the mixed-precision
LossScaleOptimizer), and in a subprocess under a real MirroredStrategy over two logical CPUs
(``radlens.training.distribute_worker --tensorboard``), where the rate is a mirrored variable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from radlens.training import loop
from radlens.training.callbacks import EpochScalarsCallback
from radlens.training.distribute_worker import build_tiny_model, synthetic_data
from tests.conftest import REPO_ROOT
from tests.training.workers import worker_env

EPOCHS, STEPS, BATCH, RATE = 3, 4, 8, 0.2


def scalars(directory: Path) -> dict[str, dict[int, float]]:
    """``{"<sub-run>/<tag>": {step: value}}`` over every event file under ``directory``."""
    found: dict[str, dict[int, float]] = {}
    for path in directory.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else float(value.simple_value)
                )
                tag = f"{path.parent.relative_to(directory)}/{value.tag}"
                found.setdefault(tag, {})[int(event.step)] = number
    return found


def cosine_rates() -> dict[int, float]:
    """The rate at the end of each epoch: the schedule at the optimizer's step count then."""
    schedule = keras.optimizers.schedules.CosineDecay(RATE, decay_steps=EPOCHS * STEPS)
    return {epoch: float(schedule((epoch + 1) * STEPS)) for epoch in range(EPOCHS)}


def train(log_dir: Path, *, loss_scale: bool) -> loop.DistributedTrainResult:
    keras.utils.set_random_seed(7)
    images, labels = synthetic_data(7)

    def optimizer_fn() -> keras.optimizers.Optimizer:
        schedule = keras.optimizers.schedules.CosineDecay(RATE, decay_steps=EPOCHS * STEPS)
        optimizer = keras.optimizers.SGD(learning_rate=schedule)
        return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scale else optimizer

    return loop.distributed_train(
        build_tiny_model,
        lambda: tf.data.Dataset.from_tensor_slices((images, labels)).batch(
            BATCH, drop_remainder=True
        ),
        strategy=tf.distribute.get_strategy(),
        epochs=EPOCHS,
        steps_per_epoch=STEPS,
        global_batch_size=BATCH,
        optimizer_fn=optimizer_fn,
        callbacks=[EpochScalarsCallback(log_dir)],
    )


@pytest.mark.parametrize("loss_scale", [False, True], ids=["sgd", "loss-scale-sgd"])
def test_custom_loop_writes_the_learning_rate_per_epoch(tmp_path: Path, loss_scale: bool) -> None:
    result = train(tmp_path, loss_scale=loss_scale)
    found = scalars(tmp_path)
    assert "train/epoch_learning_rate" in found, sorted(found)
    got = found["train/epoch_learning_rate"]
    expected = cosine_rates()
    assert sorted(got) == sorted(expected)
    for epoch, rate in expected.items():
        assert got[epoch] == pytest.approx(rate, rel=1e-6)
    assert got[0] > got[1] > got[2] >= 0.0  # the schedule, not a constant
    # the epoch's other scalars are still there, and the history is unchanged (no rate in it,
    # as model.fit's history has none)
    assert set(found["train/epoch_loss"]) == set(range(EPOCHS))
    assert all("learning_rate" not in epoch for epoch in result.history)


def test_mirrored_strategy_worker_writes_the_learning_rate(tmp_path: Path) -> None:
    board = tmp_path / "tb"
    command = [
        sys.executable, "-m", "radlens.training.distribute_worker",
        "--strategy", "mirrored", "--logical-cpus", "2", "--out", str(tmp_path / "out"),
        "--epochs", str(EPOCHS), "--steps", str(STEPS), "--global-batch-size", str(BATCH),
        "--learning-rate", str(RATE), "--lr-schedule", "cosine", "--tensorboard", str(board),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=worker_env(), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["strategy"] == "MirroredStrategy" and report["num_replicas"] == 2
    found = scalars(board)
    got = found.get("train/epoch_learning_rate")
    assert got is not None, sorted(found)
    expected = cosine_rates()
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose(
        [got[e] for e in sorted(got)], [expected[e] for e in sorted(got)], rtol=1e-6
    )
    assert set(found["validation/epoch_accuracy"]) == set(range(EPOCHS))

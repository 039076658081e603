"""Multi-label findings under tf.distribute: the custom loop keeps multi-hot labels 2-D.

Each run is a subprocess, since the CPU must be split into two logical devices before
TensorFlow starts (as tests/training/test_train_strategy.py does):

* one step of ``training.loop.distributed_train`` with the findings loss under a 2-replica
  ``MirroredStrategy`` against the same step under the default strategy, from the same
  weights on the same batch: the same loss (and the loss computed directly), the same
  weights after the update;
* ``radlens train --multi-label --strategy mirrored`` over two logical CPUs: it trains
  (validation by the custom loop: macro AUC as ``val_auc``), and exports a model whose
  manifest holds the findings and a threshold per finding;
* the same with ``--strategy multiworker``, two worker processes on localhost: only the chief
  exports, both end with the same validation figures and thresholds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.models.registry import ModelRegistry
from tests.conftest import REPO_ROOT
from tests.training.data_fixtures import multilabel_csv
from tests.training.workers import collect_outputs, free_ports, worker_env

TIMEOUT = 240
NAMES = ["Effusion", "Infiltration", "Nodule"]

ONE_STEP = """
import json, sys
from radlens.training.distribute import split_cpu
split_cpu(2)
import keras, numpy as np, tensorflow as tf
from radlens.models.architectures import build_model
from radlens.training import findings
from radlens.training.loop import distributed_train

rng = np.random.default_rng(3)
x = rng.random((8, 16, 16, 1), dtype=np.float32)
y = (rng.random((8, 3)) < 0.4).astype(np.float32)
y[0] = [1, 1, 0]
loss = findings.make_loss(np.array([2.0, 1.0, 0.5], np.float32))
keras.utils.set_random_seed(0)
start = build_model(
    "simple_cnn", input_shape=(16, 16, 1), num_classes=3, dropout=0.0, multi_label=True
).get_weights()

def run(strategy):
    with strategy.scope():
        model = build_model(
            "simple_cnn", input_shape=(16, 16, 1), num_classes=3, dropout=0.0, multi_label=True
        )
        model.set_weights(start)
    before = float(np.mean(np.asarray(loss(y, np.asarray(model(x, training=False))))))
    result = distributed_train(
        lambda: model,
        lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True),
        strategy=strategy,
        epochs=1,
        steps_per_epoch=1,
        global_batch_size=8,
        optimizer_fn=lambda: keras.optimizers.SGD(learning_rate=0.5),
        loss=loss,
        multi_label=True,
    )
    return {
        "replicas": result.num_replicas,
        "loss": result.history[0]["loss"],
        "binary_accuracy": result.history[0]["binary_accuracy"],
        "direct_loss": before,
        "weights": [w.tolist() for w in model.get_weights()],
    }

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {"mirrored": run(mirrored), "default": run(tf.distribute.get_strategy())}
json.dump(out, sys.stdout)
"""

LAUNCHER = """
import sys
from radlens.training.distribute import split_cpu
if sys.argv[1] == "split":
    split_cpu(2)
from radlens.cli.main import main
raise SystemExit(main(sys.argv[2:]))
"""


def _run(code: str, *args: str) -> str:  # one process, waited for
    process = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if process.returncode != 0:
        pytest.fail(f"exited {process.returncode}: {process.stderr[-3000:]}")
    return process.stdout


@pytest.mark.slow
def test_one_mirrored_step_equals_the_single_device_step() -> None:
    out = json.loads(_run(ONE_STEP))
    mirrored, default = out["mirrored"], out["default"]
    assert mirrored["replicas"] == 2 and default["replicas"] == 1
    # the global loss of a step: each replica's half divided by the GLOBAL batch size, summed
    assert mirrored["loss"] == pytest.approx(default["loss"], rel=1e-5, abs=1e-6)
    assert mirrored["loss"] == pytest.approx(mirrored["direct_loss"], rel=1e-5, abs=1e-6)
    assert mirrored["direct_loss"] == pytest.approx(default["direct_loss"], rel=1e-6)
    # every (image, finding) decision counted once: 8 images x 3 findings
    assert mirrored["binary_accuracy"] == pytest.approx(default["binary_accuracy"])
    assert round(mirrored["binary_accuracy"] * 24) == pytest.approx(
        mirrored["binary_accuracy"] * 24
    )
    # and the same update: the gradients summed over replicas are the one-device gradient
    for a, b in zip(mirrored["weights"], default["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _train_args(root: Path, csv_path: Path, strategy: str) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "base.yaml"
    config.write_text("histogram_freq: 0\ntensorboard_samples: 0\nmin_calibration_positives: 2\n")
    return [
        "train", "--config", str(config), "--data", str(csv_path), "--arch", "simple_cnn",
        "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--patience", "0",
        "--no-augment", "--multi-label", "--label-column", "findings",
        "--positive-weights", "auto", "--no-openvino", "--strategy", strategy,
        "--name", f"ml-{strategy}", "--runs-dir", str(root / "runs"),
        "--store", str(root / "store"), "--json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def findings_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Mirrored over two logical CPUs, and two multi-worker processes on localhost, started
    together (as tests/training/test_train_strategy.py)."""
    root = tmp_path_factory.mktemp("findings-distributed")
    csv_path = multilabel_csv(root / "data")
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = {
        "mirrored": _start(
            ["split", *_train_args(root / "mirrored", csv_path, "mirrored")], worker_env()
        ),
        **{
            f"worker{i}": _start(
                ["nosplit", *_train_args(root / "multi", csv_path, "multiworker")],
                worker_env(
                    json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
                ),
            )
            for i in range(2)
        },
    }
    return {"root": root, **collect_outputs(processes, TIMEOUT)}


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def mirrored_findings_run(findings_runs: dict[str, Any]) -> dict[str, Any]:
    return dict(findings_runs["mirrored"])


@pytest.mark.slow
def test_multi_label_trains_under_mirrored_and_exports_findings(
    mirrored_findings_run: dict[str, Any],
) -> None:
    result = mirrored_findings_run
    run_dir = Path(result["run_dir"])
    log = (run_dir / "train.log").read_text()
    assert "strategy MirroredStrategy: 2 replica(s), chief (exports)" in log
    assert result["model"] == "ml-mirrored:1" and result["epochs_run"] == 2
    written = json.loads((run_dir / "result.json").read_text())
    assert written["findings"]["label_mode"] == "multi-label"
    manifest = ModelRegistry(Path(result["store"])).load(result["model"]).manifest
    assert manifest.multi_label and manifest.threshold is None
    assert manifest.class_names == NAMES
    assert list(manifest.finding_thresholds) == NAMES
    assert all(0.0 <= t <= 1.0 for t in manifest.finding_thresholds.values())
    assert manifest.training_config["strategy"] == "mirrored"
    assert set(manifest.metrics["val"]["per_finding"]) == set(NAMES)
    assert set(manifest.metrics["calibration"]["temperatures"]) == set(NAMES)
    # validation by the custom loop: the macro AUC picks the best epoch, as under fit
    header = (run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_auc", "val_loss", "val_binary_accuracy", "binary_accuracy"} <= set(header)
    assert "epoch 2 findings: macro AUC" in log
    assert result["best_epoch"] in (1, 2)


@pytest.mark.slow
def test_mirrored_findings_tensorboard_has_the_same_kind_of_figures(
    mirrored_findings_run: dict[str, Any],
) -> None:
    from tests.training.test_tensorboard import read_events

    scalars = read_events(Path(mirrored_findings_run["run_dir"]) / "tensorboard")["scalars"]
    for tag in (
        "validation/findings/macro_auc",
        "validation/findings/micro_auc",
        "validation/findings/auc/Effusion",
        "validation/epoch_auc",  # the macro AUC that picks the best epoch
        "train/epoch_loss",
    ):
        assert tag in scalars, (tag, sorted(scalars))


@pytest.mark.slow
def test_multiworker_findings_workers_end_identical_and_only_the_chief_exports(
    findings_runs: dict[str, Any],
) -> None:
    chief, other = findings_runs["worker0"], findings_runs["worker1"]
    assert chief["model"] == "ml-multiworker:1" and other["model"] == ""
    store = ModelRegistry(findings_runs["root"] / "multi" / "store")
    assert [m.ref for m in store.list()] == ["ml-multiworker:1"]
    manifest = store.load("ml-multiworker:1").manifest
    assert manifest.multi_label and list(manifest.finding_thresholds) == NAMES
    chief_dir, other_dir = Path(chief["run_dir"]), Path(other["run_dir"])
    assert "2 replica(s), chief (exports)" in (chief_dir / "train.log").read_text()
    assert not (other_dir / "tensorboard").exists()
    # the all-reduce kept the workers in step: same validation figures and thresholds
    assert chief["val"] == other["val"]
    written = [json.loads((d / "result.json").read_text()) for d in (chief_dir, other_dir)]
    assert written[0]["findings"]["thresholds"] == written[1]["findings"]["thresholds"]

"""`radlens train --strategy`: the trainer under real tf.distribute strategies, end to end.

Each run is a subprocess, because a strategy (and the split of the CPU into two logical
devices) must be set up before TensorFlow starts: ``radlens train --strategy mirrored`` over two
logical CPUs, and ``--strategy multiworker`` with two worker processes on localhost (TF_CONFIG),
all started together. Both train the tiny simple_cnn on the tiny demo data through the custom
``strategy.run`` loop (Keras 3's ``fit`` fails under the multi-worker strategy) and export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from radlens.models.registry import ModelRegistry
from tests.conftest import REPO_ROOT
from tests.training.workers import collect_outputs, free_ports, worker_env

TIMEOUT = 240  # seconds per process; a hung collective fails the test instead of CI

# `radlens train` in a fresh interpreter, after (optionally) splitting the CPU in two
LAUNCHER = """
import sys
from radlens.training.distribute import split_cpu
if sys.argv[1] == "split":
    split_cpu(2)
from radlens.cli.main import main
raise SystemExit(main(sys.argv[2:]))
"""


def _train_args(data: Path, root: Path, strategy: str) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "base.yaml"  # the cheapest runs: no weight histograms, no sample images
    # min_calibration_positives: the tiny demo's validation holds 3 positives
    config.write_text("histogram_freq: 0\ntensorboard_samples: 0\nmin_calibration_positives: 2\n")
    return [
        "train",
        "--config",
        str(config),
        "--data",
        str(data),
        "--arch",
        "simple_cnn",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "2",
        "--patience",
        "0",
        "--no-augment",
        "--no-openvino",  # what is checked is the training; the export's conversion: test_run.py
        "--strategy",
        strategy,
        "--name",
        f"tiny-{strategy}",
        "--runs-dir",
        str(root / "runs"),
        "--store",
        str(root / "store"),
        "--json",
    ]


def _start(split: bool, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "split" if split else "nosplit", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def strategy_runs(tiny_demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Mirrored over two logical CPUs and two multi-worker processes, started together."""
    root = tmp_path_factory.mktemp("strategy")
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = {
        "mirrored": _start(
            True, _train_args(tiny_demo_data, root / "mirrored", "mirrored"), worker_env()
        ),
        **{
            f"worker{i}": _start(
                False,
                _train_args(tiny_demo_data, root / "multi", "multiworker"),
                worker_env(
                    json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
                ),
            )
            for i in range(2)
        },
    }
    return {"root": root, **collect_outputs(processes, TIMEOUT)}


def _weights(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                found.__setitem__(name, np.asarray(item))
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return found


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_trains_and_exports(strategy_runs: dict[str, Any]) -> None:
    result = strategy_runs["mirrored"]
    run_dir = Path(result["run_dir"])
    log = (run_dir / "train.log").read_text()
    assert "strategy MirroredStrategy: 2 replica(s), chief (exports)" in log
    assert result["model"] == "tiny-mirrored:1" and result["epochs_run"] == 2
    assert result["val"]["auc"] is not None and result["threshold"] is not None
    loaded = ModelRegistry(Path(result["store"])).load(result["model"])
    assert loaded.manifest.training_config["strategy"] == "mirrored"
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_auc" in history[0]  # validation by the custom loop
    assert (run_dir / "tensorboard" / "validation").is_dir()


@pytest.mark.slow
def test_multiworker_workers_end_identical_and_only_the_chief_exports(
    strategy_runs: dict[str, Any],
) -> None:
    chief, other = strategy_runs["worker0"], strategy_runs["worker1"]
    assert chief["model"] == "tiny-multiworker:1"
    assert other["model"] == ""  # trained, did not export
    chief_dir, other_dir = Path(chief["run_dir"]), Path(other["run_dir"])
    assert other_dir.name.endswith(".worker1") and not chief_dir.name.endswith(".worker0")
    store = ModelRegistry(strategy_runs["root"] / "multi" / "store")
    assert [m.ref for m in store.list()] == ["tiny-multiworker:1"]
    assert "2 replica(s), chief (exports)" in (chief_dir / "train.log").read_text()
    assert "worker1 (trains, does not export)" in (other_dir / "train.log").read_text()
    assert not (other_dir / "tensorboard").exists()
    # the all-reduce kept the workers in step: same best weights, same validation figures
    a = _weights(chief_dir / "checkpoints" / "best.weights.h5")
    b = _weights(other_dir / "checkpoints" / "best.weights.h5")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)
    assert chief["val"] == other["val"] and chief["threshold"] == other["threshold"]

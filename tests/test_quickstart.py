"""The README's first command, minus the final `serve`: from an empty store to a served model.

Runs scripts/quickstart.py --no-serve the way `make run` does (same interpreter, the venv's
`radlens`), against a temporary database, store and demo-data folder, then checks that the
demo model it trained is in the store and loads, and that the database is migrated. The demo
model trains 1 epoch here, not demo.yaml's 10 (the same path; 10 took 191 s of the suite's
20 minutes on an AMD EPYC, 263-355 s on an Intel Xeon; the whole test took 168 s with 3 and
95 s with 1 on a 2-core Xeon, QA round 56): what is checked is the set-up path and the export
(intended use, OOD detector, OpenVINO parity), not the model's quality, which demo.yaml's notes
measure over 10 epochs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _quickstart(
    tmp_path: Path, env: dict[str, str], *, timeout: int
) -> subprocess.CompletedProcess[str]:
    """`make run`'s script, set-up only, with the demo data under tmp_path."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.quickstart",
            "--no-serve",
            "--data-dir",
            str(tmp_path / "demo"),
            "--epochs",
            "1",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Longer than the two runs' own limits (900 s + 300 s): the suite's 600 s default fired here on
# an AVX2-only CPU, where the demo training alone took 587 s.
@pytest.mark.timeout(1500)
def test_quickstart_sets_up_database_demo_data_and_demo_model(tmp_path: Path):
    env = dict(os.environ)
    env.update(
        RADLENS_MODEL_STORE=str(tmp_path / "store"),
        RADLENS_DATABASE_URL=f"sqlite:///{tmp_path / 'radlens.db'}",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    result = _quickstart(tmp_path, env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "radlens.db").exists()
    assert (tmp_path / "demo" / "labels.csv").exists()
    # an API key was created and printed once
    (key_line,) = [line for line in result.stdout.splitlines() if "API key, shown only" in line]
    assert key_line.split()[-1].startswith("rl_")

    radlens = str(Path(sys.executable).with_name("radlens"))
    listing = subprocess.run(
        [radlens, "models", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    models = json.loads(listing.stdout)
    assert len(models) == 1
    assert models[0]["architecture"] == "resnet50"
    # the demo model states chest CR/DX (the README's CT example shows the gate) and carries
    # an OOD detector
    (manifest_path,) = (tmp_path / "store").glob("*/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["intended_use"]["stated"] == {
        "modalities": ["CR", "DX"],
        "body_parts": ["CHEST"],
    }
    assert manifest["ood"]["method"] == "mahalanobis"
    # ResNet50 converted to OpenVINO at export, its parity measured (the training tests of
    # ResNet50 turn the conversion off: this run is where the README's model is checked)
    fp32 = manifest["runtimes"]["openvino"]["parity"]["fp32"]
    assert fp32["flips"] == 0 and fp32["max_score_difference"] < 1e-3
    assert manifest["training_config"]["epochs_head"] == 1  # --epochs reached the trainer
    # the demo data's validation split calibrates the threshold to <= 1% expected flags (#17)
    assert manifest["ood"]["fitted_on"]["val_images"] >= 100
    assert manifest["ood"]["expected_flag_rate"] < 0.01

    # a second run finds the model and does not train again
    again = _quickstart(tmp_path, env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipping demo training" in again.stdout
    assert "An API key already exists" in again.stdout and "rl_" not in again.stdout

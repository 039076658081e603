"""`radlens train --json` prints the JSON alone on stdout (QA round 102).

The run directory's line and Keras' per-epoch progress line went to stdout before the JSON,
so `radlens train --json | jq` or `json.loads(stdout)` failed; they now go to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlens.cli.main import main


@pytest.fixture(autouse=True)
def _patient_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def test_train_json_stdout_is_json_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.training.data.demo import write_demo_dataset

    data = tmp_path / "data"
    write_demo_dataset(data, n_per_class=12, size=32, seed=1, val_fraction=0.15, test_fraction=0.15)
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--arch",
            "simple_cnn",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--name",
            "json-run",
            "--store",
            str(tmp_path / "store"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--min-calibration-positives",
            "1",
            "--no-openvino",
            "--ood-method",
            "none",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)  # nothing before or after the JSON
    assert result["model"] == "json-run:1"
    assert f"run directory: {tmp_path / 'runs'}" in captured.err  # still said, on stderr

"""`radlens data-check` says that `radlens train` refuses a given split that puts one patient
in two splits (QA round 27). On a CSV of NIH chest X-rays whose split column had been filled
per image, data-check listed "leakage: 15 patient(s) in more than one split (use --resplit for
a patient-level split)" as a remark, while `radlens train` on the same CSV stopped: data-check
reports every other split train refuses on a line of its own ("splits: `radlens train` refuses
them ..."), and now this one too. Since QA round 95 it fails data-check (exit 2, one line), for
a file manifest as for a series CSV: the split column is the data, not an option the run may set
otherwise, and train has no option to accept it (tests/cli/test_qa95_data_check_leak.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from tests.training.conftest import tiny_config
from tests.training.data_fixtures import random_gray, write_csv, write_png

REFUSED = "splits: `radlens train` refuses them"


def _given_split(root: Path, *, leak: bool) -> Path:
    rng = np.random.default_rng(27)
    rows = []
    for i in range(16):
        label = "abnormal" if i % 2 else "normal"
        path = write_png(root / label / f"{i}.png", random_gray(rng, bright=label == "abnormal"))
        split = ("train", "train", "val", "test")[(i // 2) % 4]
        patient = "P0" if leak and i == 4 else f"P{i}"  # image 4 (val): image 0's patient
        rows.append(
            {
                "path": str(path.relative_to(root)),
                "label": label,
                "patient_id": patient,
                "split": split,
            }
        )
    return write_csv(root / "labels.csv", rows)


def test_a_leaking_given_split_is_reported_as_train_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _given_split(tmp_path / "ds", leak=True)
    assert main(["data-check", str(path), "--min-calibration-positives", "1"]) == 2
    captured = capsys.readouterr()
    assert "leakage: 1 patient(s) in more than one split" in captured.out
    assert "radlens: error: 1 patient(s) have images in more than one given split" in captured.err

    from radlens.training.run import train

    with pytest.raises(ConfigurationError, match="1 patient"):
        train(tiny_config(path, tmp_path), verbose=0)

    assert main(["data-check", str(path), "--resplit", "--min-calibration-positives", "1"]) == 0
    assert REFUSED not in capsys.readouterr().out


def test_a_clean_given_split_is_not_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _given_split(tmp_path / "ds", leak=False)
    assert main(["data-check", str(path), "--min-calibration-positives", "1"]) == 0
    out = capsys.readouterr().out
    assert "leakage: none" in out and REFUSED not in out

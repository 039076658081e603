"""QA 37: `radlens data-check` says which class of a two-class set is the positive one, and
names a class too small to train (a one-row typo) with its count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from tests.training.data_fixtures import png_folder, random_gray, write_csv, write_png


@pytest.fixture(autouse=True)
def _patient_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def test_data_check_names_the_positive_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png_folder(tmp_path / "nih", n_per_class=4, classes=("No Finding", "Effusion"))
    assert main(["data-check", str(tmp_path / "nih"), "--min-calibration-positives", "0"]) == 0
    out = capsys.readouterr().out
    assert "positive class: 'Effusion' (class 1; 'No Finding' reads as the negative class)" in out


def test_data_check_names_a_class_of_one_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)
    rows = []
    for i, label in enumerate(["normal", "abnormal"] * 12 + ["efusion"]):
        write_png(tmp_path / f"{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        rows.append({"path": f"{i}.png", "label": label, "patient_id": f"P{i}"})
    csv_path = write_csv(tmp_path / "labels.csv", rows)
    assert main(["data-check", str(csv_path), "--min-calibration-positives", "1"]) == 0
    out = capsys.readouterr().out
    assert "validation split has 0 image(s) of 'efusion'" in out
    assert "'efusion' 1" in out and "typo" in out

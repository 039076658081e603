"""`radlens data-check` reports a validation split too small to calibrate, as `radlens train`
refuses it (QA round 21).

QA round 20 made data-check run training's split checks, but without the calibration minimum:
on `radlens demo-data --n-per-class 12` data-check printed its report with no word of
trouble, and `radlens train` on the same CSV with its default options then stopped with "too
small to calibrate: the validation split has 4 image(s) of 'abnormal' (positive); temperature
scaling needs at least 10". data-check now checks the minimum at train's default, or at the
run's with --min-calibration-positives.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main
from tests.cli.test_qa20_data_check_splits import labelled_csv

REFUSED = "splits: `radlens train` refuses them with these options"


def _csv(root: Path) -> Path:
    """Two classes, 8 training images, validation of 2 normal and 2 abnormal."""
    return labelled_csv(root, ["normal", "abnormal"] * 2, n_train=8, n_test=2, seed=21)


def test_the_default_is_trains_default() -> None:
    from radlens.cli.data_cmds import DEFAULT_MIN_CALIBRATION_POSITIVES
    from radlens.training.config import TrainConfig

    assert TrainConfig(data="x").min_calibration_positives == DEFAULT_MIN_CALIBRATION_POSITIVES


def test_too_few_validation_positives_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _csv(tmp_path / "ds")
    assert main(["data-check", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if REFUSED in x)
    assert "too small to calibrate: the validation split has 2 image(s)" in line
    assert "needs at least 10" in out


def test_the_runs_minimum_is_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _csv(tmp_path / "ds")
    assert main(["data-check", str(path), "--min-calibration-positives", "2"]) == 0
    assert REFUSED not in capsys.readouterr().out

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

import numpy as np
import pytest

from radlens.cli.main import main
from tests.training.data_fixtures import random_gray, write_csv, write_png

REFUSED = "splits: `radlens train` refuses them with these options"


def _csv(root: Path) -> Path:
    """Two classes, 8 training images, validation of 2 normal and 2 abnormal."""
    rng = np.random.default_rng(21)
    plan = [("train", "normal" if i % 2 else "abnormal") for i in range(8)]
    plan += [("val", label) for label in ("normal", "abnormal") * 2]
    plan += [("test", "normal" if i % 2 else "abnormal") for i in range(2)]
    rows = []
    for i, (split, label) in enumerate(plan):
        image = random_gray(rng, bright=label == "abnormal")
        path = write_png(root / label / f"{split}_{i}.png", image)
        rows.append(
            {
                "path": str(path.relative_to(root)),
                "label": label,
                "patient_id": f"P{i}",
                "split": split,
            }
        )
    return write_csv(root / "labels.csv", rows)


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


def test_the_default_is_trains() -> None:
    """data-check's default minimum is a copy (the CLI does not import training at start-up):
    it must stay train's."""
    import dataclasses

    from radlens.cli.data_cmds import DEFAULT_MIN_CALIBRATION_POSITIVES
    from radlens.training.config import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert fields["min_calibration_positives"].default == DEFAULT_MIN_CALIBRATION_POSITIVES

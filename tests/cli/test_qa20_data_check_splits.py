"""`radlens data-check` says when `radlens train` would refuse its splits (QA round 20).

QA round 20 ran data-check on a folder of real CT and MR files from public repositories: the
MR class came mostly from one patient's 192-slice series, so the patient-level split left
validation with CT only. data-check printed `split val: 9 (ct 9, mr 0)` and nothing else about
it, and `radlens train` on the same folder then stopped with "the validation split needs
images of at least 2 classes". data-check exists to say beforehand what training will do with
a data set; it now runs training's split checks (training.data.sources.check_splits) on its
split and reports the refusal in a line of its own. The fixture is a CSV with a given split
whose validation rows are all of one class, which both commands keep as given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from tests.training.conftest import tiny_config
from tests.training.data_fixtures import random_gray, write_csv, write_png

REFUSED = "splits: `radlens train` refuses them with these options"


def labelled_csv(
    root: Path, val_labels: list[str], *, n_train: int = 12, n_test: int = 4, seed: int = 20
) -> Path:
    """A CSV with a given split: ``n_train`` training and ``n_test`` test images alternating
    abnormal/normal, validation with ``val_labels``; one patient per image."""
    rng = np.random.default_rng(seed)
    rows = []
    plan = [("train", "normal" if i % 2 else "abnormal") for i in range(n_train)]
    plan += [("val", label) for label in val_labels]
    plan += [("test", "normal" if i % 2 else "abnormal") for i in range(n_test)]
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


def test_validation_with_one_class_is_reported_as_train_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = labelled_csv(tmp_path / "ds", ["normal"] * 4)

    assert main(["data-check", str(path)]) == 0  # a report: the split options are the run's
    out = capsys.readouterr().out
    assert "split val: 4 (normal 4, abnormal 0)" in out
    assert f"{REFUSED}: the validation split needs images of at " in out

    from radlens.training.run import train

    with pytest.raises(ConfigurationError, match="the validation split needs images of at least 2"):
        train(tiny_config(path, tmp_path), verbose=0)


def test_splits_train_accepts_are_not_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = labelled_csv(tmp_path / "ds", ["normal", "abnormal", "normal", "abnormal"])
    # the run's calibration minimum (tiny_config's 2): at train's default of 10 the 2
    # validation positives are refused, and data-check says so (test_qa21_data_check_calibration)
    assert main(["data-check", str(path), "--min-calibration-positives", "2"]) == 0
    assert REFUSED not in capsys.readouterr().out

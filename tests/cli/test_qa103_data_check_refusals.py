"""QA 103 (items left by QA 102): refusals that say what is wrong and what to do.

1. A labels CSV whose paths are all written relative to the current folder (not the CSV's
   own) was refused with "needs images of at least 2 classes; ... has only []".
2. The too-small-to-calibrate refusal said "lower --min-calibration-positives" at 1 (data-check
   keeps its 0, "not checked": it only reports the split).
3. `radlens train --resume` of a finished run did not name the model it produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import (
    MultiLabelSpec,
    check_splits,
    open_data,
    split_source,
)
from radlens.training.rundir import config_for_resume
from tests.training.data_fixtures import random_gray, write_csv, write_png


@pytest.fixture(autouse=True)
def _patient_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def _images(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(103)
    written = []
    for i in range(n):
        write_png(folder / f"{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        written.append(f"{folder.name}/{i}.png")
    return written


def _cwd_relative_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str) -> Path:
    """labels/labels.csv listing img/N.png, which exist under tmp_path (the current folder)."""
    monkeypatch.chdir(tmp_path)
    paths = _images(tmp_path / "img", 6)
    rows = [{"path": p, column: "ab"[i % 2], "patient_id": f"P{i}"} for i, p in enumerate(paths)]
    return write_csv(tmp_path / "labels" / "labels.csv", rows)


def test_cwd_relative_paths_are_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _cwd_relative_csv(tmp_path, monkeypatch, "label")
    assert main(["data-check", "labels/labels.csv"]) != 0
    err = capsys.readouterr().err
    assert "has only []" not in err
    assert "none of the 6 path(s) in 'labels/labels.csv' exists" in err
    assert "(6 of 6 rows' files are missing)" in err
    assert "relative to the CSV's folder 'labels'" in err
    assert "e.g. 'img/0.png' as 'labels/img/0.png'" in err
    assert "6 of them exist relative to the current folder instead" in err
    assert "P0" not in err  # the patient ids stay out
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigurationError, match="relative to the CSV's folder"):
        open_data(csv_path.resolve())  # as `radlens train` opens it


def test_cwd_relative_paths_are_explained_for_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cwd_relative_csv(tmp_path, monkeypatch, "findings")
    spec = MultiLabelSpec(column="findings")
    with pytest.raises(ConfigurationError, match="none of the 6 path") as caught:
        open_data("labels/labels.csv", multi_label=spec)
    assert "relative to the CSV's folder 'labels'" in str(caught.value)


def test_some_missing_paths_are_still_skipped(tmp_path: Path) -> None:
    paths = _images(tmp_path / "img", 6)
    rows = [{"path": p, "label": "ab"[i % 2]} for i, p in enumerate(paths)]
    rows.append({"path": "img/absent.png", "label": "a"})
    source = open_data(write_csv(tmp_path / "labels.csv", rows))
    assert len(source.examples) == 6 and len(source.skipped) == 1


def test_too_small_to_calibrate_at_one_does_not_say_lower(tmp_path: Path) -> None:
    # at 1 only a class beyond two can be absent from validation (two present pass the
    # two-class check): three classes, 'c' only in train
    paths = _images(tmp_path / "img", 12)
    labels = ["a", "b"] * 5 + ["c", "c"]
    rows = [{"path": p, "label": labels[i], "patient_id": f"P{i}"} for i, p in enumerate(paths)]
    source = open_data(write_csv(tmp_path / "labels.csv", rows))
    splits = {
        "train": source.examples[:6] + source.examples[10:],
        "val": source.examples[6:10],
        "test": [],
    }
    with pytest.raises(ConfigurationError, match="too small to calibrate") as caught:
        check_splits(source, splits, min_calibration_positives=1)
    message = str(caught.value)
    assert "lower --min-calibration-positives" not in message
    assert "--min-calibration-positives is 1, its lowest" in message
    with pytest.raises(ConfigurationError, match="lower --min-calibration-positives"):
        check_splits(source, split_source(source, seed=0), min_calibration_positives=2)


def _finished_run(tmp_path: Path, model: object) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}\n")
    (run_dir / "result.json").write_text(json.dumps({"model": model}) + "\n")
    return run_dir


def test_resume_of_a_finished_run_names_its_model(tmp_path: Path) -> None:
    run_dir = _finished_run(tmp_path, "chest:3")
    with pytest.raises(ConfigurationError) as caught:
        config_for_resume(run_dir)
    assert str(caught.value).endswith("has finished already: it produced model chest:3")


def test_resume_of_a_finished_worker_run_says_finished_only(tmp_path: Path) -> None:
    run_dir = _finished_run(tmp_path, "")  # a worker that is not the chief exports nothing
    with pytest.raises(ConfigurationError) as caught:
        config_for_resume(run_dir)
    assert str(caught.value).endswith("has finished already")

"""`radlens data-check` exits 2 on a given split that puts one patient in two splits, for an
image CSV as for a series CSV, as `radlens train` refuses both (QA round 95).

A new user's walk-through found the same problem answered two ways: the NIH sample's
labels.csv (30 patients in two given splits) was reported with exit 0, a series CSV with the
same kind of split exited 2. The split column is the data, not an option data-check's
--val-fraction or --seed could change, and train has no option to accept the leak; so both now
fail with one line naming the count, the splits and what to do, after the report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.training.run import train
from tests.training.conftest import tiny_config
from tests.training.series_fixtures import read_rows, series_dataset, write_rows
from tests.training.test_patients import _leaky_csv


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("radlens: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _leaky_series_csv(root: Path) -> Path:
    """Patient 0's two series: one given to train, the other to test."""
    path = series_dataset(root, patients=4)
    rows = read_rows(path)
    rows[0]["split"], rows[1]["split"] = "train", "test"
    assert rows[0]["patient_id"] == rows[1]["patient_id"]
    return write_rows(path, rows)


def test_an_image_csv_with_a_leaking_given_split_exits_2_as_train_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _leaky_csv(tmp_path / "d")  # patients 0 and 1: one image in train, one in val
    code, out, err = _run(["data-check", str(csv_path), "--min-calibration-positives", "1"], capsys)
    assert code == 2
    assert "leakage: 2 patient(s) in more than one split" in out  # the report comes first
    line = _one_error_line(err)
    assert "2 patient(s) have images in more than one given split (train+val: 2)" in line
    assert "--resplit" in line and "split column" in line and "`radlens train` refuses" in line
    assert "PAT0" not in err + out and "PAT1" not in err + out  # keyed hashes only

    with pytest.raises(ConfigurationError, match=r"2 patient\(s\) have images in more than one"):
        train(tiny_config(csv_path, tmp_path, min_calibration_positives=1), verbose=0)

    code, out, err = _run(
        ["data-check", str(csv_path), "--resplit", "--min-calibration-positives", "1"], capsys
    )
    assert code == 0, err
    assert "leakage: none" in out


def test_a_series_csv_with_a_leaking_given_split_exits_2_with_the_same_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _leaky_series_csv(tmp_path / "ds")
    code, out, err = _run(["data-check", str(csv_path)], capsys)
    assert code == 2
    assert "leakage: 1 patient(s) in more than one split" in out
    line = _one_error_line(err)
    assert "1 patient(s) have series in more than one given split (train+test: 1)" in line
    assert "--resplit" in line and "split column" in line and "`radlens train` refuses" in line

    with pytest.raises(ConfigurationError, match=r"1 patient\(s\) have images in more than one"):
        train(tiny_config(csv_path, tmp_path), verbose=0)

    code, out, err = _run(["data-check", str(csv_path), "--resplit"], capsys)
    assert code == 0, err
    assert "leakage: none" in out


def test_a_clean_given_split_still_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _leaky_csv(tmp_path / "d")
    rows = read_rows(csv_path)
    for row in rows:
        if row["patient_id"] in ("PAT0", "PAT1"):
            row["split"] = "train"
    write_rows(csv_path, rows)
    code, out, err = _run(["data-check", str(csv_path), "--min-calibration-positives", "1"], capsys)
    assert code == 0, err
    assert "leakage: none" in out

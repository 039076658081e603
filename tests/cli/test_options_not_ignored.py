"""Options that change nothing for the data or model at hand were ignored silently (QA round
24): `--label-column` on a single-label model's evaluation (its labels come from the 'label'
column whatever it names) and `--dicom-root` on data that is not a series-labelled CSV (only
such a CSV looks series up under it). Each is now one line, exit 2, and nothing is written;
where the option applies it still works."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radlens.cli.main import main
from radlens.training.data.sources import open_data
from tests.cli.test_qa24_cli_refusals import one_error_line
from tests.training.series_fixtures import series_dataset


@pytest.fixture(autouse=True)
def _patient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def _folder(root: Path) -> Path:
    for label, level in (("normal", 30), ("abnormal", 200)):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((24, 24), level + i, np.uint8)).save(root / label / f"{i}.png")
    return root


def test_evaluate_label_column_on_a_single_label_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.app.conftest import save_tiny_model

    store = tmp_path / "store"
    save_tiny_model(store, training_config={"seed": 0})
    data = _folder(tmp_path / "data")
    args = ["evaluate", "--data", str(data), "--split", "all", "--store", str(store)]
    out = tmp_path / "report"
    assert main([*args, "--label-column", "findings", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "--label-column 'findings'" in line and "single-label" in line
    assert "drop --label-column" in line
    assert not out.exists()


def test_data_check_dicom_root_on_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _folder(tmp_path / "data")
    assert main(["data-check", str(data), "--dicom-root", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "is not one, so nothing would read it: drop --dicom-root" in line


def test_train_dicom_root_on_a_folder_writes_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _folder(tmp_path / "data")
    runs, store = tmp_path / "runs", tmp_path / "store"
    args = ["train", "--data", str(data), "--arch", "simple_cnn", "--image-size", "32"]
    args += ["--epochs", "1", "--runs-dir", str(runs), "--store", str(store)]
    assert main([*args, "--dicom-root", str(tmp_path)]) == 2
    assert "drop --dicom-root" in one_error_line(capsys)
    assert not runs.exists() or not any(runs.iterdir())
    assert not store.exists() or not any(store.iterdir())


def test_evaluate_dicom_root_on_an_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, test_images=np.zeros((4, 8, 8), np.uint8), test_labels=np.arange(4) % 2)
    args = ["evaluate", "--data", str(data), "--store", str(tmp_path / "none")]
    assert main([*args, "--dicom-root", str(tmp_path)]) == 2
    assert "drop --dicom-root" in one_error_line(capsys)


def test_a_series_csv_still_takes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = series_dataset(tmp_path / "ds", patients=2, by="uid")
    moved = tmp_path / "elsewhere" / "series.csv"
    moved.parent.mkdir()
    shutil.move(csv_path, moved)
    assert len(open_data(moved, dicom_root=tmp_path / "ds").examples) == 16
    code = main(["data-check", str(moved), "--dicom-root", str(tmp_path / "ds"), "--headers-only"])
    assert "drop --dicom-root" not in capsys.readouterr().err
    assert code == 0

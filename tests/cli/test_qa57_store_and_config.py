"""What was wrong, said as it is: a model store that is a file (`radlens evaluate`: "no model
named ... in" it, QA round 57) and a `--config` that is a folder ("config file not found")."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("radlens")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_evaluate_with_a_store_that_is_a_file(
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "store"
    store.write_text("not a folder")
    data = tmp_path / "scans"
    data.mkdir()
    argv = ["evaluate", "--model", "chest:1", "--data", str(data)]
    if how == "flag":
        argv += ["--store", str(store)]
    else:
        monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))

    assert main(argv) == 2

    line = _error_line(capsys)
    assert line.startswith("radlens: error: ")
    assert f"the model store {str(store)!r} is a file, not a folder" in line
    assert "--store FOLDER" in line
    assert "no model named" not in line


def test_train_config_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()

    assert main(["train", "--config", str(folder)]) == 2

    line = _error_line(capsys)
    assert f"config file '{folder}' is a folder; give a .yaml or .json file" in line
    assert "not found" not in line


def test_a_missing_config_file_is_still_not_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in _error_line(capsys)

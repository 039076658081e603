"""QA 106: the CLI of training jobs on a hospital's messy data.

- `radlens train --resume` of a finished run imported TensorFlow (seconds: 20-26 s wall on a
  loaded 2-core machine) before saying the run had finished; it answers first now.
- `radlens train`, `evaluate` and `data-check` tune glibc's malloc as the service does
  (``RADLENS_MALLOC_KEEP_MIB``, app/memory.py): large radiographs are decoded through several
  multi-megabyte buffers, faulted in afresh each time with glibc's defaults
  (bench/training_malloc.py).
- data-check and train say how many system files (.DS_Store, Thumbs.db, ...) they ignored.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from radlens.cli import common
from radlens.cli.main import main
from tests.conftest import REPO_ROOT
from tests.training.data_fixtures import png_folder


@pytest.fixture(autouse=True)
def _patient_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def _finished_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}\n")
    (run_dir / "result.json").write_text(json.dumps({"model": "chest:3"}) + "\n")
    return run_dir


def test_resume_of_a_finished_run_answers_before_tensorflow(tmp_path: Path) -> None:
    run_dir = _finished_run(tmp_path)
    code = (
        "import sys; from radlens.cli.main import main; "
        f"rc = main(['train', '--resume', {str(run_dir)!r}]); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert done.stdout.strip() == "False False"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith("has finished already: it produced model chest:3")


def test_resume_of_a_folder_that_is_no_run_answers_before_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys; from radlens.cli.main import main; "
        f"rc = main(['train', '--resume', {str(tmp_path)!r}]); "
        "print('tensorflow' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stdout.strip() == "False"
    assert "not a radlens run directory (no config.json)" in done.stderr


# --- malloc ----------------------------------------------------------------------------------


def test_the_cli_default_and_bounds_are_the_services() -> None:
    from radlens.app.settings import Settings

    field = Settings.model_fields["malloc_keep_mib"]
    assert field.default == common.DEFAULT_MALLOC_KEEP_MIB
    bounds = {type(m).__name__: m for m in field.metadata}
    assert bounds["Ge"].ge == 0 and bounds["Le"].le == common.MAX_MALLOC_KEEP_MIB


@pytest.mark.parametrize(("env", "expected"), [(None, 64), ("0", 0), (" 128 ", 128)])
def test_data_check_tunes_malloc_as_the_service(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str | None,
    expected: int,
) -> None:
    from radlens.app import memory

    calls: list[int] = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda keep: calls.append(keep) or True)
    if env is None:
        monkeypatch.delenv("RADLENS_MALLOC_KEEP_MIB", raising=False)
    else:
        monkeypatch.setenv("RADLENS_MALLOC_KEEP_MIB", env)
    root = png_folder(tmp_path / "data", n_per_class=4)
    assert main(["data-check", str(root), "--headers-only"]) == 0
    assert calls == [expected]


@pytest.mark.parametrize("value", ["lots", "-1", "5000", "1.5"])
def test_a_bad_malloc_setting_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    monkeypatch.setenv("RADLENS_MALLOC_KEEP_MIB", value)
    root = png_folder(tmp_path / "data", n_per_class=4)
    assert main(["data-check", str(root), "--headers-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "RADLENS_MALLOC_KEEP_MIB must be a whole number of MiB from 0" in err
    assert repr(value) in err


def test_train_and_evaluate_tune_malloc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both call the tuning before they load TensorFlow and the data (a bad value stops them
    there, before the data path is even looked at)."""
    monkeypatch.setenv("RADLENS_MALLOC_KEEP_MIB", "lots")
    assert main(["train", "--data", str(tmp_path), "--arch", "simple_cnn"]) == 2
    assert "RADLENS_MALLOC_KEEP_MIB must be" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path), "--model", "m"]) == 2
    assert "RADLENS_MALLOC_KEEP_MIB must be" in capsys.readouterr().err


# --- system files counted --------------------------------------------------------------------


def test_data_check_says_how_many_system_files_it_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = png_folder(tmp_path / "data", n_per_class=4)
    for folder in (root, root / "normal", root / "abnormal"):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 40)
    (root / "normal" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    (root / "abnormal" / "~$notes.docx").write_bytes(b"\x0bradiologist" + b"\0" * 40)
    assert main(["data-check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "  0 file(s) skipped" in out
    assert (
        "  5 system or hidden file(s)/folder(s) ignored, never read as images: "
        "3 .DS_Store (macOS Finder), 1 Thumbs.db (Windows thumbnails), 1 ~$* (Office lock file)"
    ) in out


def test_train_says_how_many_system_files_it_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.training import run as training_run

    def trained(config: object, *, on_start: object) -> training_run.RunResult:
        return training_run.RunResult(
            run_dir=tmp_path / "runs" / "x-1",
            model_ref="x:1",
            store=tmp_path / "store",
            class_names=["normal", "abnormal"],
            threshold=0.5,
            val_metrics={"auc": 0.9},
            test_metrics=None,
            best_epoch=1,
            epochs_run=1,
            ignored={".DS_Store (macOS Finder)": 2},
        )

    monkeypatch.setattr(training_run, "train", trained)
    root = png_folder(tmp_path / "data", n_per_class=4)
    assert main(["train", "--data", str(root), "--arch", "simple_cnn"]) == 0
    out = capsys.readouterr().out
    assert (
        "2 system or hidden file(s)/folder(s) ignored, never read as images: "
        "2 .DS_Store (macOS Finder)"
    ) in out
    assert trained(None, on_start=None).to_dict()["ignored_files"] == {
        ".DS_Store (macOS Finder)": 2
    }

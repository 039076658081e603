"""QA round 53: `radlens data-check` and `radlens train` on DICOM media exports (a hospital's
CD/DVD/USB: DICOMDIR, extensionless images in nested folders, a viewer and AUTORUN.INF).

Before: ``radlens data-check CD`` (an export given as the data set) printed "class PT000000:
3 ... class PT000003: 3" and exited 0; the DICOMDIR of an export under a class folder was
"skipped ...: DICOM file has no pixel data". Now the export is refused in one line (exit 2)
and the DICOMDIR is skipped as the media's index."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main
from tests.training.test_qa53_media_export import media_data_set, write_export


@pytest.fixture(autouse=True)
def _patient_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("radlens: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def test_data_check_refuses_an_export_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_export(tmp_path / "CD", ["P1", "P2", "P3", "P4"], seed=1)
    assert main(["data-check", str(tmp_path / "CD")]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert "is a DICOM media export" in line and "DATA/<class>/<export>" in line
    assert "class PT000000" not in captured.out


def test_data_check_reads_exports_under_class_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    media_data_set(tmp_path / "data")
    code = main(["data-check", str(tmp_path / "data"), "--min-calibration-positives", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = captured.out
    assert "folder source" in out and ": 24 images" in out
    assert "class normal: 12" in out and "class nodule: 12" in out
    cd = tmp_path / "data" / "normal" / "CD"
    assert f"skipped {cd / 'DICOMDIR'}: a DICOMDIR, the index of a DICOM media export" in out
    assert "no pixel data" not in out
    assert f"skipped {cd / 'VIEWER.EXE'}: not a DICOM, PNG or JPEG file" in out
    assert "10 file(s) skipped" in out
    skipped = [line for line in out.splitlines() if line.startswith("  skipped ")]
    assert not [line for line in skipped if "desktop.ini" in line or "/._" in line]
    # counted as ignored, with why (QA 106)
    assert "desktop.ini (Windows folder settings)" in out and "._* (macOS AppleDouble)" in out
    assert "Traceback" not in captured.err


def test_train_refuses_an_export_before_a_run_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_export(tmp_path / "CD", ["P1", "P2", "P3", "P4"], seed=2)
    runs, store = tmp_path / "runs", tmp_path / "store"
    args = ["train", "--data", str(tmp_path / "CD"), "--arch", "simple_cnn"]
    code = main([*args, "--runs-dir", str(runs), "--store", str(store)])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "is a DICOM media export" in line
    assert not runs.exists() or not any(runs.iterdir())

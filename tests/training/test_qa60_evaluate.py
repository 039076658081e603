"""QA round 60, `radlens evaluate`: an unfinished version, and many skipped files.

(Found in QA 57) `radlens evaluate --model NAME:VERSION` on a version its
training run left unfinished (abandoned before it attached its OOD detector and runtime) ran
without a word. It is evaluated, not refused: its model.keras is complete and checked, and
naming the version is a request for it (the newest is always a finished one); but it says,
in one warning and in the result, that the version is unfinished, which `radlens serve`
refuses and `radlens models list` marks.

It printed one "skipping ..." line per skipped file (a CD export's viewer: hundreds); it logs
the count per kind of reason and ten examples, and `--out` gets the full list, skipped.csv
(tests/training/test_qa60_skip_summary.py has train's side).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.registry import UNFINISHED_FILE
from radlens.training.run import RunResult
from tests.training.test_qa60_skip_summary import N_JUNK, _per_file_records, _rows, _with_viewer


def _abandoned(tiny_run: RunResult, tmp_path: Path) -> tuple[Path, str]:
    store = Path(shutil.copytree(tiny_run.store, tmp_path / "store"))
    name, version = tiny_run.model_ref.split(":")
    (store / name / version / UNFINISHED_FILE).write_text("")  # no process holds it
    return store, tiny_run.model_ref


def test_evaluate_says_the_version_is_unfinished(
    tiny_run: RunResult,
    tiny_demo_data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from radlens.training.evaluate import evaluate

    store, ref = _abandoned(tiny_run, tmp_path)
    caplog.set_level(logging.WARNING)
    out = tmp_path / "eval"
    metrics = evaluate(ref, tiny_demo_data, split="val", store=store, out=out)
    assert metrics["unfinished"] == "abandoned"
    assert json.loads((out / "metrics.json").read_text())["unfinished"] == "abandoned"
    warned = [r.getMessage() for r in caplog.records if "is unfinished" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{ref} is unfinished (abandoned")
    assert f"radlens models finish {ref}" in warned[0]


def test_the_cli_marks_the_model_line(
    tiny_run: RunResult,
    tiny_demo_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, ref = _abandoned(tiny_run, tmp_path)
    args = ["evaluate", "--model", ref, "--data", str(tiny_demo_data), "--store", str(store)]
    assert main([*args, "--split", "val"]) == 0
    assert f"model: {ref} (unfinished: abandoned)  split: val" in capsys.readouterr().out


def test_evaluate_summarises_and_writes_the_list_with_out(
    tiny_run: RunResult,
    tiny_demo_data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from radlens.training.evaluate import evaluate

    data = _with_viewer(Path(shutil.copytree(tiny_demo_data, tmp_path / "data")))
    caplog.set_level(logging.WARNING)
    out = tmp_path / "eval"
    metrics = evaluate(tiny_run.model_ref, data, split="all", store=tiny_run.store, out=out)
    messages = _per_file_records(caplog)
    assert not any(m.startswith("skipping ") for m in messages), messages[:3]
    assert 1 <= len(messages) <= 10
    assert "unfinished" not in metrics and "is unfinished" not in caplog.text  # a finished one
    assert metrics["skipped_files"] == N_JUNK + 1
    assert metrics["skipped_reasons"] == {
        "not a DICOM, PNG or JPEG file": N_JUNK,
        "file is truncated": 1,
    }
    assert f"the full list: {out / 'skipped.csv'}" in caplog.text
    assert len(_rows(out / "skipped.csv")) == N_JUNK + 1
    # an evaluation that skipped nothing leaves no stale list behind
    evaluate(tiny_run.model_ref, tiny_demo_data, split="val", store=tiny_run.store, out=out)
    assert not (out / "skipped.csv").exists()

"""`radlens models show` (text) shows what the service gates and decides on: the intended use,
the OOD detector, the calibration, the split and the leakage check (before: only --json had
them, so an integrator could not see a model's intended use from the text; QA round 32)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.intended_use import intended_use_record
from tests.app.conftest import save_tiny_model


def test_the_text_shows_use_detector_calibration_and_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    save_tiny_model(
        store,
        intended_use=intended_use_record(
            {"images": 4, "modalities": {"CR": 4}, "body_parts": {"CHEST": 4}},
            stated={"modalities": ["CR", "DX"]},
        ),
        calibration={"method": "temperature scaling", "temperature": 1.5, "fitted_on": "val"},
        data_split={"method": "by patient", "sizes": {"train": 10, "val": 4, "test": 3}},
        leakage_check={"passed": True, "patients_in_two_splits": 0},
    )
    assert main(["models", "show", "tiny:1", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "intended use: modalities CR, DX; body parts CHEST" in out, out
    assert "OOD detector: none (no out-of-distribution check)" in out
    assert "calibration: temperature scaling (temperature 1.5, fitted_on val)" in out
    assert "data split: by patient; train 10, val 4, test 3" in out
    assert "leakage check: passed (0 patients in two splits)" in out


def test_a_model_without_a_stated_use_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    save_tiny_model(store)
    assert main(["models", "show", "tiny", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "intended use: not stated (the gate accepts any image)" in out
    assert "calibration:" not in out and "leakage check:" not in out

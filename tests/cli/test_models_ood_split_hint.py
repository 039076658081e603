"""`radlens models ood` fits its detector on the run's train split and calibrates it on the val
split, and has no --split option; when the data's val split was empty (or the split could not
be rebuilt) it said "choose another --split or 'all'" / "use --split all", options it does not
have. It now says what it needs, and `radlens evaluate` keeps its own advice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import open_source
from radlens.training.evaluate import select_split
from tests.cli.test_qa24_cli_refusals import one_error_line


@pytest.fixture(autouse=True)
def _patient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def _train_only(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        train_images=rng.integers(0, 255, (40, 32, 32), dtype=np.uint8),
        train_labels=np.arange(40) % 2,
    )
    return path


def test_models_ood_on_data_without_a_val_split_says_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.app.conftest import save_tiny_model

    store = tmp_path / "store"
    save_tiny_model(store, training_config={"seed": 0})
    manifest = store / "tiny" / "1" / "manifest.json"
    before = manifest.read_bytes()
    data = _train_only(tmp_path / "train_only.npz")
    assert main(["models", "ood", "tiny", "--data", str(data), "--store", str(store)]) == 2
    line = one_error_line(capsys)
    assert "'val' split of this data set is empty" in line
    assert "calibrated on its val split" in line and "data the model was trained on" in line
    assert "--split" not in line
    assert manifest.read_bytes() == before


def test_evaluate_keeps_its_advice(tmp_path: Path) -> None:
    source = open_source(_train_only(tmp_path / "train_only.npz"))
    with pytest.raises(ConfigurationError, match=r"choose another --split or 'all'"):
        select_split(source, "val", {"seed": 0})

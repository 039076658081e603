"""An experiment whose first run is refused leaves no experiment folder behind (QA round 27).

`radlens experiment filters --data labels.csv --out runs/exp ...` on a CSV of 100 NIH chest
X-rays stopped at once with "too small to calibrate: the validation split has 7 image(s) of
'Pneumonía'" (no run trained), yet left runs/exp/experiment.json; the same command with
``min_calibration_positives: 2`` in its --config then stopped with "--out directory is not
empty". A refusal before any run now removes what the experiment wrote; an experiment that
trained a run before one was refused keeps its folder (its finished runs are results).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.training.experiment import run_filter_experiment
from tests.training.conftest import tiny_config
from tests.training.data_fixtures import png_folder


def _data(tmp_path: Path) -> Path:
    return png_folder(tmp_path / "ds", n_per_class=10, seed=27)


def test_a_first_run_refused_leaves_no_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = _data(tmp_path), tmp_path / "exp"
    args = ["experiment", "filters", "--data", str(data), "--arch", "simple_cnn"]
    args += ["--image-size", "32", "--epochs", "1", "--seeds", "1", "--choices", "none"]
    args += ["--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert main(args) == 2  # train's default of 10 validation positives: 10 images a class
    assert "too small to calibrate" in capsys.readouterr().err
    assert not out.exists()
    assert main(args) == 2  # the same --out again: refused for the data, not "not empty"
    assert "not empty" not in capsys.readouterr().err


def test_an_out_folder_given_empty_is_kept_empty(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    out.mkdir()

    def refuse(config: Any, verbose: int = 0) -> Any:
        raise ConfigurationError("too small to calibrate")

    base = tiny_config(_data(tmp_path), tmp_path)
    with pytest.raises(ConfigurationError, match="too small"):
        run_filter_experiment(base, choices=["none"], seeds=1, out_dir=out, train_fn=refuse)
    assert out.is_dir() and not any(out.iterdir())


def test_runs_that_finished_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    calls: list[str] = []

    def second_refused(config: Any, verbose: int = 0) -> Any:
        calls.append(config.name)
        if len(calls) == 2:
            raise ConfigurationError("refused")
        run_dir = Path(config.runs_dir) / config.name
        run_dir.mkdir(parents=True)
        return SimpleNamespace(
            val_metrics={"auc": 0.5}, run_dir=run_dir, best_epoch=None, seconds=1.0, model_ref="m:1"
        )

    base = tiny_config(_data(tmp_path), tmp_path)
    with pytest.raises(ConfigurationError, match="refused"):
        run_filter_experiment(
            base, choices=["none", "blur"], seeds=1, out_dir=out, train_fn=second_refused
        )
    assert (out / "experiment.json").is_file() and any((out / "runs").iterdir())

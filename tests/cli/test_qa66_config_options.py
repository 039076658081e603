"""QA round 66: every `radlens train` refusal of a config value names the option typed when
it is spelled otherwise than the field (QA 57 did --epochs, --learning-rate, --patience,
--arch; --val-fraction 1.5 was still refused as "val_fraction must be ...; received 1.5",
--min-calibration-positives 0 as "min_calibration_positives must be 1 or more")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from radlens.cli.main import app, main
from radlens.training.config import _OPTION_OF_FIELD


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("radlens: error: ")
    return err.strip()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--val-fraction", "1.5"],
            "val_fraction must be from 0 up to (not including) 1; "
            "received 1.5 (option --val-fraction)",
        ),
        (["--test-fraction", "-0.1"], "received -0.1 (option --test-fraction)"),
        (
            ["--min-calibration-positives", "0"],
            "min_calibration_positives must be 1 or more; "
            "received 0 (option --min-calibration-positives)",
        ),
        (["--image-size", "16"], "received 16 (option --image-size)"),
        (["--batch-size", "0"], "received 0 (option --batch-size)"),
        (["--unfreeze-blocks", "20"], "received 20 (option --unfreeze-blocks)"),
        (["--class-weights", "x"], "received 'x' (option --class-weights)"),
        (["--lr-schedule", "x"], "received 'x' (option --lr-schedule)"),
        (["--weight-decay", "2"], "received 2.0 (option --weight-decay)"),
        (["--label-smoothing", "0.7"], "received 0.7 (option --label-smoothing)"),
        (["--ood-method", "x"], "received 'x' (option --ood-method)"),
        (["--threshold-rule", "x"], "received 'x' (option --threshold-rule)"),
        (["--mixed-precision", "x"], "received 'x' (option --mixed-precision)"),
        (["--positive-weights", "x"], "received 'x' (option --positive-weights)"),
        (["--series-aggregation", "x"], "received 'x' (option --series-aggregation)"),
        (["--select-by", "x"], "received 'x' (option --select-by)"),
        (
            ["--val-fraction", "0.6", "--test-fraction", "0.5"],
            "val_fraction=0.6, test_fraction=0.5 (options --val-fraction, --test-fraction)",
        ),
        (["--arch", "simple_cnn", "--weights", "imagenet"], "'simple_cnn' (option --arch)"),
        (["--center"], "architecture='resnet50' (option --arch)"),
    ],
)
def test_a_bad_value_names_its_option(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--data", str(tmp_path), *args]) == 2
    assert says in _error_line(capsys)


def test_every_named_option_is_one_of_train() -> None:
    """The map names options `radlens train` has (a renamed option would be named wrongly)."""
    command: Any = typer.main.get_command(app)
    train = command.commands["train"]
    options = {opt for param in train.params for opt in param.opts}
    assert set(_OPTION_OF_FIELD.values()) <= options
    for field in ("val_fraction", "test_fraction", "min_calibration_positives"):
        assert _OPTION_OF_FIELD[field] == "--" + field.replace("_", "-")

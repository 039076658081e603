"""A refused epoch count or learning rate names the option typed and what to do, not only the
config field (QA round 57: `--epochs 0` on ResNet50 from scratch was refused quoting
`epochs_finetune=5`, which does not apply to it, and `--epochs -1` as `epochs_head`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("radlens: error: ")
    return err.strip()


@pytest.mark.parametrize("arch", ["resnet50", "simple_cnn"])
def test_no_epoch_from_scratch_says_to_set_epochs(
    arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--data", str(tmp_path), "--arch", arch, "--epochs", "0"]) == 2
    line = _error_line(capsys)
    assert "the run would train for no epoch" in line
    assert "--finetune-epochs, applies to a pretrained ResNet50 only" in line
    assert line.endswith("set epochs_head (--epochs) to 1 or more")


def test_no_epoch_in_either_phase_says_both_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "start.weights.h5"
    weights.write_bytes(b"")  # only its name and presence are checked before the data
    argv = ["train", "--data", str(tmp_path), "--weights", str(weights)]
    assert main([*argv, "--epochs", "0", "--finetune-epochs", "0"]) == 2
    line = _error_line(capsys)
    assert "applies to a pretrained" not in line
    assert line.endswith(
        "set epochs_head (--epochs) or epochs_finetune (--finetune-epochs) to 1 or more"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--epochs", "-1"], "epochs_head must be 0 or more; received -1 (option --epochs)"),
        (["--finetune-epochs", "-2"], "received -2 (option --finetune-epochs)"),
        (["--learning-rate", "2"], "received 2.0 (option --learning-rate)"),
        (["--finetune-learning-rate", "0"], "received 0.0 (option --finetune-learning-rate)"),
        (["--patience", "-1"], "received -1 (option --patience)"),
        (["--arch", "vgg16"], "received 'vgg16' (option --arch)"),
    ],
)
def test_a_bad_value_names_its_option(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--data", str(tmp_path), *args]) == 2
    assert says in _error_line(capsys)

"""`radlens train` and `radlens evaluate`: output, and exit 2 with one line on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from radlens.cli.main import main
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def _patient_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed patient-hash key, so tests never create the per-user key file."""
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.training.data.demo import write_demo_dataset

    out = tmp_path_factory.mktemp("cli-demo") / "data"
    write_demo_dataset(out, n_per_class=12, size=32, seed=1, val_fraction=0.15, test_fraction=0.15)
    return out


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("radlens: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--arch", "vgg16"], "architecture must be one of resnet50, simple_cnn; received 'vgg16'"),
        (["--filters", "sobel_h,emboss"], "unknown filter(s) 'emboss'"),
        (["--epochs", "-1"], "epochs_head must be 0 or more; received -1"),
        (["--weights", "w.bin"], "received 'w.bin'"),
        (["--class-weights", "balanced"], "class_weights must be 'auto' or 'none'"),
        (["--intended-modalities", "CR,XR"], "intended use: 'XR' is not a known modality"),
        (["--intended-body-parts", "banana"], "'banana' is not a known body part"),
        (["--ood-method", "forest"], "ood_method must be one of mahalanobis, knn, none"),
        (["--center"], "center applies to simple_cnn only"),
        (["--arch", "resnet50", "--batchnorm"], "batchnorm applies to simple_cnn only"),
    ],
)
def test_bad_options_exit_2(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    code = main(["train", "--data", str(demo), "--runs-dir", str(tmp_path), *args])
    assert code == 2
    assert match in _one_error_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())  # stopped before creating a run


def test_imagenet_weights_offline_exit_2_before_a_run_folder_exists(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA round 19: on a machine without internet `--weights imagenet` was an "internal
    error: Exception: URL fetch failure ... please report it" (exit 1) and left its run folder
    behind. Keras's download is replaced by the failure it raises offline (nothing is
    fetched: tests never download)."""
    from keras.src.utils import file_utils

    def offline(*args: Any, **kwargs: Any) -> str:
        raise Exception(  # what keras.utils.get_file raises when the URL cannot be reached
            "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
            "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- [Errno -3] "
            "Temporary failure in name resolution"
        )

    monkeypatch.setattr(file_utils, "get_file", offline)
    runs = tmp_path / "runs"
    args = ["--arch", "resnet50", "--image-size", "32", "--weights", "imagenet", "--epochs", "1"]
    code = main(["train", "--data", str(demo), "--runs-dir", str(runs), *args])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert "the ImageNet ResNet50 weights could not be downloaded" in line
    assert "--weights ./resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in line
    assert "Temporary failure in name resolution" in line
    assert not runs.exists() or not any(runs.iterdir())  # no run folder left behind


def test_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--arch", "simple_cnn"]) == 2
    assert "no training data" in _one_error_line(capsys.readouterr().err)
    assert main(["train", "--data", str(tmp_path / "absent")]) == 2
    assert "data path does not exist" in _one_error_line(capsys.readouterr().err)


def test_single_class_and_empty_class_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.training.data_fixtures import png_folder

    one = png_folder(tmp_path / "one", classes=("normal",))
    args = ["--runs-dir", str(tmp_path / "runs"), "--arch", "simple_cnn", "--image-size", "32"]
    assert main(["train", "--data", str(one), *args]) == 2
    assert "at least 2 class" in _one_error_line(capsys.readouterr().err)
    empty = png_folder(tmp_path / "empty", classes=("normal", "abnormal"))
    for f in (empty / "abnormal").rglob("*.png"):
        f.unlink()
    assert main(["train", "--data", str(empty), *args]) == 2
    assert "no readable" in _one_error_line(capsys.readouterr().err)


def test_missing_label_column_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "labels.csv").write_text("path,diagnosis\na.png,normal\n")
    assert main(["train", "--data", str(tmp_path / "labels.csv")]) == 2
    assert "label" in _one_error_line(capsys.readouterr().err)


def test_bad_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("architecture: resnet50\nbatch_size: many\n")
    assert main(["train", "--config", str(config), "--data", str(tmp_path)]) == 2
    assert "batch_size must be an integer; received 'many'" in _one_error_line(
        capsys.readouterr().err
    )


def test_resume_with_other_options_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", str(tmp_path), "--arch", "resnet50"]) == 2
    assert "do not combine it" in _one_error_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a radlens run directory" in _one_error_line(capsys.readouterr().err)


def test_evaluate_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--data", str(tmp_path / "absent")]) == 2
    assert "data path does not exist" in _one_error_line(capsys.readouterr().err)
    args = ["evaluate", "--data", str(tmp_path), "--store", str(tmp_path / "store")]
    assert main([*args, "--model", "nothing:1"]) == 2
    assert "No such model" in _one_error_line(capsys.readouterr().err)
    assert main([*args, "--split", "holdout"]) == 2
    assert "--split must be" in _one_error_line(capsys.readouterr().err)


def test_train_then_evaluate(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    broken = data / "abnormal" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with (data / "labels.csv").open("a") as f:
        f.write("abnormal/broken.png,abnormal,DEMO-9999,train,CR\n")
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--arch",
            "simple_cnn",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--name",
            "cli-tiny",
            "--store",
            str(store),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--patience",
            "0",
            "--min-calibration-positives",
            "1",  # the demo's validation holds 2 positives
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "run directory: " + str(tmp_path / "runs" / "cli-tiny-") in out
    assert "model: cli-tiny:1" in out
    assert "val: auc=" in out and "threshold=" in out
    assert "reported figures: held-out test split (no selection step saw it): auc=" in out
    assert "split: given (split column / npz keys); leakage check passed" in out
    assert "calibration: temperature " in out and "operating point youden: threshold=" in out
    # two validation positives choose no sensitivity target (training.metrics)
    assert "operating point sens95: not computed (2 validation positives, at least 20" in out
    assert "skipped files: 1" in out
    assert f"skipped {broken}: " in out  # path and reason

    code = main(
        [
            "evaluate",
            "--model",
            "cli-tiny",
            "--data",
            str(demo),
            "--store",
            str(store),
            "--json",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["model"] == "cli-tiny:1" and metrics["split"] == "test"
    assert (tmp_path / "eval" / "roc_curve.png").is_file()


def test_resume_an_interrupted_run(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import keras

    from radlens.training.config import TrainConfig
    from radlens.training.run import train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            raise KeyboardInterrupt

    config = TrainConfig(
        data=str(demo),
        architecture="simple_cnn",
        image_size=32,
        epochs_head=2,
        batch_size=8,
        runs_dir=str(tmp_path / "runs"),
        store=str(tmp_path / "store"),
        name="cut",
        histogram_freq=0,
        tensorboard_samples=0,
        min_calibration_positives=1,
    )
    started: list[Path] = []
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt()], verbose=0, on_start=started.append)
    assert main(["train", "--resume", str(started[0])]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {started[0]}" in out and "model: cut:1" in out
    assert "best epoch: " in out and " of 2;" in out


def test_interrupted_training_prints_how_to_resume(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.training import run as training_run

    def interrupted(config: object, *, on_start: Any) -> None:
        on_start(tmp_path / "runs" / "x-1")
        raise KeyboardInterrupt

    monkeypatch.setattr(training_run, "train", interrupted)
    assert main(["train", "--data", str(demo), "--arch", "simple_cnn"]) == 130
    captured = capsys.readouterr()
    assert f"run directory: {tmp_path / 'runs' / 'x-1'}" in captured.out
    assert f"continue with: radlens train --resume {tmp_path / 'runs' / 'x-1'}" in captured.err


def test_cli_module_does_not_import_tensorflow() -> None:
    code = (
        "import sys, cli.training_cmds; "
        "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


def test_train_and_experiment_share_their_common_options() -> None:
    """Declared once (cli/training_options.py): same flags, types, defaults and help."""
    import typer.main

    from radlens.cli.main import app
    from radlens.cli.training_options import SHARED_FIELDS

    group = typer.main.get_command(app)
    train_cmd = group.commands["train"]  # type: ignore[attr-defined]
    filters_cmd = group.commands["experiment"].commands["filters"]  # type: ignore[attr-defined]

    def described(command: Any) -> dict[str, tuple[Any, ...]]:
        return {
            p.name: (tuple(p.opts), tuple(p.secondary_opts), str(p.bare_type), p.default, p.help)
            for p in command.params
        }

    train_opts, filters_opts = described(train_cmd), described(filters_cmd)
    for name in [*SHARED_FIELDS, "config", "json_out"]:
        assert train_opts[name] == filters_opts[name], name
        assert train_opts[name][4], f"{name} has no help"

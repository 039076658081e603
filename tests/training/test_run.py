"""train(): run directory, two-phase fine-tuning, best checkpoint, export, reload, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.models.registry import ModelRegistry
from radlens.training.config import TrainConfig
from radlens.training.data.sources import data_fingerprint, open_data
from radlens.training.metrics import apply_temperature
from radlens.training.run import RunResult, resume, train

from .conftest import tiny_config


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open() as f:
        return list(csv.DictReader(f))


class TestFinishedRun:
    def test_run_directory_layout(self, tiny_run: RunResult) -> None:
        run = tiny_run.run_dir
        assert run.name.startswith("tiny-")
        for name in ("config.json", "train.log", "history.csv", "state.json", "result.json"):
            assert (run / name).is_file(), name
        assert (run / "checkpoints" / "best.weights.h5").is_file()
        assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
        assert not (run / "backup" / "phase1").exists()  # removed when the phase finished
        config = json.loads((run / "config.json").read_text())
        assert config["architecture"] == "simple_cnn" and config["filters"] == ["sobel_h"]
        log = (run / "train.log").read_text()
        assert "epoch 1 (phase 1)" in log and "epoch 2 (phase 1)" in log and "exported tiny:" in log

    def test_tensorboard_holds_every_kind_of_summary(self, tiny_run: RunResult) -> None:
        from tests.training.test_tensorboard import read_events

        found = read_events(tiny_run.run_dir / "tensorboard")
        assert "validation/epoch_auc" in found["scalars"]
        assert "train/epoch_learning_rate" in found["scalars"]
        assert found["histograms"] and found["hparams"] and "graph" in found
        assert "validation/validation/roc_curve" in found["images"]  # tags of the validation run
        assert "validation/filters/sobel_h" in found["images"]
        assert "validation/calibration/reliability_test" in found["images"]

    def test_history_has_every_metric_per_epoch(self, tiny_run: RunResult) -> None:
        rows = _history(tiny_run.run_dir)
        assert [r["epoch"] for r in rows] == ["0", "1"]
        for key in ("loss", "accuracy", "auc", "precision", "sensitivity", "specificity"):
            assert key in rows[0] and f"val_{key}" in rows[0]

    def test_tensorboard_has_only_the_train_and_validation_sub_runs(
        self, tiny_run: RunResult
    ) -> None:
        # graph, images, figures, Grad-CAM, hparams and the calibration figure are tags in
        # them: each run adds two entries to TensorBoard's run selector
        tensorboard = tiny_run.run_dir / "tensorboard"
        folders = {
            p.parent.relative_to(tensorboard) for p in tensorboard.rglob("events.out.tfevents.*")
        }
        assert folders == {Path("train"), Path("validation")}

    def test_export_reloads_with_manifest(self, tiny_run: RunResult) -> None:
        loaded = ModelRegistry(tiny_run.store).load(tiny_run.model_ref)
        m = loaded.manifest
        assert m.ref == tiny_run.model_ref
        assert m.architecture == "simple_cnn"
        assert m.class_names == ["normal", "abnormal"]
        assert m.input_shape == [32, 32, 1]
        assert m.filters == ["sobel_h"]
        assert m.threshold == pytest.approx(tiny_run.threshold)
        assert 0.0 <= m.threshold <= 1.0
        # a tiny run's few validation positives choose no sens99 (training.metrics)
        assert set(m.metrics) == {
            "val",
            "test",
            "reported",
            "operating_points",
            "operating_points_not_computed",
            "drift_reference",
        }
        assert "sens99" in m.metrics["operating_points_not_computed"]
        assert m.calibration is not None and m.calibration["method"] == "temperature scaling"
        assert m.leakage_check == {"passed": True, "patients_in_two_splits": 0}
        assert m.data_split is not None and m.data_split["sizes"] == tiny_run.split_sizes
        # the drift check's reference: the validation split's score and input histograms
        reference = m.metrics["drift_reference"]
        assert reference["split_size"] == tiny_run.split_sizes["val"]
        assert set(reference["scores"]) == {"normal", "abnormal"}
        for fractions in reference["scores"].values():
            assert len(fractions) == 10 and sum(fractions) == pytest.approx(1.0, abs=1e-5)
        assert sum(reference["label_rates"].values()) == pytest.approx(1.0, abs=1e-5)
        assert set(reference["inputs"]) == {"mean_intensity", "std_intensity"}
        for key in ("auc", "accuracy", "sensitivity", "specificity", "precision"):
            assert key in m.metrics["val"]
        assert m.metrics["val"]["n"] == tiny_run.split_sizes["val"]
        assert m.training_config["image_size"] == 32
        assert m.data_fingerprint is not None and m.data_fingerprint.startswith("sha256:")
        # the reloaded model predicts what the run's best checkpoint predicts, calibrated:
        # softmax(logits / T) with the temperature fitted on validation folded into it
        x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
        best = keras.models.clone_model(loaded.model)
        best.load_weights(tiny_run.run_dir / "checkpoints" / "best.weights.h5")
        temperature = m.calibration["temperature"]
        np.testing.assert_allclose(
            loaded.model.predict(x, verbose=0),
            apply_temperature(best.predict(x, verbose=0), temperature),
            atol=1e-5,
        )

    def test_export_stores_an_openvino_runtime_with_parity_on_val(
        self, tiny_run: RunResult
    ) -> None:
        pytest.importorskip("openvino", reason="OpenVINO is a pinned dependency")
        registry = ModelRegistry(tiny_run.store)
        manifest = registry.verify(*registry.resolve(tiny_run.model_ref))
        entry = manifest.runtimes["openvino"]
        assert registry.runtime_files(manifest, "openvino")  # listed and matching their sha256
        fp32 = entry["parity"]["fp32"]
        assert fp32["n"] == tiny_run.split_sizes["val"]
        assert fp32["max_score_difference"] < 1e-4 and fp32["flips"] == 0
        assert "validation split" in fp32["data"]

    def test_no_openvino_option_stores_the_keras_model_only(
        self, tiny_demo_data: Path, tmp_path: Path
    ) -> None:
        from radlens.training.run import train

        result = train(
            tiny_config(
                tiny_demo_data,
                tmp_path,
                epochs_head=1,
                histogram_freq=0,  # the stored runtimes are checked, not TensorBoard
                tensorboard_samples=0,
                openvino=False,
            ),
            verbose=0,
        )
        registry = ModelRegistry(result.store)
        assert registry.verify(*registry.resolve(result.model_ref)).runtimes == {}

    def test_fingerprint_is_stable_and_data_sensitive(self, tiny_demo_data: Path) -> None:
        from radlens.training.data.sources import split_source

        source = open_data(tiny_demo_data)
        splits = split_source(source, val_fraction=0.15, test_fraction=0.15, seed=1)
        assert data_fingerprint(source, splits) == data_fingerprint(source, splits)
        changed = {**splits, "train": splits["train"][1:]}
        assert data_fingerprint(source, changed) != data_fingerprint(source, splits)


class _Recorder(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []
        self.backbone_trainable: list[int] = []
        self.bn_trainable: list[bool] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epochs.append(epoch)
        try:
            backbone = self.model.get_layer("backbone")
        except ValueError:
            return
        self.backbone_trainable.append(len(backbone.trainable_weights))
        self.bn_trainable.append(
            any(
                layer.trainable
                for layer in backbone.layers
                if isinstance(layer, keras.layers.BatchNormalization)
            )
        )


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption after epoch 1")


def test_resume_continues_the_epoch_counter(tiny_demo_data: Path, tmp_path: Path) -> None:
    # no OpenVINO conversion at export: resuming is what is checked (the export with it:
    # TestFinishedRun)
    config = tiny_config(tiny_demo_data, tmp_path, epochs_head=3, histogram_freq=0, openvino=False)
    started: list[Path] = []
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Interrupt()], verbose=0, on_start=started.append)
    run_dir = started[0]
    assert (run_dir / "backup" / "phase1" / "latest.weights.h5").is_file()
    assert not (run_dir / "result.json").exists()
    assert [r["epoch"] for r in _history(run_dir)] == ["0"]

    recorder = _Recorder()
    result = resume(run_dir, callbacks=[recorder], verbose=0)
    assert recorder.epochs == [1, 2]  # epoch 1 was not trained again
    assert [r["epoch"] for r in _history(run_dir)] == ["0", "1", "2"]
    assert result.run_dir == run_dir and result.epochs_run == 3
    assert (run_dir / "result.json").is_file()
    with pytest.raises(ConfigurationError, match="has finished already"):
        resume(run_dir)


def test_resume_refuses_data_that_now_splits_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The split was made afresh on resume and never compared with the run's splits.csv: a
    file added in between (or a radlens that splits differently) gave the second part another
    split, so it trained on images the first part held out as test."""
    from radlens.cli.main import main
    from tests.training.data_fixtures import png_folder, random_gray, write_png

    root = png_folder(tmp_path / "ds", n_per_class=16)
    config = tiny_config(root, tmp_path, epochs_head=2, histogram_freq=0, openvino=False)
    started: list[Path] = []
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Interrupt()], verbose=0, on_start=started.append)
    run_dir = started[0]
    added = write_png(root / "normal" / "added.png", random_gray(np.random.default_rng(9)))
    with pytest.raises(ConfigurationError, match=r"cannot resume .* 1 new, 0 gone; e\.g\. "):
        resume(run_dir, verbose=0)
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "changed since the run started" in err and "Traceback" not in err
    assert [r["epoch"] for r in _history(run_dir)] == ["0"]  # nothing trained meanwhile
    added.unlink()
    assert resume(run_dir, verbose=0).epochs_run == 2


def _pretrained_backbone_file(tmp_path: Path) -> Path:
    """A no-top ResNet50 weights file, as a user's local pretrained weights would be."""
    path = tmp_path / "backbone.weights.h5"
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    backbone.save_weights(path)
    return path


@pytest.mark.slow
def test_resnet50_two_phases_interrupted_in_phase_two_and_resumed(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        tiny_demo_data,
        tmp_path,
        architecture="resnet50",
        weights=str(_pretrained_backbone_file(tmp_path)),  # pretrained: two phases
        epochs_head=1,
        epochs_finetune=2,
        unfreeze_blocks=1,
        batch_size=16,
        learning_rate_finetune=1e-5,
        histogram_freq=0,
        tensorboard_samples=0,
        openvino=False,  # ResNet50's IR is converted and checked by the quickstart's demo model
        ood_method="none",  # and its OOD detector (12% of a ResNet50 test's CPU; unread here)
    )

    class InterruptInPhaseTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                raise KeyboardInterrupt("simulated interruption in phase 2")

    first = _Recorder()
    started: list[Path] = []
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[first, InterruptInPhaseTwo()], verbose=0, on_start=started.append)
    run_dir = started[0]
    assert first.epochs == [0, 1]  # phase 2 continues the epoch counter
    head_only, fine_tune = first.backbone_trainable
    assert head_only == 0 and fine_tune > 0  # backbone frozen, then its top block unfrozen
    assert first.bn_trainable == [False, False]  # BatchNorm stays frozen
    log = (run_dir / "train.log").read_text()
    assert "phase 1: epochs 1-1, learning rate 0.001" in log
    assert "phase 2: epochs 2-3, learning rate 1e-05" in log
    assert (run_dir / "checkpoints" / "phase1.weights.h5").is_file()
    assert json.loads((run_dir / "state.json").read_text())["phase_done"] == 1

    resumed = _Recorder()
    result = resume(run_dir, callbacks=[resumed], verbose=0)
    assert resumed.epochs == [2]  # phase 1 and the first phase-2 epoch are not repeated
    assert resumed.backbone_trainable == [fine_tune]  # resumed in the fine-tuning set-up
    assert [r["epoch"] for r in _history(run_dir)] == ["0", "1", "2"]
    assert result.epochs_run == 3
    assert ModelRegistry(result.store).load(result.model_ref).manifest.architecture == "resnet50"


@pytest.mark.slow
def test_resnet50_from_scratch_trains_everything_including_batchnorm(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        tiny_demo_data,
        tmp_path,
        architecture="resnet50",
        epochs_head=1,
        epochs_finetune=3,  # ignored from scratch: one phase of epochs_head epochs
        batch_size=16,
        histogram_freq=0,
        tensorboard_samples=0,
        openvino=False,  # as above
        ood_method="none",  # as above
    )
    recorder = _Recorder()
    result = train(config, callbacks=[recorder], verbose=0)
    assert recorder.epochs == [0] and result.epochs_run == 1
    assert recorder.bn_trainable == [True]  # BatchNorm learns its statistics
    log = (result.run_dir / "train.log").read_text()
    assert "phase 1: epochs 1-1" in log and "phase 2" not in log
    backbone = ModelRegistry(result.store).load(result.model_ref).model.get_layer("backbone")
    bn = backbone.get_layer("conv1_bn")
    # a frozen BN keeps its initial moving statistics (mean 0, variance 1); a trained one moves
    assert not np.allclose(np.asarray(bn.moving_mean), 0.0)
    assert not np.allclose(np.asarray(bn.moving_variance), 1.0)


def test_centred_batchnorm_simple_cnn_is_trained_exported_and_resumable(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    """``center``/``batchnorm`` reach the network that is trained, exported and served."""
    config = tiny_config(tiny_demo_data, tmp_path, center=True, batchnorm=True, histogram_freq=0)
    result = train(config, verbose=0)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert (saved["center"], saved["batchnorm"]) == (True, True)  # what --resume reads back
    from radlens.training.run import _hparams  # the TensorBoard hparams dashboard's columns

    assert (_hparams(config)["center"], _hparams(config)["batchnorm"]) == (True, True)
    loaded = ModelRegistry(result.store).load(result.model_ref)
    network = loaded.model
    names = [layer.name for layer in network.layers]
    assert names.index("center") < names.index("conv1") < names.index("bn1")
    # served with the moving statistics it learnt, and blind to a uniform exposure change
    bn = network.get_layer("bn1")
    assert not np.allclose(np.asarray(bn.moving_mean), 0.0)
    x = np.random.default_rng(0).uniform(0.2, 0.7, (4, 32, 32, 1)).astype("float32")
    plain = np.asarray(network.predict(x, verbose=0))
    brighter = np.asarray(network.predict(x + 0.2, verbose=0))
    np.testing.assert_allclose(brighter, plain, atol=1e-5)
    if "openvino" in loaded.manifest.runtimes:  # OpenVINO installed: the IR computes the same
        fp32 = loaded.manifest.runtimes["openvino"]["parity"]["fp32"]
        assert fp32["max_score_difference"] < 1e-4 and fp32["flips"] == 0


def test_multiclass_run_has_per_class_metrics_and_no_threshold(tmp_path: Path) -> None:
    from tests.training.data_fixtures import png_folder

    data = png_folder(tmp_path / "d", n_per_class=8, classes=("a", "b", "c"))
    config = tiny_config(data, tmp_path, epochs_head=1, val_fraction=0.25, test_fraction=0.0)
    result = train(config, verbose=0)
    assert result.threshold is None and result.test_metrics is None
    assert set(result.val_metrics["per_class"]) == {"a", "b", "c"}
    assert np.asarray(result.val_metrics["confusion_matrix"]).shape == (3, 3)
    manifest = ModelRegistry(result.store).load(result.model_ref).manifest
    assert manifest.threshold is None and manifest.class_names == ["a", "b", "c"]
    assert set(manifest.metrics) == {"val", "reported", "operating_points", "drift_reference"}
    assert manifest.calibration is not None and manifest.data_split is not None
    assert set(manifest.metrics["drift_reference"]["scores"]) == {"a", "b", "c"}
    # no test split: the reported figures are validation's, labelled optimistic
    assert manifest.metrics["reported"]["split"] == "val"
    assert "optimistic (validation-selected)" in manifest.metrics["reported"]["label"]
    assert manifest.metrics["operating_points"] == {}  # no threshold without two classes


def test_resume_needs_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a radlens run directory"):
        resume(tmp_path)


def test_unreadable_files_are_skipped_and_counted(tiny_demo_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "folder"
    for class_dir in ("normal", "abnormal"):
        shutil.copytree(tiny_demo_data / class_dir, data / class_dir)
    broken = data / "abnormal" / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"not really a dicom file")
    config = tiny_config(
        data, tmp_path, epochs_head=1, histogram_freq=0, tensorboard_samples=0, openvino=False
    )
    result = train(config, verbose=0)
    assert [s.path for s in result.skipped] == [str(broken)]
    assert "broken.dcm" in (result.run_dir / "train.log").read_text()
    assert json.loads((result.run_dir / "result.json").read_text())["skipped_files"] == [
        str(result.skipped[0])
    ]


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ({"normal": 6}, "at least 2 class"),
        ({"normal": 6, "abnormal": 0}, "no readable"),
    ],
)
def test_bad_data_stops_before_training(tmp_path: Path, layout: dict[str, int], match: str) -> None:
    from tests.training.data_fixtures import random_gray, write_png

    rng = np.random.default_rng(0)
    for name, n in layout.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(n):
            write_png(tmp_path / "data" / name / f"{i}.png", random_gray(rng))
    with pytest.raises(ConfigurationError, match=match):
        train(tiny_config(tmp_path / "data", tmp_path), verbose=0)
    assert not (tmp_path / "runs").exists()  # nothing started


def test_validation_needs_two_classes(tmp_path: Path) -> None:
    from tests.training.data_fixtures import random_gray, write_csv, write_png

    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        label = "abnormal" if i % 2 else "normal"
        path = write_png(tmp_path / "d" / f"{i}.png", random_gray(rng, bright=i % 2 == 1))
        rows.append({"path": path.name, "label": label, "split": "val" if i == 0 else "train"})
    write_csv(tmp_path / "d" / "labels.csv", rows)
    with pytest.raises(ConfigurationError, match="validation split needs images of at least 2"):
        train(tiny_config(tmp_path / "d", tmp_path), verbose=0)


def test_no_data_path() -> None:
    with pytest.raises(ConfigurationError, match="no training data"):
        train(TrainConfig(), verbose=0)


def test_class_weights_balance_the_classes() -> None:
    from radlens.training.data.sources import Example
    from radlens.training.phases import class_weights

    examples = [Example(f"k{i}", 0) for i in range(30)] + [Example(f"p{i}", 1) for i in range(10)]
    weights = class_weights(TrainConfig(), examples, 2)
    assert weights == pytest.approx({0: 40 / 60, 1: 40 / 20})
    assert class_weights(TrainConfig(class_weights="none"), examples, 2) == {}


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly(tiny_demo_data: Path, tmp_path: Path) -> None:
    # op determinism is process-wide and cannot be turned off: use a child process
    script = f"""
import csv, sys
from pathlib import Path
from tests.training.conftest import tiny_config
from radlens.training.run import train
losses = []
for i in range(2):
    cfg = tiny_config(Path({str(tiny_demo_data)!r}), Path({str(tmp_path)!r}) / str(i),
                      deterministic=True, histogram_freq=0, tensorboard_samples=0,
                      openvino=False)  # the export comes after the history compared
    result = train(cfg, verbose=0)
    with (result.run_dir / "history.csv").open() as f:
        losses.append([row["loss"] + "/" + row["val_auc"] for row in csv.DictReader(f)])
print(losses)
sys.exit(0 if losses[0] == losses[1] else 1)
"""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

"""TrainConfig: defaults, file loading, CLI overrides and one-line validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.config import TrainConfig, read_config_file


def test_defaults_are_valid_and_two_phase_only_for_pretrained_resnet(tmp_path: Path) -> None:
    cfg = TrainConfig()
    assert cfg.architecture == "resnet50" and cfg.weights is None
    assert not cfg.two_phase  # from scratch: one phase, BatchNorm trained
    assert cfg.input_shape == (224, 224, 1)
    assert TrainConfig(weights="imagenet").two_phase
    (tmp_path / "w.weights.h5").write_bytes(b"")
    assert TrainConfig(weights=str(tmp_path / "w.weights.h5")).two_phase
    assert not TrainConfig(architecture="simple_cnn").two_phase
    assert (cfg.strategy, cfg.mixed_precision, cfg.threshold_rule) == ("auto", "off", "youden")
    assert (cfg.lr_schedule, cfg.weight_decay, cfg.label_smoothing) == ("constant", 0.0, 0.0)


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "architecture: simple_cnn\nimage_size: 64\nfilters: [sobel_h, blur]\nweights: null\n"
        "epochs_head: 2\ndeterministic: true\n"
    )
    cfg = TrainConfig.load(path, {"image_size": 32, "seed": None, "name": "demo-1"})
    assert cfg.architecture == "simple_cnn"
    assert cfg.filters == ("sobel_h", "blur")
    assert cfg.image_size == 32  # flag wins over file
    assert cfg.seed == TrainConfig().seed  # None means "flag not given"
    assert cfg.name == "demo-1"
    assert cfg.deterministic is True


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(architecture="simple_cnn", filters=("outline",), image_size=48, data="x")
    path = tmp_path / "config.json"
    cfg.write_json(path)
    assert json.loads(path.read_text())["filters"] == ["outline"]
    assert TrainConfig.load(path) == cfg


def test_center_and_batchnorm_are_simple_cnn_options(tmp_path: Path) -> None:
    assert (TrainConfig().center, TrainConfig().batchnorm) == (False, False)
    path = tmp_path / "c.yaml"
    path.write_text("architecture: simple_cnn\ncenter: true\n")
    cfg = TrainConfig.load(path, {"batchnorm": True, "center": None})
    assert (cfg.center, cfg.batchnorm) == (True, True)
    cfg.write_json(tmp_path / "config.json")  # what --resume reads back
    assert TrainConfig.load(tmp_path / "config.json") == cfg


def test_filters_from_comma_string() -> None:
    cfg = TrainConfig.from_dict({"filters": "sobel_h, sobel_v"})
    assert cfg.filters == ("sobel_h", "sobel_v")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"architecture": "vgg16"}, r"architecture must be one of .*received 'vgg16'"),
        ({"filters": ["sobel_h", "emboss"]}, r"unknown filter\(s\) 'emboss'"),
        ({"epochs_head": -1}, r"epochs_head must be 0 or more; received -1"),
        ({"epochs_head": "many"}, r"epochs_head must be an integer; received 'many'"),
        ({"batch_size": 0}, r"batch_size must be a positive integer; received 0"),
        ({"image_size": 8}, r"image_size must be .*received 8"),
        ({"learning_rate_head": 2.0}, r"learning_rate_head .*received 2.0"),
        ({"dropout": 1.0}, r"dropout .*received 1.0"),
        ({"class_weights": "balanced"}, r"class_weights must be 'auto' or 'none'"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, r"val_fraction \+ test_fraction"),
        ({"weights": "weights.bin"}, r"weights must be .*received 'weights.bin'"),
        (
            {"architecture": "simple_cnn", "weights": "imagenet"},
            r"weights apply to resnet50 only",
        ),
        ({"epochs_head": 0, "epochs_finetune": 0}, r"no epoch"),
        ({"epochs_head": 0, "epochs_finetune": 3}, r"no epoch"),  # from scratch: one phase
        ({"strategy": "horovod"}, r"strategy must be one of auto, .*received 'horovod'"),
        ({"mixed_precision": "bf16"}, r"mixed_precision must be one of .*received 'bf16'"),
        ({"threshold_rule": "f1"}, r"threshold_rule must be one of youden, balanced"),
        ({"lr_schedule": "step"}, r"lr_schedule must be one of constant, cosine"),
        ({"weight_decay": -0.1}, r"weight_decay must be .*received -0.1"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be .*received 0.5"),
        ({"name": "bad name/"}, r"name must be .*received 'bad name/'"),
        ({"deterministic": "perhaps"}, r"deterministic must be true or false"),
        ({"colour": "blue"}, r"unknown option\(s\) in config: colour"),
        ({"center": True}, r"center applies to simple_cnn only .*'resnet50'"),
        ({"batchnorm": "yes"}, r"batchnorm applies to simple_cnn only .*'resnet50'"),
        ({"architecture": "simple_cnn", "center": "maybe"}, r"center must be true or false"),
    ],
)
def test_bad_values_raise_one_line_quoting_the_value(values: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        TrainConfig.from_dict(values)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("Invalid configuration: ")


def test_weights_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"weights file not found; .*'/nope/w.h5'"):
        TrainConfig(weights="/nope/w.h5")
    (tmp_path / "w.h5").write_bytes(b"")
    assert TrainConfig(weights=str(tmp_path / "w.h5")).weights == str(tmp_path / "w.h5")


def test_simple_cnn_needs_head_epochs_only() -> None:
    with pytest.raises(ConfigurationError, match="no epoch"):
        TrainConfig(architecture="simple_cnn", epochs_head=0, epochs_finetune=3)


def test_unknown_window_preset() -> None:
    pytest.importorskip(
        "radlens.models.preprocessing", reason="radlens.models.preprocessing not yet present"
    )
    with pytest.raises(ConfigurationError, match=r"window must be one of .*received 'liver'"):
        TrainConfig(window="liver")


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("c.yaml", "a: [1, 2", "could not be parsed"),
        ("c.json", "{nope", "not valid JSON"),
        ("c.yaml", "- 1\n- 2\n", "must hold a mapping"),
        ("c.toml", "a = 1", "must end in .yaml"),
    ],
)
def test_bad_config_files(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=match):
        read_config_file(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="config file not found"):
        TrainConfig.load(tmp_path / "nope.yaml")


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert TrainConfig.load(path) == TrainConfig()


def test_unfreeze_blocks_all_or_count() -> None:
    assert TrainConfig.from_dict({"unfreeze_blocks": "all"}).unfreeze_blocks == "all"
    assert TrainConfig.from_dict({"unfreeze_blocks": "4"}).unfreeze_blocks == 4
    with pytest.raises(ConfigurationError, match=r"unfreeze_blocks .*received 17"):
        TrainConfig(unfreeze_blocks=17)


def test_demo_config_is_the_documented_demo_model() -> None:
    from tests.conftest import REPO_ROOT

    cfg = TrainConfig.load(REPO_ROOT / "training" / "configs" / "demo.yaml")
    assert cfg.architecture == "resnet50" and cfg.weights is None and cfg.image_size == 64
    assert not cfg.two_phase and cfg.epochs_head >= 1  # from scratch: one phase
    assert cfg.class_names == ("normal", "abnormal") and cfg.name == "demo"

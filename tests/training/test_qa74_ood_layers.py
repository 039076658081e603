"""Training and `radlens models ood` attach the OOD detector on layers (QA 74): a ResNet50
reads its first and last stage by default (models.ood.default_layers) when its validation
split is large enough for their Bonferroni split, simple_cnn and ensembles their last layer;
`--layers` names others, checked against the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.registry import ModelRegistry
from tests.app.conftest import CLASS_NAMES, save_tiny_model
from tests.cli.test_models_cmds import one_error_line
from tests.models.test_qa74_ood_layers import tiny_resnet


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.training.data.demo import write_demo_dataset

    out = tmp_path_factory.mktemp("qa74-demo") / "data"
    write_demo_dataset(out, n_per_class=12, size=32, seed=0, val_fraction=0.15, test_fraction=0.15)
    return out


def save_resnet(store: Path) -> ModelRegistry:
    registry = ModelRegistry(store)
    registry.save(
        tiny_resnet(32),
        name="res",
        architecture="resnet50",
        class_names=CLASS_NAMES,
        threshold=0.5,
        window=None,
        filters=[],
        metrics={},
        training_config={"note": "tests/training/test_qa74_ood_layers.py"},
        data_fingerprint=None,
    )
    return registry


def test_attach_detector_reads_a_resnets_first_and_last_stage(tmp_path: Path) -> None:
    from radlens.models.ood import RESNET_LAYERS, LayeredOodDetector, OodDetector, load_detector
    from radlens.training.ood import attach_detector

    registry = save_resnet(tmp_path / "store")
    model = registry.load("res:1").model
    rng = np.random.default_rng(0)
    train = (rng.random((30, 32, 32, 1), dtype=np.float32), np.arange(30) % 2)
    val = rng.random((20, 32, 32, 1), dtype=np.float32)
    # 20 validation images: two layers' Bonferroni split at 99% could flag 2/21 > 1%, so the
    # default stays on the last stage; at 90% (2/21 <= 10%) it reads both
    manifest = attach_detector(registry, "res:1", model, train, val, method="mahalanobis")
    assert manifest.ood is not None and "layers" not in manifest.ood
    assert manifest.ood["dimension"] == 6
    manifest = attach_detector(
        registry, "res:1", model, train, val, method="mahalanobis", quantile=0.9
    )
    assert manifest.ood is not None and manifest.ood["layers"] == list(RESNET_LAYERS)
    assert manifest.ood["expected_flag_rate"] == pytest.approx(2 / 21)  # the union bound
    assert manifest.ood["layer_dimensions"] == [4, 6] and manifest.ood["dimension"] == 10
    assert "Bonferroni" in manifest.ood["calibration"]
    detector = load_detector(registry.ood_detector_file(registry.verify("res", 1)))  # type: ignore[arg-type]
    assert isinstance(detector, LayeredOodDetector) and detector.layers == RESNET_LAYERS
    # layers=None: the detector of before, on the last stage
    manifest = attach_detector(registry, "res:1", model, train, val, method="knn", layers=None)
    assert manifest.ood is not None and "layers" not in manifest.ood
    detector = load_detector(registry.ood_detector_file(registry.verify("res", 1)))  # type: ignore[arg-type]
    assert isinstance(detector, OodDetector) and detector.dimension == 6


def test_models_ood_refits_with_layers_and_checks_them(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    registry = save_resnet(store)
    args = ["models", "ood", "res", "--data", str(demo_data), "--store", str(store)]
    assert main([*args, "--layers", "conv2_block3_out,conv4_block6_out"]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert "no layer 'conv4_block6_out'" in line
    assert "valid layers are: backbone/conv2_block3_out, backbone/conv5_block3_out" in line
    assert registry.verify("res", 1).ood is None

    assert main([*args, "--json"]) == 0  # too few validation images for the default pair
    assert "layers" not in json.loads(capsys.readouterr().out)
    assert main([*args, "--layers", "conv2_block3_out,conv5_block3_out"]) == 0
    out = capsys.readouterr().out
    assert (  # worded as `radlens models show` (QA 92)
        "\nOOD layers: backbone/conv2_block3_out, backbone/conv5_block3_out, one detector each "
        "at the 99.50% level; an image is flagged when any layer flags it\n"
    ) in out
    assert main([*args, "--layers", "conv5_block3_out", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["layers"] == ["backbone/conv5_block3_out"] and entry["dimension"] == 6
    assert main([*args, "--layers", "last", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert "layers" not in entry and entry["dimension"] == 6


def test_simple_cnn_keeps_its_last_layer(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    save_tiny_model(store)
    args = ["models", "ood", "tiny", "--data", str(demo_data), "--store", str(store), "--json"]
    assert main(args) == 0
    entry = json.loads(capsys.readouterr().out)
    assert "layers" not in entry and entry["dimension"] == 64
    assert main([*args, "--layers", "conv3,conv4"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["layers"] == ["conv3", "conv4"]

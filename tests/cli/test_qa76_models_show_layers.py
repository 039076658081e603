"""QA 76: ``radlens models show`` says which layers the model's OOD detector reads: a
models.ood.LayeredOodDetector's ``ood.layers`` (in the manifest since QA 74, printed by
``radlens models ood`` but not by ``show``), or the last convolutional layer for a detector
without them. ``--json`` keeps them in the manifest's ``ood``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.registry import ModelRegistry
from tests.training.test_qa74_ood_layers import save_resnet

LAYERS = ["backbone/conv2_block3_out", "backbone/conv5_block3_out"]


def _with_detector(store: Path, layers: list[str] | None) -> ModelRegistry:
    from radlens.training.ood import attach_detector

    registry = save_resnet(store)
    model = registry.load("res:1").model
    rng = np.random.default_rng(76)
    train = (rng.random((30, 32, 32, 1), dtype=np.float32), np.arange(30) % 2)
    val = rng.random((20, 32, 32, 1), dtype=np.float32)
    attach_detector(registry, "res:1", model, train, val, method="mahalanobis", layers=layers)
    return registry


def test_show_names_the_layers_of_a_layered_detector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    _with_detector(store, LAYERS)
    assert main(["models", "show", "res:1", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("OOD layers: ")]
    assert line == (
        "OOD layers: backbone/conv2_block3_out, backbone/conv5_block3_out, one detector each "
        "at the 99.50% level; an image is flagged when any layer flags it"
    )
    assert out.index("OOD detector: mahalanobis") < out.index("OOD layers: ")

    assert main(["models", "show", "res:1", "--store", str(store), "--json"]) == 0
    ood = json.loads(capsys.readouterr().out)["ood"]
    assert ood["layers"] == LAYERS and ood["layer_quantile"] == pytest.approx(0.995)


def test_show_says_a_detector_without_layers_reads_the_last_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    _with_detector(store, None)
    assert main(["models", "show", "res", "--store", str(store)]) == 0
    assert "OOD layers: the last convolutional layer\n" in capsys.readouterr().out


def test_the_ensemble_and_no_detector_wordings() -> None:
    from radlens.cli.models_cmds import ood_layers

    assert ood_layers({"method": "ensemble", "members": 3}) == (
        "each member's last convolutional layer"
    )
    assert ood_layers({"method": "knn", "layers": ["conv4"]}).startswith(
        "conv4, one detector each at its own level;"
    )

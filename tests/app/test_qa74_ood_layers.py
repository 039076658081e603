"""The service scores a layered OOD detector (models.ood.LayeredOodDetector, QA 74) on the
layers it records: app/predictor.py builds its feature model from the detector's layers, in
the TensorFlow graph and beside an OpenVINO runtime (whose IR returns only the class scores:
the features come from the Keras model in a second call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.app.device import DeviceInfo
from radlens.app.predictor import Predictor
from radlens.models.registry import ModelRegistry
from radlens.models.runtime import openvino_version
from tests.training.test_qa74_ood_layers import save_resnet

CPU = DeviceInfo("/CPU:0", "cpu", False)


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, Any, np.ndarray]:
    from radlens.models.ood import RESNET_LAYERS, load_detector
    from radlens.training.ood import attach_detector

    registry = save_resnet(tmp_path_factory.mktemp("qa74-store"))
    model = registry.load("res:1").model
    rng = np.random.default_rng(1)
    train = (rng.random((30, 32, 32, 1), dtype=np.float32), np.arange(30) % 2)
    attach_detector(
        registry,
        "res:1",
        model,
        train,
        rng.random((20, 32, 32, 1), np.float32),
        method="mahalanobis",
        layers=RESNET_LAYERS,
    )
    detector = load_detector(registry.ood_detector_file(registry.verify("res", 1)))  # type: ignore[arg-type]
    queries = np.concatenate(
        [rng.random((3, 32, 32, 1), dtype=np.float32), np.ones((2, 32, 32, 1), np.float32)]
    )
    return registry, detector, queries


def reference(registry: ModelRegistry, detector: Any, queries: np.ndarray) -> np.ndarray:
    from radlens.models.ood import extract_features

    model = registry.load("res:1").model
    return detector.scores(extract_features(model, queries, layers=detector.layers))


def test_the_predictor_scores_the_detectors_layers(layered: Any) -> None:
    registry, detector, queries = layered
    assert detector.layers == ("backbone/conv2_block3_out", "backbone/conv5_block3_out")
    predictor = Predictor(
        registry.load("res:1"), CPU, max_batch_size=8, max_batch_wait_ms=0.0, ood=detector
    )
    assert predictor._ood_model is not None and predictor._ood_model.outputs[1].shape[-1] == 10
    scores, ood = predictor._infer_scored(queries)
    assert ood is not None and scores.shape == (5, 2)
    np.testing.assert_allclose(ood, reference(registry, detector, queries), atol=1.0 / 20 + 1e-6)


@pytest.mark.skipif(openvino_version() is None, reason="OpenVINO is not installed")
def test_openvino_serving_takes_the_layers_from_the_keras_model(
    layered: Any, tmp_path: Path
) -> None:
    from radlens.models.runtime import IR_XML, OpenVINORuntime, convert_to_openvino

    registry, detector, queries = layered
    loaded = registry.load("res:1")
    files = convert_to_openvino(loaded.model, tmp_path / "ov")
    runtime = OpenVINORuntime(files[IR_XML], "fp32", (32, 32, 1))
    predictor = Predictor(
        loaded, CPU, max_batch_size=8, max_batch_wait_ms=0.0, ood=detector, runtime=runtime
    )
    scores, ood = predictor._infer_scored(queries)
    assert ood is not None
    np.testing.assert_allclose(ood, reference(registry, detector, queries), atol=1.0 / 20 + 1e-6)
    np.testing.assert_allclose(scores, np.asarray(loaded.model(queries)), atol=1e-4)

"""OpenVINO serving with an OOD detector in one model call (QA 84): a version converted with
its detector attached has an IR that also returns the detector's features
(models.runtime.convert_to_openvino, ``ood_features``), and app/predictor.py scores them
without building or running the Keras feature model (before, every batch ran a second full
forward pass in TensorFlow beside OpenVINO's). The served OOD scores equal the TensorFlow
path's; an IR converted before, or for other layers, keeps the Keras features."""

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

pytestmark = pytest.mark.skipif(openvino_version() is None, reason="OpenVINO is not installed")

CPU = DeviceInfo("/CPU:0", "cpu", False)


def _store(root: Path, layers: Any) -> tuple[ModelRegistry, Any, np.ndarray]:
    """A 32 px ResNet-shaped model with a Mahalanobis detector on ``layers`` (None: the last
    stage), converted to OpenVINO after the detector was attached (as training does)."""
    from radlens.models.ood import load_detector
    from radlens.models.runtime import add_openvino_runtime
    from radlens.training.ood import attach_detector

    registry = save_resnet(root)
    model = registry.load("res:1").model
    rng = np.random.default_rng(4)
    train = (rng.random((30, 32, 32, 1), dtype=np.float32), np.arange(30) % 2)
    val = rng.random((20, 32, 32, 1), np.float32)
    extra = {} if layers is None else {"layers": layers}
    attach_detector(registry, "res:1", model, train, val, method="mahalanobis", **extra)
    add_openvino_runtime(registry, "res:1")
    detector = load_detector(registry.ood_detector_file(registry.verify("res", 1)))  # type: ignore[arg-type]
    assert detector.layers == (None if layers is None else tuple(layers))
    queries = np.concatenate(
        [rng.random((4, 32, 32, 1), dtype=np.float32), np.ones((2, 32, 32, 1), np.float32)]
    )
    return registry, detector, queries


def _runtime(registry: ModelRegistry, **kwargs: Any) -> Any:
    from radlens.models.runtime import OpenVINORuntime

    manifest = registry.verify("res", 1)
    files = registry.runtime_files(manifest, "openvino")
    xml = next(path for path in files.values() if path.name == "model.xml")
    return OpenVINORuntime(xml, "fp32", (32, 32, 1), **kwargs)


def _tensorflow(registry: ModelRegistry, detector: Any, queries: np.ndarray) -> Any:
    """The TensorFlow serving path's (scores, OOD scores): the reference."""
    predictor = Predictor(
        registry.load("res:1"), CPU, max_batch_size=8, max_batch_wait_ms=0.0, ood=detector
    )
    return predictor._infer_scored(queries)


def _no_keras_features(monkeypatch: pytest.MonkeyPatch) -> None:
    import radlens.models.ood as ood

    def second_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("OpenVINO serving built the Keras feature model (a second pass)")

    monkeypatch.setattr(ood, "feature_model", second_pass)


def test_one_openvino_call_gives_the_tensorflow_ood_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, detector, queries = _store(tmp_path / "store", None)
    scores_tf, ood_tf = _tensorflow(registry, detector, queries)
    runtime = _runtime(registry, streams=2, latency=True)
    loaded = registry.load("res:1")
    _no_keras_features(monkeypatch)
    predictor = Predictor(
        loaded, CPU, max_batch_size=8, max_batch_wait_ms=0.0, runtime=runtime, ood=detector
    )
    assert predictor.ood_from_runtime
    assert runtime.feature_layers is None and runtime.feature_width == detector.dimension == 6
    # the Keras model is not run for a prediction: with its weights zeroed the scores hold
    loaded.model.set_weights([np.zeros_like(w) for w in loaded.model.get_weights()])
    scores, ood = predictor._infer_scored(queries)
    assert ood is not None and ood.shape == (6,)
    # the same tolerances as tests/app/test_ood_service.py (OpenVINO fp32 vs TensorFlow)
    np.testing.assert_allclose(ood, ood_tf, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, scores_tf, atol=1e-4)
    # a lone request (on the latency model when it was kept): the same outputs
    one, ood_one = predictor._infer_scored(queries[:1], alone=True)
    assert ood_one is not None
    np.testing.assert_allclose(ood_one, ood_tf[:1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one, scores_tf[:1], atol=1e-4)


def test_a_layered_detector_reads_its_layers_from_the_ir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.models.ood import RESNET_LAYERS

    registry, detector, queries = _store(tmp_path / "store", RESNET_LAYERS)
    _, ood_tf = _tensorflow(registry, detector, queries)
    runtime = _runtime(registry)
    loaded = registry.load("res:1")
    _no_keras_features(monkeypatch)
    predictor = Predictor(
        loaded, CPU, max_batch_size=8, max_batch_wait_ms=0.0, runtime=runtime, ood=detector
    )
    assert runtime.feature_layers == RESNET_LAYERS and runtime.feature_width == 10
    loaded.model.set_weights([np.zeros_like(w) for w in loaded.model.get_weights()])
    _, ood = predictor._infer_scored(queries)
    # calibration ranks (steps of 1/20): a feature that rounds differently moves one step
    assert ood is not None
    np.testing.assert_allclose(ood, ood_tf, atol=1.0 / 20 + 1e-6)


def test_an_ir_without_the_detectors_features_keeps_the_keras_features(tmp_path: Path) -> None:
    from radlens.models.ood import RESNET_LAYERS
    from radlens.models.runtime import IR_XML, OpenVINORuntime, convert_to_openvino

    registry, detector, queries = _store(tmp_path / "store", RESNET_LAYERS)
    _, ood_tf = _tensorflow(registry, detector, queries)
    loaded = registry.load("res:1")
    # converted before (scores only), and converted for another detector (the last stage)
    old = convert_to_openvino(loaded.model, tmp_path / "old")
    other = convert_to_openvino(loaded.model, tmp_path / "other", ood_features=True)
    for files in (old, other):
        runtime = OpenVINORuntime(files[IR_XML], "fp32", (32, 32, 1))
        assert not runtime.has_ood_features(detector.layers, detector.dimension)
        predictor = Predictor(
            loaded, CPU, max_batch_size=8, max_batch_wait_ms=0.0, runtime=runtime, ood=detector
        )
        assert not predictor.ood_from_runtime
        scores, ood = predictor._infer_scored(queries)
        assert ood is not None
        np.testing.assert_allclose(ood, ood_tf, atol=1.0 / 20 + 1e-6)
        np.testing.assert_allclose(scores, np.asarray(loaded.model(queries)), atol=1e-4)
    # the scores-only IR answers predict as before, and no features
    runtime = OpenVINORuntime(old[IR_XML], "fp32", (32, 32, 1))
    assert runtime.feature_layers is None and runtime.features_index is None
    assert runtime.predict_with_features(queries)[1] is None


def test_a_model_without_a_detector_converts_to_the_scores_alone(tmp_path: Path) -> None:
    from radlens.models.runtime import add_openvino_runtime

    registry = save_resnet(tmp_path / "store")
    add_openvino_runtime(registry, "res:1")
    runtime = _runtime(registry)
    assert len(runtime.compiled.outputs) == 1
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(
        runtime.predict(x), np.asarray(registry.load("res:1").model(x)), atol=1e-4
    )

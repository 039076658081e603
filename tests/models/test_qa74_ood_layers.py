"""The OOD detector on several layers (QA 74): ``models.ood.feature_model(model, layers)``
pools the named layers, a :class:`LayeredOodDetector` scores each with its own detector at a
Bonferroni-split conformal threshold and records its layers in its file and manifest entry;
a detector file without layers (every detector saved before) keeps reading the last stage."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError


def tiny_resnet(size: int = 16) -> Any:
    """A model shaped as build_model's ResNet50: a nested ``backbone`` with ResNet-named
    stage outputs (``conv2_block3_out`` first, ``conv5_block3_out`` last), then pool and
    head."""
    import keras

    keras.utils.set_random_seed(3)
    inner = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1_conv")(inner)
    x = keras.layers.ReLU(name="conv2_block3_out")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv5_block3_conv")(x)
    x = keras.layers.ReLU(name="conv5_block3_out")(x)
    backbone = keras.Model(inner, x, name="backbone")
    inputs = keras.Input((size, size, 1), name="image")
    y = backbone(inputs)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(y)
    return keras.Model(inputs, outputs, name="resnet50")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 16, 16, 1), dtype=np.float32)


def test_feature_model_pools_the_named_layers_in_order() -> None:
    import keras

    from radlens.models.ood import RESNET_LAYERS, default_layers, feature_model

    model = tiny_resnet()
    assert default_layers(model) == RESNET_LAYERS
    x = images(3)
    scores, features = feature_model(model, RESNET_LAYERS)(x, training=False)
    backbone = model.get_layer("backbone")
    early = keras.Model(backbone.input, backbone.get_layer("conv2_block3_out").output)(x)
    last = backbone(x)
    expected = np.concatenate(
        [np.asarray(early).mean(axis=(1, 2)), np.asarray(last).mean(axis=(1, 2))], axis=1
    )
    assert features.shape == (3, 4 + 6)
    np.testing.assert_allclose(np.asarray(features), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    # no layers: the last stage alone, as every detector saved before layers were recorded
    _, last_only = feature_model(model)(x, training=False)
    np.testing.assert_allclose(np.asarray(last_only), expected[:, 4:], rtol=1e-5, atol=1e-6)


def test_a_layer_the_model_lacks_is_one_line_naming_the_valid_ones() -> None:
    from radlens.models.ood import feature_layers, resolve_layers

    model = tiny_resnet()
    assert feature_layers(model) == ["backbone/conv2_block3_out", "backbone/conv5_block3_out"]
    # a backbone layer may be named without its prefix
    assert resolve_layers(model, ["conv2_block3_out"]) == ("backbone/conv2_block3_out",)
    with pytest.raises(ConfigurationError) as info:
        resolve_layers(model, ["conv2_block3_out", "conv9_block1_out"])
    message = str(info.value)
    assert "\n" not in message and "'conv9_block1_out'" in message
    assert "backbone/conv2_block3_out, backbone/conv5_block3_out" in message
    with pytest.raises(ConfigurationError, match="distinct"):
        resolve_layers(model, ["conv2_block3_out", "backbone/conv2_block3_out"])


def test_simple_cnn_keeps_the_last_layer_by_default() -> None:
    from radlens.models.architectures import build_model
    from radlens.models.ood import default_layers, feature_layers

    model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)
    assert default_layers(model) is None
    assert feature_layers(model)[-1] == "conv4"


def _layered(seed: int = 0, method: str = "mahalanobis") -> tuple[Any, np.ndarray, np.ndarray]:
    from radlens.models.ood import fit_layered_detector

    rng = np.random.default_rng(seed)
    train = rng.normal(size=(120, 10)).astype(np.float32) + 3.0
    labels = rng.integers(0, 2, 120)
    val = rng.normal(size=(60, 10)).astype(np.float32) + 3.0
    detector = fit_layered_detector(
        train,
        labels,
        val,
        ("backbone/conv2_block3_out", "backbone/conv5_block3_out"),
        (4, 6),
        method=method,  # type: ignore[arg-type]
        quantile=0.9,
    )
    return detector, val, rng.normal(size=(40, 10)).astype(np.float32) * 3.0


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_layered_detector_flags_when_any_layer_is_above_its_bonferroni_threshold(
    method: str,
) -> None:
    from radlens.models.ood import conformal_threshold

    detector, val, other = _layered(method=method)
    assert detector.layer_quantile == pytest.approx(0.95)
    queries = np.concatenate([val, other])
    parts = detector.member_scores(queries)
    either = np.zeros(len(queries), dtype=bool)
    for member, part, cal, (lo, hi) in zip(
        detector.members, parts, detector.calibration, [(0, 4), (4, 10)], strict=True
    ):
        # each member at the split level, set on the same validation images
        assert member.quantile == pytest.approx(0.95)
        expected = conformal_threshold(member.scores(val[:, lo:hi]), 0.95)
        assert member.threshold == pytest.approx(expected)
        either |= part > member.threshold
        assert len(cal) == len(val)
    flagged = detector.scores(queries) > detector.threshold
    np.testing.assert_array_equal(flagged, either)
    assert either[len(val) :].any() and not either[: len(val)].all()


def test_layered_detector_round_trips_with_its_layers_and_serves_the_same_scores(
    tmp_path: Path,
) -> None:
    import tensorflow as tf

    from radlens.models.ood import LayeredOodDetector, load_detector

    detector, val, other = _layered()
    path = tmp_path / "detector.npz"
    detector.save(path)
    loaded = load_detector(path)
    assert isinstance(loaded, LayeredOodDetector)
    assert loaded.layers == ("backbone/conv2_block3_out", "backbone/conv5_block3_out")
    assert loaded.threshold == detector.threshold and loaded.dimension == 10
    entry = loaded.entry()
    assert entry["layers"] == list(loaded.layers) and entry["layer_dimensions"] == [4, 6]
    queries = np.concatenate([val, other])
    np.testing.assert_array_equal(loaded.scores(queries), detector.scores(queries))
    served = np.asarray(loaded.tf_scorer()(tf.constant(queries)))
    np.testing.assert_allclose(served, detector.scores(queries), atol=1.0 / len(val) + 1e-6)
    with pytest.raises(ConfigurationError, match="one layer name per member"):
        LayeredOodDetector(loaded.members, loaded.calibration, 0.9, ("only_one",))


def test_a_detector_file_saved_without_layers_reads_the_last_stage(tmp_path: Path) -> None:
    """The file as the code before QA 74 wrote it (OodDetector.to_bytes: method, meta, the
    Mahalanobis arrays; no layers), written here key by key: it loads as an OodDetector with
    no layers, and the predictor's feature model for it is the last stage's pooling."""
    from radlens.models.ood import OodDetector, feature_model, fit_detector, load_detector

    model = tiny_resnet()
    _, features = feature_model(model)(images(40), training=False)
    features = np.asarray(features)
    fitted = fit_detector(features[:30], np.arange(30) % 2, features[30:], quantile=0.9)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        method=np.array("mahalanobis"),
        meta=np.array([fitted.threshold, fitted.quantile, float(fitted.k)], dtype=np.float64),
        **fitted.arrays,
    )
    path = tmp_path / "old.npz"
    path.write_bytes(buffer.getvalue())
    old = load_detector(path)
    assert isinstance(old, OodDetector) and old.layers is None
    assert old.threshold == fitted.threshold and old.dimension == 6
    assert feature_model(model, old.layers).outputs[1].shape[-1] == 6
    np.testing.assert_allclose(old.scores(features), fitted.scores(features), rtol=1e-6)


def test_ensembles_keep_the_last_layer() -> None:
    from radlens.models.ensemble import build_ensemble
    from radlens.models.ood import default_layers, feature_model

    ensemble = build_ensemble([tiny_resnet(), tiny_resnet()])
    assert default_layers(ensemble) is None
    assert feature_model(ensemble).outputs[1].shape[-1] == 12  # 6 per member, as before
    with pytest.raises(ConfigurationError, match="last convolutional layer only"):
        feature_model(ensemble, ("backbone/conv2_block3_out",))

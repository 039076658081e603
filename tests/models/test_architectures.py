"""The builders: graphs, shapes, in-graph preprocessing, freezing, weights files, save/load.

ResNet50 is built at 32 px with weights=None (nothing is downloaded).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from radlens.models import registry as registry_module
from radlens.models.architectures import (
    ARCHITECTURES,
    build_model,
    gradcam_model,
    last_conv_layer_name,
    set_backbone_trainable,
)
from radlens.models.errors import ConfigurationError
from radlens.models.layers import CenterImage, FixedFilterBank, GrayToRGB, ResNetPreprocess
from radlens.models.registry import ModelRegistry, predict_scores

SIZE = 32
RNG = np.random.default_rng(7)


def batch(n: int = 2, size: int = SIZE) -> np.ndarray:
    return RNG.random((n, size, size, 1)).astype(np.float32)


def resnet(filters=(), dropout=0.0, num_classes=2, **kwargs) -> keras.Model:
    return build_model(
        "resnet50",
        input_shape=(SIZE, SIZE, 1),
        num_classes=num_classes,
        filters=filters,
        dropout=dropout,
        **kwargs,
    )


def randomise_bn_statistics(model: keras.Model) -> None:
    """Give every BatchNormalization moving statistics far from 0/1, so that batch
    statistics (training mode) and moving statistics (inference mode) differ clearly."""
    for layer in model.get_layer("backbone").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(RNG.normal(0.5, 0.2, shape).astype(np.float32))
            layer.moving_variance.assign(RNG.uniform(2.0, 3.0, shape).astype(np.float32))


def assert_inference_mode_batchnorm(model: keras.Model) -> None:
    x = batch(4)
    np.testing.assert_allclose(
        np.asarray(model(x, training=True)), np.asarray(model(x, training=False)), atol=1e-6
    )


class TestSimpleCnn:
    def test_the_course_network(self):
        model = build_model("simple_cnn", input_shape=(28, 28, 1), num_classes=3)
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        assert [c.name for c in convs] == ["conv1", "conv2", "conv3", "conv4"]
        assert all(
            c.kernel_size == (3, 3) and c.activation is keras.activations.relu for c in convs
        )
        names = [layer.name for layer in model.layers]
        # max pooling after every other convolution
        assert names[names.index("conv2") + 1] == "pool1"
        assert names[names.index("conv4") + 1] == "pool2"
        assert isinstance(model.get_layer("pool1"), keras.layers.MaxPooling2D)
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        assert [d.units for d in dense] == [128, 64, 3]
        assert names[-5:] == ["dense1", "dropout1", "dense2", "dropout2", "predictions"]
        assert model.get_layer("dropout1").rate == pytest.approx(0.3)
        assert model.input_shape == (None, 28, 28, 1)
        scores = predict_scores(model, batch(5, 28))
        assert scores.shape == (5, 3)
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
        assert last_conv_layer_name(model) == "conv4"

    def test_filter_frontend(self):
        model = build_model(
            "simple_cnn", input_shape=(16, 16, 1), num_classes=2, filters=("sobel_h", "blur")
        )
        front = model.get_layer("filter_frontend")
        assert isinstance(front, FixedFilterBank)
        assert model.get_layer("conv1").kernel.shape == (3, 3, 3, 32)  # input + 2 filters

    def test_save_load_round_trip(self, tmp_path):
        model = build_model(
            "simple_cnn", input_shape=(16, 16, 1), num_classes=2, filters=("outline",)
        )
        model.save(tmp_path / "model.keras")
        loaded = keras.saving.load_model(tmp_path / "model.keras")
        x = batch(3, 16)
        np.testing.assert_array_equal(predict_scores(loaded, x), predict_scores(model, x))

    def test_center_makes_it_blind_to_exposure(self):
        model = build_model(
            "simple_cnn", input_shape=(16, 16, 1), num_classes=2, filters=("blur",), center=True
        )
        names = [layer.name for layer in model.layers]
        assert names[:4] == ["image", "center", "filter_frontend", "conv1"]
        assert isinstance(model.get_layer("center"), CenterImage)
        x = batch(3, 16) * 0.5
        np.testing.assert_allclose(
            predict_scores(model, x + 0.3), predict_scores(model, x), atol=1e-5
        )
        plain = build_model("simple_cnn", input_shape=(16, 16, 1), num_classes=2)
        assert np.abs(predict_scores(plain, x + 0.3) - predict_scores(plain, x)).max() > 1e-4

    def test_batchnorm_after_each_relu_and_in_inference_mode_when_served(self, tmp_path):
        model = build_model(
            "simple_cnn", input_shape=(16, 16, 1), num_classes=2, center=True, batchnorm=True
        )
        names = [layer.name for layer in model.layers]
        for i in range(1, 5):
            assert names[names.index(f"conv{i}") + 1] == f"bn{i}"
            assert isinstance(model.get_layer(f"bn{i}"), keras.layers.BatchNormalization)
        assert names[names.index("bn2") + 1] == "pool1" and names[names.index("bn4") + 1] == "pool2"
        assert last_conv_layer_name(model) == "conv4"  # Grad-CAM still reads a ReLU map
        features, _ = gradcam_model(model)(batch(1, 16), training=False)
        assert features.shape == (1, 8, 8, 64) and float(np.min(features)) >= 0.0
        for i in range(1, 5):
            bn = model.get_layer(f"bn{i}")
            bn.moving_mean.assign(RNG.normal(0.3, 0.1, bn.moving_mean.shape).astype(np.float32))
            bn.moving_variance.assign(RNG.uniform(2, 3, bn.moving_variance.shape).astype("f4"))
        x = batch(4, 16)
        served = predict_scores(model, x)
        model.save(tmp_path / "bn.keras")  # the moving statistics are saved with it
        loaded = keras.saving.load_model(tmp_path / "bn.keras")
        np.testing.assert_allclose(predict_scores(loaded, x), served, atol=1e-6)
        # serving uses the moving statistics, not the batch's
        assert np.abs(np.asarray(model(x, training=True)) - served).max() > 1e-4

    def test_width_multiplier_widens_the_convolutions_only(self, tmp_path):
        plain = build_model("simple_cnn", input_shape=(16, 16, 1), num_classes=2, center=True)
        wide = build_model(
            "simple_cnn", input_shape=(16, 16, 1), num_classes=2, center=True, width_multiplier=2
        )
        for i, channels in enumerate((32, 32, 64, 64), start=1):
            assert plain.get_layer(f"conv{i}").filters == channels
            assert wide.get_layer(f"conv{i}").filters == 2 * channels
        assert wide.get_layer("dense1").units == plain.get_layer("dense1").units == 128
        assert last_conv_layer_name(wide) == "conv4"
        features, _ = gradcam_model(wide)(batch(1, 16), training=False)
        assert features.shape == (1, 8, 8, 128)
        wide.save(tmp_path / "wide.keras")  # the saved graph carries its widths
        loaded = keras.saving.load_model(tmp_path / "wide.keras")
        x = batch(2, 16)
        np.testing.assert_array_equal(predict_scores(loaded, x), predict_scores(wide, x))

    def test_trains_a_step(self):
        model = build_model("simple_cnn", input_shape=(8, 8, 1), num_classes=2, dropout=0.0)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        x = batch(8, 8)
        y = np.array([0, 1] * 4)
        before = [w.copy() for w in model.get_weights()]
        model.train_on_batch(x, y)
        assert any(
            not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)
        )


class TestResNet50Graph:
    def test_gray_input_to_softmax(self):
        model = resnet(num_classes=3, dropout=0.3)
        names = [layer.name for layer in model.layers]
        assert names == [
            "image",
            "gray_to_rgb",
            "resnet_preprocess",
            "backbone",
            "pool",
            "dropout",
            "predictions",
        ]
        assert isinstance(model.get_layer("gray_to_rgb"), GrayToRGB)
        assert isinstance(model.get_layer("resnet_preprocess"), ResNetPreprocess)
        backbone = model.get_layer("backbone")
        assert isinstance(backbone, keras.Model)
        assert backbone.input_shape == (None, SIZE, SIZE, 3)
        assert model.input_shape == (None, SIZE, SIZE, 1)
        scores = predict_scores(model, batch(3))
        assert scores.shape == (3, 3)
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
        # what reaches the backbone is preprocess_input of the gray image replicated, x 255
        x = batch(1)
        into_backbone = keras.Model(model.input, model.get_layer("resnet_preprocess").output)
        expected = keras.applications.resnet50.preprocess_input(np.repeat(x, 3, axis=-1) * 255)
        np.testing.assert_allclose(np.asarray(into_backbone(x)), expected, atol=1e-3)

    def test_filter_frontend_starts_as_gray_replication(self):
        model = resnet(filters=("sobel_h", "sobel_v", "outline"))
        assert model.get_layer("filter_frontend").output_channels == 4
        to_rgb = model.get_layer("filter_to_rgb")
        assert to_rgb.trainable
        x = batch(2)
        rgb = keras.Model(model.input, to_rgb.output)(x)
        np.testing.assert_allclose(np.asarray(rgb), np.repeat(x, 3, axis=-1), atol=1e-6)

    def test_batchnorm_runs_in_inference_mode(self):
        model = resnet(filters=("blur",))
        randomise_bn_statistics(model)
        assert_inference_mode_batchnorm(model)
        set_backbone_trainable(model, "all")
        assert_inference_mode_batchnorm(model)

    def test_save_load_round_trip_through_the_registry(self, tmp_path, monkeypatch):
        monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: "t")
        model = resnet(filters=("sobel_h", "blur"))
        randomise_bn_statistics(model)
        reg = ModelRegistry(tmp_path)
        reg.save(
            model,
            name="rn",
            architecture="resnet50",
            class_names=["normal", "abnormal"],
            threshold=None,
            window=None,
            filters=["sobel_h", "blur"],
            metrics={},
            training_config={},
            data_fingerprint=None,
        )
        loaded = reg.load("rn").model
        assert loaded.get_layer("filter_frontend").filter_names == ("sobel_h", "blur")
        x = batch(3)
        np.testing.assert_array_equal(predict_scores(loaded, x), predict_scores(model, x))
        # BatchNormalization frozen after loading too
        assert not any(
            layer.trainable
            for layer in loaded.get_layer("backbone").layers
            if isinstance(layer, keras.layers.BatchNormalization)
        )
        assert_inference_mode_batchnorm(loaded)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """One ResNet50 for the freezing tests (each test sets the state it checks)."""
    return resnet()


class TestFreezing:
    def test_counts(self, model):
        backbone = model.get_layer("backbone")
        head = ["predictions"]
        # conv5_block3 has three convolutions: 3 kernels + 3 biases
        assert set_backbone_trainable(model, 1) == 6
        trainable = {v.path.split("/")[0] for v in backbone.trainable_weights}
        assert trainable == {"conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"}
        # conv5: block1 has a fourth (shortcut) convolution
        assert set_backbone_trainable(model, 3) == 20
        assert set_backbone_trainable(model, "all") == 2 * 53  # 53 convolutions incl. stem
        assert set_backbone_trainable(model, 0) == 0
        assert backbone.trainable_weights == []
        assert {v.path.split("/")[0] for v in model.trainable_weights} == set(head)

    def test_batchnorm_never_trainable(self, model):
        for blocks in (0, 2, 16, "all"):
            set_backbone_trainable(model, blocks)
            bns = [
                layer
                for layer in model.get_layer("backbone").layers
                if isinstance(layer, keras.layers.BatchNormalization)
            ]
            assert len(bns) == 53
            assert not any(bn.trainable for bn in bns)
            assert not any("bn" in v.path for v in model.trainable_weights)

    def test_batchnorm_can_train_from_scratch_on_request(self, model):
        # conv5_block3: 3 convolutions (kernel + bias) and 3 BN (gamma + beta)
        assert set_backbone_trainable(model, 1, freeze_batchnorm=False) == 12
        assert set_backbone_trainable(model, "all", freeze_batchnorm=False) == 4 * 53
        randomise_bn_statistics(model)
        x = batch(4)
        train, infer = model(x, training=True), model(x, training=False)
        assert np.abs(np.asarray(train) - np.asarray(infer)).max() > 1e-3
        set_backbone_trainable(model, "all")
        assert_inference_mode_batchnorm(model)

    def test_sixteen_blocks_is_all_but_the_stem(self, model):
        assert set_backbone_trainable(model, 16) == 2 * 52

    @pytest.mark.parametrize("bad", [17, -1])
    def test_out_of_range(self, model, bad):
        with pytest.raises(ConfigurationError, match=f"Received: {bad}"):
            set_backbone_trainable(model, bad)

    @pytest.mark.parametrize("bad", ["some", True, 2.0])
    def test_wrong_type(self, model, bad):
        with pytest.raises(TypeError, match="int or 'all'"):
            set_backbone_trainable(model, bad)

    def test_simple_cnn_has_no_backbone(self):
        cnn = build_model("simple_cnn", input_shape=(8, 8, 1), num_classes=2)
        with pytest.raises(ConfigurationError, match="no 'backbone'"):
            set_backbone_trainable(cnn, 0)


class TestWeights:
    def test_local_weights_file(self, tmp_path):
        source = keras.applications.ResNet50(
            include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
        )
        path = tmp_path / "resnet50_notop.weights.h5"
        source.save_weights(path)
        model = resnet(weights=str(path))
        backbone = model.get_layer("backbone")
        for mine, theirs in zip(backbone.weights, source.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
        # pretrained: the backbone comes frozen for phase 1, the head trains
        assert backbone.trainable_weights == []
        assert model.trainable_weights
        # a fresh build without weights is different (the file really was loaded)
        other = resnet().get_layer("backbone")
        assert not np.array_equal(
            np.asarray(other.get_layer("conv1_conv").kernel),
            np.asarray(backbone.get_layer("conv1_conv").kernel),
        )

    def test_unreadable_weights_file(self, tmp_path):
        junk = tmp_path / "junk.weights.h5"
        junk.write_bytes(b"not hdf5 at all")
        with pytest.raises(ConfigurationError, match=r"junk\.weights\.h5"):
            resnet(weights=str(junk))

    def test_weights_argument_checks(self, tmp_path):
        with pytest.raises(ConfigurationError, match=r"'imagenet', None or.*'/no/such\.h5'"):
            resnet(weights="/no/such.h5")
        with pytest.raises(TypeError, match="Received: 3"):
            resnet(weights=3)
        with pytest.raises(ConfigurationError, match="simple_cnn has no pretrained weights"):
            build_model("simple_cnn", input_shape=(8, 8, 1), num_classes=2, weights="imagenet")


class TestArgumentChecks:
    @pytest.mark.parametrize("option", ["center", "batchnorm"])
    def test_simple_cnn_options_are_refused_elsewhere_and_must_be_bools(self, option):
        with pytest.raises(ConfigurationError, match=rf"{option}=True is a simple_cnn option"):
            build_model("resnet50", input_shape=(32, 32, 1), num_classes=2, **{option: True})
        with pytest.raises(TypeError, match=f"{option} must be True or False. Received: 1"):
            build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2, **{option: 1})

    def test_width_multiplier_is_a_small_int_and_simple_cnn_only(self):
        with pytest.raises(ConfigurationError, match=r"simple_cnn only.*'resnet50'.*=2"):
            build_model("resnet50", input_shape=(32, 32, 1), num_classes=2, width_multiplier=2)
        with pytest.raises(ConfigurationError, match=r"1 to 8.*width_multiplier=0"):
            build_model("simple_cnn", input_shape=(8, 8, 1), num_classes=2, width_multiplier=0)
        with pytest.raises(TypeError, match=r"width_multiplier must be an int. Received: 1.5"):
            build_model("simple_cnn", input_shape=(8, 8, 1), num_classes=2, width_multiplier=1.5)

    def test_unknown_architecture_lists_valid(self):
        assert ARCHITECTURES == ("resnet50", "simple_cnn")
        with pytest.raises(ConfigurationError, match=r"'vgg16'.*resnet50, simple_cnn"):
            build_model("vgg16", input_shape=(32, 32, 1), num_classes=2)

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"input_shape": (32, 32, 3)}, ConfigurationError, r"1 channel.*\(32, 32, 3\)"),
            ({"input_shape": (32, 32)}, ConfigurationError, r"\(32, 32\)"),
            ({"input_shape": (16, 16, 1)}, ConfigurationError, r"at least 32x32.*\(16, 16, 1\)"),
            ({"input_shape": (32.0, 32, 1)}, TypeError, "ints"),
            ({"num_classes": 1}, ConfigurationError, "Received: 1"),
            ({"num_classes": "2"}, TypeError, "Received: '2'"),
            ({"dropout": 1.0}, ConfigurationError, "dropout=1.0"),
            ({"filters": ("sharpen",)}, ConfigurationError, "'sharpen'.*blur"),
        ],
    )
    def test_bad_arguments_quote_what_was_received(self, kwargs, error, message):
        args = {"input_shape": (32, 32, 1), "num_classes": 2} | kwargs
        with pytest.raises(error, match=message):
            build_model("resnet50", **args)


class TestGradCam:
    def test_resnet50_feature_map_and_gradients(self):
        model = resnet(filters=("blur",))
        name = last_conv_layer_name(model)
        assert name == "backbone/conv5_block3_out"
        outer, inner = name.split("/")
        model.get_layer(outer).get_layer(inner)  # the path resolves
        grad_model = gradcam_model(model)
        x = batch(2)
        with tf.GradientTape() as tape:
            features, scores = grad_model(x, training=False)
            target = scores[:, 1]
        grads = tape.gradient(target, features)
        assert features.shape == (2, 1, 1, 2048)
        assert grads is not None and grads.shape == features.shape
        np.testing.assert_allclose(np.asarray(scores), predict_scores(model, x), atol=1e-6)
        gradcam_model(model)  # can be built again

    def test_simple_cnn_feature_map(self):
        model = build_model("simple_cnn", input_shape=(12, 12, 1), num_classes=2)
        x = batch(1, 12)
        features, scores = gradcam_model(model)(x, training=False)
        assert features.shape == (1, 6, 6, 64)  # conv4 runs after the first pooling
        np.testing.assert_allclose(np.asarray(scores), predict_scores(model, x), atol=1e-6)


@pytest.mark.parametrize(
    ("architecture", "size", "inner"),
    [("simple_cnn", 32, "conv1"), ("resnet50", 32, "backbone")],
)
def test_mixed_float16_keeps_a_float32_softmax(architecture: str, size: int, inner: str) -> None:
    """Under the mixed_float16 policy (radlens train --mixed-precision on a GPU) the body
    computes in float16 but the softmax head stays float32, as Keras's mixed-precision guide
    asks: the scores (and the loss on them) are not rounded to float16."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model(architecture, input_shape=(size, size, 1), num_classes=2)
        assert model.get_layer(inner).compute_dtype == "float16"
        assert model.get_layer("predictions").compute_dtype == "float32"
        scores = model(np.random.default_rng(0).random((2, size, size, 1), dtype=np.float32))
        assert np.asarray(scores).dtype == np.float32
        np.testing.assert_allclose(np.asarray(scores).sum(axis=1), 1.0, atol=1e-6)
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.config.dtype_policy().name == "float32"

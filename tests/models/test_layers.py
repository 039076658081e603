"""Each numpy reference op agrees with its Keras counterpart; radlens's own layers behave."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from radlens.models import ops
from radlens.models.errors import ConfigurationError
from radlens.models.layers import CenterImage, FixedFilterBank, GrayToRGB, ResNetPreprocess

RNG = np.random.default_rng(42)
ATOL = 1e-5


def run(layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(layer(x[np.newaxis].astype(np.float32))))[0]


class TestConv2DAgreement:
    @pytest.mark.parametrize("padding", ["valid", "same"])
    @pytest.mark.parametrize("stride", [1, 2, 3])
    @pytest.mark.parametrize(("size", "kernel_size"), [((9, 7), 3), ((8, 8), 2), ((10, 11), 5)])
    def test_matches_keras_conv2d(self, padding, stride, size, kernel_size):
        image = RNG.random((*size, 2)).astype(np.float32)
        kernel = RNG.normal(size=(kernel_size, kernel_size, 2, 3)).astype(np.float32)
        layer = keras.layers.Conv2D(3, kernel_size, strides=stride, padding=padding, use_bias=False)
        layer.build((None, *size, 2))
        layer.set_weights([kernel])
        expected = run(layer, image)
        actual = ops.conv2d(image, kernel, stride=stride, padding=padding)
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, atol=ATOL)

    def test_single_channel_2d_kernel(self):
        image = RNG.random((12, 12)).astype(np.float32)
        kernel = ops.KERNELS["sobel_v"]
        layer = keras.layers.Conv2D(1, 3, strides=2, padding="same", use_bias=False)
        layer.build((None, 12, 12, 1))
        layer.set_weights([kernel[:, :, np.newaxis, np.newaxis]])
        expected = run(layer, image[..., np.newaxis])[..., 0]
        np.testing.assert_allclose(
            ops.conv2d(image, kernel, stride=2, padding="same"), expected, atol=ATOL
        )


class TestPoolingAgreement:
    @pytest.mark.parametrize("padding", ["valid", "same"])
    @pytest.mark.parametrize(("pool", "stride"), [(2, 2), (3, 2), (2, 1), (3, 3)])
    @pytest.mark.parametrize("mode", ["max", "average"])
    def test_matches_keras_pooling(self, padding, pool, stride, mode):
        x = RNG.normal(size=(7, 9, 3)).astype(np.float32)
        cls = keras.layers.MaxPooling2D if mode == "max" else keras.layers.AveragePooling2D
        expected = run(cls(pool, strides=stride, padding=padding), x)
        actual = ops.pool2d(x, size=pool, stride=stride, mode=mode, padding=padding)
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, atol=ATOL)

    def test_worked_example_in_keras_too(self):
        worked = np.array([[2, 2, 7, 3], [9, 4, 6, 1], [8, 5, 2, 4], [3, 1, 2, 6]], np.float32)
        x = worked[..., np.newaxis]
        np.testing.assert_array_equal(
            run(keras.layers.MaxPooling2D(2), x)[..., 0], [[9, 7], [8, 6]]
        )
        np.testing.assert_allclose(
            run(keras.layers.AveragePooling2D(2), x)[..., 0], [[4.25, 4.25], [4.25, 3.5]]
        )

    @pytest.mark.parametrize("mode", ["max", "average"])
    def test_matches_keras_global_pooling(self, mode):
        x = RNG.normal(size=(6, 5, 4)).astype(np.float32)
        cls = (
            keras.layers.GlobalMaxPooling2D
            if mode == "max"
            else keras.layers.GlobalAveragePooling2D
        )
        np.testing.assert_allclose(ops.global_pool(x, mode), run(cls(), x), atol=ATOL)


class TestFixedFilterBank:
    @pytest.mark.parametrize("keep_input", [True, False])
    def test_matches_apply_filter(self, keep_input):
        image = RNG.random((15, 17)).astype(np.float32)
        names = ("sobel_h", "sobel_v", "blur", "outline")
        out = run(FixedFilterBank(filters=names, keep_input=keep_input), image[..., np.newaxis])
        assert out.shape == (15, 17, 4 + keep_input)
        if keep_input:
            np.testing.assert_array_equal(out[..., 0], image)
        for i, name in enumerate(names):
            np.testing.assert_allclose(
                out[..., i + keep_input], ops.apply_filter(image, name), atol=ATOL
            )

    def test_matches_keras_conv2d_with_the_kernels(self):
        image = RNG.random((10, 10, 1)).astype(np.float32)
        conv = keras.layers.Conv2D(2, 3, padding="same", use_bias=False)
        conv.build((None, 10, 10, 1))
        conv.set_weights([np.stack([ops.KERNELS["blur"], ops.KERNELS["outline"]], -1)[:, :, None]])
        bank = FixedFilterBank(filters=("blur", "outline"), keep_input=False)
        np.testing.assert_allclose(run(bank, image), run(conv, image), atol=ATOL)

    def test_order_follows_the_names(self):
        image = RNG.random((8, 8, 1)).astype(np.float32)
        a = run(FixedFilterBank(filters=("blur", "sobel_h"), keep_input=False), image)
        b = run(FixedFilterBank(filters=("sobel_h", "blur"), keep_input=False), image)
        np.testing.assert_allclose(a[..., ::-1], b, atol=ATOL)

    def test_not_trainable_and_no_weights(self):
        layer = FixedFilterBank(filters=("blur",))
        layer.build((None, 8, 8, 1))
        assert layer.trainable is False
        assert layer.weights == []

    def test_config_round_trip(self):
        layer = FixedFilterBank(filters=("outline", "blur"), keep_input=False, name="fb")
        clone = FixedFilterBank.from_config(layer.get_config())
        assert clone.filter_names == ("outline", "blur")
        assert clone.keep_input is False
        assert clone.name == "fb"

    def test_bad_arguments(self):
        with pytest.raises(ConfigurationError, match=r"'emboss'.*sobel_h, sobel_v, blur, outline"):
            FixedFilterBank(filters=("blur", "emboss"))
        with pytest.raises(TypeError, match=r"Received: 'blur'"):
            FixedFilterBank(filters="blur")
        with pytest.raises(ConfigurationError, match="repeat"):
            FixedFilterBank(filters=("blur", "blur"))
        with pytest.raises(ConfigurationError, match="at least one filter"):
            FixedFilterBank(filters=(), keep_input=False)
        with pytest.raises(ValueError, match=r"\(2, 8, 8, 3\)"):
            FixedFilterBank(filters=("blur",))(np.zeros((2, 8, 8, 3), np.float32))


class TestInputAdapters:
    def test_gray_to_rgb_replicates(self):
        x = RNG.random((6, 6, 1)).astype(np.float32)
        out = run(GrayToRGB(), x)
        assert out.shape == (6, 6, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], x[..., 0])
        with pytest.raises(ValueError, match=r"\(1, 6, 6, 2\)"):
            GrayToRGB()(np.zeros((1, 6, 6, 2), np.float32))

    def test_resnet_preprocess_is_preprocess_input_on_0_255(self):
        rgb01 = RNG.random((5, 5, 3)).astype(np.float32)
        expected = keras.applications.resnet50.preprocess_input(rgb01 * 255.0)
        np.testing.assert_allclose(run(ResNetPreprocess(), rgb01), expected, atol=1e-4)

    def test_why_the_scaling_matters(self):
        # mid-gray 0.5 must land near 127.5 - mean, the range ImageNet weights saw;
        # preprocess_input on the raw [0, 1] value would give about -110 instead
        gray = np.full((2, 2, 3), 0.5, np.float32)
        out = run(ResNetPreprocess(), gray)
        np.testing.assert_allclose(
            out[0, 0], [127.5 - 103.939, 127.5 - 116.779, 127.5 - 123.68], atol=1e-4
        )
        assert keras.applications.resnet50.preprocess_input(gray.copy()).mean() < -100

    def test_model_with_radlens_layers_round_trips(self, tmp_path):
        inputs = keras.Input((12, 12, 1))
        x = FixedFilterBank(filters=("sobel_v", "blur"), name="filter_frontend")(inputs)
        x = keras.layers.Conv2D(1, 1, name="mix")(x)
        x = GrayToRGB()(x)
        x = ResNetPreprocess()(x)
        outputs = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, outputs)
        path = tmp_path / "m.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert loaded.get_layer("filter_frontend").filter_names == ("sobel_v", "blur")
        batch = RNG.random((3, 12, 12, 1)).astype(np.float32)
        np.testing.assert_allclose(
            np.asarray(loaded(batch)), np.asarray(model(batch)), rtol=1e-6, atol=1e-6
        )


class TestCenterImage:
    def test_subtracts_each_images_own_mean(self):
        x = RNG.random((3, 6, 5, 2)).astype(np.float32)
        x[1] += 0.5  # a brighter image must not move the others
        out = np.asarray(CenterImage()(x))
        np.testing.assert_allclose(out, x - x.mean(axis=(1, 2, 3), keepdims=True), atol=1e-6)
        np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-6)
        # blind to exposure, keeps contrast: a shifted image centres to the same values
        shifted = np.asarray(CenterImage()(x + 0.2))
        np.testing.assert_allclose(shifted, out, atol=1e-6)
        assert np.abs(np.asarray(CenterImage()(x * 2.0)) - 2.0 * out).max() < 1e-5

    def test_refuses_a_non_image_and_round_trips(self, tmp_path):
        with pytest.raises(ValueError, match=r"\(batch, H, W, C\).*\(2, 6\)"):
            CenterImage()(np.zeros((2, 6), np.float32))
        inputs = keras.Input((8, 8, 1))
        model = keras.Model(inputs, CenterImage(name="center")(inputs))
        model.save(tmp_path / "c.keras")
        loaded = keras.saving.load_model(tmp_path / "c.keras")
        assert isinstance(loaded.get_layer("center"), CenterImage)
        x = RNG.random((2, 8, 8, 1)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)

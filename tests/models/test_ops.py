"""The course's operations (numpy reference): worked examples and filter behaviour.

The agreement of each operation with its Keras layer is tested in test_layers.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from radlens.models import ops
from radlens.models.errors import ConfigurationError

WORKED = np.array([[2, 2, 7, 3], [9, 4, 6, 1], [8, 5, 2, 4], [3, 1, 2, 6]], dtype=np.float64)


def step_edge(size: int = 16, *, vertical: bool) -> np.ndarray:
    """Bright left half (vertical edge) or bright top half (horizontal edge)."""
    image = np.zeros((size, size))
    if vertical:
        image[:, : size // 2] = 1.0
    else:
        image[: size // 2, :] = 1.0
    return image


class TestKernels:
    def test_names_and_shapes(self):
        assert ops.FILTER_NAMES == ("sobel_h", "sobel_v", "blur", "outline")
        for name in ops.FILTER_NAMES:
            assert ops.KERNELS[name].shape == (3, 3)
            assert ops.KERNELS[name].dtype == np.float32

    def test_values(self):
        np.testing.assert_array_equal(ops.KERNELS["sobel_h"], [[1, 2, 1], [0, 0, 0], [-1, -2, -1]])
        np.testing.assert_array_equal(ops.KERNELS["sobel_v"], ops.KERNELS["sobel_h"].T)
        np.testing.assert_allclose(ops.KERNELS["blur"].sum(), 1.0)
        assert ops.KERNELS["outline"].sum() == 0
        assert ops.KERNELS["outline"][1, 1] == 8

    def test_kernels_are_read_only(self):
        with pytest.raises(ValueError):
            ops.KERNELS["blur"][0, 0] = 5


class TestOutputSize:
    @pytest.mark.parametrize(
        ("n", "f", "s", "expected"),
        [(4, 2, 2, 2), (5, 3, 1, 3), (7, 3, 2, 3), (6, 3, 2, 2), (28, 5, 1, 24), (224, 7, 2, 109)],
    )
    def test_valid_follows_floor_formula(self, n, f, s, expected):
        assert ops.output_size(n, f, s, "valid") == expected == math.floor((n - f) / s + 1)

    @pytest.mark.parametrize(("n", "s", "expected"), [(5, 1, 5), (5, 2, 3), (6, 2, 3), (7, 3, 3)])
    def test_same_is_ceil_n_over_s(self, n, s, expected):
        assert ops.output_size(n, 3, s, "same") == expected

    def test_conv_shapes_follow_it(self):
        rng = np.random.default_rng(0)
        image = rng.random((9, 7))
        for stride in (1, 2, 3):
            for padding in ("valid", "same"):
                out = ops.conv2d(image, np.ones((3, 3)), stride=stride, padding=padding)
                assert out.shape == (
                    ops.output_size(9, 3, stride, padding),
                    ops.output_size(7, 3, stride, padding),
                )

    def test_same_keeps_size_at_stride_1(self):
        image = np.random.default_rng(1).random((11, 13))
        for name in ops.FILTER_NAMES:
            assert ops.conv2d(image, ops.KERNELS[name], padding="same").shape == (11, 13)
        assert ops.pool2d(image, size=3, stride=1, padding="same").shape == (11, 13)

    def test_window_larger_than_input(self):
        with pytest.raises(ValueError, match="n=2, f=3"):
            ops.output_size(2, 3, 1, "valid")

    def test_bad_arguments(self):
        with pytest.raises(TypeError, match=r"Received: 2\.0"):
            ops.output_size(4, 2.0, 1)
        with pytest.raises(ValueError, match="s=0"):
            ops.output_size(4, 2, 0)
        with pytest.raises(ValueError, match="'full'"):
            ops.output_size(4, 2, 1, "full")


class TestPooling:
    def test_worked_example_max(self):
        np.testing.assert_array_equal(ops.pool2d(WORKED, size=2, stride=2), [[9, 7], [8, 6]])

    def test_worked_example_average(self):
        np.testing.assert_allclose(
            ops.pool2d(WORKED, size=2, stride=2, mode="average"), [[4.25, 4.25], [4.25, 3.5]]
        )

    def test_stride_defaults_to_size_when_none(self):
        np.testing.assert_array_equal(ops.pool2d(WORKED, size=2, stride=None), [[9, 7], [8, 6]])

    def test_overlapping_windows(self):
        out = ops.pool2d(WORKED, size=2, stride=1)
        np.testing.assert_array_equal(out, [[9, 7, 7], [9, 6, 6], [8, 5, 6]])

    def test_same_padding_average_excludes_padding(self):
        # 3x3 of ones, 2x2 windows stride 2 'same': the border windows are partly padding
        out = ops.pool2d(np.ones((3, 3)), size=2, stride=2, mode="average", padding="same")
        np.testing.assert_array_equal(out, np.ones((2, 2)))

    def test_same_padding_max_ignores_padding_of_negative_images(self):
        out = ops.pool2d(-np.ones((3, 3)), size=2, stride=2, padding="same")
        np.testing.assert_array_equal(out, -np.ones((2, 2)))

    def test_channels_pooled_independently(self):
        stacked = np.stack([WORKED, -WORKED], axis=-1)
        out = ops.pool2d(stacked, size=2, stride=2)
        np.testing.assert_array_equal(out[..., 0], [[9, 7], [8, 6]])
        np.testing.assert_array_equal(out[..., 1], [[-2, -1], [-1, -2]])

    def test_global_pool(self):
        assert ops.global_pool(WORKED, "max") == 9.0
        assert ops.global_pool(WORKED, "average") == pytest.approx(WORKED.mean())
        stacked = np.stack([WORKED, 2 * WORKED], axis=-1)
        np.testing.assert_allclose(ops.global_pool(stacked, "max"), [9, 18])
        np.testing.assert_allclose(ops.global_pool(stacked, "average"), [4.0625, 8.125])

    def test_bad_mode_quotes_it(self):
        with pytest.raises(ValueError, match="'min'"):
            ops.pool2d(WORKED, mode="min")
        with pytest.raises(ValueError, match="'median'"):
            ops.global_pool(WORKED, "median")


class TestConv2d:
    def test_is_cross_correlation_not_flipped(self):
        image = np.zeros((3, 3))
        image[0, 0] = 1.0
        kernel = np.arange(9, dtype=float).reshape(3, 3)
        # valid 3x3 on a 3x3 image: one output, the top-left kernel weight times 1
        assert ops.conv2d(image, kernel)[0, 0] == kernel[0, 0]

    def test_hand_computed(self):
        kernel = np.array([[1, 0], [0, -1]], dtype=float)
        expected = [[2 - 4, 2 - 6, 7 - 1], [9 - 5, 4 - 2, 6 - 4], [8 - 1, 5 - 2, 2 - 6]]
        np.testing.assert_array_equal(ops.conv2d(WORKED, kernel), expected)
        np.testing.assert_array_equal(ops.conv2d(WORKED, kernel, stride=2), [[-2, 6], [7, -4]])

    def test_multichannel_kernel(self):
        rng = np.random.default_rng(2)
        image = rng.random((6, 5, 2))
        kernel = rng.random((3, 3, 2, 4))
        out = ops.conv2d(image, kernel)
        assert out.shape == (4, 3, 4)
        expected = sum(
            ops.conv2d(image[..., c], kernel[:, :, c, 3]) for c in range(2)
        )  # output channel 3
        np.testing.assert_allclose(out[..., 3], expected)

    def test_2d_kernel_on_channels_is_depthwise(self):
        image = np.random.default_rng(6).random((7, 6, 3))
        out = ops.conv2d(image, ops.KERNELS["outline"], stride=2, padding="same")
        assert out.shape == (4, 3, 3)
        for c in range(3):
            np.testing.assert_allclose(
                out[..., c],
                ops.conv2d(image[..., c], ops.KERNELS["outline"], stride=2, padding="same"),
            )

    def test_mismatched_channels(self):
        with pytest.raises(ValueError, match=r"\(5, 5, 2\).*\(3, 3, 3, 1\)"):
            ops.conv2d(np.zeros((5, 5, 2)), np.zeros((3, 3, 3, 1)))

    def test_wrong_types(self):
        with pytest.raises(TypeError, match="str"):
            ops.conv2d("image", ops.KERNELS["blur"])
        with pytest.raises(TypeError, match="dtype <U1"):
            ops.conv2d(np.array([["a"]]), ops.KERNELS["blur"])
        with pytest.raises(TypeError, match="stride"):
            ops.conv2d(np.zeros((4, 4)), ops.KERNELS["blur"], stride=1.5)
        with pytest.raises(ValueError, match=r"shape \(4,\)"):
            ops.conv2d(np.zeros(4), ops.KERNELS["blur"])


class TestFilters:
    def test_vertical_edge_lights_vertical_sobel_only(self):
        image = step_edge(vertical=True)
        v = ops.conv2d(image, ops.KERNELS["sobel_v"])
        h = ops.conv2d(image, ops.KERNELS["sobel_h"])
        assert np.abs(v).max() == pytest.approx(4.0)  # 1+2+1 across the edge
        assert np.abs(h).max() == 0.0
        # only the windows that straddle the edge (input columns 7|8) respond, positively
        assert set(np.nonzero(v.max(axis=0))[0]) == {6, 7}
        assert v.min() == 0.0

    def test_horizontal_edge_lights_horizontal_sobel_only(self):
        image = step_edge(vertical=False)
        v = ops.conv2d(image, ops.KERNELS["sobel_v"])
        h = ops.conv2d(image, ops.KERNELS["sobel_h"])
        assert np.abs(h).max() == pytest.approx(4.0)
        assert np.abs(v).max() == 0.0

    def test_blur_preserves_constant_image(self):
        out = ops.conv2d(np.full((10, 10), 0.7), ops.KERNELS["blur"])
        np.testing.assert_allclose(out, 0.7, rtol=1e-6)

    def test_blur_lowers_noise_variance(self):
        noise = np.random.default_rng(3).normal(0.5, 0.1, (64, 64))
        blurred = ops.conv2d(noise, ops.KERNELS["blur"])
        # white noise: variance is multiplied by sum(w^2) = 36/256 ~ 0.14
        ratio = blurred.var() / noise.var()
        assert 0.08 < ratio < 0.22

    def test_outline_is_zero_on_constant_image(self):
        out = ops.conv2d(np.full((10, 10), 0.3), ops.KERNELS["outline"])
        np.testing.assert_allclose(out, 0.0, atol=1e-6)

    def test_outline_responds_to_a_dot(self):
        image = np.zeros((5, 5))
        image[2, 2] = 1.0
        out = ops.apply_filter(image, "outline")
        assert out[2, 2] == 8.0
        assert out[1, 1] == -1.0

    def test_apply_filter_same_size_float32(self):
        image = np.random.default_rng(4).random((20, 30)).astype(np.float32)
        for name in ops.FILTER_NAMES:
            out = ops.apply_filter(image, name)
            assert out.shape == (20, 30)
            assert out.dtype == np.float32
        np.testing.assert_allclose(
            ops.apply_filter(image, "blur")[1:-1, 1:-1],
            ops.conv2d(image, ops.KERNELS["blur"]),
            rtol=1e-5,
        )

    def test_apply_filter_keeps_channel_axis(self):
        image = np.random.default_rng(5).random((8, 8, 1))
        out = ops.apply_filter(image, "sobel_h")
        assert out.shape == (8, 8, 1)
        np.testing.assert_allclose(out[..., 0], ops.apply_filter(image[..., 0], "sobel_h"))

    def test_unknown_filter_lists_valid_names(self):
        with pytest.raises(ConfigurationError, match=r"'sharpen'.*sobel_h, sobel_v, blur, outline"):
            ops.apply_filter(np.zeros((4, 4)), "sharpen")

    def test_apply_filter_bad_input(self):
        with pytest.raises(TypeError, match="NoneType"):
            ops.apply_filter(None, "blur")
        with pytest.raises(TypeError, match="Received: 3"):
            ops.apply_filter(np.zeros((4, 4)), 3)
        with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
            ops.apply_filter(np.zeros((4, 4, 3)), "blur")

"""The course's operations against independent references (scipy.signal, scipy.ndimage, numpy
by hand), and apply_filter's border: zeros as the Keras front-end, or the image mirrored.

QA round 71: with zero padding only, a bright image's filter response had a false edge along
its frame (outline of a one-pixel image of value v was 8v, its blur v/4), which took over the
display scaling of `radlens filter` and TensorBoard's filter images.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, signal

from radlens.models import ops
from radlens.models.preprocessing import preprocess
from tests.conftest import shared_data_path

SHAPES = [(1, 1), (1, 5), (5, 1), (2, 3), (3, 3), (17, 12)]


def tf_same_pads(n: int, f: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + f - n, 0)
    return total // 2, total - total // 2


class TestConvolutionAgainstScipy:
    @pytest.mark.parametrize("shape", [(1, 1), (2, 2), (7, 4), (9, 7), (10, 10)])
    @pytest.mark.parametrize("kernel_shape", [(1, 1), (2, 2), (3, 2), (3, 3)])
    @pytest.mark.parametrize("stride", [1, 2, 3])
    def test_valid_and_same_are_scipy_correlate2d(self, shape, kernel_shape, stride):
        rng = np.random.default_rng(sum(shape) * 7 + stride)
        x = rng.random(shape)
        k = rng.standard_normal(kernel_shape)
        if kernel_shape[0] <= shape[0] and kernel_shape[1] <= shape[1]:
            expected = signal.correlate2d(x, k, mode="valid")[::stride, ::stride]
            np.testing.assert_allclose(ops.conv2d(x, k, stride=stride), expected, atol=1e-12)
        pads = (
            tf_same_pads(shape[0], kernel_shape[0], stride),
            tf_same_pads(shape[1], kernel_shape[1], stride),
        )
        same = signal.correlate2d(np.pad(x, pads), k, mode="valid")[::stride, ::stride]
        same = same[: -(-shape[0] // stride), : -(-shape[1] // stride)]
        np.testing.assert_allclose(
            ops.conv2d(x, k, stride=stride, padding="same"), same, atol=1e-12
        )

    def test_not_flipped_scipy_convolve_needs_the_kernel_turned(self):
        rng = np.random.default_rng(3)
        x, k = rng.random((8, 9)), rng.standard_normal((3, 3))
        np.testing.assert_allclose(
            ops.conv2d(x, k), signal.convolve2d(x, k[::-1, ::-1], mode="valid"), atol=1e-12
        )


class TestPoolingByHand:
    @staticmethod
    def by_hand(a, f, s, mode, padding):
        height, width = a.shape[:2]
        if padding == "valid":
            out_h, out_w, top, left = (height - f) // s + 1, (width - f) // s + 1, 0, 0
        else:
            out_h, out_w = -(-height // s), -(-width // s)
            top, left = tf_same_pads(height, f, s)[0], tf_same_pads(width, f, s)[0]
        out = np.zeros((out_h, out_w, *a.shape[2:]))
        for i in range(out_h):
            for j in range(out_w):
                r, c = i * s - top, j * s - left
                window = a[max(r, 0) : min(r + f, height), max(c, 0) : min(c + f, width)]
                out[i, j] = window.max(axis=(0, 1)) if mode == "max" else window.mean(axis=(0, 1))
        return out

    @pytest.mark.parametrize("shape", [(1, 1), (1, 4), (3, 3), (5, 7), (9, 4, 2)])
    @pytest.mark.parametrize("mode", ["max", "average"])
    @pytest.mark.parametrize("padding", ["valid", "same"])
    def test_matches(self, shape, mode, padding):
        a = np.random.default_rng(len(shape) + shape[0]).standard_normal(shape)
        for size in (1, 2, 3):
            for stride in (None, 1, 2, 3):
                if padding == "valid" and size > min(shape[:2]):
                    continue
                got = ops.pool2d(a, size=size, stride=stride, mode=mode, padding=padding)
                want = self.by_hand(a, size, size if stride is None else stride, mode, padding)
                np.testing.assert_allclose(got, want, atol=1e-12)


class TestFilterBorder:
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("kind", ops.FILTER_NAMES)
    def test_zero_is_ndimage_constant_and_reflect_is_ndimage_reflect(self, shape, kind):
        x = np.random.default_rng(shape[0] * 31 + shape[1]).random(shape)
        kernel = ops.KERNELS[kind].astype(np.float64)
        np.testing.assert_allclose(
            ops.apply_filter(x, kind), ndimage.correlate(x, kernel, mode="constant"), atol=1e-5
        )
        np.testing.assert_allclose(
            ops.apply_filter(x, kind, border="reflect"),
            ndimage.correlate(x, kernel, mode="reflect"),
            atol=1e-5,
        )

    def test_sobel_signs_against_ndimage_sobel(self):
        x = np.random.default_rng(8).random((12, 15))
        # scipy's sobel along axis 0 is bottom minus top; radlens' sobel_h is top minus bottom
        for border, mode in (("zero", "constant"), ("reflect", "reflect")):
            np.testing.assert_allclose(
                ops.apply_filter(x, "sobel_h", border=border),
                -ndimage.sobel(x, axis=0, mode=mode),
                atol=1e-5,
            )
            np.testing.assert_allclose(
                ops.apply_filter(x, "sobel_v", border=border),
                -ndimage.sobel(x, axis=1, mode=mode),
                atol=1e-5,
            )

    def test_a_constant_image_has_no_false_frame_when_mirrored(self):
        image = np.full((6, 9), 0.8)
        np.testing.assert_allclose(ops.apply_filter(image, "blur", border="reflect"), 0.8)
        for kind in ("sobel_h", "sobel_v", "outline"):
            np.testing.assert_allclose(
                ops.apply_filter(image, kind, border="reflect"), 0.0, atol=1e-6
            )
        # zero padding, as the Keras front-end: the frame shows
        assert ops.apply_filter(image, "outline")[0, 0] == pytest.approx(5 * 0.8)
        assert ops.apply_filter(image, "blur")[0, 0] == pytest.approx(0.8 * 9 / 16)

    def test_one_pixel_image(self):
        one = np.array([[0.8]])
        assert ops.apply_filter(one, "blur", border="reflect")[0, 0] == pytest.approx(0.8)
        assert ops.apply_filter(one, "outline", border="reflect")[0, 0] == pytest.approx(
            0.0, abs=1e-6
        )
        assert ops.apply_filter(one, "blur")[0, 0] == pytest.approx(0.2)  # 4/16 of it
        assert ops.apply_filter(one, "outline")[0, 0] == pytest.approx(6.4)

    def test_channel_axis_dtype_and_shape_kept(self):
        image = np.random.default_rng(2).random((7, 5, 1)).astype(np.float32)
        out = ops.apply_filter(image, "sobel_v", border="reflect")
        assert out.shape == (7, 5, 1) and out.dtype == np.float32

    def test_real_radiograph_mirrored_matches_ndimage(self):
        path = shared_data_path("dicom", "rsna_chest_cr_tagged_monochrome1.dcm")
        pixels = preprocess(path.read_bytes(), size=(96, 80)).pixels.astype(np.float64)
        for kind in ops.FILTER_NAMES:
            np.testing.assert_allclose(
                ops.apply_filter(pixels, kind, border="reflect"),
                ndimage.correlate(pixels, ops.KERNELS[kind].astype(np.float64), mode="reflect"),
                atol=1e-5,
            )

    def test_bad_border_quotes_it(self):
        with pytest.raises(ValueError, match=r"border must be 'zero' or 'reflect'.*'mirror'"):
            ops.apply_filter(np.zeros((3, 3)), "blur", border="mirror")
        with pytest.raises(TypeError, match="border=1"):
            ops.apply_filter(np.zeros((3, 3)), "blur", border=1)  # type: ignore[arg-type]
        assert ops.BORDERS == ("zero", "reflect")

"""The course's numpy convolution on integer images (QA 92 kept QA 81's rule): a float image is
computed in its own float dtype, an integer or boolean one, which has none, in float64, so an
integer kernel gives the exact integer sums, past float32's 2**24 too (a Keras layer's float32
cast would round them)."""

from __future__ import annotations

import numpy as np
import pytest

from radlens.models import ops


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_int32_sums_past_2_to_the_24_are_exact(padding: str) -> None:
    rng = np.random.default_rng(92)
    image = rng.integers(2**24, 2**26, (9, 11), dtype=np.int32)
    kernel = rng.integers(-3, 4, (3, 3))
    got = ops.conv2d(image, kernel, stride=2, padding=padding)
    assert got.dtype == np.float64
    padded = np.pad(image.astype(np.int64), 1) if padding == "same" else image.astype(np.int64)
    exact = np.array(
        [
            [
                int((padded[i : i + 3, j : j + 3] * kernel).sum())
                for j in range(0, padded.shape[1] - 2, 2)
            ]
            for i in range(0, padded.shape[0] - 2, 2)
        ]
    )
    np.testing.assert_array_equal(got, exact)
    # float32 arithmetic (a Keras layer's) does not hold them
    rounded = ops.conv2d(image.astype(np.float32), kernel, stride=2, padding=padding)
    assert rounded.dtype == np.float32 and not np.array_equal(rounded, exact)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int64, np.bool_])
def test_every_integer_and_boolean_image_is_computed_in_float64(dtype: type) -> None:
    image: np.ndarray = (np.arange(48).reshape(6, 8) % 5).astype(dtype)
    for kernel in (ops.KERNELS["outline"], np.ones((2, 2), dtype=np.int8)):
        got = ops.conv2d(image, kernel, padding="same")
        assert got.dtype == np.float64
        np.testing.assert_array_equal(
            got, ops.conv2d(image.astype(np.float64), kernel, padding="same")
        )

"""Pooling follows conv2d's documented dtype rule (QA 96): a float input keeps its float dtype
(float16 gives float32), an integer or boolean one is computed in float64. pool2d and
global_pool returned float64 whatever the input, so a float32 feature map doubled in size
after pooling while the convolution before it had kept float32."""

from __future__ import annotations

import numpy as np
import pytest

from radlens.models import ops

RULE = [  # input dtype -> conv2d's (documented) output dtype
    (np.float32, np.float32),
    (np.float64, np.float64),
    (np.float16, np.float32),
    (np.int32, np.float64),
    (np.uint8, np.float64),
    (np.bool_, np.float64),
]


def _image(dtype: type, channels: int | None) -> np.ndarray:
    shape = (5, 7) if channels is None else (5, 7, channels)
    values = np.arange(np.prod(shape)).reshape(shape) % 11
    return (values > 4 if dtype is np.bool_ else values).astype(dtype)


@pytest.mark.parametrize(("dtype", "expected"), RULE)
def test_conv2d_rule_is_the_one_documented(dtype: type, expected: type) -> None:
    assert ops.conv2d(_image(dtype, None), np.ones((3, 3))).dtype == expected


@pytest.mark.parametrize(("dtype", "expected"), RULE)
@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("channels", [None, 3])
def test_pool2d_keeps_conv2d_dtype(
    dtype: type, expected: type, mode: str, padding: str, channels: int | None
) -> None:
    x = _image(dtype, channels)
    got = ops.pool2d(x, size=2, mode=mode, padding=padding)
    assert got.dtype == expected
    # the same numbers as in float64 (float32's rounding only)
    reference = ops.pool2d(x.astype(np.float64), size=2, mode=mode, padding=padding)
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, rtol=1e-6)


@pytest.mark.parametrize(("dtype", "expected"), RULE)
@pytest.mark.parametrize("mode", ["max", "average"])
def test_global_pool_keeps_conv2d_dtype(dtype: type, expected: type, mode: str) -> None:
    x = _image(dtype, 3)
    got = ops.global_pool(x, mode)
    assert isinstance(got, np.ndarray) and got.dtype == expected and got.shape == (3,)
    np.testing.assert_allclose(got, ops.global_pool(x.astype(np.float64), mode), rtol=1e-6)
    # a 2-D input still gives a Python float, whatever the dtype
    assert type(ops.global_pool(_image(dtype, None), mode)) is float


def test_a_conv_pool_stack_stays_in_float32() -> None:
    """What the course's stack does to a preprocessed (float32) image."""
    x = _image(np.float32, None)
    features = ops.conv2d(x, ops.filter_kernel("sobel_v"), padding="same")
    pooled = ops.pool2d(features, size=2, padding="same")
    assert (features.dtype, pooled.dtype) == (np.float32, np.float32)

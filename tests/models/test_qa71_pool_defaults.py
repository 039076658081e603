"""pool2d's default stride is Keras': None, the window size (QA round 71: it was 2 whatever the
size, so ``pool2d(x, size=3)`` pooled overlapping windows where ``MaxPooling2D(3)`` does not)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from radlens.models import ops


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize(
    ("mode", "layer"),
    [("max", keras.layers.MaxPooling2D), ("average", keras.layers.AveragePooling2D)],
)
def test_defaults_match_the_keras_layer_defaults(size, padding, mode, layer):
    x = np.random.default_rng(size).standard_normal((9, 7)).astype(np.float32)
    expected = np.asarray(layer(size, padding=padding)(x[None, ..., None]))[0, ..., 0]
    got = ops.pool2d(x, size=size, mode=mode, padding=padding)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_size_three_default_is_non_overlapping():
    x = np.arange(36, dtype=np.float64).reshape(6, 6)
    np.testing.assert_array_equal(ops.pool2d(x, size=3), [[14, 17], [32, 35]])

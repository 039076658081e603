"""Grad-CAM maps are drawn where the layer's cells look (models.gradcam.cell_centres).

A strided network with symmetric zero padding (Keras' ResNet50: ZeroPadding + "valid"
convolutions) centres feature cell ``o`` at input pixel ``stride * o``, not at the
``stride * (o + 0.5)`` that upsampling the map as an image assumes; the map came out half a
cell (16 px at 224, ResNet50) down and right of the evidence (QA round 43). Here a network
whose geometry is known exactly: five stages of ZeroPadding(1) + 3x3 "valid" convolution with
stride 2, all weights positive, so it is linear on non-negative images and cell ``o`` of its
4x4 map at 128 px is centred at ``32 * o`` with a receptive field of +-31 px.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from radlens.models.gradcam import _resampling, cell_centres, gradcam

SIZE = 128


def strided_net() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 1))
    x = inputs
    for stage in range(5):
        x = keras.layers.ZeroPadding2D(1)(x)
        x = keras.layers.Conv2D(
            1,
            3,
            strides=2,
            padding="valid",
            activation="relu",
            name=f"stage{stage}",
            kernel_initializer=keras.initializers.Constant(1 / 9),
            bias_initializer="zeros",
        )(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="scores")(x)
    model = keras.Model(inputs, outputs, name="strided")
    model.get_layer("scores").set_weights(
        [np.array([[-1.0, 1.0]], np.float32), np.zeros(2, np.float32)]
    )
    return model


@pytest.fixture(scope="module")
def net() -> keras.Model:
    return strided_net()


def test_centres_are_measured_where_the_cells_look(net):
    centres = cell_centres(net)
    assert centres is not None
    rows, cols = centres
    # interior cells see all of their +-31 px field: centred at 32 * o exactly (a half-pixel
    # grid would say 47.5, 79.5); the cell at 0 sees only the inner half of its field
    np.testing.assert_allclose(rows[1:], [32, 64, 96], atol=0.5)
    np.testing.assert_allclose(cols[1:], [32, 64, 96], atol=0.5)
    assert 5 < rows[0] < 16 and 5 < cols[0] < 16


@pytest.mark.parametrize("cell", [(2, 2), (1, 3), (3, 1)])
def test_the_heat_is_drawn_on_the_spot_the_cell_saw(net, cell):
    """A dot on the centre of one cell lights that cell only (its neighbours' fields end 1 px
    short of it); the map's peak must be on the dot, not half a cell (16 px) down-right."""
    r, c = (32 * cell[0], 32 * cell[1])
    image = np.zeros((1, SIZE, SIZE, 1), np.float32)
    image[0, r, c, 0] = 1.0
    heat = gradcam(net, image, class_index=1)[0]
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(peak[0] - r) <= 1 and abs(peak[1] - c) <= 1, (peak, (r, c))


def test_resampling_interpolates_between_centres_and_holds_the_ends():
    weights = _resampling(10, np.array([2.0, 6.0]))
    assert weights.shape == (10, 2)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(weights[:3, 0], 1.0)  # at and before the first centre
    np.testing.assert_allclose(weights[4], [0.5, 0.5])  # half-way
    np.testing.assert_allclose(weights[6:, 1], 1.0)  # at and after the last
    np.testing.assert_allclose(_resampling(4, np.array([1.5])), np.ones((4, 1)))

"""Grad-CAM's cell-centre measurement runs its probes as one compiled graph, not eagerly
(QA 81: eagerly, the four backward passes to the input left ~155-175 MiB more resident in the
service for its whole life, ResNet50 224 px; docs/benchmarks/serve.md)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from radlens.models import gradcam


def test_probes_are_traced_not_run_eagerly():
    inputs = keras.Input((32, 32, 1))
    # positive kernels on the probe's positive image: no ReLU cell is dead, so every probed
    # cell has a gradient whatever the seed (random kernels left one dead in some test orders,
    # and the measurement then rightly gave None)
    live = {"activation": "relu", "kernel_initializer": "ones"}
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv", **live)(inputs)
    feature = keras.layers.Conv2D(4, 3, strides=2, name="last", **live)(x)
    pooled = keras.layers.GlobalAveragePooling2D()(feature)
    outputs = keras.layers.Dense(2, activation="softmax")(pooled)
    model = keras.Model(inputs, outputs)
    traced = gradcam._trace(model, ("last",), want_score_input=True)
    eager: list[bool] = []

    class Spy:
        inputs, outputs = traced.inputs, traced.outputs

        def __call__(self, *args, **kwargs):
            eager.append(tf.executing_eagerly())
            return traced(*args, **kwargs)

    reference = gradcam._measure_centres(traced)  # the centres themselves are unchanged
    centres = gradcam._measure_centres(Spy())
    assert eager and not any(eager), eager
    assert reference is not None and centres is not None
    for got, want in zip(centres, reference, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)

"""GradCamCallback: Grad-CAM overlays of fixed validation images in TensorBoard each epoch, for
the simple CNN and for ResNet50 compiled with the training metrics."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from radlens.training.gradcam_callback import GradCamCallback, pick_examples
from radlens.training.metrics import keras_metrics


class TestPickExamples:
    def test_round_robin_over_classes(self) -> None:
        labels = np.array([1, 1, 1, 0, 1, 0, 2])
        assert pick_examples(labels, 5).tolist() == [3, 0, 6, 5, 1]

    def test_count_larger_than_the_data(self) -> None:
        assert sorted(pick_examples(np.array([0, 1, 0]), 10).tolist()) == [0, 1, 2]

    def test_zero_and_negative(self) -> None:
        assert pick_examples(np.array([0, 1]), 0).tolist() == []
        with pytest.raises(ValueError, match="count=-1"):
            pick_examples(np.array([0, 1]), -1)


def _logged(log_dir: Path) -> dict[str, dict[int, Any]]:
    """tag -> step -> (uint8 image, description) from the event files."""
    from PIL import Image

    found: dict[str, dict[int, Any]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                png = value.tensor.string_val[2]
                with Image.open(io.BytesIO(png)) as image:
                    pixels = np.asarray(image)
                description = value.metadata.summary_description
                found.setdefault(value.tag, {})[event.step] = (pixels, description)
    return found


def _data(size: int, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.random((n, size, size, 1), dtype=np.float32)
    y = np.array([0, 1] * (n // 2), dtype=np.int32)
    return x, y


def test_resnet50_compiled_with_training_metrics(tmp_path: Path) -> None:
    from radlens.models.architectures import build_model
    from radlens.models.gradcam import gradcam
    from radlens.models.overlay import blend

    keras.utils.set_random_seed(0)
    model = build_model("resnet50", input_shape=(32, 32, 1), num_classes=2, weights=None)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=keras_metrics(2),  # custom metric classes: Grad-CAM must not need them
    )
    x, y = _data(32, n=4)
    callback = GradCamCallback(tmp_path, x, y, ["normal", "abnormal"], count=2)
    # the callback as fit() drives it (a ResNet50 training step costs a minute on 2 shared
    # cores; the simple CNN test below goes through fit)
    callback.set_model(model)
    for epoch in (0, 1):
        callback.on_epoch_end(epoch)

    assert callback.logged_epochs == [0, 1]
    # (Grad-CAM re-traces the graph with clone_model, which cannot rebuild a model compiled
    # with custom metric classes: explain an uncompiled view with the same layers, as the
    # callback does)
    uncompiled = keras.Model(model.inputs, model.outputs)
    logged = _logged(tmp_path)
    assert set(logged) == {"gradcam/0_normal", "gradcam/1_abnormal"}
    for k, tag in enumerate(sorted(logged)):
        assert set(logged[tag]) == {0, 1}
        pixels, description = logged[tag][1]
        assert pixels.shape == (32, 32, 3)
        assert "backbone/conv5_block3_out" in description
        assert "Grad-CAM of abnormal" in description  # binary: the positive class
        # the overlay is Grad-CAM of the model's current weights, blended
        expected = blend(x[k, ..., 0], gradcam(uncompiled, x[k], class_index=1))
        np.testing.assert_array_equal(pixels, expected)


def test_simple_cnn_every_second_epoch(tmp_path: Path) -> None:
    from radlens.models.architectures import build_model

    keras.utils.set_random_seed(0)
    model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, _ = _data(32, n=6)
    y = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    callback = GradCamCallback(tmp_path, x, y, ["a", "b", "c"], count=3, every=2)
    model.fit(x, y, batch_size=6, epochs=4, verbose=0, callbacks=[callback])
    assert callback.logged_epochs == [1, 3]
    logged = _logged(tmp_path)
    assert set(logged) == {"gradcam/0_a", "gradcam/1_b", "gradcam/2_c"}
    for steps in logged.values():
        assert set(steps) == {1, 3}
        assert " at conv4" in steps[3][1]


def test_no_images_no_events(tmp_path: Path) -> None:
    callback = GradCamCallback(tmp_path, np.zeros((0, 32, 32, 1)), np.zeros(0), ["a", "b"])
    callback.on_epoch_end(0)
    assert callback.logged_epochs == []
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_every_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every=0"):
        GradCamCallback(tmp_path, np.zeros((1, 8, 8, 1)), np.zeros(1), ["a", "b"], every=0)

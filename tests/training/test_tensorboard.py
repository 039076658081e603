"""TensorBoard: the event files of a tiny run hold every kind of summary the course teaches,
in two sub-runs only (Keras' train and validation), everything else being tags in them."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from radlens.training.callbacks import tensorboard_callbacks
from radlens.training.metrics import keras_metrics


def _tiny_model() -> keras.Model:
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def read_events(directory: Path) -> dict[str, set[str]]:
    """Tags per plugin (scalars, images, histograms, hparams) + 'graph' over all event files."""
    found: dict[str, set[str]] = {}
    for path in directory.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if event.HasField("graph_def"):
                found.setdefault("graph", set()).add(str(path.parent.name))
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name or value.WhichOneof("value")
                found.setdefault(plugin, set()).add(f"{path.parent.name}/{value.tag}")
    return found


@pytest.fixture(scope="module")
def event_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((24, 32, 32, 1), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)
    y[:2] = [0, 1]
    model = _tiny_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=keras_metrics(2),
    )
    log_dir = tmp_path_factory.mktemp("tb")
    callbacks = tensorboard_callbacks(
        log_dir,
        validation=(x[:8], y[:8]),
        class_names=["normal", "abnormal"],
        hparams={"architecture": "tiny", "filters": (), "learning_rate": 1e-3, "augment": True},
        histogram_freq=1,
        samples=3,
    )
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    val = tf.data.Dataset.from_tensor_slices((x[:8], y[:8])).batch(8)
    model.fit(train, validation_data=val, epochs=2, callbacks=callbacks, verbose=0, shuffle=False)
    return log_dir


def test_scalars_for_train_and_validation_with_learning_rate(event_dir: Path) -> None:
    scalars = read_events(event_dir)["scalars"]
    for name in ("loss", "accuracy", "auc", "precision", "sensitivity", "specificity"):
        assert f"train/epoch_{name}" in scalars
        assert f"validation/epoch_{name}" in scalars
    assert "train/epoch_learning_rate" in scalars


def test_graph_and_histograms(event_dir: Path) -> None:
    found = read_events(event_dir)
    assert "validation" in found["graph"]  # op graph of the forward pass: validation's graph
    assert "train/keras" in found["graph_keras_model"]  # Keras' conceptual graph
    assert any(tag.startswith("train/conv/kernel") for tag in found["histograms"])


def test_images_inputs_filters_confusion_and_roc(event_dir: Path) -> None:
    images = read_events(event_dir)["images"]
    assert "validation/inputs/as_model_sees_them" in images
    for name in ("sobel_h", "sobel_v", "blur", "outline"):
        assert f"validation/filters/{name}" in images
    assert "validation/validation/confusion_matrix" in images
    assert "validation/validation/roc_curve" in images


def test_gradcam_overlays_of_fixed_validation_images_each_epoch(event_dir: Path) -> None:
    images = read_events(event_dir)["images"]
    # samples=3 images, round-robin over the classes (y[:2] == [0, 1])
    assert {t for t in images if t.startswith("validation/gradcam/")} == {
        "validation/gradcam/0_normal",
        "validation/gradcam/1_abnormal",
        "validation/gradcam/2_normal",
    }
    steps: dict[str, set[int]] = {}
    for path in (event_dir / "validation").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if not value.tag.startswith("gradcam/"):
                    continue
                steps.setdefault(value.tag, set()).add(event.step)
                # an RGB PNG (blend's colour map), encoded by tf.summary.image
                width, height, png = value.tensor.string_val[:3]
                assert png.startswith(b"\x89PNG") and (int(width), int(height)) == (32, 32)
    assert steps and all(s == {0, 1} for s in steps.values())


def test_hparams(event_dir: Path) -> None:
    hparams = read_events(event_dir)["hparams"]
    assert len(hparams) >= 2  # the experiment config and this session's values
    # the session is the validation run, whose own scalars are the metrics it lists
    assert all(tag.startswith("validation/") for tag in hparams)


def test_only_the_train_and_validation_sub_runs(event_dir: Path) -> None:
    """Every event file is in train/ or validation/: a run adds two entries to TensorBoard's
    run selector, not seven (tensorboard, graph, images, ..., gradcam)."""
    folders = {p.parent.relative_to(event_dir) for p in event_dir.rglob("events.out.tfevents.*")}
    assert folders == {Path("train"), Path("validation")}


def test_confusion_matrix_is_logged_each_epoch(event_dir: Path) -> None:
    steps = set()
    for path in (event_dir / "validation").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if any(v.tag.endswith("confusion_matrix") for v in event.summary.value):
                steps.add(event.step)
    assert steps == {0, 1}

"""The course CNN: the README course section's parameter counts are the models' own, layer by
layer (and the course's arithmetic); the CNN learns on real radiographs and round-trips the
model store."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from radlens.models.architectures import build_model
from radlens.models.preprocessing import PREPROCESSING_VERSION
from radlens.models.registry import ModelRegistry
from radlens.training.metrics import roc_auc
from tests.conftest import REPO_ROOT, shared_data_path

README = (REPO_ROOT / "README.md").read_text()


def course_section() -> str:
    match = re.search(r"^## The course, kept as working parts\n(.*?)^## ", README, re.M | re.S)
    assert match, "README has no 'The course, kept as working parts' section"
    return " ".join(match[1].split())


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_small_cnn_counts_match_the_model():
    text = course_section()
    found = re.search(
        r"small CNN has ([\d,]+) parameters at 64x64 with two classes: ([\d,]+) in the four "
        r"convolutions \(([\d,]+) \+ ([\d,]+) \+ ([\d,]+) \+ ([\d,]+)\), ([\d,]+) in `dense1`.*?"
        r"([\d,]+) in `dense2` and ([\d,]+) in the output.*?\(([\d,]+) at 28x28\).*?adds "
        r"([\d,]+) to `conv1`",
        text,
    )
    assert found, "the course section states the small CNN's parameter counts"
    total, convs, c1, c2, c3, c4, dense1, dense2, head, at28, per_filter = map(
        number, found.groups()
    )
    model = build_model("simple_cnn", input_shape=(64, 64, 1), num_classes=2)
    layers = {layer.name: layer.count_params() for layer in model.layers}
    assert model.count_params() == total
    assert [layers[f"conv{i}"] for i in range(1, 5)] == [c1, c2, c3, c4]
    assert c1 + c2 + c3 + c4 == convs
    assert (layers["dense1"], layers["dense2"], layers["predictions"]) == (dense1, dense2, head)
    # the course's arithmetic: 3x3 kernels + biases; flatten of 16x16x64 into 128 units
    assert (c1, c2, c3, c4) == (
        9 * 1 * 32 + 32,
        9 * 32 * 32 + 32,
        9 * 32 * 64 + 64,
        9 * 64 * 64 + 64,
    )
    assert dense1 == 16 * 16 * 64 * 128 + 128
    small = build_model("simple_cnn", input_shape=(28, 28, 1), num_classes=2)
    assert small.count_params() == at28
    filtered = build_model(
        "simple_cnn", input_shape=(64, 64, 1), num_classes=2, filters=("sobel_h", "outline")
    )
    assert filtered.count_params() == total + 2 * per_filter


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_resnet50_count_matches_the_model():
    found = re.search(r"ResNet50 at 224x224 with two classes has ([\d,]+)", course_section())
    assert found, "the course section states ResNet50's parameter count"
    model = build_model("resnet50", input_shape=(224, 224, 1), num_classes=2)
    assert model.count_params() == number(found[1])


def test_small_cnn_learns_on_real_radiographs_and_round_trips_the_store(tmp_path):
    """512 PneumoniaMNIST training images (a random draw: the file is sorted by label), 3
    epochs with the filter front-end: validation AUC well above chance (0.97-0.98 measured at
    seeds 0 and 1), and the stored model scores exactly as the trained one."""
    with np.load(shared_data_path("pneumoniamnist", "pneumoniamnist_28_trainval.npz")) as data:
        pick = np.random.default_rng(0).choice(len(data["train_labels"]), 512, replace=False)
        x = data["train_images"][pick].astype(np.float32)[..., None] / 255.0
        y = data["train_labels"][pick, 0].astype(np.int64)
        x_val = data["val_images"][:256].astype(np.float32)[..., None] / 255.0
        y_val = data["val_labels"][:256, 0].astype(np.int64)
    keras.utils.set_random_seed(0)
    filters = ["sobel_h", "sobel_v", "blur", "outline"]
    model = build_model("simple_cnn", input_shape=(28, 28, 1), num_classes=2, filters=filters)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    scores = np.asarray(model.predict(x_val, verbose=0))
    assert roc_auc(y_val, scores[:, 1]) > 0.9

    registry = ModelRegistry(tmp_path)
    registry.save(
        model,
        name="course-cnn",
        architecture="simple_cnn",
        class_names=["normal", "pneumonia"],
        threshold=0.5,
        window=None,
        filters=filters,
        metrics={},
        training_config={},
        data_fingerprint=None,
    )
    loaded = registry.load("course-cnn")
    assert loaded.manifest.preprocessing_version == PREPROCESSING_VERSION
    assert loaded.model.count_params() == model.count_params()
    np.testing.assert_array_equal(np.asarray(loaded.model.predict(x_val, verbose=0)), scores)

"""Grad-CAM (models.gradcam) and the heatmap overlay (models.overlay).

The models here are tiny (32-64 px, ``weights=None``) copies of the two radlens structures:
a plain Conv2D stack ("simple_cnn") and ResNet50 as a nested functional model named
"backbone" behind gray->RGB and scaling layers. Three kinds of evidence that the maps are
right, each of which a wrong implementation fails:

- exactness: for a model whose head is global-average-pooling + Dense, Grad-CAM equals CAM
  (Selvaraju et al. 2017, section 3.1), ``ReLU(sum_k w_k^c A^k)``; checked through the nested
  ResNet backbone against a feature map computed independently;
- construction: a detector whose weights respond to a bright square puts the peak on the
  square for the class it votes for, and gives an all-zero map for the class it votes against;
- learning: radlens' simple_cnn, trained for a few seconds on synthetic images whose positive
  class has a bright square at a random place (every image also has a brighter line as a
  distractor), localises that square in >= 70% of positive images (chance: about 10%; the
  brightest pixel: about 0%). A sign error or swapped axes fails it.
"""

from __future__ import annotations

import io
import threading

import keras
import numpy as np
import pytest
from PIL import Image

from radlens.models.architectures import build_model, set_backbone_trainable
from radlens.models.errors import ConfigurationError, InvalidImageError
from radlens.models.gradcam import (
    GradCamResult,
    cell_centres,
    explain_image,
    find_layer_path,
    grad_model,
    gradcam,
    gradcam_explain,
)
from radlens.models.overlay import COLORMAPS, blend, render_overlay

# --- tiny models -------------------------------------------------------------------------


def square_detector(size: int = 32) -> keras.Model:
    """A model built to respond to bright squares: a 3x3 mean filter minus 0.5, ReLU, global
    average pooling, and a head whose class 1 votes for that response and class 0 against."""
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="detector")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="scores")(x)
    model = keras.Model(inputs, outputs, name="square_detector")
    model.get_layer("detector").set_weights(
        [np.full((3, 3, 1, 1), 1 / 9, np.float32), np.array([-0.5], np.float32)]
    )
    model.get_layer("scores").set_weights(
        [np.array([[-4.0, 4.0]], np.float32), np.zeros(2, np.float32)]
    )
    return model


def squares(n: int, rng: np.random.Generator, *, size: int = 32, side: int = 6, positive=None):
    """Synthetic findings: noise (values 0..0.35) with a distractor in every image — a thin
    12-px line at full brightness, horizontal or vertical — and, in positives, a bright
    side x side square (0.8..1.0) at a random place away from the line. The line is brighter
    than the square, so "where is the image brightest" does not find the finding.

    Returns images (n, size, size, 1), labels (n,) and the squares (n, 4) as r0, c0, r1, c1.
    """
    images = rng.uniform(0.0, 0.35, (n, size, size)).astype(np.float32)
    labels = np.arange(n) % 2 if positive is None else np.full(n, int(positive))
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        while True:
            r, c = rng.integers(0, size - side + 1, 2)
            lr, lc = rng.integers(0, size - 12 + 1, 2)
            line = np.zeros((size, size), dtype=bool)
            if rng.integers(0, 2):
                line[lr : lr + 12, lc] = True
            else:
                line[lr, lc : lc + 12] = True
            near = np.zeros((size, size), dtype=bool)
            near[max(r - 2, 0) : r + side + 2, max(c - 2, 0) : c + side + 2] = True
            if not (line & near).any():
                break
        boxes[i] = (r, c, r + side, c + side)
        images[i][line] = 1.0
        if labels[i]:
            images[i, r : r + side, c : c + side] = rng.uniform(0.8, 1.0)
    return images[..., np.newaxis], labels, boxes


def peak_in_box(heatmap: np.ndarray, box: np.ndarray, margin: int = 0) -> bool:
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    r0, c0, r1, c1 = box
    return bool(r0 - margin <= row < r1 + margin and c0 - margin <= col < c1 + margin)


@pytest.fixture(scope="module")
def cnn() -> keras.Model:
    keras.utils.set_random_seed(1)
    return build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)


@pytest.fixture(scope="module")
def resnet() -> keras.Model:
    keras.utils.set_random_seed(2)
    return build_model("resnet50", input_shape=(64, 64, 1), num_classes=2)


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 1)).astype(np.float32)


def _check_maps(maps: np.ndarray, shape: tuple[int, ...]) -> None:
    assert maps.shape == shape
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0


# --- shapes, ranges, both architectures ----------------------------------------------------


class TestShapes:
    def test_simple_cnn_single_image(self, cnn):
        heatmap = gradcam(cnn, _images(1, 32)[0])
        _check_maps(heatmap, (32, 32))
        assert heatmap.max() == pytest.approx(1.0)  # min-max normalised: the peak is 1

    def test_simple_cnn_batch_matches_single_images(self, cnn):
        batch = _images(3, 32)
        maps = gradcam(cnn, batch, class_index=1)
        _check_maps(maps, (3, 32, 32))
        single = gradcam(cnn, batch[2], class_index=1)
        np.testing.assert_allclose(maps[2], single, atol=1e-5)

    def test_simple_cnn_default_layer_is_last_conv(self, cnn):
        assert gradcam_explain(cnn, _images(1, 32)).layer == "conv4"

    def test_resnet_nested_backbone(self, resnet):
        maps = gradcam(resnet, _images(2, 64), class_index=0)
        _check_maps(maps, (2, 64, 64))

    def test_resnet_default_layer_inside_backbone(self, resnet):
        result = gradcam_explain(resnet, _images(2, 64))
        assert result.layer == "backbone/conv5_block3_out"
        _check_maps(result.heatmaps, (2, 64, 64))

    def test_scores_are_the_models_predictions(self, resnet, cnn):
        for model, size in ((resnet, 64), (cnn, 32)):
            batch = _images(3, size, seed=5)
            result = gradcam_explain(model, batch)
            expected = model(batch, training=False).numpy()
            np.testing.assert_allclose(result.scores, expected, atol=1e-5)
            np.testing.assert_array_equal(result.class_indices, expected.argmax(axis=1))

    def test_sequential_model(self):
        model = keras.Sequential(
            [
                keras.Input((32, 32, 1)),
                keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
                keras.layers.Conv2D(4, 3, activation="relu", name="c2"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        result = gradcam_explain(model, _images(2, 32))
        assert result.layer == "c2"
        _check_maps(result.heatmaps, (2, 32, 32))

    def test_batches_larger_than_the_chunk(self, cnn):
        batch = _images(5, 32, seed=3)
        chunked = gradcam_explain(cnn, batch, batch_size=2, class_index=1)
        whole = gradcam_explain(cnn, batch, batch_size=16, class_index=1)
        np.testing.assert_allclose(chunked.heatmaps, whole.heatmaps, atol=1e-5)
        assert isinstance(whole, GradCamResult)


# --- correctness ---------------------------------------------------------------------------


def _cam_reference(resnet: keras.Model, batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """CAM computed without Grad-CAM: the backbone's feature map from its own input, drawn
    on the layer's measured cell centres (tests/models/test_gradcam_grid.py checks those) by
    linear interpolation along each axis, the end cells held beyond them."""
    to_backbone = keras.Model(resnet.inputs[0], resnet.get_layer("resnet_preprocess").output)
    features = resnet.get_layer("backbone").predict(
        to_backbone.predict(batch, verbose=0), verbose=0
    )
    cam = np.maximum(np.einsum("nhwk,k->nhw", features, weights), 0.0)
    centres = cell_centres(resnet)
    assert centres is not None
    rows, cols = np.arange(batch.shape[1]), np.arange(batch.shape[2])
    tall = np.stack(
        [
            np.stack([np.interp(rows, centres[0], m[:, j]) for j in range(m.shape[1])], 1)
            for m in cam
        ]
    )
    up = np.stack(
        [np.stack([np.interp(cols, centres[1], m[i, :]) for i in range(m.shape[0])]) for m in tall]
    )
    low = up.min(axis=(1, 2), keepdims=True)
    high = up.max(axis=(1, 2), keepdims=True)
    return (up - low) / (high - low)


class TestCorrectness:
    def test_equals_cam_through_nested_backbone_and_follows_weights(self, resnet):
        """GAP + Dense head: Grad-CAM weights are w_k^c / (h w), so the map is CAM. Twice,
        with different head weights, to show the cached gradient model shares the weights."""
        head = resnet.get_layer("predictions")
        original = head.get_weights()
        batch = _images(3, 64, seed=11)
        rng = np.random.default_rng(4)
        try:
            for _ in range(2):
                kernel = rng.normal(size=original[0].shape).astype(np.float32)
                kernel[:, 1] = np.abs(kernel[:, 1])  # class 1 has positive evidence somewhere
                head.set_weights([kernel, original[1]])
                maps = gradcam(resnet, batch, class_index=1)
                expected = _cam_reference(resnet, batch, kernel[:, 1])
                np.testing.assert_allclose(maps, expected, atol=1e-4)
        finally:
            head.set_weights(original)

    def test_frozen_backbone_gives_the_same_map(self, resnet):
        """Phase 1 of fine-tuning freezes the backbone: gradients must still reach it."""
        batch = _images(2, 64, seed=12)
        trainable = gradcam(resnet, batch, class_index=0)
        try:
            set_backbone_trainable(resnet, 0)
            frozen = gradcam(resnet, batch, class_index=0)
        finally:
            set_backbone_trainable(resnet, "all")
        np.testing.assert_allclose(frozen, trainable, atol=1e-5)

    def test_saved_and_loaded_model(self, resnet, tmp_path):
        """The service explains models loaded from model.keras: same maps after a round trip."""
        path = tmp_path / "model.keras"
        resnet.save(path)
        loaded = keras.models.load_model(path)
        batch = _images(2, 64, seed=13)
        for class_index in (0, 1):
            np.testing.assert_allclose(
                gradcam(loaded, batch, class_index=class_index),
                gradcam(resnet, batch, class_index=class_index),
                atol=1e-4,
            )

    @pytest.mark.parametrize("architecture", ["simple_cnn", "resnet50"])
    def test_filter_frontend(self, architecture):
        model = build_model(
            architecture, input_shape=(32, 32, 1), num_classes=3, filters=("sobel_h", "blur")
        )
        batch = _images(2, 32, seed=14)
        result = gradcam_explain(model, batch)
        _check_maps(result.heatmaps, (2, 32, 32))
        np.testing.assert_allclose(result.scores, model(batch, training=False), atol=1e-5)
        expected_layer = "conv4" if architecture == "simple_cnn" else "backbone/conv5_block3_out"
        assert result.layer == expected_layer
        if architecture == "resnet50":  # 32 px gives a 1x1 feature map: no localisation
            np.testing.assert_array_equal(result.heatmaps, 0.0)

    def test_grad_model_is_cached_per_model_and_layer(self, resnet):
        first, path = grad_model(resnet)
        again, _ = grad_model(resnet)
        other, other_path = grad_model(resnet, "conv4_block6_out")
        assert first is again
        assert other is not first
        assert (path, other_path) == ("backbone/conv5_block3_out", "backbone/conv4_block6_out")

    def test_inner_layer_gives_finer_map(self, resnet):
        result = gradcam_explain(resnet, _images(1, 64), layer_name="backbone/conv4_block6_out")
        assert result.layer == "backbone/conv4_block6_out"
        _check_maps(result.heatmaps, (1, 64, 64))

    @pytest.mark.parametrize("place", [(2, 3), (20, 5), (10, 24), (25, 25)])
    def test_detector_peaks_on_the_square(self, place):
        model = square_detector()
        image = np.random.default_rng(7).uniform(0.0, 0.3, (32, 32, 1)).astype(np.float32)
        r, c = place
        image[r : r + 5, c : c + 5] = 1.0
        result = gradcam_explain(model, image, class_index=1)
        heatmap = result.heatmaps[0]
        assert peak_in_box(heatmap, np.array([r, c, r + 5, c + 5]))
        inside = heatmap[r + 1 : r + 4, c + 1 : c + 4].mean()
        outside = np.ones_like(heatmap, dtype=bool)
        outside[max(r - 2, 0) : r + 7, max(c - 2, 0) : c + 7] = False
        assert inside > 0.8
        assert heatmap[outside].max() < 0.05
        # the predicted class is 1 here; None explains the prediction
        assert result.class_indices[0] == 1
        np.testing.assert_array_equal(gradcam(model, image), heatmap)

    def test_class_voting_against_gives_zeros_not_nan(self):
        model = square_detector()
        image = np.full((32, 32, 1), 0.2, np.float32)
        image[10:15, 10:15] = 1.0
        heatmap = gradcam(model, image, class_index=0)
        assert np.isfinite(heatmap).all()
        np.testing.assert_array_equal(heatmap, np.zeros((32, 32), np.float32))

    def test_no_activation_gives_zeros_not_nan(self):
        model = square_detector()
        flat = np.full((2, 32, 32, 1), 0.2, np.float32)  # detector output is 0 everywhere
        maps = gradcam(model, flat, class_index=1)
        np.testing.assert_array_equal(maps, np.zeros((2, 32, 32), np.float32))

    def test_one_by_one_feature_map_gives_zeros(self):
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(4, 8, activation="relu", name="whole")(inputs)  # (1, 1, 4)
        x = keras.layers.Flatten()(x)
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
        maps = gradcam(model, _images(3, 8), class_index=1)
        np.testing.assert_array_equal(maps, np.zeros((3, 8, 8), np.float32))

    def test_trained_cnn_localises_the_finding(self):
        """The test a wrong Grad-CAM fails: train, then look where the map peaks."""
        keras.utils.set_random_seed(5)
        rng = np.random.default_rng(5)
        images, labels, _ = squares(256, rng)
        model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)
        model.compile(
            keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        for _ in range(6):  # at most 12 epochs, usually 2-8; well under a second each
            model.fit(images, labels, batch_size=32, epochs=2, verbose=0)
            test_images, test_labels, _ = squares(40, np.random.default_rng(99))
            accuracy = model.evaluate(test_images, test_labels, verbose=0)[1]
            if accuracy >= 0.95:
                break
        assert accuracy >= 0.95, "the CNN did not learn the task; the localisation test needs it"

        positives, _, boxes = squares(30, np.random.default_rng(123), positive=1)
        maps = gradcam(model, positives, class_index=1)
        # margin: one cell of the 8x8 feature map is 4 px; bilinear upsampling moves the peak
        hits = [peak_in_box(m, box, margin=2) for m, box in zip(maps, boxes, strict=True)]
        chance = (6 + 4) ** 2 / 32**2
        assert np.mean(hits) >= 0.7, f"peak on the square in {sum(hits)}/30 (chance {chance:.0%})"
        # the data does not give it away: the brightest pixel is almost never on the square
        brightest = [
            peak_in_box(p[..., 0], b, margin=2) for p, b in zip(positives, boxes, strict=True)
        ]
        assert np.mean(brightest) < 0.3
        # and the evidence is concentrated: more heat on the square than off it
        on = [m[b[0] : b[2], b[1] : b[3]].mean() for m, b in zip(maps, boxes, strict=True)]
        assert np.mean(on) > 2 * maps.mean()


# --- choosing class and layer; bad input ----------------------------------------------------


class TestArguments:
    def test_class_index_per_image(self, cnn):
        batch = _images(2, 32, seed=8)
        mixed = gradcam_explain(cnn, batch, class_index=[0, 1])
        np.testing.assert_array_equal(mixed.class_indices, [0, 1])
        np.testing.assert_allclose(
            mixed.heatmaps[0], gradcam(cnn, batch[0], class_index=0), atol=1e-5
        )
        np.testing.assert_allclose(
            mixed.heatmaps[1], gradcam(cnn, batch[1], class_index=1), atol=1e-5
        )

    @pytest.mark.parametrize("bad", [2, -1])
    def test_class_index_out_of_range(self, cnn, bad):
        with pytest.raises(ConfigurationError, match=rf"0\.\.1 .*Received: {bad}"):
            gradcam(cnn, _images(1, 32)[0], class_index=bad)

    @pytest.mark.parametrize("bad", [True, 1.0, "1", [0.5]])
    def test_class_index_type(self, cnn, bad):
        with pytest.raises(TypeError, match="class_index"):
            gradcam(cnn, _images(1, 32)[0], class_index=bad)

    def test_class_index_count(self, cnn):
        with pytest.raises(ConfigurationError, match="3 entries for 2 images"):
            gradcam(cnn, _images(2, 32), class_index=[0, 1, 1])

    def test_layer_names(self, resnet, cnn):
        assert find_layer_path(cnn, "conv1") == ("conv1",)
        assert find_layer_path(resnet, "conv5_block3_out") == ("backbone", "conv5_block3_out")
        assert find_layer_path(resnet, "backbone/conv2_block1_out") == (
            "backbone",
            "conv2_block1_out",
        )
        assert gradcam_explain(cnn, _images(1, 32), layer_name="conv1").layer == "conv1"

    def test_unknown_layer(self, cnn):
        with pytest.raises(ConfigurationError, match=r"no layer 'conv9'.*conv4"):
            gradcam(cnn, _images(1, 32)[0], layer_name="conv9")

    def test_layer_without_feature_map(self, cnn):
        with pytest.raises(ConfigurationError, match=r"'dense1' has output shape \(None, 128\)"):
            gradcam(cnn, _images(1, 32)[0], layer_name="dense1")

    def test_ambiguous_layer(self):
        def block(name):
            inputs = keras.Input((16, 16, 1))
            conv = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
            return keras.Model(inputs, conv, name=name)

        inputs = keras.Input((16, 16, 1))
        x = block("a")(inputs)
        x = keras.layers.Conv2D(1, 1)(x)
        x = block("b")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
        with pytest.raises(ConfigurationError, match=r"ambiguous.*a/conv, b/conv"):
            gradcam(model, _images(1, 16)[0], layer_name="conv")
        _check_maps(gradcam(model, _images(1, 16)[0], layer_name="a/conv"), (16, 16))

    @pytest.mark.parametrize(
        ("bad", "match"),
        [
            (np.zeros((32, 32), np.float32), r"Received shape \(32, 32\)"),
            (np.zeros((16, 16, 1), np.float32), r"Received shape \(16, 16, 1\)"),
            (np.zeros((1, 32, 32, 3), np.float32), r"Received shape \(1, 32, 32, 3\)"),
            (np.zeros((0, 32, 32, 1), np.float32), r"empty"),
            (np.full((32, 32, 1), np.nan, np.float32), "NaN or infinite values"),
            (np.zeros((32, 32, 1), dtype=object), "dtype object"),
        ],
    )
    def test_bad_input(self, cnn, bad, match):
        with pytest.raises(InvalidImageError, match=match):
            gradcam(cnn, bad)

    def test_not_an_array(self, cnn):
        with pytest.raises(TypeError, match="Received: list"):
            gradcam(cnn, [[0.0]])

    def test_threads(self, cnn):
        """The service explains from worker threads: concurrent calls agree with a serial one."""
        batch = _images(4, 32, seed=9)
        expected = gradcam(cnn, batch, class_index=1)
        results: dict[int, np.ndarray] = {}

        def work(i: int) -> None:
            results[i] = gradcam(cnn, batch[i], class_index=1)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for i in range(4):
            np.testing.assert_allclose(results[i], expected[i], atol=1e-5)


# --- overlay -------------------------------------------------------------------------------


def _gray_and_heat(rows: int = 64, cols: int = 64) -> tuple[np.ndarray, np.ndarray]:
    _, x = np.mgrid[0:rows, 0:cols]
    pixels = (0.2 + 0.5 * x / cols).astype(np.float32)
    heat = np.zeros((rows, cols), np.float32)
    heat[8:24, 40:56] = 1.0  # one hot square, top right
    return pixels, heat


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(np.int16)


class TestOverlay:
    def test_blend_keeps_gray_where_cold_and_colours_where_hot(self):
        pixels, heat = _gray_and_heat()
        rgb = blend(pixels, heat, alpha=0.5)
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        gray = np.round(pixels * 255).astype(np.uint8)
        cold = heat == 0
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel][cold], gray[cold])
        hot = rgb[heat == 1].astype(int)
        assert (hot[:, 0] - hot[:, 2]).min() > 30  # inferno's hot end is yellow: R >> B

    def test_png_size_and_decodes(self):
        pixels, heat = _gray_and_heat()
        png = render_overlay(pixels, heat, title="abnormal 0.91")
        image = _decode(png)
        assert image.shape[1] == 512
        assert 400 < image.shape[0] < 600  # square image plus title and caption lines

    def test_aspect_ratio_follows_the_image(self):
        pixels, heat = _gray_and_heat(32, 64)
        image = _decode(render_overlay(pixels, heat, width=400))
        assert image.shape[1] == 400
        assert image.shape[0] < 300

    def test_differs_from_plain_gray_only_where_hot(self):
        pixels, heat = _gray_and_heat()
        overlay = _decode(render_overlay(pixels, heat))
        plain = _decode(render_overlay(pixels, np.zeros_like(heat)))
        assert overlay.shape == plain.shape
        diff = np.abs(overlay - plain).sum(axis=2)
        # the image area spans x in [0.02, 0.80] of 512 px, rows below the caption-free top;
        # the hot square is in the top right quarter of the image
        rows, cols = np.nonzero(diff > 30)
        assert rows.size > 1000
        image_left, image_right = 0.02 * 512, 0.80 * 512
        image_cols = cols[(cols >= image_left) & (cols < image_right)]
        assert image_cols.size > 1000
        rel = (image_cols - image_left) / (image_right - image_left)
        assert np.percentile(rel, 5) > 40 / 64 - 0.05 and np.percentile(rel, 95) < 56 / 64 + 0.05
        # the plain rendering is gray in the image area: no colour anywhere there
        area = plain[40:400, 20:400]
        assert np.abs(area[..., 0] - area[..., 2]).max() <= 2

    def test_colormaps_and_title_change_the_picture(self):
        pixels, heat = _gray_and_heat()
        inferno = _decode(render_overlay(pixels, heat, cmap="inferno"))
        viridis = _decode(render_overlay(pixels, heat, cmap="viridis"))
        titled = _decode(render_overlay(pixels, heat, title="abnormal 0.91"))
        assert COLORMAPS == ("inferno", "viridis")
        assert np.abs(inferno - viridis).sum() > 0
        assert titled.shape[0] > inferno.shape[0]

    def test_explain_image_end_to_end(self):
        model = square_detector()
        image = np.random.default_rng(3).uniform(0.0, 0.3, (32, 32, 1)).astype(np.float32)
        image[4:9, 20:25] = 1.0
        result, png = explain_image(model, image, class_names=["clear", "square"])
        assert result.class_indices.tolist() == [1]  # predicted: the square is there
        assert peak_in_box(result.heatmaps[0], np.array([4, 20, 9, 25]))
        picture = _decode(png)
        assert picture.shape[1] == 512
        untitled = _decode(render_overlay(image[..., 0], result.heatmaps[0]))
        assert picture.shape[0] > untitled.shape[0]  # the class/score title line

    def test_explain_image_bad_arguments(self):
        model = square_detector()
        image = np.zeros((32, 32, 1), np.float32)
        with pytest.raises(ConfigurationError, match=r"1 names for a model with 2 outputs"):
            explain_image(model, image, class_names=["only"])
        with pytest.raises(InvalidImageError, match=r"one image .*\(2, 32, 32, 1\)"):
            explain_image(model, np.zeros((2, 32, 32, 1), np.float32), class_names=["a", "b"])
        with pytest.raises(InvalidImageError, match="max 2"):
            explain_image(model, np.full((32, 32, 1), 2.0, np.float32), class_names=["a", "b"])

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"pixels": np.full((8, 8), 1.5, np.float32)}, InvalidImageError, "max 1.5"),
            ({"heatmap": np.zeros((8, 9), np.float32)}, InvalidImageError, r"\(8, 9\) differs"),
            ({"heatmap": np.full((8, 8), np.nan)}, InvalidImageError, "NaN"),
            ({"pixels": np.zeros((2, 8, 8), np.float32)}, InvalidImageError, r"\(2, 8, 8\)"),
            ({"pixels": "image.png"}, TypeError, "Received: str"),
            ({"alpha": 1.5}, ConfigurationError, "alpha=1.5"),
            ({"cmap": "jet"}, ConfigurationError, "Received: 'jet'"),
            ({"width": 10}, ConfigurationError, "Received: 10"),
            ({"title": 3}, TypeError, "title"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, match):
        arguments = {"pixels": np.zeros((8, 8), np.float32), "heatmap": np.zeros((8, 8))}
        arguments.update(kwargs)
        with pytest.raises(error, match=match):
            render_overlay(**arguments)

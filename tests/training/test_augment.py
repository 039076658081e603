"""radlens.training.data.augment: seeded, range-keeping, training-only augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from radlens.models.errors import ConfigurationError
from radlens.training.data.augment import AugmentConfig, augment_image
from radlens.training.data.pipeline import make_dataset
from radlens.training.data.sources import open_source
from tests.training.data_fixtures import png_folder


def _image(size: int = 32) -> np.ndarray:
    """An asymmetric test image in [0, 1] with a bright block on the left."""
    y, x = np.mgrid[0:size, 0:size]
    image = 0.2 + 0.5 * (x / size) * (y / size)
    image[4:12, 2:9] = 0.95
    return image.astype(np.float32)[..., None]


def _aug(image: np.ndarray, seed: tuple[int, int], config: AugmentConfig) -> np.ndarray:
    out = augment_image(tf.constant(image), tf.constant(seed, tf.int64), config)
    return np.asarray(out)


class TestAugmentImage:
    def test_keeps_shape_dtype_range_and_changes_image(self) -> None:
        image = _image()
        for seed in range(8):
            out = _aug(image, (seed, 1), AugmentConfig())
            assert out.shape == image.shape and out.dtype == np.float32
            assert out.min() >= 0.0 and out.max() <= 1.0
            assert not np.allclose(out, image, atol=1e-3)

    def test_output_is_clipped(self) -> None:
        white = np.ones((16, 16, 1), np.float32)
        config = AugmentConfig(rotation_degrees=0, zoom=0, contrast=0, brightness=0.5)
        outs = [_aug(white, (s, 0), config) for s in range(6)]
        assert all(o.max() <= 1.0 and o.min() >= 0.0 for o in outs)
        assert any(o.max() < 1.0 for o in outs)  # some draws darken: the op is active

    def test_same_seed_same_output(self) -> None:
        image = _image()
        a, b = _aug(image, (5, 6), AugmentConfig()), _aug(image, (5, 6), AugmentConfig())
        assert np.array_equal(a, b)
        assert not np.array_equal(a, _aug(image, (5, 7), AugmentConfig()))

    def test_strengths_are_small(self) -> None:
        image = _image(48)
        for seed in range(6):
            out = _aug(image, (seed, 2), AugmentConfig())
            # small geometric and intensity changes: the image stays close to the input
            assert float(np.mean(np.abs(out - image))) < 0.12

    def test_no_left_right_flip_by_default(self) -> None:
        image = _image()
        identity = AugmentConfig(rotation_degrees=0, zoom=0, contrast=0, brightness=0)
        assert AugmentConfig().flip_left_right is False
        for seed in range(10):
            assert np.array_equal(_aug(image, (seed, 0), identity), image)
        flip = AugmentConfig(
            rotation_degrees=0, zoom=0, contrast=0, brightness=0, flip_left_right=True
        )
        outs = [_aug(image, (seed, 0), flip) for seed in range(10)]
        assert any(np.array_equal(o, image[:, ::-1]) for o in outs)
        assert any(np.array_equal(o, image) for o in outs)

    def test_rotation_keeps_centre(self) -> None:
        image = np.zeros((33, 33, 1), np.float32)
        image[14:19, 14:19] = 1.0
        config = AugmentConfig(zoom=0, contrast=0, brightness=0, fill_mode="CONSTANT")
        out = _aug(image, (3, 3), config)
        assert out[16, 16, 0] == pytest.approx(1.0, abs=1e-4)
        assert not np.array_equal(out, image)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"rotation_degrees": 90}, r"rotation_degrees must be in \[0, 45.0\]; got 90"),
            ({"zoom": -0.1}, r"zoom must be in \[0, 0.5\]; got -0.1"),
            ({"fill_mode": "mirror"}, r"fill_mode must be .*; got 'mirror'"),
        ],
    )
    def test_bad_config(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ConfigurationError, match=message):
            AugmentConfig(**kwargs)  # type: ignore[arg-type]


def test_pipeline_augments_training_only(tmp_path: Path) -> None:
    source = open_source(png_folder(tmp_path / "ds", n_per_class=4, size=32))
    examples = source.examples

    def images(**kwargs: object) -> np.ndarray:
        ds = make_dataset(source, examples, size=32, batch_size=8, **kwargs)  # type: ignore[arg-type]
        return np.concatenate([x.numpy() for x, _ in ds])

    plain_train = images(training=True, seed=4, augment=False)
    augmented = images(training=True, seed=4, augment=True)
    # same seed -> same shuffle order; every image changed by augmentation
    assert plain_train.shape == augmented.shape
    for a, b in zip(plain_train, augmented, strict=True):
        assert not np.allclose(a, b, atol=1e-3)
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0

    validation = images(training=False)
    validation_with_flag = images(training=False, augment=AugmentConfig(brightness=0.5))
    assert np.array_equal(validation, validation_with_flag)
    for image, ex in zip(validation, examples, strict=True):
        assert np.array_equal(image, source.load_pixels(ex, size=32))

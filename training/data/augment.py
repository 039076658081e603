"""Training-time augmentation for X-ray / CT images, seeded and stateless.

Medically sensible defaults: a small rotation (within +/-7 degrees) and zoom (within
+/-10 %) about the image centre, small contrast (x 0.9..1.1) and brightness (+/-0.05)
changes, output clipped to [0, 1]. There is **no left-right flip by default**: a chest
radiograph has a side (heart on the left, situs), and a mirrored film is not a plausible
input; ``flip_left_right=True`` turns it on for data where side does not matter.

Every random draw is a stateless TensorFlow op keyed by a per-image seed (shape (2,)), so
the pipeline is reproducible: the same seed gives the same augmented images. Augmentation is
applied only in the training pipeline (``make_dataset(training=True, augment=...)``), never
to validation/test data and never inside the saved model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import tensorflow as tf

from radlens.models.errors import ConfigurationError


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; 0 disables a transform."""

    rotation_degrees: float = 7.0  # uniform in [-r, +r]
    zoom: float = 0.10  # scale uniform in [1 - z, 1 + z]
    contrast: float = 0.10  # contrast factor uniform in [1 - c, 1 + c]
    brightness: float = 0.05  # additive delta uniform in [-b, +b]
    flip_left_right: bool = False
    fill_mode: str = "REFLECT"  # for rotation/zoom: REFLECT, NEAREST, CONSTANT or WRAP

    def __post_init__(self) -> None:
        limits = {
            "rotation_degrees": (self.rotation_degrees, 45.0),
            "zoom": (self.zoom, 0.5),
            "contrast": (self.contrast, 0.9),
            "brightness": (self.brightness, 0.5),
        }
        for name, (value, top) in limits.items():
            if not 0.0 <= value <= top:
                raise ConfigurationError(f"augment {name} must be in [0, {top}]; got {value!r}")
        if self.fill_mode not in ("REFLECT", "NEAREST", "CONSTANT", "WRAP"):
            raise ConfigurationError(
                f"augment fill_mode must be REFLECT, NEAREST, CONSTANT or WRAP; "
                f"got {self.fill_mode!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _affine(angle: tf.Tensor, scale: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Projective transform (8 values) mapping output pixels to input pixels.

    Rotation by ``angle`` and zoom by ``scale`` (> 1 magnifies) about the image centre.
    """
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    zero = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zero, zero])


def augment_image(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Augment one float32 (H, W, 1) image in [0, 1]; ``seed`` is an int (2,) tensor.

    Same image and seed -> same output. The output keeps shape and dtype and is clipped
    to [0, 1].
    """
    image = tf.convert_to_tensor(image, tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    if config.rotation_degrees > 0 or config.zoom > 0:
        max_angle = config.rotation_degrees * math.pi / 180.0
        angle = tf.random.stateless_uniform([], seeds[0], -max_angle, max_angle)
        scale = tf.random.stateless_uniform([], seeds[1], 1.0 - config.zoom, 1.0 + config.zoom)
        shape = tf.shape(image)
        transform = _affine(angle, scale, shape[0], shape[1])
        image = tf.raw_ops.ImageProjectiveTransformV3(
            images=image[tf.newaxis],
            transforms=transform[tf.newaxis],
            output_shape=shape[:2],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode=config.fill_mode,
        )[0]
    if config.contrast > 0:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - config.contrast, 1.0 + config.contrast, seed=seeds[2]
        )
    if config.brightness > 0:
        image = tf.image.stateless_random_brightness(image, config.brightness, seed=seeds[3])
    if config.flip_left_right:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[4])
    return tf.clip_by_value(image, 0.0, 1.0)

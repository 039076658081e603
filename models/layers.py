"""radlens's Keras layers: the fixed filter bank and the in-graph input adapters.

Every layer is registered with ``keras.saving.register_keras_serializable(package="radlens")``,
so a ``model.keras`` that uses them loads anywhere this module has been imported
(``models.registry`` imports it before loading). They have no trainable weights and keep
the model self-describing: it takes a gray float image in [0, 1] — exactly
``PreprocessedImage.model_input()`` — and does its own channel replication and ResNet
normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops as K

from radlens.models.errors import ConfigurationError
from radlens.models.ops import FILTER_NAMES, KERNELS

__all__ = [
    "CenterImage",
    "FixedFilterBank",
    "GrayToRGB",
    "ResNetPreprocess",
    "ShiftView",
    "check_filter_names",
]

# keras.applications.resnet50.preprocess_input ("caffe" mode) on 0..255 RGB: flip RGB->BGR,
# subtract the ImageNet BGR channel means, no scaling.
IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)


def check_filter_names(filters: Any) -> tuple[str, ...]:
    """Validate a sequence of classic filter names and return it as a tuple.

    Raises:
        TypeError: not a sequence (a bare string is refused: pass ``("blur",)``).
        ConfigurationError: an unknown or repeated name; the message lists the valid names.
    """
    if isinstance(filters, str) or not isinstance(filters, Sequence):
        raise TypeError(
            f"filters must be a sequence of filter names, e.g. ('sobel_h', 'blur'). "
            f"Received: {filters!r}"
        )
    names = tuple(filters)
    for name in names:
        if not isinstance(name, str) or name not in KERNELS:
            raise ConfigurationError(
                f"unknown filter {name!r}; valid filters: {', '.join(FILTER_NAMES)}"
            )
    if len(set(names)) != len(names):
        raise ConfigurationError(f"filters must not repeat. Received: {list(names)!r}")
    return names


@keras.saving.register_keras_serializable(package="radlens")
class FixedFilterBank(keras.layers.Layer):
    """Apply the course's classic 3x3 filters to a gray image, as fixed extra channels.

    ``(B, H, W, 1) -> (B, H, W, k + keep_input)``: channel 0 is the input itself when
    ``keep_input`` is True, then one channel per filter in the order given. The filters are
    applied as a 'same', stride-1 cross-correlation with zero padding — exactly
    ``models.ops.conv2d(x, KERNELS[name], padding="same")``. The kernels are constants, not
    weights: nothing here trains and nothing is saved but the config.

    Args:
        filters: names from ``models.ops.FILTER_NAMES`` (at least one unless keep_input).
        keep_input: also pass the unfiltered image through as the first channel.
        **kwargs: the usual ``keras.layers.Layer`` arguments (``name``, ``dtype``...).

    Raises:
        TypeError: ``filters`` is not a sequence of strings.
        ConfigurationError: an unknown or repeated filter name, or no output channel at all.
    """

    def __init__(
        self, filters: Sequence[str] = FILTER_NAMES, keep_input: bool = True, **kwargs: Any
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.filter_names = check_filter_names(filters)
        if not isinstance(keep_input, bool):
            raise TypeError(f"keep_input must be True or False. Received: {keep_input!r}")
        if not self.filter_names and not keep_input:
            raise ConfigurationError(
                "FixedFilterBank needs at least one filter or keep_input=True. "
                "Received: filters=(), keep_input=False"
            )
        self.keep_input = keep_input
        # (3, 3, 1, k): a Conv2D-shaped kernel, one output channel per filter
        stacked = (
            np.stack([KERNELS[n] for n in self.filter_names], axis=-1)
            if self.filter_names
            else None
        )
        self._kernel = None if stacked is None else stacked[:, :, np.newaxis, :]

    @property
    def output_channels(self) -> int:
        """Number of channels this layer outputs."""
        return len(self.filter_names) + int(self.keep_input)

    def build(self, input_shape: Any) -> None:
        if len(input_shape) != 4 or input_shape[-1] != 1:
            raise ValueError(
                f"FixedFilterBank takes gray images (batch, H, W, 1). "
                f"Received input shape {tuple(input_shape)}"
            )
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        parts = [inputs] if self.keep_input else []
        if self._kernel is not None:
            kernel = K.convert_to_tensor(self._kernel, dtype=inputs.dtype)
            parts.append(K.conv(inputs, kernel, strides=1, padding="same"))
        return parts[0] if len(parts) == 1 else K.concatenate(parts, axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (*tuple(input_shape)[:-1], self.output_channels)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"filters": list(self.filter_names), "keep_input": self.keep_input})
        return config


@keras.saving.register_keras_serializable(package="radlens")
class CenterImage(keras.layers.Layer):
    """Subtract each image's own mean intensity: ``out = x - mean(x)`` over height, width and
    channels, per image. No weights; the contrast is kept, only the overall exposure goes, so
    a network behind it cannot lean on how bright a whole film is (one of the things that
    differs between hospitals, machines and exposures). Output is centred on 0, not in [0, 1].
    """

    def build(self, input_shape: Any) -> None:
        if len(input_shape) != 4:
            raise ValueError(
                f"CenterImage takes images (batch, H, W, C). Received input shape "
                f"{tuple(input_shape)}"
            )
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        return inputs - K.mean(inputs, axis=(1, 2, 3), keepdims=True)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="radlens")
class GrayToRGB(keras.layers.Layer):
    """Replicate a one-channel image into three identical channels: ``(..., 1) -> (..., 3)``.

    ImageNet backbones expect RGB; a gray X-ray is the same intensity in each channel.
    """

    def build(self, input_shape: Any) -> None:
        if input_shape[-1] != 1:
            raise ValueError(
                f"GrayToRGB takes one channel. Received input shape {tuple(input_shape)}"
            )
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        return K.repeat(inputs, 3, axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (*tuple(input_shape)[:-1], 3)


@keras.saving.register_keras_serializable(package="radlens")
class ResNetPreprocess(keras.layers.Layer):
    """``keras.applications.resnet50.preprocess_input`` for RGB images in [0, 1], in the graph.

    ``preprocess_input`` is ImageNet "caffe" mode: it expects RGB in 0..255, flips to BGR and
    subtracts the ImageNet channel means (no division). Fed [0, 1] directly it would leave
    values near -110, far from what the pretrained weights saw, so this layer first scales
    by 255: ``out = bgr(x * 255) - means``. The tests check it against ``preprocess_input``.
    """

    def build(self, input_shape: Any) -> None:
        if input_shape[-1] != 3:
            raise ValueError(
                f"ResNetPreprocess takes RGB (3 channels). Received input shape "
                f"{tuple(input_shape)}"
            )
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        bgr = K.flip(inputs * 255.0, axis=-1)
        means = K.convert_to_tensor(np.asarray(IMAGENET_BGR_MEANS), dtype=inputs.dtype)
        return bgr - means

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="radlens")
class ShiftView(keras.layers.Layer):
    """The image moved by ``(dy, dx)`` pixels, the uncovered border filled by reflection.

    A test-time augmentation view (``models.ensemble``): content at ``(i, j)`` moves to
    ``(i + dy, j + dx)``. Reflection, as the training augmentation fills, so a view never
    shows a black bar the training images never had. No weights; ``(0, 0)`` is the identity.
    """

    def __init__(self, dy: int = 0, dx: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("dy", dy), ("dx", dx)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"ShiftView {name} must be an int. Received: {value!r}")
        self.dy, self.dx = int(dy), int(dx)
        self.pad = max(abs(self.dy), abs(self.dx))

    def build(self, input_shape: Any) -> None:
        height, width = input_shape[1], input_shape[2]
        if height is not None and width is not None and self.pad >= min(height, width):
            raise ValueError(
                f"ShiftView shift ({self.dy}, {self.dx}) is too large for a {height}x{width} input"
            )
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        if self.pad == 0:
            return inputs
        p = self.pad
        padded = K.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
        height, width = K.shape(inputs)[1], K.shape(inputs)[2]
        top, left = p - self.dy, p - self.dx
        return padded[:, top : top + height, left : left + width, :]

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"dy": self.dy, "dx": self.dx})
        return config

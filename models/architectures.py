"""The model builders: ResNet50 transfer learning and the course's small CNN.

Every model takes what preprocessing produces — float32 ``(H, W, 1)`` gray images in [0, 1]
(``PreprocessedImage.model_input()``) — and outputs softmax scores over the classes. Anything a
backbone needs beyond that (three channels, ImageNet normalisation) is a layer in the graph,
so a saved ``model.keras`` is self-describing and training and serving cannot drift apart.

resnet50 (layer names in quotes)::

    input (H, W, 1)
      -> "filter_frontend"   FixedFilterBank: input + k classic filters   (only with filters)
      -> "filter_to_rgb"     trainable 1x1 Conv2D, k+1 -> 3 channels      (only with filters)
         or "gray_to_rgb"    GrayToRGB: replicate the gray channel         (without filters)
      -> "resnet_preprocess" ResNetPreprocess: x*255, RGB->BGR, minus ImageNet means
      -> "backbone"          keras.applications.ResNet50(include_top=False), nested model,
                             called with training=False, every BatchNormalization frozen
      -> "pool" GlobalAveragePooling2D -> "dropout" -> "predictions" Dense softmax

The "filter_to_rgb" 1x1 convolution starts as exact gray replication (the unfiltered
channel copied to R, G and B, the filter channels weighted 0), so before training the
model sees the same image a pretrained ResNet expects; training then learns how much of
each filter response to mix in. It is trainable in both fine-tuning phases (it is not part
of the backbone).

simple_cnn, the course's lesson-end network::

    input -> ["center"] -> ["filter_frontend"]
          -> "conv1" 32 3x3 ReLU ["bn1"] -> "conv2" 32 3x3 ReLU ["bn2"] -> "pool1" max 2x2
          -> "conv3" 64 3x3 ReLU ["bn3"] -> "conv4" 64 3x3 ReLU ["bn4"] -> "pool2" max 2x2
          -> "flatten" -> "dense1" 128 ReLU -> "dropout1" -> "dense2" 64 ReLU -> "dropout2"
          -> "predictions" Dense softmax

Its convolutions use 'same' padding (size kept, so any input of at least 4x4 works) and
it takes the [0, 1] input as is, or, with ``center``, minus each image's mean (CenterImage);
``batchnorm`` adds a BatchNormalization after each convolution's ReLU ("bn1".."bn4"), so
Grad-CAM's "conv4" is still a ReLU map.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from radlens.models.errors import ConfigurationError
from radlens.models.layers import (
    CenterImage,
    FixedFilterBank,
    GrayToRGB,
    ResNetPreprocess,
    check_filter_names,
)

__all__ = [
    "ARCHITECTURES",
    "RESNET50_BLOCKS",
    "build_model",
    "gradcam_model",
    "last_conv_layer_name",
    "set_backbone_trainable",
]

ARCHITECTURES: tuple[str, ...] = ("resnet50", "simple_cnn")

RESNET50_MIN_SIZE = 32  # keras.applications.ResNet50 refuses smaller inputs
SIMPLE_CNN_MIN_SIZE = 4  # two 2x2 max poolings

RESNET50_BLOCKS = 16
"""Residual blocks in ResNet50: conv2 x3, conv3 x4, conv4 x6, conv5 x3."""

_BLOCK = re.compile(r"^(conv[2-5]_block\d+)_")


def build_model(
    architecture: str,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    filters: Sequence[str] = (),
    weights: str | os.PathLike[str] | None = None,
    dropout: float = 0.3,
    multi_label: bool = False,
    center: bool = False,
    batchnorm: bool = False,
    width_multiplier: int = 1,
) -> keras.Model:
    """Build a classifier for gray images in [0, 1].

    Args:
        architecture: ``"resnet50"`` or ``"simple_cnn"`` (see the module docstring for
            both graphs).
        input_shape: ``(H, W, 1)``; ResNet50 needs H, W >= 32, simple_cnn H, W >= 4.
        num_classes: number of classes, >= 2 (binary problems are 2-class softmax, class 1
            the positive one).
        filters: names from ``models.ops.FILTER_NAMES`` for a fixed filter front-end
            (layer ``"filter_frontend"``), or empty for none.
        weights: resnet50 only. ``"imagenet"`` downloads the ImageNet weights (needs the
            internet; users only), a path to a local no-top ResNet50 weights file
            (``.h5`` / ``.weights.h5``), or None for random initialisation.
        dropout: dropout rate before the classifier, in [0, 1).
        multi_label: a sigmoid head instead of the softmax: one independent score per
            output (``num_classes`` findings, >= 2), for multi-label findings.
        center: simple_cnn only. Subtract each image's mean first (layer ``"center"``,
            :class:`~radlens.models.layers.CenterImage`): blind to a film's overall exposure.
        batchnorm: simple_cnn only. A BatchNormalization after each convolution.
        width_multiplier: simple_cnn only. Each convolution's channels times this (1: the
            course's 32, 32, 64, 64; 2: 64, 64, 128, 128); the dense head is unchanged.

    Returns:
        An uncompiled ``keras.Model`` named after the architecture, with input
        ``(None, H, W, 1)`` and output ``(None, num_classes)``. For resnet50 with weights
        the backbone comes frozen (head-only training, phase 1); with ``weights=None`` it is
        trainable. Every BatchNormalization layer is frozen in both cases; see
        :func:`set_backbone_trainable`.

    Raises:
        TypeError: an argument of the wrong type.
        ConfigurationError: an unknown architecture (lists the valid ones), an unknown filter,
            a bad shape, class count, dropout or weights value, or a weights file Keras
            cannot load; the message quotes what was received.
    """
    if not isinstance(architecture, str):
        raise TypeError(f"architecture must be a string. Received: {architecture!r}")
    if architecture not in ARCHITECTURES:
        raise ConfigurationError(
            f"unknown architecture {architecture!r}; valid architectures: "
            f"{', '.join(ARCHITECTURES)}"
        )
    height, width = _check_input_shape(
        input_shape, RESNET50_MIN_SIZE if architecture == "resnet50" else SIMPLE_CNN_MIN_SIZE
    )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise TypeError(f"num_classes must be an int. Received: {num_classes!r}")
    if num_classes < 2:
        raise ConfigurationError(
            f"num_classes must be >= 2 (binary is 2-class softmax). Received: {num_classes}"
        )
    names = check_filter_names(filters)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float):
        raise TypeError(f"dropout must be a number. Received: {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigurationError(f"dropout must be in [0, 1). Received: dropout={dropout}")
    for option, value in (("center", center), ("batchnorm", batchnorm)):
        if not isinstance(value, bool):
            raise TypeError(f"{option} must be True or False. Received: {value!r}")
        if value and architecture != "simple_cnn":
            raise ConfigurationError(
                f"{option}=True is a simple_cnn option; {architecture} has its own input "
                f"normalisation. Received: architecture={architecture!r}, {option}=True"
            )
    if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, int | np.integer):
        raise TypeError(f"width_multiplier must be an int. Received: {width_multiplier!r}")
    if not 1 <= width_multiplier <= 8 or (width_multiplier > 1 and architecture != "simple_cnn"):
        raise ConfigurationError(
            "width_multiplier must be 1 to 8, and above 1 for simple_cnn only. Received: "
            f"architecture={architecture!r}, width_multiplier={width_multiplier}"
        )
    if architecture == "simple_cnn":
        if weights is not None:
            raise ConfigurationError(
                f"simple_cnn has no pretrained weights; use weights=None. Received: "
                f"weights={weights!r}"
            )
        head = "sigmoid" if multi_label else "softmax"
        return _simple_cnn(
            (height, width),
            int(num_classes),
            names,
            float(dropout),
            head,
            center=center,
            batchnorm=batchnorm,
            width_multiplier=int(width_multiplier),
        )
    resolved = _check_weights(weights)
    return _resnet50(
        (height, width),
        int(num_classes),
        names,
        resolved,
        float(dropout),
        "sigmoid" if multi_label else "softmax",
    )


def _check_input_shape(input_shape: Any, min_size: int) -> tuple[int, int]:
    if not isinstance(input_shape, tuple | list) or len(input_shape) != 3:
        raise ConfigurationError(
            f"input_shape must be (H, W, 1). Received: input_shape={input_shape!r}"
        )
    if any(isinstance(d, bool) or not isinstance(d, int | np.integer) for d in input_shape):
        raise TypeError(f"input_shape must hold ints. Received: input_shape={input_shape!r}")
    height, width, channels = (int(d) for d in input_shape)
    if channels != 1:
        raise ConfigurationError(
            "input_shape must have 1 channel: models take gray [0, 1] images and convert "
            f"in the graph. Received: input_shape={tuple(input_shape)!r}"
        )
    if height < min_size or width < min_size:
        raise ConfigurationError(
            f"input_shape must be at least {min_size}x{min_size} for this architecture. "
            f"Received: input_shape={tuple(input_shape)!r}"
        )
    return height, width


def _check_weights(weights: Any) -> str | None:
    if weights is None or weights == "imagenet":
        return weights
    if not isinstance(weights, str | os.PathLike):
        raise TypeError(f"weights should be 'imagenet', None or a path. Received: {weights!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            "weights should be 'imagenet', None or the path of an existing weights file. "
            f"Received: weights={str(weights)!r}"
        )
    return str(path)


def _download_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is Keras's failure to fetch a weights file (``keras.utils.get_file``
    raises a bare Exception "URL fetch failure on ..."; a socket error is an OSError)."""
    return isinstance(exc, OSError) or str(exc).startswith("URL fetch failure")


def imagenet_unreachable(exc: BaseException) -> ConfigurationError:
    """The error for ImageNet weights that Keras could not download (a hospital network has
    no internet): what to do instead, with Keras's reason on one line."""
    reason = " ".join(str(exc).split())[:300]
    return ConfigurationError(
        "the ImageNet ResNet50 weights could not be downloaded (Keras fetches "
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 on first use; this machine "
        "could not reach it). Copy that file from a machine with internet access and pass "
        "its path (--weights ./resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, or put it "
        "in ~/.keras/models/), or train from scratch with --weights none. "
        f"Received: weights='imagenet' ({type(exc).__name__}: {reason})"
    )


def ensure_imagenet_weights() -> None:
    """Have Keras fetch (or find in its cache) the no-top ResNet50 ImageNet weights now, so a
    run that cannot get them stops before it writes anything (training calls this before it
    opens its run directory). Raises ConfigurationError (:func:`imagenet_unreachable`)."""
    try:
        keras.applications.ResNet50(include_top=False, weights="imagenet", input_shape=(32, 32, 3))
    except Exception as exc:  # Keras's download raises a bare Exception ("URL fetch failure")
        if not _download_failed(exc):
            raise
        raise imagenet_unreachable(exc) from exc


def _frontend(x: Any, filters: tuple[str, ...]) -> Any:
    if not filters:
        return x
    return FixedFilterBank(filters=filters, keep_input=True, name="filter_frontend")(x)


def _resnet50(
    size: tuple[int, int],
    num_classes: int,
    filters: tuple[str, ...],
    weights: str | None,
    dropout: float,
    head: str = "softmax",
) -> keras.Model:
    inputs = keras.Input((*size, 1), name="image")
    x = _frontend(inputs, filters)
    if filters:
        channels = len(filters) + 1
        kernel = np.zeros((1, 1, channels, 3), dtype=np.float32)
        kernel[0, 0, 0, :] = 1.0  # start as gray replication: the unfiltered channel to RGB
        to_rgb = keras.layers.Conv2D(
            3,
            1,
            use_bias=True,
            kernel_initializer=keras.initializers.Constant(kernel),
            bias_initializer="zeros",
            name="filter_to_rgb",
        )
        x = to_rgb(x)
    else:
        x = GrayToRGB(name="gray_to_rgb")(x)
    x = ResNetPreprocess(name="resnet_preprocess")(x)
    try:
        backbone = keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=(*size, 3), name="backbone"
        )
    except Exception as exc:  # Keras's download raises a bare Exception ("URL fetch failure")
        if weights == "imagenet" and _download_failed(exc):
            raise imagenet_unreachable(exc) from exc
        if weights is None or weights == "imagenet" or not isinstance(exc, OSError | ValueError):
            raise
        raise ConfigurationError(
            f"the weights file could not be loaded into a no-top ResNet50: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}. "
            f"Received: weights={weights!r}"
        ) from exc
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    # float32 head under any dtype policy: with mixed_float16 the softmax (and the loss on
    # it) stays in float32, as Keras's mixed-precision guide asks of a model's last layer.
    outputs = keras.layers.Dense(num_classes, activation=head, name="predictions", dtype="float32")(
        x
    )
    model = keras.Model(inputs, outputs, name="resnet50")
    set_backbone_trainable(model, 0 if weights is not None else "all")
    return model


def _simple_cnn(
    size: tuple[int, int],
    num_classes: int,
    filters: tuple[str, ...],
    dropout: float,
    head: str = "softmax",
    *,
    center: bool = False,
    batchnorm: bool = False,
    width_multiplier: int = 1,
) -> keras.Model:
    layers = keras.layers
    inputs = keras.Input((*size, 1), name="image")
    x = CenterImage(name="center")(inputs) if center else inputs
    x = _frontend(x, filters)
    for index, (width, pool) in enumerate(((32, None), (32, "pool1"), (64, None), (64, "pool2"))):
        channels = width * width_multiplier
        x = layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"conv{index + 1}")(
            x
        )
        if batchnorm:
            x = layers.BatchNormalization(name=f"bn{index + 1}")(x)
        if pool:
            x = layers.MaxPooling2D(2, name=pool)(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense1")(x)
    x = layers.Dropout(dropout, name="dropout1")(x)
    x = layers.Dense(64, activation="relu", name="dense2")(x)
    x = layers.Dropout(dropout, name="dropout2")(x)
    outputs = layers.Dense(num_classes, activation=head, name="predictions", dtype="float32")(
        x
    )  # float32 under mixed_float16 too (see _resnet50)
    return keras.Model(inputs, outputs, name="simple_cnn")


# --- fine-tuning ----------------------------------------------------------------------------


def get_backbone(model: keras.Model) -> keras.Model:
    """The nested ResNet50 of a resnet50 model.

    Raises:
        ConfigurationError: the model has no layer named ``"backbone"`` (e.g. simple_cnn).
    """
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise ConfigurationError(
            f"model {model.name!r} has no 'backbone' (only resnet50 models have one)"
        ) from None
    if not isinstance(backbone, keras.Model):
        raise ConfigurationError(f"layer 'backbone' of {model.name!r} is not a nested model")
    return backbone


def set_backbone_trainable(
    model: keras.Model, trainable_blocks: int | Literal["all"], *, freeze_batchnorm: bool = True
) -> int:
    """Choose which part of a resnet50 model's backbone trains (two-phase fine-tuning).

    Phase 1 trains the head only: ``trainable_blocks=0``. Phase 2 unfreezes the top N
    residual blocks, counted from the output (1..16; conv5 has 3 blocks, conv4 6, conv3 4,
    conv2 3), or the whole backbone including the stem with ``"all"``. Every
    BatchNormalization layer stays frozen whatever is chosen: in Keras 3 a frozen
    BatchNormalization runs in inference mode (moving statistics, not batch statistics),
    which the ``training=False`` on the backbone call alone does not guarantee — an outer
    ``model(x, training=True)``, as ``fit`` makes, overrides that argument. Layers outside
    the backbone (head, "filter_to_rgb") are left trainable. Recompile after calling this.

    ``freeze_batchnorm=False`` is for training a randomly initialised backbone from scratch
    (``weights=None``): its BatchNormalization statistics start at mean 0 / variance 1 and
    mean nothing, so the BN layers of the unfrozen blocks train too and, under ``fit``,
    normalise with batch statistics. Never use it when fine-tuning pretrained weights.

    Args:
        model: a model from ``build_model("resnet50", ...)``.
        trainable_blocks: 0, 1..16, or ``"all"``.
        freeze_batchnorm: keep every BatchNormalization frozen (the default; see above).

    Returns:
        The number of trainable weight tensors in the backbone afterwards.

    Raises:
        TypeError: ``trainable_blocks`` is neither an int nor ``"all"``.
        ConfigurationError: a value out of range (quoted), or a model without a backbone.
    """
    backbone = get_backbone(model)
    if trainable_blocks != "all":
        if isinstance(trainable_blocks, bool) or not isinstance(trainable_blocks, int):
            raise TypeError(
                f"trainable_blocks must be an int or 'all'. Received: {trainable_blocks!r}"
            )
        if not 0 <= trainable_blocks <= RESNET50_BLOCKS:
            raise ConfigurationError(
                f"trainable_blocks must be 0..{RESNET50_BLOCKS} or 'all'. "
                f"Received: {trainable_blocks}"
            )
    if trainable_blocks == 0:
        backbone.trainable = False
        return 0
    blocks: list[str] = []
    for layer in backbone.layers:
        match = _BLOCK.match(layer.name)
        if match and match[1] not in blocks:
            blocks.append(match[1])
    top = set(blocks if trainable_blocks == "all" else blocks[-int(trainable_blocks) :])
    backbone.trainable = True  # sets every sub-layer; then choose per layer
    for layer in backbone.layers:
        match = _BLOCK.match(layer.name)
        selected = trainable_blocks == "all" or bool(match and match[1] in top)
        if isinstance(layer, keras.layers.BatchNormalization):
            selected = selected and not freeze_batchnorm
        layer.trainable = selected
    return len(backbone.trainable_weights)


# --- Grad-CAM -------------------------------------------------------------------------------


def last_conv_layer_name(model: keras.Model) -> str:
    """Where Grad-CAM should take its feature map, as a layer path.

    For resnet50 this is ``"backbone/conv5_block3_out"``: the output of the last conv5
    residual block (its last convolution, batch-normalised, added to the shortcut and
    ReLU-activated), inside the nested backbone — which is also the backbone's own output.
    For simple_cnn it is ``"conv4"``, its last Conv2D. A '/' separates a nested model from
    its layer; the nested layer's tensor is not connected to the outer model's input, so use
    :func:`gradcam_model` to get a model that returns this feature map with the scores.

    Raises:
        ConfigurationError: the model has no Conv2D layer.
    """
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        backbone = None
    if isinstance(backbone, keras.Model):
        return f"backbone/{backbone.layers[-1].name}"
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise ConfigurationError(f"model {model.name!r} has no convolution layer for Grad-CAM")
    return convs[-1]


def gradcam_model(model: keras.Model) -> keras.Model:
    """A model with the same input that returns ``[feature_map, scores]`` for Grad-CAM.

    ``feature_map`` is the output of :func:`last_conv_layer_name` (``(N, h, w, channels)``)
    and ``scores`` the model's softmax output. The layers are shared with ``model`` (same
    weights, nothing copied). Call it with ``training=False`` inside a
    ``tf.GradientTape`` and take the gradient of a class score with respect to the
    feature map.

    The model must be a single chain of layers, as :func:`build_model` makes them.

    Raises:
        ConfigurationError: the model has no convolution layer.
    """
    target = last_conv_layer_name(model).split("/")[0]
    inputs = keras.Input(model.input_shape[1:], name="image")
    x: Any = inputs
    feature_map = None
    for layer in model.layers[1:]:
        x = layer(x, training=False) if layer.name == "backbone" else layer(x)
        if layer.name == target:
            feature_map = x
    if feature_map is None:
        raise ConfigurationError(f"layer {target!r} not found in {model.name!r}")
    return keras.Model(inputs, [feature_map, x], name=f"{model.name}_gradcam")

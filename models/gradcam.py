"""Grad-CAM: where in the image the model looked for a class.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) weights the channels ``A^k`` of a convolutional
feature map by the spatial mean of the gradient of a class score ``y^c`` with respect to
them, ``alpha_k = mean_ij dy^c / dA^k_ij``, and keeps the positive part of the weighted sum,
``L = ReLU(sum_k alpha_k A^k)``. The map is upsampled to the input size and min-max
normalised, so it is a *relative* saliency in [0, 1] for one image and one class: it says
where the evidence for the class lies, not how strong it is.

Which layer: the last convolutional feature map (best trade-off between semantics and
resolution). For radlens' ResNet50 that layer sits inside the nested ``"backbone"`` model;
Keras cannot build a model from the outer input to a tensor of an inner graph, so
:func:`grad_model` re-traces the outer graph (sharing every layer and weight) with the
backbone call replaced by a split backbone that returns the inner feature map together with
its usual output. The same code handles a layer at the top level (``simple_cnn``) and
deeper nesting.

Which score: the class *logit* (the score before softmax), as in the paper. Softmax
probabilities saturate — a confident model has near-zero gradients and a noisy map — so
when the model ends in a softmax (a ``Dense`` with softmax activation or a softmax layer),
the logits are recomputed from that layer's input. A multi-label model's sigmoid ``Dense``
(one independent score per finding) is treated the same way: the finding's logit. For any
other output layer the output itself is the score.

Where each cell of the map is drawn: upsampling the map as an image (half-pixel centres) puts
feature cell ``o`` at input pixel ``(o + 0.5) * stride``. That holds for ``simple_cnn`` but not
for Keras' ResNet50, whose symmetric zero padding centres conv5 cell ``o`` at ``32 * o``: the map
came out about 16 px (7% of a 224 px side) down and right of what its cells see (QA round 43).
So the map is upsampled on the grid the layer really has, measured once per model and layer
(:func:`cell_centres`): the centroid of each cell's effective receptive field (Luo et al.,
NeurIPS 2016), ``|d cell / d input|`` on a seeded random image, which also says how far a cell
at the border is pulled inwards by the padding it sees. A grid that cannot be measured (an
input of unknown size, one cell, centroids not increasing) falls back to half-pixel centres.

This module imports TensorFlow and Keras; the rendering of a map over the image is in
:mod:`models.overlay`, which needs neither.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from radlens.models.errors import ConfigurationError, InvalidImageError

if TYPE_CHECKING:
    import keras

__all__ = [
    "GradCamResult",
    "cell_centres",
    "explain_image",
    "find_layer_path",
    "grad_model",
    "gradcam",
    "gradcam_explain",
    "overlay_title",
]

_POOLING_TYPES = (
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalMaxPooling2D",
    "GlobalAveragePooling2D",
)


@dataclass(frozen=True)
class GradCamResult:
    """Heatmaps with the class they explain and the model's scores from the same pass.

    Attributes:
        heatmaps: float32 ``(N, H, W)`` in [0, 1] at the input resolution.
        class_indices: int ``(N,)``, the class each heatmap explains.
        scores: float32 ``(N, classes)``, the model's output (softmax probabilities for
            radlens models) for the same inputs.
        layer: the explained layer as a path, e.g. ``"backbone/conv5_block3_out"``.
    """

    heatmaps: np.ndarray
    class_indices: np.ndarray
    scores: np.ndarray
    layer: str


@dataclass(frozen=True)
class _GradModel:
    model: keras.Model  # input -> [feature map, score source, output]
    logits_from: str  # "dense": source @ dense.kernel + bias; "source": source is the score
    dense: Any  # the final softmax Dense (for "dense"), else None
    layer: str  # path, e.g. "backbone/conv5_block3_out"
    num_classes: int
    step: Any  # compiled (x, classes) -> (upsampled maps, chosen classes, scores)
    centres: tuple[np.ndarray, np.ndarray] | None  # cell_centres (None: half-pixel)


_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], _GradModel]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_LOCK = threading.Lock()


# --- finding the layer -------------------------------------------------------------------


def _is_container(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _walk(container: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every layer under ``container`` in graph order, with its path of names."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for layer in container.layers:
        path = (*prefix, layer.name)
        found.append((path, layer))
        if _is_container(layer):
            found.extend(_walk(layer, path))
    return found


def _output_rank(layer: Any) -> int | None:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # never called / several outputs
        return None
    shape = getattr(output, "shape", None)
    return None if shape is None else len(shape)


def _default_layer_path(model: keras.Model) -> tuple[str, ...]:
    """The last convolutional feature map of ``model``, searched through nested models.

    radlens architectures name it via ``models.architectures.last_conv_layer_name``; for
    other models (and as the fallback) this is the last layer in graph order, at any depth,
    whose output is 4-D ``(N, h, w, k)`` and that is not a pooling layer: ResNet50's
    ``conv5_block3_out``, a plain CNN's last ``Conv2D``.
    """
    from radlens.models.architectures import last_conv_layer_name

    try:
        name: str | None = last_conv_layer_name(model)
    except ValueError:  # not a radlens architecture: use the structural rule below
        name = None
    if name:
        return find_layer_path(model, name)
    for path, layer in reversed(_walk(model)):
        if _is_container(layer) or type(layer).__name__ in _POOLING_TYPES:
            continue
        if _output_rank(layer) == 4:
            return path
    raise ConfigurationError(
        f"model {model.name!r} has no layer with a 4-D (N, h, w, channels) output; Grad-CAM "
        "needs a convolutional feature map"
    )


def find_layer_path(model: keras.Model, layer_name: str) -> tuple[str, ...]:
    """Resolve a layer name to its path of names through nested models.

    Args:
        model: a Keras functional or sequential model, possibly with nested models.
        layer_name: a top-level layer name (``"conv2d_3"``), a unique name of a layer inside
            a nested model (``"conv5_block3_out"``), or an explicit path separated by ``/``
            (``"backbone/conv5_block3_out"``).

    Returns:
        The names from the top-level layer down to the layer, e.g.
        ``("backbone", "conv5_block3_out")``.

    Raises:
        TypeError: ``layer_name`` is not a string.
        ConfigurationError: no such layer, or the bare name occurs in more than one nested
            model (pass the path then).
    """
    if not isinstance(layer_name, str):
        raise TypeError(
            f"layer_name must be a str or None. Received: {layer_name!r} "
            f"({type(layer_name).__name__})"
        )
    everything = _walk(model)
    if "/" in layer_name:
        wanted = tuple(layer_name.split("/"))
        if any(path == wanted for path, _ in everything):
            return wanted
        matches: list[tuple[str, ...]] = []
    else:
        top = [path for path, _ in everything if path == (layer_name,)]
        if top:
            return top[0]
        matches = [path for path, _ in everything if path[-1] == layer_name]
        if len(matches) == 1:
            return matches[0]
    if len(matches) > 1:
        raise ConfigurationError(
            f"layer_name={layer_name!r} is ambiguous in model {model.name!r}: "
            f"{', '.join('/'.join(p) for p in matches)}; pass one of these paths"
        )
    feature_maps = [
        "/".join(path)
        for path, layer in everything
        if not _is_container(layer) and _output_rank(layer) == 4
    ]
    hint = ", ".join(feature_maps[-5:]) if feature_maps else "none"
    raise ConfigurationError(
        f"no layer {layer_name!r} in model {model.name!r}; its last feature-map layers: {hint}"
    )


# --- the gradient model ------------------------------------------------------------------


def _softmax_layer(layer: Any) -> tuple[bool, Any]:
    """Whether ``layer`` applies a softmax (or is a sigmoid Dense), and the Dense to take the
    logits from, if any."""
    import keras

    activation = getattr(layer, "activation", None)
    is_softmax = getattr(activation, "__name__", "") == "softmax"
    is_sigmoid = getattr(activation, "__name__", "") == "sigmoid"
    if isinstance(layer, keras.layers.Dense) and (is_softmax or is_sigmoid):
        return True, layer
    if isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and is_softmax
    ):
        return True, None
    return False, None


def _output_layer(container: Any) -> Any:
    outputs = container.outputs
    if len(outputs) != 1:
        raise ConfigurationError(
            f"Grad-CAM needs a model with one output; {container.name!r} has {len(outputs)}"
        )
    for layer in reversed(container.layers):
        try:
            if layer.output is outputs[0]:
                return layer
        except (AttributeError, ValueError):
            continue
    return None


def _trace(container: Any, path: tuple[str, ...], *, want_score_input: bool) -> Any:
    """A model sharing ``container``'s layers: its inputs -> [feature map, output(s)].

    The container is re-traced layer by layer (``keras.models.clone_model`` with the layers
    themselves as their clones, so every weight is shared). The layer named ``path[0]`` is
    captured on the way; when the path goes deeper, that nested model is replaced by its own
    re-traced split, built recursively. With ``want_score_input`` the input of the output
    layer is returned too (to recompute logits from).
    """
    import keras

    head = container.get_layer(path[0])
    inner = _trace(head, path[1:], want_score_input=False) if len(path) > 1 else None
    out_layer = _output_layer(container) if want_score_input else None
    features: list[Any] = []
    score_inputs: list[Any] = []

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer is out_layer and args:
            score_inputs.append(args[0])
        if layer is head and inner is not None:
            feature, output = inner(*args, **kwargs)
            features.append(feature)
            return output
        output = layer(*args, **kwargs)
        if layer is head:
            features.append(output)
        return output

    if isinstance(container, keras.Sequential):
        # clone_model's call_function is for functional models only; a Sequential is a chain.
        x = keras.Input(batch_shape=container.inputs[0].shape, dtype=container.inputs[0].dtype)
        inputs: Any = x
        for layer in container.layers:
            x = call(layer, x)
        outputs: list[Any] = [x]
    else:
        traced = keras.models.clone_model(
            container, clone_function=lambda layer: layer, call_function=call
        )
        inputs = traced.inputs[0] if len(traced.inputs) == 1 else traced.inputs
        outputs = list(traced.outputs)
    if len(outputs) != 1:
        raise ConfigurationError(
            f"Grad-CAM needs models with one output; {container.name!r} has {len(outputs)}"
        )
    if len(features) != 1:
        raise ConfigurationError(
            f"layer {'/'.join(path)!r} is used {len(features)} times in {container.name!r}; "
            "Grad-CAM needs a layer that runs once per image"
        )
    if not want_score_input:
        return keras.Model(inputs, [features[0], outputs[0]])
    if len(score_inputs) != 1:
        raise ConfigurationError(
            f"the output layer of {container.name!r} runs {len(score_inputs)} times; "
            "Grad-CAM needs a model with one output layer"
        )
    return keras.Model(inputs, [features[0], score_inputs[0], outputs[0]])


def grad_model(model: keras.Model, layer_name: str | None = None) -> tuple[keras.Model, str]:
    """Build (or fetch from a per-model cache) the model that Grad-CAM differentiates.

    Args:
        model: a Keras model with one image input ``(N, H, W, C)`` and one output
            ``(N, classes)``; the explained layer may sit inside nested models.
        layer_name: see :func:`find_layer_path`; None = the last convolutional feature map.

    Returns:
        ``(gm, path)``: ``gm`` maps the model input to ``[feature map (N, h, w, k),
        logits source, output]`` when the model ends in a softmax (the logits source is the
        input of that final layer), else to ``[feature map, output]``. It shares every
        layer and weight with ``model``, so it follows further training. ``path`` names the
        layer, e.g. ``"backbone/conv5_block3_out"``.

    Raises:
        TypeError: ``layer_name`` is not a string.
        ConfigurationError: unknown or ambiguous layer, a layer without a 4-D output, a
            layer used more than once, or a model with several outputs.
    """
    built = _grad_model(model, layer_name)
    return built.model, built.layer


def _grad_model(model: keras.Model, layer_name: str | None) -> _GradModel:
    path = _default_layer_path(model) if layer_name is None else find_layer_path(model, layer_name)
    with _CACHE_LOCK:
        per_model = _CACHE.setdefault(model, {})
        if path in per_model:
            return per_model[path]
        out_layer = _output_layer(model)
        is_softmax, dense = _softmax_layer(out_layer) if out_layer is not None else (False, None)
        traced = _trace(model, path, want_score_input=is_softmax)
        shape = tuple(traced.outputs[0].shape)
        if len(shape) != 4:
            raise ConfigurationError(
                f"layer {'/'.join(path)!r} has output shape {shape}; Grad-CAM needs a "
                "convolutional feature map (N, h, w, channels)"
            )
        output_shape = tuple(traced.outputs[-1].shape)
        if len(output_shape) != 2 or output_shape[1] is None:
            raise ConfigurationError(
                f"the output of {model.name!r} has shape {output_shape}; Grad-CAM needs class "
                "scores (N, classes)"
            )
        logits_from = "dense" if is_softmax and dense is not None else "source"
        layer = "/".join(path)
        centres = _measure_centres(traced)
        built = _GradModel(
            model=traced,
            logits_from=logits_from,
            dense=dense if is_softmax else None,
            layer=layer,
            num_classes=int(output_shape[1]),
            step=_make_step(traced, logits_from, dense, layer, centres),
            centres=centres,
        )
        per_model[path] = built
        return built


def cell_centres(
    model: keras.Model, layer_name: str | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Where the explained layer's cells look in the input, in input pixels (pixel ``i``
    centred at ``i``): ``(rows, columns)``, one centre per row and per column of the feature
    map, increasing; None when it could not be measured (the maps then use half-pixel centres).

    Measured once per model and layer (cached with :func:`grad_model`) as the centroid of the
    effective receptive field of up to 4 cells spread over the map's diagonal, the first and
    last included; the rows and columns in between are interpolated. For Keras' ResNet50 at
    224 px: cells 0, 2, 4, 6 at about 17, 66, 128, 185 (all 7 measured: 17, 38, 66, 97, 128,
    158, 185; interpolating 1, 3, 5 is within 4 px of that) where half-pixel centres would say
    15.5, 79.5, 143.5, 207.5.
    """
    return _grad_model(model, layer_name).centres


MAX_PROBE_CELLS = 4  # cells whose receptive field is measured (one forward+backward pass each)


def _measure_centres(traced: keras.Model) -> tuple[np.ndarray, np.ndarray] | None:
    import tensorflow as tf

    height, width, channels = (traced.inputs[0].shape[i] for i in (1, 2, 3))
    grid = tuple(traced.outputs[0].shape[1:3])
    if None in (height, width, channels) or None in grid:
        return None
    h, w = int(grid[0]), int(grid[1])
    n = max(h, w)
    if n < 2:
        return None
    probes = np.unique(np.round(np.linspace(0, n - 1, min(n, MAX_PROBE_CELLS))).astype(int))
    rows = np.round(probes * (h - 1) / (n - 1)).astype(np.int32)
    cols = np.round(probes * (w - 1) / (n - 1)).astype(np.int32)
    image = np.random.default_rng(0).uniform(0.0, 1.0, (1, height, width, channels))
    x = tf.constant(image.astype(np.float32))

    # One compiled probe, dropped after the measurement. Run eagerly, the backward pass from a
    # cell to the input left ~175 MiB more resident for the life of the service (ResNet50 at
    # 224 px, oneDNN on: measured in docs/benchmarks/serve.md, QA 81).
    @tf.function(input_signature=[tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32)])
    def probe(row: Any, col: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            features = tf.cast(traced(x, training=False)[0], tf.float32)
            target = tf.reduce_sum(tf.square(features[0, row, col]))
        grads = tape.gradient(target, x)
        if grads is None:  # found while tracing
            return tf.fill(tf.shape(x)[1:3], np.nan)
        return tf.reduce_sum(tf.abs(grads[0]), axis=-1)

    fields = []
    for row, col in zip(rows, cols, strict=True):
        # one probe per pass: a batch of 8 at 224 px held ~1.3 GB more at the peak (ResNet50's
        # activations for the backward pass) in a service budgeted at 2.5 GiB
        fields.append(probe(tf.constant(int(row)), tf.constant(int(col))).numpy())
    field = np.stack(fields)  # (probes, H, W)
    total = field.sum(axis=(1, 2))
    if not (np.isfinite(total).all() and (total > 0).all()):
        return None
    ys = (field.sum(axis=2) * np.arange(height)).sum(axis=1) / total
    xs = (field.sum(axis=1) * np.arange(width)).sum(axis=1) / total
    centres = []
    for cells, measured, count in ((rows, ys, h), (cols, xs, w)):
        known = np.unique(cells)
        at = np.array([measured[cells == c].mean() for c in known])
        if count == 1:
            centres.append(np.array([at.mean()]))
            continue
        line = np.interp(np.arange(count), known, at)
        if not np.all(np.diff(line) > 0):
            return None
        centres.append(line.astype(np.float64))
    return centres[0], centres[1]


def _resampling(size: int, centres: np.ndarray) -> np.ndarray:
    """``(size, cells)`` bilinear weights: pixel ``i`` takes the map at the fractional cell
    where ``i`` falls between the cell centres (the end cells beyond them)."""
    weights = np.zeros((size, len(centres)), dtype=np.float32)
    if len(centres) == 1:
        weights[:, 0] = 1.0
        return weights
    where = np.interp(np.arange(size, dtype=np.float64), centres, np.arange(len(centres)))
    low = np.minimum(np.floor(where).astype(int), len(centres) - 2)
    frac = (where - low).astype(np.float32)
    weights[np.arange(size), low] = 1.0 - frac
    weights[np.arange(size), low + 1] += frac
    return weights


# --- Grad-CAM ----------------------------------------------------------------------------


def _check_input(model: keras.Model, model_input: Any) -> tuple[np.ndarray, bool]:
    if not isinstance(model_input, np.ndarray):
        raise TypeError(
            "model_input must be a numpy array (H, W, 1) or (N, H, W, 1). "
            f"Received: {type(model_input).__name__}"
        )
    if model_input.dtype.kind not in "biuf":
        raise InvalidImageError(
            f"model_input must hold real numbers. Received dtype {model_input.dtype}"
        )
    single = model_input.ndim == 3
    batch = model_input[np.newaxis] if single else model_input
    expected = tuple(model.inputs[0].shape[1:])
    if (
        batch.ndim != 4
        or len(expected) != 3
        or any(
            want is not None and got != want
            for got, want in zip(batch.shape[1:], expected, strict=True)
        )
    ):
        shown = tuple("H" if d is None else d for d in expected)
        raise InvalidImageError(
            f"model_input must have shape {shown} or (N, *{shown}) for model "
            f"{model.name!r}. Received shape {model_input.shape}"
        )
    if batch.shape[0] == 0 or 0 in batch.shape[1:3]:
        raise InvalidImageError(f"model_input is empty. Received shape {model_input.shape}")
    batch = batch.astype(np.float32, copy=False)
    if not np.isfinite(batch).all():
        raise InvalidImageError(
            f"model_input contains NaN or infinite values ({int((~np.isfinite(batch)).sum())} "
            f"of {batch.size})"
        )
    return batch, single


def _check_class_index(class_index: Any, n: int) -> np.ndarray | None:
    if class_index is None:
        return None
    if isinstance(class_index, bool):
        raise TypeError(
            f"class_index must be an int, a sequence of ints or None. Received: {class_index!r}"
        )
    if isinstance(class_index, int | np.integer):
        return np.full(n, int(class_index), dtype=np.int64)
    if isinstance(class_index, Sequence | np.ndarray) and not isinstance(class_index, str):
        values = np.asarray(class_index)
        if values.dtype.kind not in "iu" or values.ndim != 1:
            raise TypeError(
                f"class_index must be an int, a sequence of ints or None. Received: {class_index!r}"
            )
        if len(values) != n:
            raise ConfigurationError(
                f"class_index has {len(values)} entries for {n} images; give one per image"
            )
        return values.astype(np.int64)
    raise TypeError(
        "class_index must be an int, a sequence of ints or None. "
        f"Received: {class_index!r} ({type(class_index).__name__})"
    )


def _normalise(cams: np.ndarray) -> np.ndarray:
    """Min-max normalise each map to [0, 1]; a map with no contrast (all zero, constant,
    or non-finite) becomes all zeros: it localises nothing."""
    out = np.zeros_like(cams, dtype=np.float32)
    for i, cam in enumerate(cams):
        if not np.isfinite(cam).all():
            continue
        low, high = float(cam.min()), float(cam.max())
        spread = high - low
        if spread <= 1e-6 * max(abs(high), abs(low)) or spread <= np.finfo(np.float32).tiny:
            continue
        out[i] = np.clip((cam - low) / spread, 0.0, 1.0)
    return out


def _make_step(
    traced: keras.Model,
    logits_from: str,
    dense: Any,
    layer: str,
    centres: tuple[np.ndarray, np.ndarray] | None,
) -> Any:
    """The Grad-CAM computation as one compiled TensorFlow graph (about 2x less CPU than
    eager on ResNet50). ``classes`` holds a class per image, -1 for "the predicted one".
    The map is upsampled on ``centres`` (:func:`cell_centres`), else with half-pixel centres."""
    import tensorflow as tf

    spec = tuple(traced.inputs[0].shape[1:])
    if centres is not None:
        along_rows = tf.constant(_resampling(int(spec[0]), centres[0]))
        along_cols = tf.constant(_resampling(int(spec[1]), centres[1]))

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, *spec), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ],
        reduce_retracing=True,
    )
    def step(x: Any, classes: Any) -> tuple[Any, Any, Any]:
        with tf.GradientTape() as tape:
            tape.watch(x)  # record everything, a frozen backbone included
            outputs = traced(x, training=False)
            features, source, output = outputs if len(outputs) == 3 else (*outputs, outputs[-1])
            if logits_from == "dense":
                logits = tf.matmul(tf.cast(source, tf.float32), tf.cast(dense.kernel, tf.float32))
                if dense.bias is not None:
                    logits = logits + tf.cast(dense.bias, tf.float32)
            else:  # the input of a softmax layer, or the output itself
                logits = tf.cast(source, tf.float32)
            scores = tf.cast(output, tf.float32)
            predicted = tf.argmax(scores, axis=1, output_type=tf.int32)
            chosen = tf.where(classes < 0, predicted, classes)
            target = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        grads = tape.gradient(target, features)
        if grads is None:  # found while tracing, so raised on the first call
            raise ConfigurationError(
                f"the class score does not depend on layer {layer!r}; choose a layer on the "
                "path to the output"
            )
        weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2))  # (N, k)
        cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", tf.cast(features, tf.float32), weights))
        if centres is None:
            resized = tf.image.resize(cam[..., tf.newaxis], tf.shape(x)[1:3], method="bilinear")
            upsampled = resized[..., 0]
        else:
            upsampled = tf.einsum("yh,nhw,xw->nyx", along_rows, cam, along_cols)
        return upsampled, chosen, scores

    return step


def _explain_batch(
    gm: _GradModel, batch: np.ndarray, classes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if classes is None:
        classes = np.full(batch.shape[0], -1, dtype=np.int64)
    else:
        bad = classes[(classes < 0) | (classes >= gm.num_classes)]
        if bad.size:
            raise ConfigurationError(
                f"class_index must be in 0..{gm.num_classes - 1} for this model. "
                f"Received: {bad.tolist()[0]}"
            )
    maps, chosen, scores = gm.step(batch, classes.astype(np.int32))
    return _normalise(maps.numpy()), chosen.numpy().astype(np.int64), scores.numpy()


def gradcam_explain(
    model: keras.Model,
    model_input: np.ndarray,
    *,
    class_index: int | Sequence[int] | np.ndarray | None = None,
    layer_name: str | None = None,
    batch_size: int = 16,
) -> GradCamResult:
    """Grad-CAM heatmaps together with the scores and classes they belong to.

    One forward pass per chunk of ``batch_size`` images gives both the prediction and the
    explanation, so a caller that shows "pneumonia 0.93" next to the map needs no second
    prediction. Arguments as in :func:`gradcam`.

    Returns:
        A :class:`GradCamResult` whose arrays always have the batch axis ``N``.
    """
    batch, _ = _check_input(model, model_input)
    classes = _check_class_index(class_index, batch.shape[0])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an int >= 1. Received: {batch_size!r}")
    from radlens.models.ensemble import ensemble_members

    members = ensemble_members(model)
    if members:
        return _explain_ensemble(model, members, batch, classes, layer_name, batch_size)
    gm = _grad_model(model, layer_name)
    maps, chosen, scores = [], [], []
    for start in range(0, batch.shape[0], batch_size):
        part = None if classes is None else classes[start : start + batch_size]
        m, c, s = _explain_batch(gm, batch[start : start + batch_size], part)
        maps.append(m)
        chosen.append(c)
        scores.append(s)
    return GradCamResult(
        heatmaps=np.concatenate(maps).astype(np.float32),
        class_indices=np.concatenate(chosen),
        scores=np.concatenate(scores).astype(np.float32),
        layer=gm.layer,
    )


def _explain_ensemble(
    model: keras.Model,
    members: Sequence[keras.Model],
    batch: np.ndarray,
    classes: np.ndarray | None,
    layer_name: str | None,
    batch_size: int,
) -> GradCamResult:
    """Grad-CAM of an ensemble (``models.ensemble``): each member's map of the same class on the
    unshifted image, averaged and re-normalised; the scores are the ensemble's own output.

    Why the mean of maps: the ensemble's score is the mean of its members' probabilities, so
    the evidence for it is their evidence together; a single member's map would explain a
    score the service never shows. The class explained is the ensemble's choice (its argmax
    when ``class_index`` is None), the same for every member.
    """
    scores = np.concatenate(
        [
            np.asarray(model(batch[i : i + batch_size], training=False), dtype=np.float32)
            for i in range(0, batch.shape[0], batch_size)
        ]
    )
    if classes is None:
        chosen = np.argmax(scores, axis=1).astype(np.int64)
    else:
        bad = classes[(classes < 0) | (classes >= scores.shape[1])]
        if bad.size:
            raise ConfigurationError(
                f"class_index must be in 0..{scores.shape[1] - 1} for this model. "
                f"Received: {bad.tolist()[0]}"
            )
        chosen = classes.astype(np.int64)
    maps = [
        gradcam_explain(
            member, batch, class_index=chosen, layer_name=layer_name, batch_size=batch_size
        )
        for member in members
    ]
    mean = np.mean([m.heatmaps for m in maps], axis=0)
    return GradCamResult(
        heatmaps=_normalise(mean).astype(np.float32),
        class_indices=chosen,
        scores=scores,
        layer=f"mean of {len(members)} members' {maps[0].layer}",
    )


def gradcam(
    model: keras.Model,
    model_input: np.ndarray,
    *,
    class_index: int | Sequence[int] | np.ndarray | None = None,
    layer_name: str | None = None,
) -> np.ndarray:
    """Grad-CAM heatmap(s) of ``model`` for ``model_input``, at the input resolution.

    The gradient of the class logit (see the module docstring) with respect to the chosen
    feature map is averaged over space to one weight per channel; the ReLU of the weighted
    channel sum is upsampled bilinearly to ``(H, W)`` and min-max normalised per image.

    Args:
        model: a Keras model taking ``(N, H, W, 1)`` float32 images in [0, 1] (exactly
            ``PreprocessedImage.model_input()``) and returning ``(N, classes)`` scores —
            any radlens architecture, the ResNet50 with its nested ``"backbone"`` included.
        model_input: one image ``(H, W, 1)`` or a batch ``(N, H, W, 1)``, real numbers,
            finite; the spatial size must match the model's input.
        class_index: the class to explain. None = the class the model predicts for each
            image (argmax of its scores). For a binary radlens model (2-class softmax)
            pass ``1`` to explain the positive finding whatever the prediction — usually the
            clinically interesting map. An int applies to every image; a sequence gives one
            class per image.
        layer_name: the feature map to explain (see :func:`find_layer_path`). None = the
            last convolutional feature map: ``models.architectures.last_conv_layer_name``
            for radlens architectures (``conv5_block3_out`` inside ``backbone`` for ResNet50,
            the last ``Conv2D`` for ``simple_cnn``).

    Returns:
        float32 heatmaps in [0, 1]: ``(H, W)`` for one image, ``(N, H, W)`` for a batch.
        1 marks the strongest evidence for the class in that image. A map without any
        positive evidence or contrast (all zero, constant — e.g. a 1x1 feature map — or
        non-finite) is all zeros, never NaN.

    Raises:
        TypeError: ``model_input`` is not a numpy array, or ``class_index`` / ``layer_name``
            has the wrong type.
        InvalidImageError: ``model_input`` has the wrong shape, a non-numeric dtype, or
            NaN/infinite values (the message quotes what was received).
        ConfigurationError: ``class_index`` out of range for the model, or a layer that
            does not exist, is ambiguous, or is not a feature map.
    """
    batch, single = _check_input(model, model_input)
    result = gradcam_explain(model, batch, class_index=class_index, layer_name=layer_name)
    return result.heatmaps[0] if single else result.heatmaps


def explain_image(
    model: keras.Model,
    model_input: np.ndarray,
    *,
    class_names: Sequence[str],
    class_index: int | None = None,
    layer_name: str | None = None,
    alpha: float = 0.4,
    cmap: str = "inferno",
    display: np.ndarray | None = None,
    label: str | None = None,
    threshold: float | None = None,
    positive_score: float | None = None,
    validated: bool = False,
) -> tuple[GradCamResult, bytes]:
    """Explain one image: its Grad-CAM map and the PNG overlay titled with the label, how it
    was decided and the class the map explains.

    The one call a service route or a CLI command needs: a single forward pass gives the
    scores and the map, and :func:`models.overlay.render_overlay` draws the map over the
    image exactly as the model saw it (``model_input``). With ``threshold`` (a binary model)
    the title says the label and its decision, e.g. ``"normal (abnormal score 0.1000 <
    threshold 0.4862) · Grad-CAM of abnormal"`` (:func:`overlay_title`): a binary model's map
    explains its positive class whatever the label, and a title of that class and its score
    alone ("abnormal 0.1000") read as an abnormal result in a viewer that shows only the
    picture (QA round 83). Without it: ``"pneumonia 0.9300 · Grad-CAM <layer>"``.

    Args:
        model: as in :func:`gradcam`.
        model_input: one image ``(H, W, 1)`` in [0, 1] (``PreprocessedImage.model_input()``).
        class_names: the manifest's class names, one per model output.
        class_index: None = the predicted class; ``1`` = the positive class of a binary model.
        layer_name: as in :func:`gradcam`.
        alpha: overlay opacity where the map is 1.
        cmap: ``"inferno"`` or ``"viridis"``.
        display: the same image at display resolution ``(H2, W2)`` in [0, 1]; given, the
            PNG shows the model input beside the map upsampled onto ``display``
            (:func:`models.overlay.render_overlay`).
        label: the label the caller decided (the stored prediction's); None = decided here
            from ``threshold`` and the score (or the explained class without one).
        threshold: a binary model's operating-point threshold on its positive class (index 1).
        positive_score: the positive-class score the label was decided on (a multi-frame
            instance's aggregate, another runtime's score); None = this pass's score.
        validated: the model's manifest says ``validated_for_clinical_use``: the caption
            leaves out "Not for clinical use." (:func:`models.overlay.caption`).

    Returns:
        ``(result, png)``: the :class:`GradCamResult` (batch of one) and the PNG bytes.

    Raises:
        As :func:`gradcam` and :func:`models.overlay.render_overlay`; ConfigurationError
        when ``class_names`` does not have one name per model output, InvalidImageError for
        a batch or input values outside [0, 1].
    """
    from radlens.models.overlay import DEFAULT_WIDTH, render_overlay

    if not isinstance(model_input, np.ndarray) or model_input.ndim != 3:
        shape = getattr(model_input, "shape", type(model_input).__name__)
        raise InvalidImageError(f"model_input must be one image (H, W, 1). Received: {shape}")
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise TypeError(f"class_names must be a sequence of str. Received: {class_names!r}")
    result = gradcam_explain(model, model_input, class_index=class_index, layer_name=layer_name)
    if len(class_names) != result.scores.shape[1]:
        raise ConfigurationError(
            f"class_names has {len(class_names)} names for a model with "
            f"{result.scores.shape[1]} outputs. Received: {list(class_names)!r}"
        )
    chosen = int(result.class_indices[0])
    title = overlay_title(
        list(class_names),
        chosen,
        result.scores[0],
        result.layer,
        label=label,
        threshold=threshold,
        positive_score=positive_score,
        width=DEFAULT_WIDTH * (1 if display is None else 2),
    )
    png = render_overlay(
        model_input[..., 0],
        result.heatmaps[0],
        title=title,
        alpha=alpha,
        cmap=cmap,
        display=display,
        validated=validated,
    )
    return result, png


_TITLE_FONT_SIZE = 11  # points, as models.overlay draws the title
_TITLE_MARGIN = 16  # pixels left free across the PNG's width


def overlay_title(
    class_names: Sequence[str],
    explained: int,
    scores: np.ndarray,
    layer: str,
    *,
    label: str | None = None,
    threshold: float | None = None,
    positive_score: float | None = None,
    width: int | None = None,
) -> str:
    """The overlay's title: what a viewer that shows only the picture needs to read it.

    A binary model with a ``threshold``: the label, the positive score against the threshold
    and the class the map explains, ``"normal (abnormal score 0.1000 < threshold 0.4862) ·
    Grad-CAM of abnormal"``; score and threshold printed with as many decimals as tell them
    apart (:func:`_apart`). Another model, or none: the label (when it is not the explained
    class), the explained class and its score, ``"pneumonia 0.9300 · Grad-CAM <layer>"``.

    ``width``: the PNG's width in pixels; the first of ever shorter wordings whose line fits
    it is used (the title is drawn at a fixed size; one that still does not fit wraps).
    """
    names = list(class_names)
    name = names[explained]
    if len(names) == 2 and threshold is not None:
        positive = names[1]
        score = float(scores[1]) if positive_score is None else float(positive_score)
        above = score >= float(threshold)
        decided = label if label is not None else names[1 if above else 0]
        shown, at = _apart(score, float(threshold))
        relation = "≥" if above else "<"
        wordings = [
            f"{decided} ({positive} score {shown} {relation} threshold {at}) · Grad-CAM of {name}",
            f"{decided} ({positive} {shown} {relation} threshold {at}) · Grad-CAM of {name}",
            f"{decided} ({positive} {shown} {relation} threshold {at}) · map of {name}",
            f"{decided}: {positive} {shown} {relation} threshold {at}",
        ]
    else:
        score = float(scores[explained])
        if label is None or label == name:
            wordings = [f"{name} {score:.4f} · Grad-CAM {layer}", f"{name} {score:.4f} · Grad-CAM"]
        else:
            wordings = [
                f"{label} ({name} score {score:.4f}) · Grad-CAM of {name}",
                f"{label} ({name} {score:.4f}) · map of {name}",
            ]
    if width is None:
        return wordings[0]
    for wording in wordings:
        if _title_width(wording) <= width - _TITLE_MARGIN:
            return wording
    return wordings[-1]


def _title_width(text: str) -> float:
    """``text``'s width in pixels as models.overlay draws a title (DejaVu Sans, 100 dpi)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    points, _, _ = TextToPath().get_text_width_height_descent(
        text, FontProperties(size=_TITLE_FONT_SIZE), ismath=False
    )
    return float(points) * 100 / 72


# --- multi-label findings ------------------------------------------------------------------

DEFAULT_EXPLAINED_FINDINGS = 3  # the top positive findings explained when none is named


def pick_findings(
    scores: np.ndarray,
    finding_names: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    requested: Sequence[str] | None = None,
    top: int = DEFAULT_EXPLAINED_FINDINGS,
) -> list[int]:
    """Which findings of a multi-label model to explain, as output indices.

    ``requested`` names them (in that order, repeats dropped); otherwise the positive findings
    (score >= their threshold) by descending score, at most ``top``; when none is positive,
    the one with the highest score (what the model came closest to seeing).

    Raises:
        ConfigurationError: a requested name that is not one of ``finding_names`` (the
            message lists them), or ``top`` < 1.
    """
    names = list(finding_names)
    if requested:
        unknown = [n for n in requested if n not in names]
        if unknown:
            raise ConfigurationError(
                f"unknown finding(s) {unknown!r}; the model's findings are {names!r}"
            )
        return list(dict.fromkeys(names.index(n) for n in requested))
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigurationError(f"top must be an int >= 1. Received: {top!r}")
    vector = np.asarray(scores, dtype=np.float64).ravel()
    order = sorted(range(len(names)), key=lambda i: (-vector[i], i))
    positive = [i for i in order if vector[i] >= thresholds[names[i]]]
    return positive[:top] if positive else order[:1]


def explain_findings(
    model: keras.Model,
    model_input: np.ndarray,
    *,
    finding_names: Sequence[str],
    thresholds: Mapping[str, float],
    requested: Sequence[str] | None = None,
    top: int = DEFAULT_EXPLAINED_FINDINGS,
    layer_name: str | None = None,
    alpha: float = 0.4,
    cmap: str = "inferno",
    display: np.ndarray | None = None,
    validated: bool = False,
) -> tuple[GradCamResult, bytes]:
    """Grad-CAM of a multi-label model, one map per chosen finding, in one PNG.

    The findings are chosen by :func:`pick_findings` (named ones, else the top positive
    ones); each gets its own map -- the gradient of that finding's logit -- rendered as in
    :func:`explain_image` and titled ``"<finding> <score> (positive|negative at <threshold>)"``;
    the overlays are stacked top to bottom in one PNG. With ``display`` (as in
    :func:`explain_image`) each overlay shows the model input beside the map upsampled onto
    the image at display resolution, at the source's aspect ratio; without it, the model
    input's (a square input drew a portrait radiograph square, QA round 43). ``validated``:
    as in :func:`explain_image`.

    Returns:
        ``(result, png)``: the :class:`GradCamResult` with one row per chosen finding (the
        same image repeated; ``class_indices`` the findings) and the PNG bytes.

    Raises:
        As :func:`pick_findings` and :func:`explain_image`.
    """
    from radlens.models.overlay import render_overlay

    if not isinstance(model_input, np.ndarray) or model_input.ndim != 3:
        shape = getattr(model_input, "shape", type(model_input).__name__)
        raise InvalidImageError(f"model_input must be one image (H, W, 1). Received: {shape}")
    names = list(finding_names)
    if requested:
        chosen = pick_findings(np.zeros(len(names)), names, thresholds, requested=requested)
    else:
        scores = np.asarray(model(model_input[np.newaxis], training=False))[0]
        chosen = pick_findings(scores, names, thresholds, top=top)
    batch = np.repeat(model_input[np.newaxis], len(chosen), axis=0)
    result = gradcam_explain(model, batch, class_index=chosen, layer_name=layer_name)
    if len(names) != result.scores.shape[1]:
        raise ConfigurationError(
            f"finding_names has {len(names)} names for a model with "
            f"{result.scores.shape[1]} outputs. Received: {names!r}"
        )
    panels = []
    for row, index in enumerate(chosen):
        name, score = names[index], float(result.scores[row, index])
        decision = "positive" if score >= thresholds[name] else "negative"
        shown, at = _apart(score, thresholds[name])
        title = f"{name} {shown} ({decision} at {at}) · Grad-CAM"
        panels.append(
            render_overlay(
                model_input[..., 0],
                result.heatmaps[row],
                title=title,
                alpha=alpha,
                cmap=cmap,
                display=display,
                validated=validated,
            )
        )
    return result, _stack_pngs(panels)


def _stack_pngs(panels: Sequence[bytes]) -> bytes:
    """PNG panels of one width stacked top to bottom into one PNG."""
    import io

    from PIL import Image

    if len(panels) == 1:
        return panels[0]
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in panels]
    width = max(im.width for im in images)
    canvas = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    top = 0
    for im in images:
        canvas.paste(im, (0, top))
        top += im.height
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _apart(score: float, threshold: float) -> tuple[str, str]:
    """A score and its threshold printed with 4 to 8 decimals, as many as tell them apart
    (at 2 decimals 0.4999 and a 0.4862 threshold both read 0.50, QA round 73)."""
    for digits in range(4, 9):
        shown, at = f"{score:.{digits}f}", f"{threshold:.{digits}f}"
        if shown != at:
            break
    return shown, at

"""Out-of-distribution (OOD) scores on the model's own features.

A classifier answers every image with a confident class, a CT slice or a photo of a cat
included. This module fits, at training time, a detector on the features the model computes
for its training set -- the global average of its last convolutional feature map, which for
ResNet50 is its penultimate layer (:func:`feature_model`) -- and calibrates a threshold on
the validation set: an image whose score is above it is "not like what the model was trained
on". Features are L2-normalised first (raw-feature Mahalanobis separated CT slices and noise
much worse, docs/benchmarks/ood.md). Two detectors, measured against each other in
bench/ood.py:

- ``mahalanobis`` (the default): class-conditional means with one shared covariance (Lee et
  al., NeurIPS 2018); the score is the smallest squared Mahalanobis distance to a class mean.
  The covariance is shrunk towards a scaled identity (features outnumber images for
  ResNet50's 2048-d pool on small sets). A multi-label findings model's classes are its
  findings: one mean per finding over the images where it is positive, and one over the images
  without any finding (:func:`finding_groups`).
- ``knn``: the distance to the k-th nearest training feature (Sun et al., ICML 2022).

The threshold is the split-conformal quantile (default 0.99) of the validation scores
(:func:`conformal_threshold`): the detector is fitted on training features only, so the
validation images are a calibration set it never saw, and a new in-distribution image is
flagged with probability at most 1% (at least ``1% - 1/(n+1)``). The detector is one
``.npz`` file (numbers only, read without pickle) stored beside ``model.keras``, listed with
its sha256 in the manifest's ``ood`` field, so the seal covers it (models.registry).

A :class:`LayeredOodDetector` reads several layers (its ``layers``, recorded in its file and
the manifest entry): one detector per layer, each at the Bonferroni-split conformal level
``1 - (1 - quantile) / layers``, an image flagged when any flags it. On a 64 px ResNet50
trained on nih1000 the last stage alone did not separate CT, MR and photos sent as gray
PNG/JPEG and the first stage with it did (docs/benchmarks/ood.md, QA 70 and 74); training
reads ResNet50's first and last stage when the validation split is large enough for the split
to keep 1% (training.ood). A detector file without layers reads the last stage, as before.

An ensemble (``models.ensemble``) gets an :class:`EnsembleOodDetector` (on each member's last
layer): one Mahalanobis detector per member on that member's own pooled features, fitted on the
images the member trained on, and the member's scores of images it did NOT train on (its
held-out fold for a cross-validated ensemble, the validation split otherwise) kept as its
calibration set. The served score is the image's rank among those calibration scores pooled
over the members (the cross-conformal p-value, Vovk 2015), so each member is normalised by its
own calibration and no image needs to be unseen by every member (none is, in a cross-validated
ensemble).
"""

from __future__ import annotations

import io
import itertools
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from radlens.models.errors import ConfigurationError, ModelCorruptError

if TYPE_CHECKING:
    import keras

__all__ = [
    "ENSEMBLE",
    "LAYERED",
    "METHODS",
    "EnsembleOodDetector",
    "LayeredOodDetector",
    "OodDetector",
    "conformal_threshold",
    "default_layers",
    "expected_flag_rate",
    "feature_layers",
    "feature_model",
    "finding_groups",
    "fit_detector",
    "fit_ensemble_detector",
    "fit_layered_detector",
    "load_detector",
    "resolve_layers",
]

METHODS = ("mahalanobis", "knn")
ENSEMBLE = "ensemble"  # the stored method of an EnsembleOodDetector
Method = Literal["mahalanobis", "knn"]
DEFAULT_QUANTILE = 0.99
DEFAULT_K = 5
MAX_KNN_BANK = 4096  # training features kept for knn (a seeded sample beyond that)
SHRINKAGE = 0.1  # covariance weight moved to the scaled identity
LAYERED = "layers"  # the stored method of a LayeredOodDetector
# ResNet50's first and last stage outputs (models.architectures: the nested "backbone")
RESNET_LAYERS = ("backbone/conv2_block3_out", "backbone/conv5_block3_out")


def feature_model(model: keras.Model, layers: Sequence[str] | None = None) -> keras.Model:
    """A model with the same input returning ``[class scores, features]``.

    With ``layers`` None (every detector saved before layers were recorded) the features are
    the global average of the last convolutional feature map
    (``models.architectures.last_conv_layer_name``): for ResNet50 exactly its penultimate
    layer (``"pool"``, 2048 values), for simple_cnn its ``conv4`` (64 values; its dense layers
    separated noise and CT slices worse, docs/benchmarks/ood.md). With ``layers`` (paths as
    :func:`feature_layers` lists them, a :class:`LayeredOodDetector`'s ``layers``) they are
    the global averages of those layers' outputs, concatenated in that order. The layers are
    shared with ``model``.

    Raises:
        ConfigurationError: the model has no convolution layer, a layer it does not have
            (the message lists the valid ones), or layers asked of an ensemble.
    """
    import keras

    from radlens.models.architectures import gradcam_model
    from radlens.models.ensemble import ensemble_members

    members = ensemble_members(model)
    if members:
        if layers is not None:
            raise ConfigurationError(
                "an ensemble's OOD detector reads each member's last convolutional layer only; "
                f"received layers {list(layers)}"
            )
        return _ensemble_feature_model(model, members)
    if layers is not None:
        return _layered_feature_model(model, resolve_layers(model, layers))
    both = gradcam_model(model)  # [last conv feature map, scores]
    feature_map, scores = both.outputs
    features = keras.layers.GlobalAveragePooling2D(name="ood_features")(feature_map)
    return keras.Model(both.inputs[0], [scores, features], name=f"{model.name}_ood")


def feature_layers(model: keras.Model) -> list[str]:
    """The layers a detector may read (:func:`feature_model`), in model order: for a model
    with a nested ``backbone`` (ResNet50) its residual blocks' outputs as
    ``"backbone/<name>"`` (``backbone/conv2_block3_out`` ends the first stage,
    ``backbone/conv5_block3_out`` the last), otherwise its Conv2D layers."""
    import keras

    backbone = _backbone(model)
    if backbone is not None:
        blocks = [
            f"backbone/{layer.name}" for layer in backbone.layers if layer.name.endswith("_out")
        ]
        last = f"backbone/{backbone.layers[-1].name}"
        return blocks if last in blocks else [*blocks, last]
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def resolve_layers(model: keras.Model, layers: Sequence[str]) -> tuple[str, ...]:
    """``layers`` as :func:`feature_layers` paths (a backbone layer may be named without its
    ``backbone/`` prefix), checked against the model.

    Raises:
        ConfigurationError: no layer, a repeated one, or one the model lacks (one line that
            lists the model's valid layers).
    """
    valid = feature_layers(model)
    resolved = []
    for name in layers:
        path = name if name in valid or "/" in name else f"backbone/{name}"
        if path not in valid:
            raise ConfigurationError(
                f"model {model.name!r} has no layer {name!r} for the OOD detector; its valid "
                f"layers are: {', '.join(valid)}"
            )
        resolved.append(path)
    if not resolved or len(set(resolved)) != len(resolved):
        raise ConfigurationError(
            f"the OOD detector needs one or more distinct layers. Received: {list(layers)}"
        )
    return tuple(resolved)


def default_layers(model: keras.Model) -> tuple[str, ...] | None:
    """The layers training reads by default: for ResNet50 the first stage's output and the
    last stage's (:data:`RESNET_LAYERS`; on a 64 px ResNet50 trained on nih1000 the last stage
    alone did not separate CT, MR and photos exported as gray PNG/JPEG, the pair did,
    docs/benchmarks/ood.md), None (the last convolutional layer) for any other model."""
    from radlens.models.ensemble import ensemble_members

    if ensemble_members(model):
        return None
    valid = feature_layers(model)
    if _backbone(model) is not None and all(layer in valid for layer in RESNET_LAYERS):
        return RESNET_LAYERS
    return None


def _backbone(model: keras.Model) -> keras.Model | None:
    import keras

    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        return None
    return backbone if isinstance(backbone, keras.Model) else None


def _layered_feature_model(model: keras.Model, layers: tuple[str, ...]) -> keras.Model:
    """:func:`feature_model` over named layers: the model's chain is rebuilt (as
    ``gradcam_model`` does) with the backbone returning its inner outputs as well."""
    import keras

    backbone = _backbone(model)
    inner = [path.split("/", 1)[1] for path in layers if path.startswith("backbone/")]
    multi = None
    if backbone is not None and inner:
        multi = keras.Model(
            backbone.input,
            [backbone.output, *(backbone.get_layer(n).output for n in inner)],
            name="backbone_ood",
        )
    inputs = keras.Input(model.input_shape[1:], name="image")
    x: Any = inputs
    found: dict[str, Any] = {}
    for layer in model.layers[1:]:
        if layer.name == "backbone" and multi is not None:
            x, *maps = multi(x, training=False)
            found.update({f"backbone/{n}": m for n, m in zip(inner, maps, strict=True)})
        else:
            x = layer(x, training=False) if layer.name == "backbone" else layer(x)
            found[layer.name] = x
    pooled = [
        keras.layers.GlobalAveragePooling2D(name=f"ood_features_{i}")(found[path])
        for i, path in enumerate(layers)
    ]
    features = (
        keras.layers.Concatenate(name="ood_features")(pooled) if len(pooled) > 1 else pooled[0]
    )
    return keras.Model(inputs, [x, features], name=f"{model.name}_ood")


def _ensemble_feature_model(model: keras.Model, members: list[keras.Model]) -> keras.Model:
    """:func:`feature_model` of an ensemble: ``[the ensemble's scores, features]``, the
    features being the members' pooled last feature maps on the unshifted image, concatenated
    in member order (``(N, sum of the members' widths)``; :class:`EnsembleOodDetector` splits
    them again). The ensemble's graph is rebuilt around the members' feature outputs (the same
    layers and views, ``models.ensemble``), so each member runs once per view, as when
    serving without the detector."""
    import keras

    from radlens.models.architectures import gradcam_model
    from radlens.models.layers import ShiftView

    inputs = keras.Input(model.input_shape[1:], name="image")
    outputs, features = [], []
    for i, member in enumerate(members):
        feature_map, scores = gradcam_model(member)(inputs)
        features.append(keras.layers.GlobalAveragePooling2D(name=f"ood_features_{i}")(feature_map))
        outputs.append(scores)
    for layer in model.layers:  # the test-time views after the identity
        if isinstance(layer, ShiftView):
            view = layer(inputs)
            outputs.extend(member(view) for member in members)
    mean = keras.layers.Average(name="ensemble_mean")(outputs) if len(outputs) > 1 else outputs[0]
    pooled = (
        keras.layers.Concatenate(name="ood_features")(features)
        if len(features) > 1
        else features[0]
    )
    return keras.Model(inputs, [mean, pooled], name=f"{model.name}_ood")


def feature_layer(model: keras.Model, layers: Sequence[str] | None = None) -> str:
    """What :func:`feature_model` pools, for the manifest."""
    from radlens.models.architectures import last_conv_layer_name
    from radlens.models.ensemble import ensemble_members

    if layers is not None:
        return f"global average of {', '.join(resolve_layers(model, layers))}, each"
    members = ensemble_members(model)
    if members:
        layers = sorted({last_conv_layer_name(m) for m in members})
        return f"global average of {', '.join(layers)} in each of {len(members)} members"
    return f"global average of {last_conv_layer_name(model)}"


def extract_features(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = 64,
    layers: Sequence[str] | None = None,
) -> np.ndarray:
    """Features ``(N, D)`` float32 of ``images`` ``(N, H, W, 1)`` (:func:`feature_model`)."""
    both = feature_model(model, layers)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        _, features = both(batch, training=False)
        chunks.append(np.asarray(features, dtype=np.float32))
    return np.concatenate(chunks).reshape(len(images), -1)


@dataclass(frozen=True)
class OodDetector:
    """A fitted detector: ``scores(features)`` and the threshold above which an image is OOD.

    Attributes:
        method: ``"mahalanobis"`` or ``"knn"``.
        threshold: the conformal ``quantile`` of the validation scores.
        quantile: the validation quantile the threshold was set at.
        arrays: the fitted numbers (means and precision matrix, or the normalised bank).
        k: neighbours (knn).
    """

    method: Method
    threshold: float
    quantile: float
    arrays: dict[str, np.ndarray]
    k: int = DEFAULT_K

    @property
    def layers(self) -> tuple[str, ...] | None:
        """The layers it reads: None, the last convolutional layer (:func:`feature_model`)."""
        return None

    @property
    def dimension(self) -> int:
        """The feature dimension the detector was fitted on."""
        key = "means" if self.method == "mahalanobis" else "bank"
        return int(self.arrays[key].shape[1])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """OOD scores ``(N,)`` of features ``(N, D)``: higher is further out.

        Computed in float32 on the stored arrays as they are (a float64 copy of ResNet50's
        2048 x 2048 precision matrix per call cost more than the model call itself).

        Raises:
            ValueError: features of another dimension than the detector's (both quoted).
        """
        x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        if x.shape[1] != self.dimension:
            raise ValueError(
                f"the OOD detector was fitted on {self.dimension}-d features. "
                f"Received shape {x.shape}"
            )
        if self.method == "mahalanobis":
            return _mahalanobis(_normalise(x), self.arrays["means"], self.arrays["precision"])
        return _knn(x, self.arrays["bank"], self.k)

    def tf_scorer(self) -> Callable[[Any], Any]:
        """The same scores as TensorFlow ops, for the serving graph (app/predictor.py).

        Inside the model's ``tf.function`` the detector runs on TensorFlow's thread pool in
        the same call: scored with numpy right after a model call, OpenBLAS's threads waited
        on TensorFlow's still-spinning ones, and a 0.2 ms matrix-vector product took 20-35 ms
        on 2 cores (docs/benchmarks/ood.md). The arrays become constants once, here.

        Returns:
            features ``(N, D)`` tensor -> ``(N,)`` float32 scores.
        """
        import tensorflow as tf

        if self.method == "mahalanobis":
            return _tf_mahalanobis(self.arrays)
        bank = tf.constant(self.arrays["bank"], tf.float32)
        k = self.k

        def knn(features: Any) -> Any:
            q = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1, epsilon=1e-24)
            dist = tf.maximum(0.0, 2.0 - 2.0 * tf.matmul(q, bank, transpose_b=True))
            nearest = -tf.math.top_k(-dist, k=k).values  # the k smallest, ascending
            return tf.sqrt(nearest[:, k - 1])

        return knn

    def in_distribution(self, score: float) -> bool:
        """True when ``score`` is at or below the threshold."""
        return bool(score <= self.threshold)

    def entry(self) -> dict[str, Any]:
        """The manifest's description of the detector (the registry adds ``files``)."""
        return {
            "method": self.method,
            "threshold": float(self.threshold),
            "quantile": float(self.quantile),
            "k": self.k if self.method == "knn" else None,
            "dimension": self.dimension,
            "features": "global average of the last convolutional feature map, L2-normalised",
        }

    def to_bytes(self) -> bytes:
        """The detector as ``.npz`` bytes (numbers only)."""
        buffer = io.BytesIO()
        meta = np.array([self.threshold, self.quantile, float(self.k)], dtype=np.float64)
        arrays: dict[str, Any] = {"method": np.array(self.method), "meta": meta, **self.arrays}
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        """Write :meth:`to_bytes` to ``path``."""
        path.write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> OodDetector:
        """Read a detector written by :meth:`save` (no pickle).

        Raises:
            ModelCorruptError: not a detector file (names the path and what is wrong).
        """
        try:
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
                method = str(data["method"])
                meta = data["meta"]
                keys = ("means", "precision") if method == "mahalanobis" else ("bank",)
                arrays = {key: np.asarray(data[key]) for key in keys}
                # the served form's decomposition (detectors fitted before it lack it)
                arrays.update({k: np.asarray(data[k]) for k in _DECOMPOSITION if k in data})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelCorruptError(f"{path} is not an OOD detector file: {exc}") from None
        if method not in METHODS:
            raise ModelCorruptError(f"{path}: unknown OOD method. Received: {method!r}")
        problem = _detector_problem(method, meta, arrays)
        if problem is not None:
            raise ModelCorruptError(f"{path} is not an OOD detector file: {problem}")
        return cls(method, float(meta[0]), float(meta[1]), arrays, int(meta[2]))  # type: ignore[arg-type]


def _detector_problem(method: str, meta: np.ndarray, arrays: dict[str, np.ndarray]) -> str | None:
    """What makes a detector file's numbers unusable (shapes that do not fit together, values
    that are not finite), or None: such a file would pass its sha256 (resealed after an edit,
    copied from another model) and then fail while the service builds its scorer."""
    if meta.shape != (3,) or not np.all(np.isfinite(meta)):
        return f"its meta must be 3 finite numbers. Received: {meta!r:.100}"
    if any(a.dtype.kind not in "fiu" or not np.all(np.isfinite(a)) for a in arrays.values()):
        return "its arrays must hold finite numbers"
    if method == "knn":
        bank, k = arrays["bank"], int(meta[2])
        if bank.ndim != 2 or not 1 <= k <= len(bank):
            return f"a bank of shape {bank.shape} with k={k}"
        return None
    means, precision = arrays["means"], arrays["precision"]
    if means.ndim != 2 or len(means) < 1 or precision.shape != (means.shape[1],) * 2:
        return f"means of shape {means.shape} and a precision matrix of shape {precision.shape}"
    if all(key in arrays for key in _DECOMPOSITION):
        basis, variances = arrays["basis"], arrays["variances"]
        if (
            basis.ndim != 2
            or basis.shape[0] != means.shape[1]
            or variances.shape != (basis.shape[1],)
            or arrays["floor"].size < 1
        ):
            return (
                f"a decomposition (basis {basis.shape}, variances {variances.shape}) that does "
                f"not fit {means.shape[1]}-d means"
            )
    return None


def fit_detector(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    *,
    method: Method = "mahalanobis",
    quantile: float = DEFAULT_QUANTILE,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> OodDetector:
    """Fit a detector on training features and set its threshold on validation features.

    Args:
        train_features: ``(N, D)`` penultimate features of the training set.
        train_labels: ``(N,)`` class indices (class-conditional means; ignored by knn), or
            a multi-label model's ``(N, findings)`` multi-hot targets: then each finding's
            positive images form a group and the images without any finding another
            (:func:`finding_groups`), an image counting in every group it belongs to.
        val_features: ``(M, D)`` features of the validation set (in-distribution, not
            used to fit): the threshold is their conformal ``quantile``.
        method: ``"mahalanobis"`` or ``"knn"``.
        quantile: in (0, 1]; 0.99 flags at most 1% of new in-distribution images in
            expectation (:func:`expected_flag_rate`).
        k: neighbours for knn.
        seed: the sample of the knn bank when the training set is larger than 4096.

    Raises:
        ConfigurationError: an unknown method, a quantile outside (0, 1], fewer than 2
            training or 1 validation images, or mismatched shapes (quoted).
    """
    if method not in METHODS:
        raise ConfigurationError(f"OOD method must be one of {METHODS}. Received: {method!r}")
    if not 0.0 < quantile <= 1.0:
        raise ConfigurationError(f"OOD quantile must be in (0, 1]. Received: {quantile!r}")
    x = np.asarray(train_features, dtype=np.float64).reshape(len(train_features), -1)
    v = np.asarray(val_features, dtype=np.float64).reshape(len(val_features), -1)
    y = np.asarray(train_labels)
    multi_hot = y.ndim == 2 and y.shape[1] > 1  # a multi-label model's (N, findings) targets
    if not multi_hot:
        y = y.reshape(-1)
    if len(x) < 2 or len(v) < 1 or len(y) != len(x) or v.shape[1] != x.shape[1]:
        raise ConfigurationError(
            "the OOD detector needs >= 2 training and >= 1 validation feature rows of one "
            f"dimension, one label (or one multi-hot row) per training row. Received: train "
            f"{x.shape}, labels {y.shape}, val {v.shape}"
        )
    if method == "mahalanobis":
        arrays = (
            _fit_mahalanobis(*finding_groups(_normalise(x), y))
            if multi_hot
            else (_fit_mahalanobis(_normalise(x), y))
        )
    else:
        if len(x) > MAX_KNN_BANK:
            x = x[np.random.default_rng(seed).choice(len(x), MAX_KNN_BANK, replace=False)]
        arrays = {"bank": _normalise(x).astype(np.float32)}
        k = max(1, min(k, len(x)))
    draft = OodDetector(method, 0.0, quantile, arrays, k)
    threshold = conformal_threshold(draft.scores(v), quantile)
    return OodDetector(method, threshold, quantile, arrays, k)


def finding_groups(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class-conditional groups of a multi-label model's training images, for
    Mahalanobis: one group per finding (the images where it is positive) and one for the
    images without any finding (index ``findings``). An image with several findings is in
    each of their groups, so its row is repeated once per group: ``(rows, group indices)``
    for :func:`_fit_mahalanobis` (whose means and shared covariance then use every
    image-group membership). A finding with no positive image has no group.

    Example:
        >>> finding_groups(np.eye(3), np.array([[1, 1], [0, 1], [0, 0]]))[1]
        array([0, 1, 1, 2])
    """
    positive = np.asarray(targets) > 0.5
    rows, groups = np.nonzero(positive)
    none = np.flatnonzero(~positive.any(axis=1))
    rows = np.concatenate([rows, none])
    groups = np.concatenate([groups, np.full(len(none), positive.shape[1])])
    order = np.lexsort((groups, rows))  # image order, then group order
    return features[rows[order]], groups[order].astype(np.int64)


def conformal_threshold(scores: np.ndarray, quantile: float) -> float:
    """The finite-sample (split-conformal) ``quantile`` of calibration ``scores``.

    The ``ceil((n + 1) * quantile)``-th smallest of the ``n`` scores (the largest when that
    rank is past ``n``): for a new image exchangeable with the calibration images (same
    distribution, not used to fit the detector) the chance it scores above is at most
    ``1 - quantile`` and, for continuous scores, at least ``1 - quantile - 1 / (n + 1)``
    (:func:`expected_flag_rate`). ``np.quantile``'s interpolated 99th percentile, used
    before, lies lower: on 262 calibration images it flags ~1.4% of new ones in expectation,
    and one 262-image draw flagged 2.3% (docs/benchmarks/ood.md).
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    rank = min(len(ordered), math.ceil((len(ordered) + 1) * quantile - 1e-9))
    return float(ordered[max(rank, 1) - 1])


def expected_flag_rate(n: int, quantile: float) -> dict[str, float]:
    """What :func:`conformal_threshold` on ``n`` calibration images flags of new
    in-distribution images.

    The rate a given calibration draw leads to is itself random: for continuous scores it
    follows Beta(n + 1 - rank, rank) (rank as in :func:`conformal_threshold`), whose mean is
    the expected rate and whose 95th percentile bounds it for 95% of calibration draws.

    Returns:
        ``{"expected": mean, "upper_95": 95th percentile}`` as fractions.
    """
    from scipy.stats import beta

    rank = min(n, math.ceil((n + 1) * quantile - 1e-9))
    above = n + 1 - rank
    return {
        "expected": above / (n + 1),
        "upper_95": float(beta.ppf(0.95, above, rank)),
    }


@dataclass(frozen=True)
class EnsembleOodDetector:
    """The OOD detector of an ensemble: one detector per member, each with calibration scores.

    Member ``i``'s detector (an :class:`OodDetector`, Mahalanobis by default) scores member
    ``i``'s own pooled features; ``calibration[i]`` holds its scores, sorted, of images member
    ``i`` never trained on (its held-out fold in a cross-validated ensemble, the validation
    split otherwise). The ensemble's score of an image is the share of all calibration scores
    that lie below the image's score under their own member::

        score(x) = sum_i #{c in calibration[i] : c < s_i(x)} / N,   N = sum_i n_i

    so each member is normalised by its own calibration (scales differ between members) and
    the score is in [0, 1]: 0.5 on average for a new in-distribution image, 1.0 beyond every
    calibration image of every member. The threshold is the split-conformal rule on the
    pooled ranks: an image is flagged when its pooled rank reaches ``ceil((N + 1) quantile)``
    (with one member and the validation split this is exactly :func:`conformal_threshold`).
    For several members it is the cross-conformal test (Vovk 2015), whose false-flag rate
    is the nominal ``1 - quantile`` up to a factor of at most 2 in the worst case (Barber et
    al. 2021); bench/ood.py measures it on images no member saw.

    Attributes:
        members: each member's detector (its own ``threshold`` is informative only).
        calibration: each member's sorted calibration scores (float32).
        quantile: the conformal level (0.99: nominally 1% of new images flagged).
    """

    members: tuple[OodDetector, ...]
    calibration: tuple[np.ndarray, ...]
    quantile: float = DEFAULT_QUANTILE

    method = ENSEMBLE

    def __post_init__(self) -> None:
        if not self.members or len(self.members) != len(self.calibration):
            raise ConfigurationError(
                "an ensemble OOD detector needs one calibration set per member detector. "
                f"Received: {len(self.members)} detectors, {len(self.calibration)} sets"
            )
        if any(len(c) < 1 for c in self.calibration):
            raise ConfigurationError(
                "every member needs >= 1 calibration score. Received sizes: "
                f"{[len(c) for c in self.calibration]}"
            )

    @property
    def calibration_size(self) -> int:
        """N: the calibration scores of all members."""
        return sum(len(c) for c in self.calibration)

    @property
    def rank(self) -> int:
        """The pooled rank at which an image is flagged."""
        n = self.calibration_size
        return max(1, min(n, math.ceil((n + 1) * self.quantile - 1e-9)))

    @property
    def threshold(self) -> float:
        """Scores above it (pooled rank >= :attr:`rank`) are out of distribution."""
        return (self.rank - 0.5) / self.calibration_size

    @property
    def layers(self) -> tuple[str, ...] | None:
        """None: each member's last convolutional layer (:func:`feature_model`)."""
        return None

    @property
    def dimensions(self) -> list[int]:
        """Each member's feature width, in the order of the concatenated features."""
        return [m.dimension for m in self.members]

    @property
    def dimension(self) -> int:
        """The width of the concatenated features (``feature_model`` of the ensemble)."""
        return sum(self.dimensions)

    def member_scores(self, features: np.ndarray) -> list[np.ndarray]:
        """Each member detector's scores ``(N,)`` of the concatenated features ``(N, D)``."""
        x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        if x.shape[1] != self.dimension:
            raise ValueError(
                f"the ensemble OOD detector was fitted on {self.dimension}-d features "
                f"({' + '.join(map(str, self.dimensions))}). Received shape {x.shape}"
            )
        bounds = np.cumsum([0, *self.dimensions])
        return [
            m.scores(x[:, lo:hi])
            for m, lo, hi in zip(self.members, bounds[:-1], bounds[1:], strict=True)
        ]

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The pooled calibration ranks ``(N,)`` in [0, 1] (the numpy reference)."""
        below = np.zeros(len(features), dtype=np.int64)
        for s, cal in zip(self.member_scores(features), self.calibration, strict=True):
            below += np.searchsorted(cal, s.astype(np.float32), side="left")
        return (below / self.calibration_size).astype(np.float32)

    def tf_scorer(self) -> Callable[[Any], Any]:
        """:meth:`scores` as TensorFlow ops for the serving graph (see
        :meth:`OodDetector.tf_scorer`): each member's in-graph score, then its rank among the
        member's sorted calibration scores (``tf.searchsorted``)."""
        import tensorflow as tf

        scorers = [m.tf_scorer() for m in self.members]
        sorted_sets = [tf.constant(c.reshape(1, -1).astype(np.float32)) for c in self.calibration]
        bounds = [int(b) for b in np.cumsum([0, *self.dimensions])]
        total = float(self.calibration_size)

        def ensemble(features: Any) -> Any:
            x = tf.cast(features, tf.float32)
            pooled = None
            for scorer, cal, lo, hi in zip(
                scorers, sorted_sets, bounds[:-1], bounds[1:], strict=True
            ):
                s = tf.reshape(scorer(x[:, lo:hi]), [1, -1])
                count = tf.searchsorted(cal, s, side="left", out_type=tf.int32)[0]
                pooled = count if pooled is None else self._tf_combine(pooled, count)
            return tf.cast(pooled, tf.float32) / total

        return ensemble

    @staticmethod
    def _tf_combine(pooled: Any, count: Any) -> Any:
        """How :meth:`tf_scorer` pools the members' ranks: their sum (as :meth:`scores`)."""
        return pooled + count

    def in_distribution(self, score: float) -> bool:
        """True when ``score`` is at or below the threshold."""
        return bool(score <= self.threshold)

    def entry(self) -> dict[str, Any]:
        """The manifest's description of the detector (the registry adds ``files``)."""
        n, rank = self.calibration_size, self.rank
        nominal = (n + 1 - rank) / (n + 1)
        return {
            "method": ENSEMBLE,
            "member_method": self.members[0].method,
            "members": len(self.members),
            "threshold": float(self.threshold),
            "quantile": float(self.quantile),
            "k": None,
            "dimension": self.dimension,
            "features": "each member's global average of its last convolutional feature map, "
            "L2-normalised, scored by the member's own detector",
            "score": "share of the members' calibration scores below the image's "
            "(pooled rank in [0, 1], cross-conformal)",
            "calibration_images": [len(c) for c in self.calibration],
            "member_thresholds": [float(m.threshold) for m in self.members],
            "nominal_flag_rate": nominal,
            "flag_rate_bound": min(1.0, 2.0 * nominal),
        }

    def to_bytes(self) -> bytes:
        """The detector as ``.npz`` bytes (numbers only): ``m<i>__<array>`` per member."""
        buffer = io.BytesIO()
        np.savez(buffer, **self._arrays())
        return buffer.getvalue()

    def _arrays(self) -> dict[str, Any]:
        arrays: dict[str, Any] = {
            "method": np.array(self.method),
            "meta": np.array([self.quantile, float(len(self.members))], dtype=np.float64),
        }
        for i, (member, cal) in enumerate(zip(self.members, self.calibration, strict=True)):
            arrays[f"m{i}__method"] = np.array(member.method)
            arrays[f"m{i}__meta"] = np.array(
                [member.threshold, member.quantile, float(member.k)], dtype=np.float64
            )
            arrays[f"m{i}__calibration"] = np.asarray(cal, dtype=np.float32)
            arrays.update({f"m{i}__{k}": v for k, v in member.arrays.items()})
        return arrays

    def save(self, path: Path) -> None:
        """Write :meth:`to_bytes` to ``path``."""
        path.write_bytes(self.to_bytes())


@dataclass(frozen=True)
class LayeredOodDetector(EnsembleOodDetector):
    """A detector on several layers of one model: one detector per layer, an image flagged
    when any of them flags it (Bonferroni: each at the conformal level ``1 - (1 - quantile) /
    layers``, so at most ``1 - quantile`` of new in-distribution images are flagged in
    expectation, by the union bound).

    Member ``i`` scores the global average of ``layers[i]`` (its slice of the concatenated
    features :func:`feature_model` returns for ``layers``); ``calibration[i]`` holds its
    sorted scores of the validation images (the same images for every layer). The served
    score is the largest share of a layer's calibration scores below the image's score under
    that layer, in [0, 1]; the threshold is the split-conformal rank at the per-layer level,
    so ``score > threshold`` exactly when some member's score is above its own conformal
    threshold (the members' ``threshold``).

    Attributes:
        layers: the layer paths read (:func:`feature_layers`), in feature order.
    """

    layers: tuple[str, ...] = ()

    method = LAYERED

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.layers) != len(self.members):
            raise ConfigurationError(
                "a layered OOD detector needs one layer name per member detector. Received: "
                f"{len(self.members)} detectors, layers {list(self.layers)}"
            )
        if len({len(c) for c in self.calibration}) != 1:
            raise ConfigurationError(
                "a layered OOD detector's layers are calibrated on the same images. Received "
                f"sizes: {[len(c) for c in self.calibration]}"
            )

    @property
    def layer_quantile(self) -> float:
        """Each layer's conformal level: ``1 - (1 - quantile) / layers`` (Bonferroni)."""
        return 1.0 - (1.0 - self.quantile) / len(self.members)

    @property
    def calibration_size(self) -> int:
        """n: the validation images (each layer's calibration scores)."""
        return len(self.calibration[0])

    @property
    def rank(self) -> int:
        """The rank among a layer's calibration scores at which an image is flagged."""
        n = self.calibration_size
        return max(1, min(n, math.ceil((n + 1) * self.layer_quantile - 1e-9)))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The largest per-layer calibration rank ``(N,)`` in [0, 1] (the numpy reference)."""
        most = np.zeros(len(features), dtype=np.int64)
        for s, cal in zip(self.member_scores(features), self.calibration, strict=True):
            most = np.maximum(most, np.searchsorted(cal, s.astype(np.float32), side="left"))
        return (most / self.calibration_size).astype(np.float32)

    @staticmethod
    def _tf_combine(pooled: Any, count: Any) -> Any:
        """The largest per-layer rank (as :meth:`scores`), for the inherited
        :meth:`EnsembleOodDetector.tf_scorer`."""
        import tensorflow as tf

        return tf.maximum(pooled, count)

    def entry(self) -> dict[str, Any]:
        """The manifest's description of the detector (the registry adds ``files``)."""
        return {
            "method": self.members[0].method,
            "layers": list(self.layers),
            "threshold": float(self.threshold),
            "quantile": float(self.quantile),
            "k": self.members[0].k if self.members[0].method == "knn" else None,
            "dimension": self.dimension,
            "features": "global average of each layer, L2-normalised, one detector per layer",
            "score": "largest share of a layer's validation scores below the image's (in "
            "[0, 1]); flagged when any layer is above its own conformal threshold",
            "layer_quantile": self.layer_quantile,
            "layer_dimensions": self.dimensions,
            "layer_thresholds": [float(m.threshold) for m in self.members],
        }

    def _arrays(self) -> dict[str, Any]:
        return {**super()._arrays(), "layers": np.array(self.layers, dtype=str)}


def fit_layered_detector(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    layers: Sequence[str],
    dimensions: Sequence[int],
    *,
    method: Method = "mahalanobis",
    quantile: float = DEFAULT_QUANTILE,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> LayeredOodDetector:
    """Fit a :class:`LayeredOodDetector` on features of ``layers`` concatenated (widths
    ``dimensions``, as :func:`feature_model` returns them): one :func:`fit_detector` per
    layer at the Bonferroni level, each calibrated on the validation features.

    Raises:
        ConfigurationError: widths that do not add up to the features', or as
            :func:`fit_detector`.
    """
    x = np.asarray(train_features).reshape(len(train_features), -1)
    v = np.asarray(val_features).reshape(len(val_features), -1)
    if len(layers) != len(dimensions) or sum(dimensions) != x.shape[1] or v.shape[1] != x.shape[1]:
        raise ConfigurationError(
            f"layers {list(layers)} of widths {list(dimensions)} do not make the features' "
            f"widths: train {x.shape}, val {v.shape}"
        )
    level = 1.0 - (1.0 - quantile) / len(layers)
    bounds = np.cumsum([0, *dimensions])
    members, calibration = [], []
    for lo, hi in itertools.pairwise(bounds):
        detector = fit_detector(
            x[:, lo:hi], train_labels, v[:, lo:hi], method=method, quantile=level, k=k, seed=seed
        )
        members.append(detector)
        calibration.append(np.sort(detector.scores(v[:, lo:hi])).astype(np.float32))
    return LayeredOodDetector(tuple(members), tuple(calibration), quantile, tuple(layers))


def load_detector(path: Path) -> OodDetector | EnsembleOodDetector:
    """Read a detector file written by :meth:`OodDetector.save` or
    :meth:`EnsembleOodDetector.save` (a :class:`LayeredOodDetector` included; no pickle).

    Raises:
        ModelCorruptError: not a detector file (names the path and what is wrong).
    """
    layers: tuple[str, ...] = ()
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
            method = str(data["method"])
            if method not in (ENSEMBLE, LAYERED):
                return OodDetector.load(path)
            quantile, count = (float(v) for v in data["meta"])
            if method == LAYERED:
                layers = tuple(str(name) for name in np.asarray(data["layers"]).reshape(-1))
            members, calibration = [], []
            for i in range(int(count)):
                kind = str(data[f"m{i}__method"])
                meta = data[f"m{i}__meta"]
                keys = (
                    ("means", "precision", *_DECOMPOSITION) if kind == "mahalanobis" else ("bank",)
                )
                arrays = {k: np.asarray(data[f"m{i}__{k}"]) for k in keys if f"m{i}__{k}" in data}
                if kind not in METHODS:
                    raise ValueError(f"member {i} has an unknown method {kind!r}")
                problem = _detector_problem(kind, meta, arrays)
                if problem is not None:
                    raise ValueError(f"member {i}: {problem}")
                threshold, level, k = float(meta[0]), float(meta[1]), int(meta[2])
                members.append(OodDetector(kind, threshold, level, arrays, k))  # type: ignore[arg-type]
                calibration.append(np.asarray(data[f"m{i}__calibration"], dtype=np.float32))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelCorruptError(f"{path} is not an OOD detector file: {exc}") from None
    try:
        if method == LAYERED:
            return LayeredOodDetector(tuple(members), tuple(calibration), quantile, layers)
        return EnsembleOodDetector(tuple(members), tuple(calibration), quantile)
    except ConfigurationError as exc:
        raise ModelCorruptError(f"{path} is not an OOD detector file: {exc}") from None


def fit_ensemble_detector(
    members: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    method: Method = "mahalanobis",
    quantile: float = DEFAULT_QUANTILE,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> EnsembleOodDetector:
    """Fit an :class:`EnsembleOodDetector`, one member at a time.

    Args:
        members: per member, ``(train_features, train_labels, calibration_features)``: the
            member's features of (a sample of) the images it trained on, with their class
            indices, and of images it never trained on (its held-out fold, or the validation
            split when every member trained on the same training split).
        method, quantile, k, seed: as in :func:`fit_detector`, for every member.

    Raises:
        ConfigurationError: no member, or a member's arrays as :func:`fit_detector` refuses.
    """
    if not members:
        raise ConfigurationError("an ensemble OOD detector needs >= 1 member; received none")
    detectors, calibration = [], []
    for train_features, train_labels, calibration_features in members:
        detector = fit_detector(
            train_features,
            train_labels,
            calibration_features,
            method=method,
            quantile=quantile,
            k=k,
            seed=seed,
        )
        detectors.append(detector)
        calibration.append(np.sort(detector.scores(calibration_features)).astype(np.float32))
    return EnsembleOodDetector(tuple(detectors), tuple(calibration), quantile)


def _fit_mahalanobis(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / max(1, len(x) - 1)
    dim = cov.shape[0]
    scale = float(np.trace(cov)) / dim or 1.0
    shrunk = (1.0 - SHRINKAGE) * cov + SHRINKAGE * scale * np.eye(dim)
    variances, vectors = np.linalg.eigh(shrunk)  # > 0: the shrinkage adds 0.1 * scale
    variances = np.maximum(variances, SHRINKAGE * scale)
    precision = (vectors / variances) @ vectors.T
    return {
        "means": means.astype(np.float32),
        "precision": precision.astype(np.float32),
        **_low_rank(variances, vectors),
    }


_DECOMPOSITION = ("basis", "variances", "floor")
LOW_RANK_RTOL = 1e-4  # variances this close to the floor are scored as the floor


def _low_rank(variances: np.ndarray, vectors: np.ndarray) -> dict[str, np.ndarray]:
    """The shrunk covariance as the directions whose variance stands above the floor plus an
    isotropic rest, for the served score (:func:`_tf_mahalanobis`).

    With fewer training images than feature dimensions (ResNet50: 2048-d pooled features,
    the demo model has 168 training images) the within-class covariance has rank below
    ``n``; shrunk, every other direction has the same variance, the floor
    ``SHRINKAGE * scale``. The distance along those is ``|residual|^2 / floor``, so only the
    ``r`` directions above the floor need a projection: ``2 * D * r`` multiply-adds per image
    instead of ``classes * D^2``. Directions within :data:`LOW_RANK_RTOL` of the floor are
    scored as the floor (each such term is over-estimated by at most that fraction); when
    ``r`` is more than half of ``D`` every direction is kept (a full whitening, exact).
    """
    floor = float(variances.min())
    keep = variances > floor * (1.0 + LOW_RANK_RTOL)
    if 2 * int(keep.sum()) >= len(variances):
        keep = np.ones_like(keep)
    return {
        "basis": vectors[:, keep].astype(np.float32),
        "variances": variances[keep].astype(np.float32),
        "floor": np.array([floor], dtype=np.float64),
    }


def _tf_mahalanobis(arrays: dict[str, np.ndarray]) -> Callable[[Any], Any]:
    """The Mahalanobis score as TensorFlow ops: ``min_c (x - m_c)' P (x - m_c)``.

    Computed as a projection on the decomposition of :func:`_low_rank` (derived from the
    precision matrix, once, for a detector file that predates it), with every difference
    taken before any product: ``z = x - centre`` (the mean of the class means), then per
    class the projection and the residual minus the class's own, precomputed in float64. The
    expanded ``x'Px - 2x'Pm + m'Pm`` cancelled catastrophically in float32 (precision entries
    of 1e8 gave served scores off by +-50 around a threshold of 80); this form agrees with
    the numpy scores the threshold was set with (tests/training/test_intended_ood.py). One
    ``(N, D) x (D, r)`` product (two with a residual) replaces the per-class
    ``(N, classes, D) x (D, D)`` product of before (docs/benchmarks/ood.md).
    """
    import tensorflow as tf

    if all(key in arrays for key in _DECOMPOSITION):
        basis = arrays["basis"].astype(np.float64)
        variances = arrays["variances"].astype(np.float64)
        floor = float(arrays["floor"].reshape(-1)[0])
    else:
        inverse, vectors = np.linalg.eigh(arrays["precision"].astype(np.float64))
        variances = 1.0 / np.maximum(inverse, np.finfo(np.float64).tiny)
        low = _low_rank(variances, vectors)
        basis, variances = low["basis"].astype(np.float64), low["variances"].astype(np.float64)
        floor = float(low["floor"][0])
    means = arrays["means"].astype(np.float64)
    centre = means.mean(axis=0)
    offsets = means - centre  # (classes, D)
    offsets_projected = offsets @ basis  # (classes, r)
    full = basis.shape[1] == basis.shape[0]
    offsets_residual = offsets - offsets_projected @ basis.T  # (classes, D)
    constants = {
        "centre": centre,
        "basis": basis,
        "weights": 1.0 / np.sqrt(variances),
        "offsets_projected": offsets_projected,
        "offsets_residual": offsets_residual,
    }
    t = {k: tf.constant(v.astype(np.float32)) for k, v in constants.items()}
    inverse_floor = tf.constant(1.0 / floor, tf.float32)

    def mahalanobis(features: Any) -> Any:
        x = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1, epsilon=1e-24)
        z = x - t["centre"]
        projected = tf.matmul(z, t["basis"])  # (N, r)
        along = (projected[:, None, :] - t["offsets_projected"][None]) * t["weights"]
        per_class = tf.reduce_sum(tf.square(along), axis=2)  # (N, classes)
        if not full:  # the isotropic rest, at the floor's variance
            residual = z - tf.matmul(projected, t["basis"], transpose_b=True)
            rest = residual[:, None, :] - t["offsets_residual"][None]
            per_class += tf.reduce_sum(tf.square(rest), axis=2) * inverse_floor
        return tf.reduce_min(per_class, axis=1)

    return mahalanobis


def _mahalanobis(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    best = np.full(len(x), np.inf, dtype=np.float32)
    for mean in means:
        d = x - mean
        best = np.minimum(best, ((d @ precision) * d).sum(axis=1))
    return best


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(x.dtype, copy=False)


def _knn(x: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    q = _normalise(x)
    # on the unit sphere, squared distance = 2 - 2 cos
    dist = np.maximum(0.0, 2.0 - 2.0 * (q @ bank.T))
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1]
    return np.sqrt(kth)

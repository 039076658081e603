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
  ResNet50's 2048-d pool on small sets).
- ``knn``: the distance to the k-th nearest training feature (Sun et al., ICML 2022).

The threshold is the split-conformal quantile (default 0.99) of the validation scores
(:func:`conformal_threshold`): the detector is fitted on training features only, so the
validation images are a calibration set it never saw, and a new in-distribution image is
flagged with probability at most 1% (at least ``1% - 1/(n+1)``). The detector is one
``.npz`` file (numbers only, read without pickle) stored beside ``model.keras``, listed with
its sha256 in the manifest's ``ood`` field, so the seal covers it (models.registry).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from radlens.models.errors import ConfigurationError, ModelCorruptError

if TYPE_CHECKING:
    import keras

__all__ = [
    "METHODS",
    "OodDetector",
    "conformal_threshold",
    "expected_flag_rate",
    "feature_model",
    "fit_detector",
]

METHODS = ("mahalanobis", "knn")
Method = Literal["mahalanobis", "knn"]
DEFAULT_QUANTILE = 0.99
DEFAULT_K = 5
MAX_KNN_BANK = 4096  # training features kept for knn (a seeded sample beyond that)
SHRINKAGE = 0.1  # covariance weight moved to the scaled identity


def feature_model(model: keras.Model) -> keras.Model:
    """A model with the same input returning ``[class scores, features]``.

    The features are the global average of the last convolutional feature map
    (``models.architectures.last_conv_layer_name``): for ResNet50 exactly its penultimate
    layer (``"pool"``, 2048 values), for simple_cnn its ``conv4`` (64 values; its dense layers
    separated noise and CT slices worse, docs/benchmarks/ood.md). The layers are shared with
    ``model``.

    Raises:
        ConfigurationError: the model has no convolution layer.
    """
    import keras

    from radlens.models.architectures import gradcam_model

    both = gradcam_model(model)  # [last conv feature map, scores]
    feature_map, scores = both.outputs
    features = keras.layers.GlobalAveragePooling2D(name="ood_features")(feature_map)
    return keras.Model(both.inputs[0], [scores, features], name=f"{model.name}_ood")


def feature_layer(model: keras.Model) -> str:
    """What :func:`feature_model` pools, for the manifest."""
    from radlens.models.architectures import last_conv_layer_name

    return f"global average of {last_conv_layer_name(model)}"


def extract_features(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Penultimate features ``(N, D)`` float32 of ``images`` ``(N, H, W, 1)``."""
    both = feature_model(model)
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
            with np.load(path, allow_pickle=False) as data:
                method = str(data["method"])
                meta = data["meta"]
                keys = ("means", "precision") if method == "mahalanobis" else ("bank",)
                arrays = {key: np.asarray(data[key]) for key in keys}
                # the served form's decomposition (detectors fitted before it lack it)
                arrays.update({k: np.asarray(data[k]) for k in _DECOMPOSITION if k in data})
        except (OSError, ValueError, KeyError) as exc:
            raise ModelCorruptError(f"{path} is not an OOD detector file: {exc}") from None
        if method not in METHODS:
            raise ModelCorruptError(f"{path}: unknown OOD method. Received: {method!r}")
        return cls(method, float(meta[0]), float(meta[1]), arrays, int(meta[2]))  # type: ignore[arg-type]


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
        train_labels: ``(N,)`` class indices (class-conditional means; ignored by knn).
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
    y = np.asarray(train_labels).reshape(-1)
    if len(x) < 2 or len(v) < 1 or len(y) != len(x) or v.shape[1] != x.shape[1]:
        raise ConfigurationError(
            "the OOD detector needs >= 2 training and >= 1 validation feature rows of one "
            f"dimension, one label per training row. Received: train {x.shape}, labels "
            f"{y.shape}, val {v.shape}"
        )
    if method == "mahalanobis":
        arrays = _fit_mahalanobis(_normalise(x), y)
    else:
        if len(x) > MAX_KNN_BANK:
            x = x[np.random.default_rng(seed).choice(len(x), MAX_KNN_BANK, replace=False)]
        arrays = {"bank": _normalise(x).astype(np.float32)}
        k = max(1, min(k, len(x)))
    draft = OodDetector(method, 0.0, quantile, arrays, k)
    threshold = conformal_threshold(draft.scores(v), quantile)
    return OodDetector(method, threshold, quantile, arrays, k)


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

"""Recipe selection by k-fold cross-validation, and the methods it measures (issue 19).

Why this exists: on PneumoniaMNIST the official validation split is nearly saturated (AUC .99+
for almost any model) while the official test split is harder and holds more normals, so an
epoch, a recipe or a threshold picked on validation picks noise. The signal used here instead
is **out-of-fold** (OOF) prediction over train+val: the images are split into ``k`` stratified
folds, one model is trained per fold on the other ``k - 1`` folds, and every image is scored
once, by the model that never saw it. AUC and accuracy of those scores (mean and spread over
folds) rank recipes; the decision threshold and the operating-point table are chosen on them.

A second, harder signal holds out whole kinds of image: :func:`cluster_folds` cuts each class
into look-alike groups (k-means on pixel principal components) and deals whole groups to folds
(``bench.recipe_cv --holdout cluster``). A held-out image's look-alikes are then not in training,
as on a shifted test set; :func:`make_folds` builds either hold-out by name.

Accuracy is also reported **at the test prior** (234 normal / 390 pneumonia in the official
test split, 37.5 % normal, against 25 % in train+val): ``0.375 * specificity + 0.625 *
sensitivity``. A recipe that buys sensitivity with specificity looks good on the pneumonia-rich
folds and poor on the test split; the prior-matched figure shows that.

The methods are plain functions used by ``bench/recipe_cv.py`` and ``bench/pneumonia.py``:

- :func:`mixup_batch`: MixUp (Zhang et al. 2018) on a batch of images and one-hot targets;
- :func:`cutmix_batch`: CutMix (Yun et al. 2019): a box of a partner image pasted in, the
  targets mixed by the area it covers;
- EMA of the weights: Keras' own ``use_ema`` / ``ema_momentum`` optimizer arguments
  (:func:`make_member_optimizer`), the evaluated weights being the averaged ones;
- SWA, stochastic weight averaging (Izmailov et al. 2018): the plain mean of the weights at the
  end of each of the last ``swa_epochs`` epochs (:class:`WeightAverage`), optionally over a
  constant-rate tail (``swa_learning_rate``, :func:`member_learning_rate`);
- test-time augmentation and ensembles: :func:`averaged_model` builds ONE Keras model whose
  output is the mean of its members' probabilities over a few shifted views of the input
  (``models.ensemble``), so the service, the manifest and Grad-CAM see a single model.

The fold models of the chosen recipe are the final ensemble: each OOF score came from one of
them, so the threshold chosen on OOF scores is chosen on images its members did not train on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from radlens.models.errors import ConfigurationError
from radlens.training.data.augment import AugmentConfig, augment_image

TEST_PRIOR_NORMAL = 234 / 624
"""Share of normals in PneumoniaMNIST's official test split (234 of 624 images)."""


@dataclass(frozen=True)
class MemberRecipe:
    """How one member network is trained (every field is a choice the CV bench measures)."""

    architecture: str = "simple_cnn"
    image_size: int = 32
    filters: tuple[str, ...] = ()
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3  # cosine-decayed to 0 over the epochs
    weight_decay: float = 1e-4  # AdamW's decoupled decay
    dropout: float = 0.3
    center: bool = False  # subtract each image's mean in the model (blind to overall exposure)
    batchnorm: bool = False  # BatchNormalization after each convolution
    width_multiplier: int = 1  # simple_cnn's convolution channels times this
    label_smoothing: float = 0.0
    class_weights: bool = True  # inverse class frequency per example
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    mixup_alpha: float = 0.0  # > 0: MixUp with lambda ~ Beta(alpha, alpha)
    cutmix_alpha: float = 0.0  # > 0: CutMix, the pasted box's area share ~ Beta(alpha, alpha)
    ema_momentum: float = 0.0  # > 0: evaluate the exponential moving average of the weights
    swa_epochs: int = 0  # > 0: evaluate the mean of the weights after each of the last N epochs
    # > 0 (with swa_epochs): the cosine schedule reaches this rate when the averaged epochs
    # begin and holds it through them, SWA's constant tail; 0: the cosine decays to 0 at the end
    swa_learning_rate: float = 0.0
    # > 1: a snapshot ensemble (Huang et al. 2017): the cosine restarts from learning_rate this
    # many times (equal whole-epoch cycles) and the member is the models at each cycle's end
    snapshots: int = 0
    tta_shift: int = 0  # > 0: average predictions over the input shifted by +-tta_shift px

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "label_smoothing": 0.0 <= self.label_smoothing < 1.0,
            "mixup_alpha": self.mixup_alpha >= 0.0,
            "cutmix_alpha": self.cutmix_alpha >= 0.0,
            "ema_momentum": 0.0 <= self.ema_momentum < 1.0,
            "swa_epochs": 0 <= self.swa_epochs <= self.epochs,
            "swa_learning_rate": 0.0 <= self.swa_learning_rate <= self.learning_rate,
            "snapshots": 0 <= self.snapshots <= self.epochs,
            "tta_shift": 0 <= self.tta_shift <= self.image_size // 4,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigurationError(
                    f"recipe {name} is out of range; received {name}={getattr(self, name)!r}"
                )
        exclusive = {
            "mixup_alpha and cutmix_alpha (one batch mix at a time)": (
                self.mixup_alpha > 0 and self.cutmix_alpha > 0
            ),
            "ema_momentum and swa_epochs (one weight average at a time)": (
                self.ema_momentum > 0 and self.swa_epochs > 0
            ),
            # a mean of weights needs batch statistics recomputed for the averaged network
            "swa_epochs and batchnorm (the averaged weights' BN statistics are not refit)": (
                self.swa_epochs > 0 and self.batchnorm
            ),
            "snapshots and a weight average (ema_momentum, swa_epochs)": (
                self.snapshots > 1 and (self.ema_momentum > 0 or self.swa_epochs > 0)
            ),
        }
        for pair, clash in exclusive.items():
            if clash:
                raise ConfigurationError(f"recipe: choose one of {pair}")
        if self.swa_learning_rate > 0 and not 0 < self.swa_epochs < self.epochs:
            raise ConfigurationError(
                "recipe swa_learning_rate holds the rate through the averaged epochs: it needs "
                f"0 < swa_epochs < epochs; received swa_epochs={self.swa_epochs}, "
                f"epochs={self.epochs}"
            )
        if self.snapshots > 1 and self.epochs % self.snapshots:
            raise ConfigurationError(
                "recipe snapshots cuts the epochs into equal cycles: epochs must be a multiple "
                f"of snapshots; received epochs={self.epochs}, snapshots={self.snapshots}"
            )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["filters"] = list(self.filters)
        return values

    def replace(self, **changes: Any) -> MemberRecipe:
        return dataclasses.replace(self, **changes)


# --- folds and the selection signal ---------------------------------------------------------


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each example: each class shuffled with ``seed`` and dealt round-robin,
    so every fold holds the class balance of the whole set to within one image.

    Raises:
        ConfigurationError: ``k`` < 2 or a class with fewer than ``k`` examples.
    """
    labels = np.asarray(labels).reshape(-1)
    if k < 2:
        raise ConfigurationError(f"k-fold needs k >= 2; received k={k}")
    fold = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        if len(index) < k:
            raise ConfigurationError(
                f"class {int(label)} has {len(index)} examples, fewer than k={k} folds"
            )
        rng.shuffle(index)
        fold[index] = np.arange(len(index)) % k
    return fold


def cluster_folds(
    images: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    clusters_per_class: int = 10,
    components: int = 20,
    seed: int = 0,
    standardize: bool = False,
) -> np.ndarray:
    """The fold (0..k-1) of each example for a **leave-modes-out** hold-out: harder than
    :func:`stratified_folds` because a held-out image's look-alikes are held out with it.

    Each class on its own is cut into ``clusters_per_class`` groups by k-means on the first
    ``components`` principal components of the pixels; whole groups are dealt to folds, the
    largest first to the fold with the fewest images of that class. Every fold therefore keeps
    the class balance (to within one group), but its images come from regions of image space
    the other folds hold little of: a model is scored on kinds of image it trained on few of,
    as on a shifted test set. Clustering within a class (not across) keeps groups from being
    nearly one class, which would make the hold-out a test of the class prior instead.

    On PneumoniaMNIST the first principal component is the film's overall exposure (correlation
    0.996 with each image's mean), so the groups differ mostly in brightness. ``standardize``
    takes each image's own mean and spread out before the PCA (a uniform image stays all
    zeros): the groups then differ in layout and texture, and an exposure-blind model is not
    favoured by how the folds were cut.

    Deterministic for a ``seed`` (PCA and k-means are seeded).

    Raises:
        ConfigurationError: ``k`` < 2, or a class with fewer than ``clusters_per_class``
            examples or fewer groups than folds.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    labels = np.asarray(labels).reshape(-1)
    if k < 2:
        raise ConfigurationError(f"k-fold needs k >= 2; received k={k}")
    if clusters_per_class < k:
        raise ConfigurationError(
            f"a leave-modes-out hold-out needs at least as many groups per class as folds; "
            f"received clusters_per_class={clusters_per_class}, k={k}"
        )
    pixels = np.asarray(images, dtype=np.float64).reshape(len(labels), -1)
    if len(labels) == 0 or pixels.shape[1] == 0:
        raise ConfigurationError("a leave-modes-out hold-out needs images; received none")
    if standardize:
        pixels = pixels - pixels.mean(axis=1, keepdims=True)
        spread = pixels.std(axis=1, keepdims=True)
        pixels = pixels / np.where(spread > 0, spread, 1.0)
    n_components = min(components, pixels.shape[1], len(labels))
    features = PCA(n_components, random_state=seed).fit_transform(pixels)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        if len(index) < clusters_per_class:
            raise ConfigurationError(
                f"class {int(label)} has {len(index)} examples, fewer than "
                f"clusters_per_class={clusters_per_class}"
            )
        groups = KMeans(clusters_per_class, n_init=4, random_state=seed).fit_predict(
            features[index]
        )
        sizes = np.bincount(groups, minlength=clusters_per_class)
        filled = np.zeros(k, dtype=np.int64)
        for group in np.argsort(-sizes, kind="stable"):
            target = int(np.argmin(filled))
            fold[index[groups == group]] = target
            filled[target] += sizes[group]
    return fold


HOLDOUTS = ("random", "cluster", "shape")
"""The hold-outs :func:`make_folds` builds: stratified random folds, leave-modes-out on the
pixels (``cluster``), or leave-modes-out on each image standardised to its own mean and spread
(``shape``: exposure and contrast play no part in the grouping)."""

GROUPED_HOLDOUTS = ("cluster", "shape")
"""The hold-outs that group images (:func:`cluster_folds`), so need the images themselves."""


def make_folds(
    holdout: str,
    images: np.ndarray | None,
    labels: np.ndarray,
    k: int,
    seed: int,
    copies: Sequence[str] | None = None,
) -> np.ndarray:
    """Folds of the named hold-out (:data:`HOLDOUTS`); ``images`` are not used by ``random``.
    ``copies``: each example's pixel digest (``training.data.sources.pixel_digest``); copies
    are then held out together (:func:`keep_copies_together`).

    Raises:
        ConfigurationError: an unknown hold-out, or what the fold builder raises.
    """
    if holdout == "random":
        fold = stratified_folds(labels, k, seed)
    elif holdout in GROUPED_HOLDOUTS:
        if images is None:
            raise ConfigurationError(f"the {holdout} hold-out groups images; received none")
        fold = cluster_folds(images, labels, k, seed=seed, standardize=holdout == "shape")
    else:
        raise ConfigurationError(f"unknown hold-out {holdout!r}; expected one of {list(HOLDOUTS)}")
    return fold if copies is None else keep_copies_together(fold, copies)


def keep_copies_together(fold: np.ndarray, copies: Sequence[str]) -> np.ndarray:
    """``fold`` with every copy moved to the fold of its first image (``copies``: a key per
    example, equal for identical images). A copy in another fold would be scored out of fold
    by a model that trained on it. Only copies move, so the folds stay as they were but for a
    few images each.

    Raises:
        ConfigurationError: ``copies`` and ``fold`` of different lengths.
    """
    if len(copies) != len(fold):
        raise ConfigurationError(f"{len(copies)} copy keys for {len(fold)} examples")
    moved = np.array(fold, copy=True)
    first: dict[str, int] = {}
    for index, key in enumerate(copies):
        moved[index] = moved[first.setdefault(key, index)]
    return moved


def prior_matched_accuracy(
    sensitivity: float, specificity: float, normal_share: float = TEST_PRIOR_NORMAL
) -> float:
    """Accuracy expected on a set with ``normal_share`` normals at these rates."""
    return normal_share * specificity + (1.0 - normal_share) * sensitivity


def fold_figures(
    labels: np.ndarray, scores: np.ndarray, folds: np.ndarray, threshold: float
) -> dict[str, Any]:
    """AUC, accuracy and prior-matched accuracy of OOF ``scores`` per fold and pooled, with the
    mean and sample standard deviation over folds (the spread a recipe choice must beat)."""
    from radlens.training.metrics import roc_auc

    def figures(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        predicted = s >= threshold
        sens = float(np.mean(predicted[y == 1])) if np.any(y == 1) else float("nan")
        spec = float(np.mean(~predicted[y == 0])) if np.any(y == 0) else float("nan")
        return {
            "auc": float(roc_auc(y, s) or float("nan")),
            "accuracy": float(np.mean(predicted == (y == 1))),
            "sensitivity": sens,
            "specificity": spec,
            "accuracy_at_test_prior": prior_matched_accuracy(sens, spec),
        }

    per_fold = [figures(labels[folds == f], scores[folds == f]) for f in np.unique(folds)]
    result: dict[str, Any] = {"pooled": figures(labels, scores), "threshold": float(threshold)}
    for key in per_fold[0]:
        values = np.array([f[key] for f in per_fold])
        result[key] = {
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "folds": [round(float(v), 4) for v in values],
        }
    return result


def paired_fold_differences(
    labels: np.ndarray,
    reference: np.ndarray,
    candidate: np.ndarray,
    folds: np.ndarray,
) -> dict[str, Any]:
    """``candidate`` minus ``reference`` OOF scores, fold by fold (the same folds, so a fold's
    difficulty cancels): AUC, and accuracy at the test prior at each one's own balanced
    threshold (chosen on its pooled OOF scores, as the served ensemble's is). Per figure: the
    differences per fold, their mean and sample sd, and on how many folds the candidate is
    better (strictly).

    Raises:
        ConfigurationError: score arrays of a different length than ``labels``.
    """
    from radlens.training.metrics import decision_threshold, roc_auc

    labels = np.asarray(labels).reshape(-1)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(-1)
    if not len(labels) == len(reference) == len(candidate) == len(folds):
        raise ConfigurationError(
            "paired differences need one score per example; received "
            f"{len(labels)} labels, {len(reference)} and {len(candidate)} scores, "
            f"{len(folds)} folds"
        )
    thresholds = [decision_threshold("balanced", labels, s) for s in (reference, candidate)]

    def per_fold(scores: np.ndarray, threshold: float) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"auc": [], "accuracy_at_test_prior": []}
        for f in np.unique(folds):
            y, s = labels[folds == f], scores[folds == f]
            predicted = s >= threshold
            sens = float(np.mean(predicted[y == 1]))
            spec = float(np.mean(~predicted[y == 0]))
            out["auc"].append(float(roc_auc(y, s) or float("nan")))
            out["accuracy_at_test_prior"].append(prior_matched_accuracy(sens, spec))
        return out

    ref, cand = per_fold(reference, thresholds[0]), per_fold(candidate, thresholds[1])
    result: dict[str, Any] = {"thresholds": [float(t) for t in thresholds]}
    for key in ref:
        diff = np.array(cand[key]) - np.array(ref[key])
        result[key] = {
            "mean": float(diff.mean()),
            "sd": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
            "folds": [float(d) for d in diff],
            "better": int((diff > 0).sum()),
        }
    return result


# --- the methods ------------------------------------------------------------------------------


def _folded_beta(batch: tf.Tensor, seeds: tf.Tensor, alpha: float) -> tf.Tensor:
    """``lambda ~ Beta(alpha, alpha)`` per image (from two Gammas, seeded by ``seeds[0]`` and
    ``seeds[1]``), folded to ``max(lambda, 1 - lambda)`` so the original image dominates."""
    g1 = tf.random.stateless_gamma([batch], seeds[0], alpha)
    g2 = tf.random.stateless_gamma([batch], seeds[1], alpha)
    lam = g1 / (g1 + g2 + 1e-12)
    return tf.maximum(lam, 1.0 - lam)


def _mix_labels(
    targets: tf.Tensor, weights: tf.Tensor, share: tf.Tensor, order: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Each one-hot target and sample weight times its image's ``share`` (per image), plus
    the batch partner's (``order``) times the rest."""
    column = tf.reshape(share, (-1, 1))
    mixed_targets = column * targets + (1.0 - column) * tf.gather(targets, order)
    mixed_weights = share * weights + (1.0 - share) * tf.gather(weights, order)
    return mixed_targets, mixed_weights


def mixup_batch(
    images: tf.Tensor, targets: tf.Tensor, weights: tf.Tensor, alpha: float, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """MixUp a batch: each image, its one-hot target and its sample weight mixed with those of a
    random partner from the same batch, ``lambda ~ Beta(alpha, alpha)`` per image.

    ``lambda`` is folded to ``max(lambda, 1 - lambda)`` so the original image dominates (the
    partner is a perturbation, as in the reference implementation's symmetric use). Seeded and
    stateless: the same ``seed`` (int (2,)) gives the same batch.
    """
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    lam = _folded_beta(batch, seeds, alpha)
    order = tf.argsort(tf.random.stateless_uniform([batch], seeds[2]))
    lam_img = tf.reshape(lam, (-1, 1, 1, 1))
    mixed_images = lam_img * images + (1.0 - lam_img) * tf.gather(images, order)
    return (mixed_images, *_mix_labels(targets, weights, lam, order))


def cutmix_batch(
    images: tf.Tensor, targets: tf.Tensor, weights: tf.Tensor, alpha: float, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """CutMix a batch: into each image, a box of a random partner from the same batch; the
    one-hot targets and sample weights mixed by the share of the image each one shows.

    The box's area share ``1 - lambda`` has ``lambda ~ Beta(alpha, alpha)`` folded to
    ``max(lambda, 1 - lambda)`` (as :func:`mixup_batch` does), so the original keeps at least
    half the image; the box is ``sqrt(1 - lambda)`` of each side, centred uniformly at random
    and clipped at the border, and the targets use the area actually pasted. Seeded and
    stateless: the same ``seed`` (int (2,)) gives the same batch.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    side = tf.sqrt(1.0 - _folded_beta(batch, seeds, alpha))
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    centre = tf.random.stateless_uniform([batch, 2], seeds[2]) * tf.stack([h, w])
    half = tf.stack([side * h, side * w], axis=1) / 2.0
    low = tf.cast(tf.round(tf.clip_by_value(centre - half, 0.0, tf.stack([h, w]))), tf.int32)
    high = tf.cast(tf.round(tf.clip_by_value(centre + half, 0.0, tf.stack([h, w]))), tf.int32)
    rows = tf.range(height)[tf.newaxis, :]
    cols = tf.range(width)[tf.newaxis, :]
    in_rows = (rows >= low[:, :1]) & (rows < high[:, :1])  # (batch, H)
    in_cols = (cols >= low[:, 1:]) & (cols < high[:, 1:])  # (batch, W)
    box = tf.cast(in_rows[:, :, tf.newaxis] & in_cols[:, tf.newaxis, :], images.dtype)
    box = box[..., tf.newaxis]  # (batch, H, W, 1)
    order = tf.argsort(tf.random.stateless_uniform([batch], seeds[3]))
    mixed_images = images * (1.0 - box) + tf.gather(images, order) * box
    kept = 1.0 - tf.reduce_mean(box, axis=[1, 2, 3])  # the share of the original shown
    return (mixed_images, *_mix_labels(targets, weights, kept, order))


def member_dataset(
    images: np.ndarray, labels: np.ndarray, recipe: MemberRecipe, seed: int
) -> tf.data.Dataset:
    """The training pipeline of one member: shuffle -> augment (per image, seeded) -> batch ->
    MixUp or CutMix (per batch) -> prefetch, yielding (images, one-hot targets, class
    weights)."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    per_class = len(labels) / (len(counts) * np.maximum(counts, 1.0))
    weights = (per_class[labels] if recipe.class_weights else np.ones(len(labels))).astype(
        np.float32
    )
    targets = np.eye(len(counts), dtype=np.float32)[labels]
    ds = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), targets, weights))
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if recipe.augment is not None:
        aug = recipe.augment
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def augment(item: Any, s: tf.Tensor) -> Any:
            image, target, weight = item
            return augment_image(image, s, aug), target, weight

        ds = tf.data.Dataset.zip((ds, seeds)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(recipe.batch_size)
    mixer, alpha = (
        (mixup_batch, recipe.mixup_alpha)
        if recipe.mixup_alpha > 0
        else (cutmix_batch, recipe.cutmix_alpha)
    )
    if alpha > 0:
        batch_seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).batch(
            2
        )
        ds = tf.data.Dataset.zip((ds, batch_seeds)).map(
            lambda item, s: mixer(item[0], item[1], item[2], alpha, s),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def member_learning_rate(
    recipe: MemberRecipe, steps: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The member's rate over ``steps`` training steps: cosine from ``learning_rate`` to 0; with
    ``swa_learning_rate`` the cosine reaches that rate when the last ``swa_epochs`` begin and
    holds it through them (CosineDecay's ``alpha`` floor), SWA's constant tail; with
    ``snapshots`` > 1 the cosine runs that many times, each cycle from ``learning_rate`` to 0."""
    if recipe.snapshots > 1:
        return keras.optimizers.schedules.CosineDecayRestarts(
            recipe.learning_rate,
            first_decay_steps=max(1, steps // recipe.snapshots),
            t_mul=1.0,  # equal cycles (Keras' default doubles each one)
            m_mul=1.0,  # each from the full rate
        )
    if recipe.swa_learning_rate > 0:
        before = steps * (recipe.epochs - recipe.swa_epochs) // recipe.epochs
        return keras.optimizers.schedules.CosineDecay(
            recipe.learning_rate,
            decay_steps=max(1, before),
            alpha=recipe.swa_learning_rate / recipe.learning_rate,
        )
    return keras.optimizers.schedules.CosineDecay(recipe.learning_rate, decay_steps=max(1, steps))


def make_member_optimizer(recipe: MemberRecipe, steps: int) -> keras.optimizers.Optimizer:
    """AdamW on :func:`member_learning_rate`; ``ema_momentum`` > 0 keeps Keras' EMA of the
    weights, which ``fit`` copies into the model when it ends."""
    rate = member_learning_rate(recipe, steps)
    ema = {"use_ema": True, "ema_momentum": recipe.ema_momentum} if recipe.ema_momentum else {}
    return keras.optimizers.AdamW(rate, weight_decay=recipe.weight_decay, **ema)


def train_member(
    images: np.ndarray,
    labels: np.ndarray,
    recipe: MemberRecipe,
    seed: int,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
) -> keras.Model:
    """Train one member network on in-memory images (float32 (N, H, W, 1) in [0, 1]); with
    ``snapshots`` > 1, the network as the last cycle left it (:func:`train_member_models`
    returns every snapshot)."""
    return train_member_models(images, labels, recipe, seed, on_epoch=on_epoch)[-1]


def train_member_models(
    images: np.ndarray,
    labels: np.ndarray,
    recipe: MemberRecipe,
    seed: int,
    *,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[keras.Model]:
    """The networks one member's training yields: the trained network, or with ``snapshots``
    > 1 one network per learning-rate cycle, as it was at the cycle's end (the member's
    prediction is then their mean, and each is served as a member of the ensemble)."""
    from radlens.models.architectures import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(
        recipe.architecture,
        input_shape=(recipe.image_size, recipe.image_size, 1),
        num_classes=2,
        filters=recipe.filters,
        dropout=recipe.dropout,
        center=recipe.center,
        batchnorm=recipe.batchnorm,
        width_multiplier=recipe.width_multiplier,
    )
    steps = recipe.epochs * math.ceil(len(images) / recipe.batch_size)
    model.compile(
        optimizer=make_member_optimizer(recipe, steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
    )
    # with use_ema, Keras' fit ends by copying the averaged weights into the model
    # (optimizer.finalize_variable_values), so what is evaluated and exported is the EMA
    callbacks: list[Any] = []
    if on_epoch is not None:
        callbacks.append(_EpochTimer(on_epoch))
    if recipe.swa_epochs:  # what is evaluated and exported is then the average
        callbacks.append(WeightAverage(first_epoch=recipe.epochs - recipe.swa_epochs))
    snapshots = SnapshotWeights(recipe.epochs // recipe.snapshots) if recipe.snapshots > 1 else None
    if snapshots is not None:
        callbacks.append(snapshots)
    model.fit(
        member_dataset(images, labels, recipe, seed),
        epochs=recipe.epochs,
        shuffle=False,  # member_dataset shuffles (seeded); fit cannot shuffle a Dataset
        verbose=0,
        callbacks=callbacks,
    )
    if snapshots is None:
        return [model]
    copies = []
    for weights in snapshots.weights[:-1]:  # the last cycle's end is the trained model itself
        copy = keras.models.clone_model(model)
        copy.set_weights(weights)
        copies.append(copy)
    return [*copies, model]


class SnapshotWeights(keras.callbacks.Callback):
    """The model's weights at the end of every ``every``-th epoch (a cycle's end)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if (epoch + 1) % self.every == 0:
            self.weights.append([np.array(w) for w in self.model.get_weights()])


class WeightAverage(keras.callbacks.Callback):
    """SWA: the model ends training with the plain mean of its weights after each epoch from
    ``first_epoch`` (0-based) on, every variable the model holds (trainable or not) averaged."""

    def __init__(self, first_epoch: int) -> None:
        super().__init__()
        self.first_epoch = first_epoch
        self.count = 0
        self._sums: list[np.ndarray] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if epoch < self.first_epoch:
            return
        weights = [np.asarray(w, dtype=np.float64) for w in self.model.get_weights()]
        if self._sums:
            weights = [s + w for s, w in zip(self._sums, weights, strict=True)]
        self._sums = weights
        self.count += 1

    def on_train_end(self, logs: Any = None) -> None:
        if self.count:
            dtypes = [np.asarray(w).dtype for w in self.model.get_weights()]
            self.model.set_weights(
                [(s / self.count).astype(d) for s, d in zip(self._sums, dtypes, strict=True)]
            )


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self, report: Callable[[int, float], None]) -> None:
        super().__init__()
        self.report = report
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.report(epoch, time.monotonic() - self._start)


def tta_offsets(shift: int) -> list[tuple[int, int]]:
    """The test-time views: the image itself and shifted by ``shift`` px up/down/left/right."""
    if shift <= 0:
        return [(0, 0)]
    return [(0, 0), (shift, 0), (-shift, 0), (0, shift), (0, -shift)]


def averaged_model(
    members: Sequence[keras.Model], *, tta_shift: int = 0, name: str = "ensemble"
) -> keras.Model:
    """One model: the mean of ``members``' probabilities over the TTA views (see
    ``models.ensemble.build_ensemble``)."""
    from radlens.models.ensemble import build_ensemble

    return build_ensemble(members, offsets=tta_offsets(tta_shift), name=name)


def predict_positive(
    model: keras.Model, images: np.ndarray, *, tta_shift: int = 0, batch_size: int = 256
) -> np.ndarray:
    """P(class 1) of one member, averaged over the TTA views when ``tta_shift`` > 0."""
    if tta_shift > 0:
        model = averaged_model([model], tta_shift=tta_shift, name="tta")
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0))[:, 1]


def _mean_positive(
    models: Sequence[keras.Model], images: np.ndarray, *, tta_shift: int = 0
) -> np.ndarray:
    """The mean of :func:`predict_positive` over a member's networks (one, or its snapshots)."""
    return np.mean([predict_positive(m, images, tta_shift=tta_shift) for m in models], axis=0)


# --- cross-validation -------------------------------------------------------------------------


@dataclass
class CrossValidation:
    """The outcome of :func:`cross_validate` for one recipe and one training seed."""

    recipe: MemberRecipe
    seed: int
    folds: np.ndarray  # fold of each example
    scores: np.ndarray  # OOF P(pneumonia), plain
    scores_tta: np.ndarray | None  # OOF P(pneumonia) averaged over the TTA views
    models: list[keras.Model]  # per fold in order (with snapshots, each fold's snapshots in turn)
    cpu_seconds: float
    wall_seconds: float
    epoch_seconds: list[float] = field(default_factory=list)


def cross_validate(
    images: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    recipe: MemberRecipe,
    *,
    seed: int,
    tta_shift: int = 0,
    keep_models: bool = False,
    log: Callable[[str], None] = print,
) -> CrossValidation:
    """Train one member per fold on the other folds and score the held-out fold (OOF).

    ``tta_shift`` > 0 also scores every held-out image over the TTA views (a second set of
    scores, so one run measures the model with and without TTA). CPU time is this process's
    (``time.process_time``: both cores' work, the shared machine's other jobs excluded).
    """
    labels = np.asarray(labels).reshape(-1)
    scores = np.full(len(labels), np.nan)
    scores_tta = np.full(len(labels), np.nan) if tta_shift else None
    models: list[keras.Model] = []
    epoch_seconds: list[float] = []
    cpu0, wall0 = time.process_time(), time.monotonic()
    for fold in np.unique(folds):
        held = folds == fold
        fold_models = train_member_models(
            images[~held],
            labels[~held],
            recipe,
            seed + 1000 * int(fold),
            on_epoch=lambda _e, s: epoch_seconds.append(s),
        )
        scores[held] = _mean_positive(fold_models, images[held])
        if scores_tta is not None:
            scores_tta[held] = _mean_positive(fold_models, images[held], tta_shift=tta_shift)
        log(
            f"  fold {int(fold)}: trained on {int((~held).sum())}, "
            f"{time.monotonic() - wall0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU"
        )
        if keep_models:
            models.extend(fold_models)
        else:
            keras.backend.clear_session()
    return CrossValidation(
        recipe,
        seed,
        folds,
        scores,
        scores_tta,
        models,
        time.process_time() - cpu0,
        time.monotonic() - wall0,
        epoch_seconds,
    )


# --- the final recipe: the fold models as one served ensemble ---------------------------------

OOF_LABEL = (
    "out-of-fold over train+val: each image scored by the fold model that did not train on it "
    "(the selection signal; the threshold was chosen on these same scores)"
)


def export_ensemble(
    runs: Sequence[CrossValidation],
    labels: np.ndarray,
    images: np.ndarray,
    *,
    source: Any,
    examples: Sequence[Any],
    store: Any,
    name: str,
    description: str = "",
    threshold_rule: str = "balanced",
    tta_shift: int = 0,
    extra_config: dict[str, Any] | None = None,
    ood_method: str | None = "mahalanobis",
) -> Any:
    """Store every fold model of ``runs`` as ONE ensemble model, with the threshold and the
    operating-point table chosen on the out-of-fold scores.

    ``ood_method`` (None: none) adds the ensemble's out-of-distribution detector
    (``training.ood.attach_cross_fitted_detector``): each member's detector is fitted on the
    folds it trained on and calibrated on the fold it never saw.

    The OOF score of an image is the mean over ``runs`` (training seeds) of the score of the
    fold model that did not see it, i.e. the OOF score of a one-member-per-seed ensemble: the
    closest honest stand-in for the served ensemble's score on unseen images. ``tta_shift``
    > 0 (the shift the runs were scored with) uses their TTA scores and puts the same views
    into the served graph.

    ``metrics["val"]`` holds the OOF figures of the official val images (they were in the
    other folds' training data, never in their own fold's), ``metrics["reported"]`` the OOF
    figures over all of train+val, labelled. No temperature is fitted: the members' mean
    probability is served as it is, and its OOF calibration error is recorded.

    Returns:
        The stored ``ModelManifest``.
    """
    from radlens.models.drift import build_reference
    from radlens.models.registry import ModelRegistry
    from radlens.training.data.intended import intended_use_for
    from radlens.training.data.sources import data_fingerprint, split_source
    from radlens.training.metrics import (
        classification_metrics,
        decision_threshold,
        expected_calibration_error,
        operating_points,
    )

    if not runs or any(not r.models for r in runs):
        raise ConfigurationError("export_ensemble needs runs made with keep_models=True")
    recipe = runs[0].recipe
    folds = runs[0].folds
    if tta_shift and any(r.scores_tta is None for r in runs):
        raise ConfigurationError("tta_shift > 0 needs runs scored with TTA (cross_validate)")
    per_run = [r.scores_tta if tta_shift and r.scores_tta is not None else r.scores for r in runs]
    scores = np.mean(per_run, axis=0)
    probabilities = np.stack([1.0 - scores, scores], axis=1)
    threshold = decision_threshold(threshold_rule, labels, scores)
    class_names = list(source.class_names)
    points = operating_points(labels, scores, labels, scores, threshold)
    points[threshold_rule] = {**points["chosen"], "rule": threshold_rule}
    is_val = np.array([e.split == "val" for e in examples])
    signal = fold_figures(labels, scores, folds, threshold)
    members = [m for r in runs for m in r.models]
    model = averaged_model(members, tta_shift=tta_shift, name="ensemble")
    reported = {
        "split": "oof",
        "label": OOF_LABEL,
        **classification_metrics(labels, probabilities, class_names, threshold),
    }
    splits = split_source(source)
    config = {
        "data": str(source.root),
        "architecture": f"ensemble of {len(members)} {recipe.architecture}",
        "recipe": recipe.to_dict(),
        "members": len(members),
        "folds": int(folds.max()) + 1,
        "seeds": [r.seed for r in runs],
        "tta_shift": tta_shift,
        "threshold_rule": threshold_rule,
        "seed": runs[0].seed,
        "resplit": False,  # radlens evaluate rebuilds the given train/val/test splits
        "cpu_seconds": round(sum(r.cpu_seconds for r in runs), 1),
        "wall_seconds": round(sum(r.wall_seconds for r in runs), 1),
        **(extra_config or {}),
    }
    manifest = ModelRegistry(store).save(
        model,
        name=name,
        architecture=recipe.architecture,
        class_names=class_names,
        threshold=threshold,
        window=None,
        filters=list(recipe.filters),
        metrics={
            "val": classification_metrics(
                labels[is_val], probabilities[is_val], class_names, threshold
            ),
            "oof": signal,
            "reported": reported,
            "operating_points": points,
            "drift_reference": build_reference(probabilities, images, class_names, threshold),
        },
        training_config=config,
        data_fingerprint=data_fingerprint(source, splits),
        description=description,
        calibration={
            "method": "none (mean of the members' probabilities)",
            "evaluated_on": "oof",
            "ece": expected_calibration_error(labels, probabilities),
        },
        intended_use=intended_use_for(source, list(examples)),
        finish_later=True,  # nobody's newest model until its detector is attached
    )
    if ood_method is None:
        return ModelRegistry(store).finish(manifest.ref)
    from radlens.training.ood import attach_cross_fitted_detector

    attached = attach_cross_fitted_detector(
        ModelRegistry(store),
        manifest.ref,
        model,
        images,
        labels,
        [  # cross_validate's order: by fold, each fold's snapshots in turn
            r.folds == fold
            for r in runs
            for fold in np.unique(r.folds)
            for _ in range(max(1, r.recipe.snapshots))
        ],
        method=ood_method,
        seed=runs[0].seed,
        data_note=f"{source.root.name}: train+val, {int(folds.max()) + 1} folds",
    )
    ModelRegistry(store).finish(attached.ref)
    return attached

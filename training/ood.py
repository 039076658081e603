"""Fit a stored model's out-of-distribution detector (models/ood.py) and attach it.

Used at the end of every training run (training.run) and by ``radlens models ood NAME --data``
for models saved before detectors existed: the model's penultimate features of (a sample of)
the training split fit the detector, the validation split (which the detector never saw)
sets its threshold as a split-conformal quantile, and the
registry stores the detector beside ``model.keras`` under the manifest's seal.

An ensemble (``models.ensemble``) gets one detector per member (``models.ood``
:class:`EnsembleOodDetector`): :func:`attach_ensemble_detector` takes, per member, the images
it trained on and images it did not; :func:`attach_cross_fitted_detector` builds those from the
folds of a cross-validated ensemble (``training.recipe.export_ensemble``: member ``i`` is
calibrated on its own held-out fold, which it never saw).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from radlens.models.errors import ConfigurationError
from radlens.models.ood import (
    DEFAULT_QUANTILE,
    EnsembleOodDetector,
    OodDetector,
    expected_flag_rate,
    extract_features,
    fit_detector,
    fit_ensemble_detector,
)
from radlens.models.registry import ModelManifest, ModelRegistry

if TYPE_CHECKING:
    import keras

    from radlens.training.data.sources import DataSource, Example

log = logging.getLogger(__name__)

MAX_FIT_IMAGES = 2048  # training images decoded to fit the detector (a seeded sample beyond)


def sample_examples(examples: Sequence[Example], limit: int, seed: int) -> list[Example]:
    """At most ``limit`` of ``examples``, a seeded sample in their original order."""
    if len(examples) <= limit:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def attach_detector(
    registry: ModelRegistry,
    ref: str,
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: np.ndarray,
    *,
    method: str,
    quantile: float = DEFAULT_QUANTILE,
    seed: int = 0,
    data_note: str = "",
) -> ModelManifest:
    """Fit the detector on ``model``'s features of ``train`` (images, labels), threshold it
    on ``val`` images, and store it with the version ``ref``. The labels are class indices,
    or a multi-label model's multi-hot targets (``models.ood.fit_detector``).

    An ensemble gets an :class:`EnsembleOodDetector` whose members all trained on ``train``
    and are all calibrated on ``val`` (:func:`attach_ensemble_detector`).

    Returns:
        The version's new manifest (its ``ood`` field describes the detector).
    """
    from radlens.models.ensemble import ensemble_members

    x_train, y_train = train
    members = ensemble_members(model)
    if members:
        return attach_ensemble_detector(
            registry,
            ref,
            model,
            [(x_train, y_train, val)] * len(members),
            method=method,
            quantile=quantile,
            seed=seed,
            data_note=data_note,
            calibration="every member trained on the training split and is calibrated on the "
            "validation split, which no member saw",
        )
    train_features = extract_features(model, x_train)
    val_features = extract_features(model, val)
    detector = fit_detector(
        train_features,
        y_train,
        val_features,
        method=method,  # type: ignore[arg-type]
        quantile=quantile,
        seed=seed,
    )
    flagged = float(np.mean(detector.scores(val_features) > detector.threshold))
    # what the threshold flags of NEW in-distribution images (the validation images set it,
    # so their own flagged fraction says little): the conformal expectation and its spread
    rate = expected_flag_rate(len(val), quantile)
    entry: dict[str, Any] = {
        **detector.entry(),
        "fitted_on": {"train_images": len(x_train), "val_images": len(val), "data": data_note},
        "val_flagged_fraction": flagged,
        "calibration": "split conformal: fitted on training images, threshold on validation",
        "expected_flag_rate": rate["expected"],
        "expected_flag_rate_upper_95": rate["upper_95"],
    }
    if np.ndim(y_train) == 2 and detector.method == "mahalanobis":  # a multi-label model
        entry["class_means"] = (
            "one per finding (its positive training images) and one for the training images "
            "without any finding (models.ood.finding_groups)"
        )
    manifest = _store(registry, ref, detector, entry)
    log.info(
        "%s: OOD detector %s, threshold %.4g (conformal %.0f%% quantile of %d validation "
        "images: expected to flag %.1f%% of new in-distribution images, under %.1f%% for 95%% "
        "of calibration draws), fitted on %d training images",
        manifest.ref,
        detector.method,
        detector.threshold,
        quantile * 100,
        len(val),
        rate["expected"] * 100,
        rate["upper_95"] * 100,
        len(x_train),
    )
    return manifest


def _store(
    registry: ModelRegistry,
    ref: str,
    detector: OodDetector | EnsembleOodDetector,
    entry: dict[str, Any],
) -> ModelManifest:
    name = ref.split(":", 1)[0]
    staging = registry.staging_dir(name)
    path = staging / "detector.npz"
    detector.save(path)
    try:
        return registry.add_ood_detector(ref, path, entry)
    finally:
        registry.remove_staging(staging)


def attach_ensemble_detector(
    registry: ModelRegistry,
    ref: str,
    model: keras.Model,
    fits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    method: str = "mahalanobis",
    quantile: float = DEFAULT_QUANTILE,
    seed: int = 0,
    data_note: str = "",
    calibration: str,
) -> ModelManifest:
    """Fit an ensemble's detector (``models.ood.EnsembleOodDetector``) and store it with ``ref``.

    Args:
        model: an ensemble built by ``models.ensemble.build_ensemble``.
        fits: per member, in member order, ``(train_images, train_labels, calibration_images)``:
            images the member trained on (the detector's fit) and images it never trained
            on (its calibration).
        calibration: how the calibration images were chosen, for the manifest.

    Raises:
        ConfigurationError: ``model`` is not an ensemble or ``fits`` has another length.
    """
    from radlens.models.ensemble import ensemble_members

    members = ensemble_members(model)
    if not members or len(fits) != len(members):
        raise ConfigurationError(
            f"an ensemble detector needs one (train, labels, calibration) triple per member; "
            f"received {len(fits)} for a model with {len(members)} ensemble members"
        )
    features = [
        (extract_features(member, x), np.asarray(y), extract_features(member, cal))
        for member, (x, y, cal) in zip(members, fits, strict=True)
    ]
    detector = fit_ensemble_detector(
        features,
        method=method,  # type: ignore[arg-type]
        quantile=quantile,
        seed=seed,
    )
    shared = all(cal is fits[0][2] for _, _, cal in fits)  # one validation split for all
    entry: dict[str, Any] = {
        **detector.entry(),
        "fitted_on": {
            "train_images": [len(x) for x, _, _ in fits],
            # distinct images that calibrate (each member's own fold, or the one val split)
            "val_images": len(fits[0][2]) if shared else detector.calibration_size,
            "data": data_note,
        },
        "calibration": calibration,
    }
    if shared:
        joined = np.concatenate([f[2] for f in features], axis=1)
        entry["val_flagged_fraction"] = float(np.mean(detector.scores(joined) > detector.threshold))
    manifest = _store(registry, ref, detector, entry)
    log.info(
        "%s: ensemble OOD detector (%d %s members), pooled rank threshold %.4g on %d "
        "calibration scores (nominally %.1f%% of new in-distribution images flagged, at most "
        "%.1f%%)",
        manifest.ref,
        len(members),
        method,
        detector.threshold,
        detector.calibration_size,
        entry["nominal_flag_rate"] * 100,
        entry["flag_rate_bound"] * 100,
    )
    return manifest


def attach_cross_fitted_detector(
    registry: ModelRegistry,
    ref: str,
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    held_out: Sequence[np.ndarray],
    *,
    method: str = "mahalanobis",
    quantile: float = DEFAULT_QUANTILE,
    seed: int = 0,
    data_note: str = "",
) -> ModelManifest:
    """:func:`attach_ensemble_detector` for a cross-validated ensemble: member ``i`` trained
    on the images outside ``held_out[i]``, so its detector is fitted on (a sample of at most
    :data:`MAX_FIT_IMAGES` of) those and calibrated on ``held_out[i]``, which it never saw.

    Args:
        images, labels: the model inputs ``(N, H, W, 1)`` and class indices of every image
            the ensemble was cross-validated on (``training.recipe``).
        held_out: per member (in member order), a boolean mask ``(N,)`` of its held-out fold.
    """
    labels = np.asarray(labels).reshape(-1)
    fits = []
    for i, mask in enumerate(held_out):
        held = np.asarray(mask, dtype=bool).reshape(-1)
        if held.shape != labels.shape or not held.any() or held.all():
            raise ConfigurationError(
                f"member {i}'s held-out mask must mark some but not all of the {len(labels)} "
                f"images. Received shape {held.shape}, {int(held.sum())} marked"
            )
        train = np.flatnonzero(~held)
        if len(train) > MAX_FIT_IMAGES:
            rng = np.random.default_rng([seed, i])
            train = np.sort(rng.choice(train, MAX_FIT_IMAGES, replace=False))
        fits.append((images[train], labels[train], images[held]))
    return attach_ensemble_detector(
        registry,
        ref,
        model,
        fits,
        method=method,
        quantile=quantile,
        seed=seed,
        data_note=data_note,
        calibration="cross-conformal: each member is calibrated on its own held-out fold "
        "(images it never trained on), its detector fitted on the other folds",
    )


def attach_from_source(
    registry: ModelRegistry,
    ref: str,
    model: keras.Model,
    source: DataSource,
    splits: dict[str, list[Example]],
    *,
    size: tuple[int, int],
    window: str | None,
    method: str,
    version: str | None = None,
    x_val: np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> ModelManifest:
    """:func:`attach_detector` with the images decoded from a data source's splits (training
    sampled to :data:`MAX_FIT_IMAGES`; ``x_val`` when already decoded)."""
    from radlens.training.data.pipeline import load_examples

    train_examples = sample_examples(splits["train"], MAX_FIT_IMAGES, seed)
    x_train, y_train = load_examples(
        source, train_examples, size=size, window=window, version=version, batch_size=batch_size
    )
    if x_val is None:
        x_val, _ = load_examples(
            source, splits["val"], size=size, window=window, version=version, batch_size=batch_size
        )
    return attach_detector(
        registry,
        ref,
        model,
        (x_train, y_train),
        x_val,
        method=method,
        seed=seed,
        data_note=f"{source.root.name}: train sample {len(x_train)}, val {len(x_val)}",
    )

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
import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from radlens.models.errors import ConfigurationError
from radlens.models.ood import (
    DEFAULT_QUANTILE,
    EnsembleOodDetector,
    OodDetector,
    default_layers,
    expected_flag_rate,
    extract_features,
    feature_model,
    fit_detector,
    fit_ensemble_detector,
    fit_layered_detector,
    resolve_layers,
)
from radlens.models.registry import ModelManifest, ModelRegistry

if TYPE_CHECKING:
    import keras

    from radlens.training.data.sources import DataSource, Example

log = logging.getLogger(__name__)

MAX_FIT_IMAGES = 2048  # training images decoded to fit the detector (a seeded sample beyond)
AUTO: Literal["auto"] = "auto"  # the layers models.ood.default_layers picks for the model
Layers = Sequence[str] | Literal["auto"] | None


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
    layers: Layers = AUTO,
) -> ModelManifest:
    """Fit the detector on ``model``'s features of ``train`` (images, labels), threshold it
    on ``val`` images, and store it with the version ``ref``. The labels are class indices,
    or a multi-label model's multi-hot targets (``models.ood.fit_detector``).

    ``layers``: the layers the detector reads (``models.ood.feature_layers`` names), each
    with its own detector at a Bonferroni-split threshold (``models.ood.LayeredOodDetector``);
    None: the last convolutional layer (``models.ood.OodDetector``); ``"auto"``:
    ``models.ood.default_layers`` (ResNet50's first and last stage, the last layer for any
    other model) when ``val`` is large enough for them (:func:`_auto_layers`), else the last
    layer.

    An ensemble gets an :class:`EnsembleOodDetector` whose members all trained on ``train``
    and are all calibrated on ``val`` (:func:`attach_ensemble_detector`), on each member's last
    layer.

    Raises:
        ConfigurationError: layers the model does not have (the valid ones listed), or
            layers named for an ensemble.

    Returns:
        The version's new manifest (its ``ood`` field describes the detector).
    """
    from radlens.models.ensemble import ensemble_members

    x_train, y_train = train
    members = ensemble_members(model)
    if members and layers not in (AUTO, None):
        raise ConfigurationError(
            "an ensemble's OOD detector reads each member's last convolutional layer; "
            f"layers cannot be chosen for it. Received: {list(layers or ())}"
        )
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
    read = _auto_layers(model, len(val), quantile) if layers == AUTO else layers
    chosen = None if read is None else resolve_layers(model, read)
    train_features = extract_features(model, x_train, layers=chosen)
    val_features = extract_features(model, val, layers=chosen)
    detector: OodDetector | EnsembleOodDetector
    if chosen is None:
        detector = fit_detector(
            train_features,
            y_train,
            val_features,
            method=method,  # type: ignore[arg-type]
            quantile=quantile,
            seed=seed,
        )
        # what the threshold flags of NEW in-distribution images (the validation images set
        # it, so their own flagged fraction says little): the conformal expectation and spread
        rate = expected_flag_rate(len(val), quantile)
    else:
        widths = [int(feature_model(model, (name,)).outputs[1].shape[-1]) for name in chosen]
        detector = fit_layered_detector(
            train_features,
            y_train,
            val_features,
            chosen,
            widths,
            method=method,  # type: ignore[arg-type]
            quantile=quantile,
            seed=seed,
        )
        # flagged when any layer flags: at most the sum of the layers' conformal rates
        per_layer = expected_flag_rate(len(val), 1.0 - (1.0 - quantile) / len(chosen))
        rate = {k: min(1.0, v * len(chosen)) for k, v in per_layer.items()}
    flagged = float(np.mean(detector.scores(val_features) > detector.threshold))
    entry: dict[str, Any] = {
        **detector.entry(),
        "fitted_on": {"train_images": len(x_train), "val_images": len(val), "data": data_note},
        "val_flagged_fraction": flagged,
        "calibration": "split conformal: fitted on training images, threshold on validation",
        "expected_flag_rate": rate["expected"],
        "expected_flag_rate_upper_95": rate["upper_95"],
    }
    if chosen is not None:
        entry["calibration"] += (
            f"; one detector per layer at the {1.0 - (1.0 - quantile) / len(chosen):.2%} level "
            "(Bonferroni), flagged when any layer flags; the expected flag rates are the sums "
            "of the layers' (upper bounds)"
        )
    if np.ndim(y_train) == 2 and entry["method"] == "mahalanobis":  # a multi-label model
        entry["class_means"] = (
            "one per finding (its positive training images) and one for the training images "
            "without any finding (models.ood.finding_groups)"
        )
    manifest = _store(registry, ref, detector, entry)
    log.info(
        "%s: OOD detector %s, threshold %.4g (conformal %.0f%% quantile of %d validation "
        "images: expected to flag %.1f%% of new in-distribution images, under %.1f%% for 95%% "
        "of calibration draws), fitted on %d training images, reading %s",
        manifest.ref,
        entry["method"],
        detector.threshold,
        quantile * 100,
        len(val),
        rate["expected"] * 100,
        rate["upper_95"] * 100,
        len(x_train),
        ", ".join(chosen) if chosen else "the last convolutional layer",
    )
    return manifest


def _auto_layers(model: keras.Model, val_images: int, quantile: float) -> tuple[str, ...] | None:
    """``models.ood.default_layers`` when the validation split is large enough for their
    Bonferroni split to keep the expected flag rate within ``1 - quantile``; None (the last
    layer) otherwise.

    Each layer's conformal threshold flags at least ``1 / (n + 1)`` of new in-distribution
    images in expectation (the largest of ``n`` validation scores), so ``L`` layers flagged
    by any can reach ``L / (n + 1)``: two layers at 99% need ``n >= 199`` validation images
    (the demo model has 112, QA 70's nih1000 model 151: both keep the last layer;
    ``radlens models ood --layers`` fits the pair anyway, with its bound in the manifest).
    """
    layers = default_layers(model)
    if layers is None:
        return None
    if val_images + 1 < len(layers) / (1.0 - quantile) - 1e-9:
        log.info(
            "OOD detector on the last layer only: %d validation images are too few for a "
            "%d-layer detector (%s) to keep its expected flag rate within %.1f%% (needs >= %d); "
            "`radlens models ood --layers` fits it anyway",
            val_images,
            len(layers),
            ", ".join(layers),
            (1.0 - quantile) * 100,
            math.ceil(len(layers) / (1.0 - quantile) - 1e-9) - 1,
        )
        return None
    return layers


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
    layers: Layers = AUTO,
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
        layers=layers,
    )

"""Fit a stored model's out-of-distribution detector (models/ood.py) and attach it.

Used at the end of every training run (training.run) and by ``radlens models ood NAME --data``
for models saved before detectors existed: the model's penultimate features of (a sample of)
the training split fit the detector, the validation split (which the detector never saw)
sets its threshold as a split-conformal quantile, and the
registry stores the detector beside ``model.keras`` under the manifest's seal.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from radlens.models.ood import (
    DEFAULT_QUANTILE,
    expected_flag_rate,
    extract_features,
    fit_detector,
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
    on ``val`` images, and store it with the version ``ref``.

    Returns:
        The version's new manifest (its ``ood`` field describes the detector).
    """
    x_train, y_train = train
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
    name = ref.split(":", 1)[0]
    staging = registry.staging_dir(name)
    path = staging / "detector.npz"
    detector.save(path)
    try:
        manifest = registry.add_ood_detector(ref, path, entry)
    finally:
        path.unlink(missing_ok=True)
        staging.rmdir()
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

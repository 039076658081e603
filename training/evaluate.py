"""Evaluate a stored model on a data set, preprocessing exactly as its manifest says.

``evaluate("chest:3", "data/", split="test", out=Path("eval/"))`` loads the model from the
store, reads the input size and window preset from its manifest (never guessed), rebuilds the
data split the model was trained with (same fractions and seed from its training config),
predicts, and returns metrics at the model's saved decision threshold. With ``out`` it writes
``metrics.json``, ``confusion_matrix.png`` and (binary) ``roc_curve.png`` there.

The helpers :func:`open_data` and :func:`predict_examples` are shared with ``training.run``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ConfigurationError
from training.data.sources import DataSource, Example, SkippedFile, open_source, split_source

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("train", "val", "test", "all")


def open_data(path: str | Path, class_names: Sequence[str] = ()) -> DataSource:
    """Open a training/evaluation data set.

    A folder holding a ``labels.csv`` is opened through that manifest (it carries patient ids
    and splits, as the demo data does); any other folder by its class sub-folders; ``.csv`` and
    ``.npz`` files directly. ``class_names`` fixes the label order (index 1 = the positive
    class of a binary model); empty lets the data decide (see ``training.data.sources``).

    Raises:
        models.errors.ConfigurationError: missing path, unusable layout, fewer than 2 classes.
    """
    p = Path(path)
    if p.is_dir() and (p / "labels.csv").is_file():
        p = p / "labels.csv"
    source = open_source(p, class_names=list(class_names) or None)
    if source.num_classes < 2:
        raise ConfigurationError(
            f"a classifier needs at least 2 classes; {str(path)!r} has {source.class_names!r}"
        )
    return source


def load_examples(
    source: DataSource,
    examples: Sequence[Example],
    *,
    size: tuple[int, int],
    window: str | None,
    batch_size: int = 32,
    skipped: list[SkippedFile] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``examples`` with the training pipeline (no augmentation, order kept).

    Returns:
        (inputs float32 (N, H, W, 1), labels int (N,)) for the examples that decoded;
        unreadable files are appended to ``skipped``.

    Raises:
        models.errors.ConfigurationError: none of the images could be read.
    """
    from training.data.pipeline import make_dataset

    ds = make_dataset(
        source,
        examples,
        size=size,
        window=window,
        batch_size=batch_size,
        training=False,
        cache=False,
        deterministic=True,
        skipped=skipped,
    )
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ConfigurationError(
            f"none of the {len(examples)} images could be read (see the skipped files)"
        )
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def predict_examples(
    model: Any,
    source: DataSource,
    examples: Sequence[Example],
    *,
    size: tuple[int, int],
    window: str | None,
    batch_size: int = 32,
    skipped: list[SkippedFile] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``examples`` (see :func:`load_examples`) and predict.

    Returns:
        (labels int (N,), probabilities float (N, C)) for the examples that decoded.
    """
    inputs, labels = load_examples(
        source, examples, size=size, window=window, batch_size=batch_size, skipped=skipped
    )
    return labels, np.asarray(model.predict(inputs, batch_size=batch_size, verbose=0))


def select_split(source: DataSource, split: str, training_config: dict[str, Any]) -> list[Example]:
    """The examples of ``split``, re-split exactly as the model's training run did."""
    if split not in SPLIT_CHOICES:
        raise ConfigurationError(f"split must be one of {', '.join(SPLIT_CHOICES)}; got {split!r}")
    if split == "all":
        return list(source.examples)
    splits = split_source(
        source,
        val_fraction=float(training_config.get("val_fraction", 0.15)),
        test_fraction=float(training_config.get("test_fraction", 0.15)),
        seed=int(
            training_config["split_seed"]
            if training_config.get("split_seed") is not None
            else training_config.get("seed", 0)
        ),
    )
    chosen = splits[split]
    if not chosen:
        counts = {k: len(v) for k, v in splits.items()}
        raise ConfigurationError(
            f"the {split!r} split of this data set is empty (split sizes: {counts}); "
            "choose another --split or 'all'"
        )
    return chosen


def evaluate(
    model_ref: str | None,
    data: str | Path,
    *,
    split: str = "test",
    store: str | Path | None = None,
    out: Path | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Metrics of a stored model on a split of a data set (see the module docstring).

    Returns:
        JSON-ready dict: model, split, data, auc, accuracy, sensitivity, specificity, precision,
        confusion_matrix, n, threshold (the model's saved one), class_names, skipped_files
        (per-class figures under per_class for multi-class models).

    Raises:
        models.errors.ModelNotFoundError / ModelCorruptError / ModelIncompatibleError: the store.
        models.errors.ConfigurationError: the data does not match the model's classes, an empty
            split, or no readable image.
    """
    from models.registry import ModelRegistry, default_store_path
    from training.metrics import classification_metrics

    loaded = ModelRegistry(Path(store) if store is not None else default_store_path()).load(
        model_ref
    )
    manifest = loaded.manifest
    source = open_data(data, manifest.class_names)
    if source.class_names != list(manifest.class_names):
        raise ConfigurationError(
            f"the data's classes {source.class_names!r} differ from the model's "
            f"{list(manifest.class_names)!r}"
        )
    examples = select_split(source, split, manifest.training_config)
    skipped: list[SkippedFile] = list(source.skipped)
    labels, probabilities = predict_examples(
        loaded.model,
        source,
        examples,
        size=manifest.input_size,
        window=manifest.window,
        batch_size=batch_size,
        skipped=skipped,
    )
    metrics = classification_metrics(
        labels, probabilities, manifest.class_names, manifest.threshold
    )
    result: dict[str, Any] = {
        "model": manifest.ref,
        "split": split,
        "data": str(data),
        "class_names": list(manifest.class_names),
        **metrics,
        "skipped_files": len(_unique(skipped)),
    }
    if out is not None:
        write_report(out, result, labels, probabilities, manifest.class_names)
    return result


def write_report(
    out: Path,
    metrics: dict[str, Any],
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.png and (binary) roc_curve.png into ``out``."""
    from training.callbacks import confusion_matrix_png, roc_curve_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": out / "metrics.json",
        "confusion_matrix": out / "confusion_matrix.png",
    }
    files["metrics"].write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    files["confusion_matrix"].write_bytes(
        confusion_matrix_png(np.asarray(metrics["confusion_matrix"]), class_names)
    )
    if len(class_names) == 2:
        files["roc_curve"] = out / "roc_curve.png"
        files["roc_curve"].write_bytes(
            roc_curve_png(labels, probabilities[:, 1], metrics.get("auc"))
        )
    return files


def _unique(skipped: Sequence[SkippedFile]) -> list[SkippedFile]:
    seen: dict[str, SkippedFile] = {}
    for item in skipped:
        seen.setdefault(item.path, item)
    return list(seen.values())

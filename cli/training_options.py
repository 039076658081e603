"""The options ``radlens train`` and ``radlens experiment filters`` share, declared once.

Each alias is a typed ``Annotated`` option; a command lists it as a parameter. Every one of
them defaults to None ("not given"), so a config file's value stands unless the flag is given.
:func:`base_config` turns them into the run's ``TrainConfig`` the same way for both commands.

Only typer and the standard library are imported here (``training.config`` loads no
TensorFlow).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from radlens.cli.common import fail

if TYPE_CHECKING:
    from radlens.training.config import TrainConfig

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML or JSON training config file (flags win; the defaults below are for what "
        "neither sets).",
    ),
]
DataOption = Annotated[
    str | None,
    typer.Option("--data", help="Folder of class sub-folders (or with labels.csv), .csv, .npz"),
]
ArchOption = Annotated[
    str | None, typer.Option("--arch", help="resnet50 or simple_cnn (default resnet50).")
]
ImageSizeOption = Annotated[
    int | None, typer.Option("--image-size", help="Model input side in pixels (default 224).")
]
EpochsOption = Annotated[
    int | None,
    typer.Option(
        "--epochs", help="Phase-1 epochs (head; all of simple_cnn's training; default 5)."
    ),
]
BatchSizeOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size", help="Images per training step (all replicas together; default 32)."
    ),
]
LearningRateOption = Annotated[
    float | None, typer.Option("--learning-rate", help="Phase-1 learning rate (default 0.001).")
]
AugmentOption = Annotated[
    bool | None, typer.Option("--augment/--no-augment", help="Training augmentation (default on).")
]
SeedOption = Annotated[
    int | None,
    typer.Option(
        "--seed", help="Random seed, also the split's (experiment: the first run's; default 1234)."
    ),
]
NameOption = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Model name in the store, and the prefix of run directories (default radlens; "
        "experiment filters: filters).",
    ),
]
RunsDirOption = Annotated[
    str | None,
    typer.Option(
        "--runs-dir",
        help="Where run directories go (default runs/ under the current directory; the model "
        "store is the same wherever you run).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


# shared option parameter -> the TrainConfig field it sets
SHARED_FIELDS = {
    "data": "data",
    "arch": "architecture",
    "image_size": "image_size",
    "epochs": "epochs_head",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate_head",
    "augment": "augment",
    "seed": "seed",
    "name": "name",
    "runs_dir": "runs_dir",
}


def overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """The shared options among a command's parameters (its ``locals()``) as ``TrainConfig``
    overrides (None = not given)."""
    return {field: params[param] for param, field in SHARED_FIELDS.items()}


def base_config(config: Path | None, overrides: dict[str, Any], **defaults: Any) -> TrainConfig:
    """The config file (or the defaults) with the flags given; exits 2 without usable data.

    Args:
        config: ``--config``, or None.
        overrides: ``TrainConfig`` field -> flag value (None = not given).
        defaults: ``TrainConfig`` fields that differ from its defaults when no file is given.
    """
    from radlens.training.config import TrainConfig  # no TensorFlow

    cfg = (
        TrainConfig.load(config, overrides)
        if config is not None
        else TrainConfig(**defaults).with_overrides(overrides)
    )
    if cfg.data is None:
        fail("no training data: pass --data PATH (or set data: in the config file)")
    if not Path(cfg.data).exists():
        fail(f"data path does not exist: {cfg.data!r}")
    return cfg


# series-labelled CSVs (training.data.series): train, evaluate and data-check
DicomRootOption = Annotated[
    str | None,
    typer.Option(
        "--dicom-root",
        help="Series CSV: the folder scanned for series_uid values (default: the CSV's folder; "
        "evaluate: the training's --dicom-root, else the CSV's folder).",
    ),
]
SeriesAggregationOption = Annotated[
    str | None,
    typer.Option(
        "--series-aggregation",
        help="Series CSV: max, mean_top_k or noisy_or, as RADLENS_SERIES_AGGREGATION (train: "
        "default max; evaluate: default the model's training's).",
    ),
]
SeriesTopKOption = Annotated[
    int | None,
    typer.Option(
        "--series-top-k",
        help="Series CSV: k of mean_top_k (train: default 3; evaluate: default the training's).",
        min=1,
    ),
]

"""QA round 60: refusals while a data set is opened named config fields, not options.

`radlens train --data d --val-fraction 0.1` stopped with "... Add data, raise --val-fraction,
or lower min_calibration_positives" and "Add data or raise val_fraction": the user typed
``--min-calibration-positives`` and ``--val-fraction``. Each refusal names the option, and the
field where a --config file user knows it by that name (as training.config's refusals do).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import (
    DataSource,
    Example,
    MultiLabelSpec,
    check_splits,
    open_data,
    split_source,
)
from tests.training.data_fixtures import random_gray, write_csv, write_png


def _csv(tmp_path: Path, n: int) -> Path:
    rng = np.random.default_rng(60)
    rows = []
    for i in range(n):
        write_png(tmp_path / "img" / f"{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        rows.append({"path": f"img/{i}.png", "label": "ab"[i % 2], "patient_id": f"P{i}"})
    return write_csv(tmp_path / "labels.csv", rows)


def test_too_small_to_calibrate_names_both_options(tmp_path: Path) -> None:
    source = open_data(_csv(tmp_path, 20))
    splits = split_source(source, val_fraction=0.2, test_fraction=0.2, seed=0)
    with pytest.raises(ConfigurationError, match="too small to calibrate") as caught:
        check_splits(source, splits, min_calibration_positives=10)
    message = str(caught.value)
    assert "raise --val-fraction" in message
    assert "lower --min-calibration-positives" in message
    assert "min_calibration_positives: in a --config file" in message


def test_a_validation_split_of_one_class_names_the_option(tmp_path: Path) -> None:
    examples = [Example(f"{tmp_path}/{i}.png", i % 2) for i in range(8)]
    source = DataSource(["a", "b"], examples, "folder", tmp_path)
    splits = {"train": examples[:6], "val": [examples[6]], "test": []}
    with pytest.raises(ConfigurationError, match="at least 2 classes") as caught:
        check_splits(source, splits)
    assert "Add data or raise --val-fraction (val_fraction: in a --config file)" in str(
        caught.value
    )


def test_multi_label_validation_without_a_judged_finding_names_the_option(
    tmp_path: Path,
) -> None:
    examples = [Example(f"{tmp_path}/{i}.png", 0, findings=(0, 1)) for i in range(6)]
    source = DataSource(["x", "y"], examples, "csv", tmp_path, multi_label=True)
    splits = {"train": examples[:4], "val": examples[4:], "test": []}
    with pytest.raises(ConfigurationError, match="images with and without") as caught:
        check_splits(source, splits)
    assert "raise --val-fraction" in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"separator": ""}, "--label-separator"),
        ({"none_name": " "}, "--no-finding"),
        ({"column": " "}, "--label-column"),
    ],
)
def test_multi_label_options_are_named(changes: dict[str, str], option: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MultiLabelSpec(**changes)
    assert option in str(caught.value)


def test_split_fractions_name_their_options(tmp_path: Path) -> None:
    source = open_data(_csv(tmp_path, 8))
    with pytest.raises(ConfigurationError, match=r"option --val-fraction"):
        split_source(source, val_fraction=1.5)
    with pytest.raises(ConfigurationError, match=r"--val-fraction, --test-fraction"):
        split_source(source, val_fraction=0.6, test_fraction=0.5)

"""QA 37: a class too small to train, and integer labels that skip a class index.

A typo in one row's label (``effusion`` among ``normal``/``abnormal``) makes a class of one
image: the refusal said "the validation split has 0 image(s) of its rarest class", naming
neither the class nor why. Labels numbered from 1 made an empty ``class_0`` that was refused
only at the split, as "class(es) ['class_0'] have no training image".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import check_splits, open_data, split_source
from tests.training.data_fixtures import random_gray, write_csv, write_png


def _csv(tmp_path: Path, labels: list[str]) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for i, label in enumerate(labels):
        write_png(tmp_path / "img" / f"{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        rows.append({"path": f"img/{i}.png", "label": label, "patient_id": f"P{i}"})
    return write_csv(tmp_path / "labels.csv", rows)


def test_a_class_of_one_image_is_named_with_its_count(tmp_path: Path) -> None:
    labels = ["normal", "abnormal"] * 12 + ["effusion"]  # one row's typo
    source = open_data(_csv(tmp_path, labels))
    splits = split_source(source, val_fraction=0.25, test_fraction=0.25, seed=0)
    with pytest.raises(ConfigurationError) as caught:
        check_splits(source, splits, min_calibration_positives=1)
    message = str(caught.value)
    assert "'effusion'" in message and "'effusion' 1" in message
    assert "fix its label if it is a typo" in message


@pytest.mark.parametrize("labels", [["1", "2"], ["0", "2"]])
def test_integer_labels_that_skip_an_index_are_refused_when_read(
    tmp_path: Path, labels: list[str]
) -> None:
    with pytest.raises(ConfigurationError, match="counted from 0, but no row") as caught:
        open_data(_csv(tmp_path, labels * 6))
    assert "label the rows with class names" in str(caught.value)


def test_an_empty_class_folder_says_what_to_do(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for i in range(2):
        write_png(tmp_path / "data" / "normal" / f"{i}.png", random_gray(rng, 16))
    (tmp_path / "data" / "pneumonia").mkdir()
    with pytest.raises(ConfigurationError, match="pneumonia' contains no readable") as caught:
        open_data(tmp_path / "data")
    assert "add its images, or move the folder out" in str(caught.value)


def test_a_split_column_without_val_does_not_advise_val_fraction(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(12):
        write_png(tmp_path / f"{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        rows.append({"path": f"{i}.png", "label": "ab"[i % 2], "split": "train"})
    source = open_data(write_csv(tmp_path / "labels.csv", rows))
    splits = split_source(source, val_fraction=0.5, test_fraction=0.0, seed=0)
    with pytest.raises(ConfigurationError, match="given by the split column") as caught:
        check_splits(source, splits)
    assert "--resplit" in str(caught.value) and "raise val_fraction" not in str(caught.value)


def test_a_given_val_too_small_to_calibrate_does_not_advise_val_fraction(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(24):
        write_png(tmp_path / f"{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        rows.append(
            {"path": f"{i}.png", "label": "ab"[i % 2], "split": "val" if i < 4 else "train"}
        )
    source = open_data(write_csv(tmp_path / "labels.csv", rows))
    splits = split_source(source, val_fraction=0.5, test_fraction=0.0, seed=0)
    with pytest.raises(ConfigurationError, match="too small to calibrate") as caught:
        check_splits(source, splits, min_calibration_positives=10)
    assert "give more images the split val (or pass --resplit)" in str(caught.value)
    assert "--val-fraction" not in str(caught.value)

"""QA 37: which class of a two-class set is the positive one (class 1: the threshold, the
sensitivity and the operating points are about it).

NIH's own negative label, ``No Finding``, sorted after every finding name and was taken for
the positive class (the model's threshold and sensitivity were about "No Finding", and the
service flagged every normal image), silently; ``control``, ``non-COVID`` and ``Normal_lung``
were too. When neither name reads as negative, `data-check` and `train` now say which class is
positive and how to choose it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from radlens.training.data import sources
from radlens.training.data.sources import open_data
from tests.training.conftest import tiny_config
from tests.training.data_fixtures import png_folder, random_gray, write_csv, write_png


@pytest.mark.parametrize(
    ("negative", "positive"),
    [
        ("No Finding", "Effusion"),
        ("no-finding", "Atelectasis"),
        ("control", "case"),
        ("non-COVID", "COVID"),
        ("no nodule", "nodule"),
        ("Normal_lung", "cancer"),
    ],
)
def test_a_negative_sounding_folder_is_class_0(
    tmp_path: Path, negative: str, positive: str
) -> None:
    png_folder(tmp_path / "data", n_per_class=2, classes=(negative, positive))
    source = open_data(tmp_path / "data")
    assert source.class_names == [negative, positive]
    note = sources.positive_class_note(source)
    assert note is not None and note.startswith(f"positive class: {positive!r}")


def test_a_csv_labelled_no_finding_is_class_0(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i, label in enumerate(["No Finding", "Effusion"] * 2):
        write_png(tmp_path / f"{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        rows.append({"path": f"{i}.png", "label": label})
    source = open_data(write_csv(tmp_path / "labels.csv", rows))
    assert source.class_names == ["No Finding", "Effusion"]


def test_an_alphabetical_guess_is_said_with_what_to_do(tmp_path: Path) -> None:
    png_folder(tmp_path / "data", n_per_class=2, classes=("cat", "dog"))
    note = sources.positive_class_note(open_data(tmp_path / "data"))
    assert note is not None
    assert "positive class: 'dog'" in note and "alphabetical" in note
    assert "class_names: ['dog', 'cat']" in note


def test_train_warns_of_a_guessed_positive_class_before_it_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from radlens.training.run import _RunData

    png_folder(tmp_path / "data", n_per_class=8, classes=("cat", "dog"))
    config = tiny_config(
        tmp_path / "data", tmp_path, min_calibration_positives=1, val_fraction=0.25
    )
    with caplog.at_level(logging.WARNING, logger="radlens.training.run"):
        _RunData.open(config)
    assert any("positive class: 'dog'" in r.getMessage() for r in caplog.records)

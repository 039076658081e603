"""QA 37: a CSV of integer labels with a ``label_name`` column, read against a model's classes
(`radlens evaluate`) or the config's ``class_names``: the index was taken as the model's class
index even where label_name said the CSV numbers its classes otherwise (0 = abnormal beside a
model whose class 0 is normal), inverting every label silently (AUC 0.30 for 0.70)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import open_data
from tests.training.data_fixtures import random_gray, write_csv, write_png


def test_integer_labels_numbered_otherwise_than_the_model_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    rows = []
    for i in range(8):
        write_png(tmp_path / f"{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        name = ["normal", "abnormal"][i % 2]
        rows.append({"path": f"{i}.png", "label": str(1 - i % 2), "label_name": name})
    csv_path = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(ConfigurationError, match="numbers the classes otherwise") as caught:
        open_data(csv_path, class_names=["normal", "abnormal"])
    assert "'normal' by its label_name" in str(caught.value)

"""A series-labelled CSV with ``--multi-label`` refuses finding names that differ only in case
(QA round 27). The README promises it for every data set ("class or finding names that differ
only in case (`Normal`/`normal`, `no finding` beside `No Finding`)"), and a file manifest or a
folder did refuse them, but a series CSV of CT series labelled ``Nodule`` on some rows and
``nodule`` on others trained ``Nodule`` and ``nodule`` as two findings, and ``no finding``
as a finding beside the ``No Finding`` of the series without one (data-check listed them,
exit 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import MultiLabelSpec, open_source
from tests.training.series_fixtures import uid, write_rows, write_series


def _series_csv(tmp_path: Path, labels: list[str]) -> Path:
    rng = np.random.default_rng(27)
    rows = []
    for i, label in enumerate(labels):
        folder = tmp_path / f"s{i}"
        write_series(
            folder, patient_id=f"P{i}", series_uid=uid("qa27", i), positive=False, slices=2, rng=rng
        )
        rows.append({"series_path": folder.name, "findings": label, "patient_id": f"P{i}"})
    return write_rows(tmp_path / "series.csv", rows)


@pytest.mark.parametrize(
    ("labels", "clash"),
    [
        (["Nodule|Effusion", "No Finding", "nodule", "Effusion"], "['Nodule', 'nodule']"),
        (["Nodule", "No Finding", "no finding", "Effusion"], "['No Finding', 'no finding']"),
    ],
)
def test_findings_spelled_two_ways_are_refused(
    tmp_path: Path, labels: list[str], clash: str
) -> None:
    csv_path = _series_csv(tmp_path, labels)
    with pytest.raises(ConfigurationError, match="differ only in case") as info:
        open_source(csv_path, multi_label=MultiLabelSpec(column="findings"))
    assert clash in str(info.value)


def test_one_spelling_each_still_opens(tmp_path: Path) -> None:
    csv_path = _series_csv(tmp_path, ["Nodule|Effusion", "No Finding", "Nodule", "Effusion"])
    source = open_source(csv_path, multi_label=MultiLabelSpec(column="findings"))
    assert source.class_names == ["Effusion", "Nodule"]

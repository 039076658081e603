"""QA 37: `radlens train --resume` compared where each image went (splits.csv), not its
class index: a resumed run whose classes now order otherwise (a radlens that reads
``No Finding`` as the negative class, a label edited in the CSV) trained its checkpoint on
the other labels, silently. It is refused now (an unchanged run still resumes:
tests/cli/test_training_cmds.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import Example
from radlens.training.rundir import SPLITS_FILE, check_resumed_split


def _splits(labels: dict[str, int]) -> dict[str, list[Example]]:
    return {
        "train": [Example(key, label) for key, label in labels.items() if key.startswith("t")],
        "val": [Example(key, label) for key, label in labels.items() if key.startswith("v")],
    }


def _recorded(run: Path, labels: dict[str, int]) -> Path:
    run.mkdir()
    lines = ["split,key,label,patient"]
    for key, label in labels.items():
        lines.append(f"{'train' if key.startswith('t') else 'val'},{key},{label},")
    (run / SPLITS_FILE).write_text("\n".join(lines) + "\n")
    return run


def test_a_resume_whose_class_indices_flipped_is_refused(tmp_path: Path) -> None:
    first = {"t1.png": 0, "t2.png": 1, "v1.png": 0, "v2.png": 1}
    run = _recorded(tmp_path / "run", first)
    flipped = {key: 1 - label for key, label in first.items()}
    with pytest.raises(ConfigurationError, match="another class index") as caught:
        check_resumed_split(run, _splits(flipped))
    assert "4 image(s)" in str(caught.value) and "start a new run" in str(caught.value)


def test_a_resume_with_one_label_edited_is_refused(tmp_path: Path) -> None:
    first = {"t1.png": 0, "t2.png": 1, "v1.png": 0, "v2.png": 1}
    run = _recorded(tmp_path / "run", first)
    with pytest.raises(ConfigurationError, match=r"t2\.png: 1 then, 0 now"):
        check_resumed_split(run, _splits({**first, "t2.png": 0}))

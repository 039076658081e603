"""QA 41 (upgrading a deployment from the release before QA 37): a run of a `COVID`/`non-COVID`
set started by the old radlens (alphabetical order: `non-COVID` positive) and resumed by this
one (`COVID` positive) was refused for its split ("its data, or how this radlens reads and
splits it, changed ... N image(s) in another split"): the class indices decide the stratified
split, so the images also moved, and the split check spoke first. The README promises the
cause, "its images now reading with other class indices"; the class-index check runs first."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import Example
from radlens.training.rundir import SPLITS_FILE, check_resumed_split


def test_a_resume_whose_classes_reordered_and_moved_names_the_class_indices(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    # as the old radlens wrote it: COVID class 0, non-COVID class 1
    (run / SPLITS_FILE).write_text(
        "split,key,label,patient\n"
        "train,COVID/1.png,0,\ntrain,non-COVID/1.png,1,\n"
        "val,COVID/2.png,0,\nval,non-COVID/2.png,1,\n"
    )
    # this radlens: COVID positive (1), and the stratified split put the images elsewhere
    now = {
        "train": [Example("COVID/2.png", 1), Example("non-COVID/2.png", 0)],
        "val": [Example("COVID/1.png", 1), Example("non-COVID/1.png", 0)],
    }
    with pytest.raises(ConfigurationError, match="another class index") as caught:
        check_resumed_split(run, now)
    assert "4 image(s)" in str(caught.value) and "start a new run" in str(caught.value)

"""QA 40: the intended use a model records covers every split, and the colour images its
gate refuses are left out of training and of the split ``evaluate`` rebuilds.

QA 37 found ``dx_image.dcm`` in the validation split of a CR/CT/MR run: the manifest's intended
use was surveyed from the train split only, so the model refused DX uploads while its
validation figures scored a DX image. The survey now reads every split (the split is random:
a model's intended use should not depend on which split its one DX image fell in).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import tiny_config
from tests.training.data_fixtures import write_csv
from tests.training.test_qa40_colour_skipped import FACE, write_dicom


def test_a_train_run_records_every_splits_modality_and_skips_colour(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from radlens.models.intended_use import colour_violation, from_record
    from radlens.models.preprocessing import preprocess
    from radlens.models.registry import ModelRegistry
    from radlens.training.evaluate import evaluate
    from radlens.training.run import train

    face = get_testdata_file(FACE)
    if face is None:  # pragma: no cover - pydicom-data not installed
        pytest.skip(f"pydicom's test file {FACE} is not installed (pydicom-data)")
    data = tmp_path / "data"
    rows = []
    seed = 0
    for c, label in enumerate(("normal", "abnormal")):
        for split, n in (("train", 8), ("val", 3), ("test", 3)):
            for _ in range(n):
                seed += 1
                name = f"img/{seed}.dcm"
                write_dicom(data / name, seed=seed, bright=c == 1)
                rows.append({"path": name, "label": label, "split": split, "patient_id": seed})
    write_dicom(data / "img/dx.dcm", seed=999, modality="DX")  # the one DX: in val
    rows.append({"path": "img/dx.dcm", "label": "normal", "split": "val", "patient_id": 999})
    shutil.copy(str(face), data / "img" / "face.dcm")  # palette colour, given to train
    rows.append({"path": "img/face.dcm", "label": "abnormal", "split": "train", "patient_id": 998})
    csv = write_csv(data / "labels.csv", rows)

    result = train(tiny_config(csv, tmp_path, epochs_head=1, histogram_freq=0), verbose=0)

    assert [Path(s.path).name for s in result.skipped] == ["face.dcm"]
    assert "in colour" in result.skipped[0].reason
    assert result.split_sizes == {"train": 16, "val": 7, "test": 6}
    splits = (result.run_dir / "splits.csv").read_text()
    assert "face.dcm" not in splits and "dx.dcm" in splits
    registry = ModelRegistry(result.store)
    manifest = registry.read_manifest(*registry.resolve(result.model_ref))
    record = manifest.intended_use
    assert record["accepts"]["modalities"] == ["CR", "DX"]  # was ["CR"]: DX only in val
    assert record["observed"]["images"] == 16  # the training images, counted as before
    assert manifest.training_config["split"]["intended_use_from"] == "all splits"
    # the served model refuses the skipped file, as training left it out
    meta = preprocess(Path(str(face)).read_bytes(), size=(32, 32)).metadata
    assert colour_violation(meta.colour_fraction, from_record(record)) is not None
    # evaluate rebuilds the run's split (the colour image left out again): no size refusal
    evaluate(result.model_ref, csv, split="val", store=result.store)
    saved = json.loads((result.run_dir / "result.json").read_text())
    assert any("face.dcm: in colour" in s for s in saved["skipped_files"])
    assert np.isfinite(result.val_metrics["auc"])

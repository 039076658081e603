"""Fixtures for the training-run tests: a tiny demo data set and one finished tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.training.config import TrainConfig

TEST_PATIENT_KEY = "radlens-tests-patient-key"


@pytest.fixture(autouse=True, scope="session")
def _patient_hash_key() -> object:
    """A fixed patient-hash key, so tests never create the per-user key file."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RADLENS_PATIENT_HASH_KEY", TEST_PATIENT_KEY)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 synthetic chest DICOMs (radlens demo-data), 32 px, with labels.csv and splits."""
    from radlens.training.data.demo import write_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "data"
    # the split of the former defaults (15% / 15%), which these tests are written against
    write_demo_dataset(out, n_per_class=20, size=32, seed=0, val_fraction=0.15, test_fraction=0.15)
    return out


def tiny_config(data: Path, tmp: Path, **changes: object) -> TrainConfig:
    """A run that takes a few seconds: simple_cnn, 32 px, two epochs, its own store."""
    values: dict[str, object] = {
        "data": str(data),
        "architecture": "simple_cnn",
        "image_size": 32,
        "batch_size": 8,
        "epochs_head": 2,
        "epochs_finetune": 0,
        "runs_dir": str(tmp / "runs"),
        "store": str(tmp / "store"),
        "name": "tiny",
        "histogram_freq": 1,
        "tensorboard_samples": 2,
        "early_stopping_patience": 0,
        "min_calibration_positives": 2,  # the tiny demo's validation holds 3 positives
    }
    values.update(changes)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="session")
def tiny_run(tiny_demo_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One finished simple_cnn run on the tiny demo data (shared by run/evaluate tests)."""
    from radlens.training.run import train

    tmp = tmp_path_factory.mktemp("tiny-run")
    return train(tiny_config(tiny_demo_data, tmp, filters=["sobel_h"]), verbose=0)

"""`radlens models ood NAME --data PATH`: add an OOD detector to a model saved without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.ood import OodDetector
from radlens.models.registry import ModelRegistry
from tests.app.conftest import save_tiny_model
from tests.cli.test_models_cmds import one_error_line


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.training.data.demo import write_demo_dataset

    out = tmp_path_factory.mktemp("ood-demo") / "data"
    write_demo_dataset(out, n_per_class=12, size=32, seed=0, val_fraction=0.15, test_fraction=0.15)
    return out


def test_adds_a_sealed_detector_and_replaces_it(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    save_tiny_model(store)
    registry = ModelRegistry(store)
    assert registry.verify("tiny", 1).ood is None

    assert main(["models", "ood", "tiny", "--data", str(demo_data), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added an OOD detector to tiny:1: mahalanobis, threshold")
    assert "of new in-distribution images (under " in out  # the conformal expectation
    first = registry.verify("tiny", 1)  # sealed again: the seal covers the new field
    assert first.ood is not None
    first_file = registry.ood_detector_file(first)
    assert first_file is not None and OodDetector.load(first_file).dimension == 64

    args = ["models", "ood", "tiny:1", "--data", str(demo_data), "--store", str(store)]
    assert main([*args, "--method", "knn", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["method"] == "knn" and entry["fitted_on"]["val_images"] >= 1
    n = entry["fitted_on"]["val_images"]  # split conformal: ceil((n + 1) 0.99)-th of n
    assert entry["expected_flag_rate"] == pytest.approx(
        (n + 1 - min(n, -(-(n + 1) * 99 // 100))) / (n + 1)
    )
    second = registry.verify("tiny", 1)
    assert second.model_sha256 == first.model_sha256 and second.created_at == first.created_at
    assert not first_file.exists()  # the replaced detector's file is gone
    assert registry.ood_detector_file(second) is not None


def test_bad_method_is_one_line(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    save_tiny_model(store)
    args = ["models", "ood", "tiny", "--data", str(demo_data), "--store", str(store)]
    assert main([*args, "--method", "forest"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--method must be one of mahalanobis, knn. Received: 'forest'" in line
    assert ModelRegistry(store).verify("tiny", 1).ood is None


def test_an_ensemble_trained_on_the_train_split_gets_one_detector_per_member(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.models.ensemble import build_ensemble
    from radlens.models.ood import EnsembleOodDetector, load_detector
    from tests.app.conftest import CLASS_NAMES, build_tiny_model

    store = tmp_path / "store"
    registry = ModelRegistry(store)
    registry.save(
        build_ensemble([build_tiny_model(), build_tiny_model()]),
        name="ens",
        architecture="simple_cnn",
        class_names=CLASS_NAMES,
        threshold=0.5,
        window=None,
        filters=[],
        metrics={},
        training_config={"note": "two members trained on one train split", "members": 2},
        data_fingerprint=None,
    )
    assert main(["models", "ood", "ens:1", "--data", str(demo_data), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added an OOD detector to ens:1: ensemble, threshold")
    assert "2 member detectors; nominally flags" in out
    ood = registry.verify("ens", 1).ood
    assert ood is not None and ood["members"] == 2
    n = ood["fitted_on"]["val_images"]  # every member calibrated on the same val split
    assert ood["calibration_images"] == [n, n] and 0 <= ood["val_flagged_fraction"] <= 1
    detector = load_detector(registry.ood_detector_file(registry.verify("ens", 1)))  # type: ignore[arg-type]
    assert isinstance(detector, EnsembleOodDetector) and detector.dimension == 128

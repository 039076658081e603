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

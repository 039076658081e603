"""QA round 29: what `radlens serve` checks of the model before it serves it.

The OOD detector file the lifespan loads is checked by the preflight too (one line, before
Keras loads), and a manifest resealed over classes its model does not output stops start-up
with a ModelCorruptError naming both, not a ValueError from the warm-up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ModelCorruptError
from tests.app.conftest import TestClient, make_settings


@pytest.fixture()
def store(model_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(model_store, copy)
    return copy


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'radlens.db'}"


def attach_detector(store: Path) -> Path:
    from radlens.models.registry import ModelRegistry

    registry = ModelRegistry(store)
    staged = registry.staging_dir("tiny") / "detector.npz"
    np.savez(staged, mean=np.zeros(3))
    manifest = registry.add_ood_detector("tiny:1", staged, {"method": "test"})
    assert manifest.ood is not None
    return store / "tiny" / "1" / next(iter(manifest.ood["files"]))


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_preflight_checks_the_ood_detector_file(store: Path, sqlite_url: str, damage: str) -> None:
    from radlens.app.startup import check_model

    detector = attach_detector(store)
    check_model(make_settings(sqlite_url, store))
    if damage == "altered":
        detector.write_bytes(detector.read_bytes() + b"x")
    else:
        detector.unlink()
    with pytest.raises(ModelCorruptError, match=r"ood-[0-9a-f]{12}\.npz"):
        check_model(make_settings(sqlite_url, store))
    check_model(make_settings(sqlite_url, store, ood="off"))  # not loaded: not needed


def test_a_manifest_resealed_over_other_classes_stops_start_up(
    store: Path, sqlite_url: str
) -> None:
    from radlens.app.main import create_app
    from radlens.models.registry import ModelRegistry

    path = store / "tiny" / "1" / "manifest.json"
    data = json.loads(path.read_text())
    data["class_names"] = ["normal", "abnormal", "other"]
    path.write_text(json.dumps(data))
    ModelRegistry(store).seal("tiny:1")  # the deliberate step, taken over a wrong edit
    with (
        pytest.raises(ModelCorruptError, match=r"outputs 2 scores.*3 classes"),
        TestClient(create_app(make_settings(sqlite_url, store))),
    ):
        pass


def test_a_model_with_broken_weights_is_refused_as_corrupt(tmp_path: Path, sqlite_url: str) -> None:
    """An ensemble one of whose members diverged to NaN: the warm-up's non-finite scores stop
    start-up as a corrupt model, not as a request to retry."""
    from radlens.app.main import create_app
    from radlens.models.ensemble import build_ensemble
    from radlens.models.registry import ModelRegistry
    from tests.app.conftest import build_tiny_model, save_tiny_model

    good, broken = build_tiny_model(), build_tiny_model()
    kernel, bias = broken.layers[-1].get_weights()
    broken.layers[-1].set_weights([np.full_like(kernel, np.nan), bias])
    store = tmp_path / "store"
    save_tiny_model(store, name="ens")  # a good version 1: version 2, named, is refused
    ModelRegistry(store).save(
        build_ensemble([good, broken]),
        name="ens",
        architecture="simple_cnn",
        class_names=["normal", "abnormal"],
        threshold=0.5,
        window=None,
        filters=[],
        metrics={"val": {"auc": 0.5}},
        training_config={},
        data_fingerprint=None,
    )
    with (
        pytest.raises(ModelCorruptError, match=r"ens:2 returned non-finite scores"),
        TestClient(create_app(make_settings(sqlite_url, store, model="ens:2"))),
    ):
        pass


def test_an_ood_detector_of_other_features_stops_start_up(store: Path, sqlite_url: str) -> None:
    """A detector fitted on another model's features (copied in, then sealed): one
    ModelCorruptError naming both widths, not a matmul error while the scorer is built."""
    from radlens.app.main import create_app
    from radlens.models.ood import fit_detector
    from radlens.models.registry import ModelRegistry

    rng = np.random.default_rng(0)
    detector = fit_detector(
        rng.normal(size=(40, 5)), np.repeat([0, 1], 20), rng.normal(size=(20, 5))
    )
    registry = ModelRegistry(store)
    staged = registry.staging_dir("tiny") / "detector.npz"
    detector.save(staged)
    registry.add_ood_detector("tiny:1", staged, detector.entry())
    with (
        pytest.raises(ModelCorruptError, match=r"fitted on 5-d features; the model's are \d+-d"),
        TestClient(create_app(make_settings(sqlite_url, store))),
    ):
        pass

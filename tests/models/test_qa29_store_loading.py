"""QA round 29: the model store under the conditions a deployment meets.

A manifest with NaN in it, version folders of non-ASCII digits, a manifest that is a folder
or a named pipe, a resealed manifest that does not describe its model.keras, an unreadable
newest version, a full disk while saving or sealing, and what a killed conversion leaves in a
version folder: each is refused with a RadlensError naming it (never a traceback, never a
silently different model), and nothing half-written stays behind.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

from radlens.models import registry as registry_module
from radlens.models.errors import ConfigurationError, ModelCorruptError, ModelStoreError
from radlens.models.manifest import INTEGRITY_FIELD, seal
from radlens.models.registry import ModelRegistry

PP_VERSION = "test-pp-1"


@pytest.fixture(autouse=True)
def fixed_preprocessing_version(monkeypatch):
    monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: PP_VERSION)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def save(reg: ModelRegistry, model: keras.Model, name: str = "chest"):
    return reg.save(
        model,
        name=name,
        architecture="simple_cnn",
        class_names=["normal", "abnormal"],
        threshold=0.5,
        window=None,
        filters=[],
        metrics={"val": {"auc": 0.9}},
        training_config={},
        data_fingerprint=None,
    )


def manifest_path(root: Path, version: int, name: str = "chest") -> Path:
    return root / name / str(version) / "manifest.json"


def reseal(path: Path, **changes) -> None:
    """Edit manifest fields and seal them again, as `radlens models seal` would."""
    data = json.loads(path.read_text())
    data.update(changes)
    data.pop(INTEGRITY_FIELD)
    data[INTEGRITY_FIELD] = seal(data)
    path.write_text(json.dumps(data))


def test_nan_in_a_manifest_is_corrupt_not_a_crash(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    save(reg, model)
    path = manifest_path(tmp_path, 2)
    path.write_text(path.read_text().replace('"auc": 0.9', '"auc": NaN'))
    with pytest.raises(ModelCorruptError, match=r"not valid JSON \(NaN is not a JSON number\)"):
        reg.load("chest:2")
    assert [m.ref for m in reg.list()] == ["chest:1"]


@pytest.mark.parametrize("folder", ["²", "¹²"])
def test_version_folders_of_non_ascii_digits_are_not_versions(tmp_path, model, folder):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    (tmp_path / "chest" / folder).mkdir()
    assert [m.ref for m in reg.list()] == ["chest:1"]
    assert reg.resolve("chest") == ("chest", 1)
    with pytest.raises(ConfigurationError, match=r"a model version is an integer"):
        reg.resolve(f"chest:{folder}")


def test_a_manifest_that_is_a_folder_is_corrupt(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    save(reg, model)
    path = manifest_path(tmp_path, 2)
    path.unlink()
    path.mkdir()
    with pytest.raises(ModelCorruptError, match=r"manifest.json is not a file"):
        reg.load("chest:2")
    assert [m.ref for m in reg.list()] == ["chest:1"]


@pytest.mark.timeout(60)
def test_a_manifest_that_is_a_named_pipe_does_not_block(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    path = manifest_path(tmp_path, 1)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ModelCorruptError, match=r"manifest.json is not a file"):
        reg.read_manifest("chest", 1)


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"class_names": ["a", "b", "c"]}, r"outputs 2 scores.*3 classes \['a', 'b', 'c'\]"),
        ({"input_shape": [16, 16, 1]}, r"takes \[8, 8, 1\].*input_shape \[16, 16, 1\]"),
    ],
)
def test_a_resealed_manifest_that_does_not_describe_its_model_is_refused(
    tmp_path, model, changes, said
):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    reseal(manifest_path(tmp_path, 1), **changes)
    reg.verify("chest", 1)  # the seal and the hash hold: only the model itself disagrees
    with pytest.raises(ModelCorruptError, match=said + r".*does not describe this model"):
        reg.load("chest:1")


def test_an_unreadable_version_is_not_passed_over_for_the_newest(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    save(reg, model)
    manifest_path(tmp_path, 2).write_text("{")  # e.g. a copy into the store in progress
    with pytest.raises(ModelCorruptError, match=r"cannot tell which model .* chest:2 cannot be"):
        reg.resolve(None)
    assert reg.resolve("chest:1") == ("chest", 1)  # named, the others still load
    assert [m.ref for m in reg.list()] == ["chest:1"]


def test_an_empty_version_folder_is_not_passed_over_for_the_newest(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    (tmp_path / "chest" / "2").mkdir()
    with pytest.raises(ModelCorruptError, match=r"chest:2 cannot be read .*manifest.json is miss"):
        reg.load(None)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk: no file name


def test_a_full_disk_while_saving_is_a_store_error_and_leaves_nothing(tmp_path, model, monkeypatch):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    monkeypatch.setattr(type(model), "save", no_space)
    with pytest.raises(ModelStoreError, match=r"could not be written.*No space left on device"):
        save(reg, model)
    assert sorted(p.name for p in (tmp_path / "chest").iterdir()) == ["1"]
    assert list((tmp_path / ".staging").iterdir()) == []


def test_a_full_disk_while_sealing_is_a_store_error_and_keeps_the_manifest(
    tmp_path, model, monkeypatch
):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    before = manifest_path(tmp_path, 1).read_bytes()
    monkeypatch.setattr(registry_module, "_write_text_synced", no_space)
    with pytest.raises(ModelStoreError, match=r"could not be written.*No space left on device"):
        reg.seal("chest:1")
    assert manifest_path(tmp_path, 1).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "chest" / "1").iterdir()) == [
        "manifest.json",
        "model.keras",
    ]


def test_a_conversion_killed_before_its_manifest_leaves_nothing_after_the_next(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    version_dir = tmp_path / "chest" / "1"
    orphan = version_dir / "openvino-0123456789ab"  # renamed in, then the process was killed
    orphan.mkdir()
    (orphan / "model.xml").write_text("<net/>")
    staged = reg.staging_dir("chest")
    (staged / "model.xml").write_text("<net/>")
    updated = reg.add_runtime("chest:1", "openvino", staged, {"format": "test"})
    (listed,) = {Path(p).parts[0] for p in updated.runtimes["openvino"]["files"]}
    assert sorted(p.name for p in version_dir.iterdir() if p.is_dir()) == [listed]
    reg.runtime_files(reg.verify("chest", 1), "openvino")


def test_a_detector_attach_killed_before_its_manifest_leaves_nothing_after_the_next(
    tmp_path, model
):
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    version_dir = tmp_path / "chest" / "1"
    (version_dir / "ood-0123456789ab.npz").write_bytes(b"left by a killed run")
    detector = reg.staging_dir("chest") / "detector.npz"
    np.savez(detector, mean=np.zeros(3))
    updated = reg.add_ood_detector("chest:1", detector, {"method": "test"})
    assert sorted(p.name for p in version_dir.glob("ood-*")) == list(updated.ood["files"])
    assert reg.ood_detector_file(updated) is not None


@pytest.mark.parametrize(
    ("arrays", "said"),
    [
        ({"means": np.zeros((2, 3)), "precision": np.eye(4)}, r"means of shape \(2, 3\)"),
        (
            {"means": np.zeros((2, 4)), "precision": np.full((4, 4), np.nan)},
            r"its arrays must hold finite",
        ),
    ],
)
def test_an_ood_detector_whose_numbers_do_not_fit_is_corrupt(tmp_path, arrays, said):
    from radlens.models.ood import load_detector

    path = tmp_path / "ood-0123456789ab.npz"
    meta = np.array([1.0, 0.99, 5.0])
    np.savez(path, method=np.array("mahalanobis"), meta=meta, **arrays)
    with pytest.raises(ModelCorruptError, match=r"is not an OOD detector file: " + said):
        load_detector(path)

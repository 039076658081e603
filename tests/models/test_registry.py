"""The model store: manifest validation, atomic versioned saves, resolve rules, verified loads."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from radlens.models import registry as registry_module
from radlens.models.errors import (
    ConfigurationError,
    InvalidImageError,
    ModelCorruptError,
    ModelIncompatibleError,
    ModelNotFoundError,
    ModelStoreError,
)
from radlens.models.manifest import ModelManifest, jsonable
from radlens.models.registry import ModelRegistry, decide, default_store_path, predict_scores

PP_VERSION = "test-pp-1"


@pytest.fixture(autouse=True)
def fixed_preprocessing_version(monkeypatch):
    """radlens.models.preprocessing is another engineer's module: pin the version the store sees."""
    monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: PP_VERSION)


def tiny_model(classes: int = 2, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_model()


def save(reg: ModelRegistry, model: keras.Model, name: str = "pneumonia", **overrides):
    kwargs = {
        "name": name,
        "architecture": "simple_cnn",
        "class_names": ["normal", "pneumonia"],
        "threshold": 0.4,
        "window": None,
        "filters": [],
        "metrics": {"val": {"auc": np.float32(0.93), "accuracy": 0.9, "n": np.int64(524)}},
        "training_config": {"epochs": 1, "sizes": (8, 8)},
        "data_fingerprint": "abc123",
    }
    kwargs.update(overrides)
    return reg.save(model, **kwargs)


def valid_manifest_dict() -> dict:
    return {
        "name": "m",
        "version": 1,
        "created_at": "2026-01-02T03:04:05+00:00",
        "architecture": "resnet50",
        "input_shape": [64, 64, 1],
        "class_names": ["normal", "abnormal"],
        "threshold": 0.5,
        "preprocessing_version": "1",
        "window": "lung",
        "filters": ["sobel_h"],
        "metrics": {"val": {"auc": 0.9}},
        "training_config": {},
        "data_fingerprint": None,
        "framework_versions": {"keras": "3"},
        "model_sha256": "a" * 64,
    }


class TestManifest:
    def test_round_trip(self):
        manifest = ModelManifest.from_dict(valid_manifest_dict())
        assert manifest.validated_for_clinical_use is False
        assert manifest.input_size == (64, 64)
        assert manifest.ref == "m:1"
        again = ModelManifest.from_dict(json.loads(manifest.to_json()))
        assert again == manifest

    def test_unknown_keys_are_kept(self):
        data = valid_manifest_dict() | {"future_field": [1, 2]}
        manifest = ModelManifest.from_dict(data)
        assert manifest.to_dict()["future_field"] == [1, 2]

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("name", "../etc", r"name='\.\./etc'"),
            ("version", 0, "'version' must be an integer >= 1. Received: 0"),
            ("version", True, "'version'"),
            ("created_at", "yesterday", "'yesterday'"),
            ("created_at", "2026-01-02T03:04:05", "time zone"),
            ("input_shape", [64, 64], r"\[64, 64\]"),
            ("class_names", ["only"], r"\['only'\]"),
            ("class_names", ["a", "a"], "distinct"),
            ("threshold", 1.5, "1.5"),
            ("threshold", "0.5", "'0.5'"),
            ("model_sha256", "xyz", "'xyz'"),
            ("metrics", {"val": 0.9}, "metrics\\['val'\\]=0.9"),
            ("validated_for_clinical_use", "yes", "'yes'"),
            ("filters", "sobel_h", "'sobel_h'"),
        ],
    )
    def test_bad_values_raise_model_corrupt(self, key, value, message):
        data = valid_manifest_dict() | {key: value}
        with pytest.raises(ModelCorruptError, match=message):
            ModelManifest.from_dict(data)

    def test_missing_field(self):
        data = valid_manifest_dict()
        del data["class_names"]
        with pytest.raises(ModelCorruptError, match=r"no 'class_names' field"):
            ModelManifest.from_dict(data)

    def test_not_an_object_or_not_json(self):
        with pytest.raises(ModelCorruptError, match=r"Received: list"):
            ModelManifest.from_dict([1])
        with pytest.raises(ModelCorruptError, match=r"not valid JSON"):
            ModelManifest.from_json("{not json")

    def test_jsonable_converts_numpy_and_nan(self):
        out = jsonable({"a": np.float32(0.5), "b": np.arange(3), "c": float("nan"), "d": (1,)})
        assert out == {"a": 0.5, "b": [0, 1, 2], "c": None, "d": [1]}
        with pytest.raises(TypeError, match=r"object"):
            jsonable({"x": object()})


class TestDefaultStorePath:
    def test_env_variable_wins(self, monkeypatch, tmp_path):
        monkeypatch.setenv("RADLENS_MODEL_STORE", str(tmp_path / "store"))
        assert default_store_path() == tmp_path / "store"

    def test_repo_default(self, monkeypatch):
        monkeypatch.delenv("RADLENS_MODEL_STORE", raising=False)
        from radlens import models

        assert default_store_path() == Path(models.__file__).resolve().parents[1] / "models/store"


class TestSaveAndLoad:
    def test_round_trip(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        manifest = save(reg, model)
        assert (manifest.name, manifest.version) == ("pneumonia", 1)
        version_dir = tmp_path / "pneumonia" / "1"
        assert sorted(p.name for p in version_dir.iterdir()) == ["manifest.json", "model.keras"]
        on_disk = json.loads((version_dir / "manifest.json").read_text())
        assert on_disk["model_sha256"] == registry_module.file_sha256(version_dir / "model.keras")
        assert on_disk["input_shape"] == [8, 8, 1]
        assert on_disk["preprocessing_version"] == PP_VERSION
        assert on_disk["metrics"]["val"] == {"auc": pytest.approx(0.93), "accuracy": 0.9, "n": 524}
        assert on_disk["training_config"]["sizes"] == [8, 8]
        assert on_disk["validated_for_clinical_use"] is False
        assert set(on_disk["framework_versions"]) == {
            "tensorflow",
            "keras",
            "numpy",
            "python",
            "radlens",
        }
        assert on_disk["framework_versions"]["keras"] == keras.__version__

        loaded = reg.load("pneumonia")
        assert loaded.manifest == manifest
        assert loaded.path == version_dir
        batch = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
        np.testing.assert_allclose(
            predict_scores(loaded.model, batch), predict_scores(model, batch), rtol=1e-6
        )
        assert not (tmp_path / ".staging").exists() or not any((tmp_path / ".staging").iterdir())

    def test_versions_increase(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        assert [save(reg, model).version for _ in range(3)] == [1, 2, 3]
        assert save(reg, model, name="other").version == 1
        assert save(reg, model, version=7).version == 7
        assert save(reg, model).version == 8
        assert [m.ref for m in reg.list()] == [
            "other:1",
            "pneumonia:1",
            "pneumonia:2",
            "pneumonia:3",
            "pneumonia:7",
            "pneumonia:8",
        ]

    def test_explicit_existing_version_refused(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model, version=2)
        with pytest.raises(ModelStoreError, match=r"pneumonia:2 exists already"):
            save(reg, model, version=2)

    @pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "a:1", "x" * 65, 3])
    def test_unsafe_names_refused(self, tmp_path, model, name):
        with pytest.raises(ConfigurationError, match=r"Received: name="):
            save(ModelRegistry(tmp_path), model, name=name)
        assert not any(tmp_path.iterdir())

    def test_bad_save_arguments(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        with pytest.raises(ConfigurationError, match=r"2 output units but 3 class names"):
            save(reg, model, class_names=["a", "b", "c"])
        with pytest.raises(ConfigurationError, match=r"'threshold'.*Received: 2"):
            save(reg, model, threshold=2)
        with pytest.raises(ConfigurationError, match=r"has no JSON form"):
            save(reg, model, training_config={"callback": object()})
        with pytest.raises(ConfigurationError, match=r"Received: 0"):
            save(reg, model, version=0)
        assert reg.list() == []

    def test_failed_save_leaves_no_partial_version(self, tmp_path, model, monkeypatch):
        reg = ModelRegistry(tmp_path)
        save(reg, model)

        def explode(*args, **kwargs):
            # model.keras is written by now: fail between it and the manifest/rename
            raise OSError("disk full (simulated)")

        original = registry_module._write_text_synced
        monkeypatch.setattr(registry_module, "_write_text_synced", explode)
        with pytest.raises(OSError, match=r"simulated"):
            save(reg, model)
        assert [p.name for p in (tmp_path / "pneumonia").iterdir()] == ["1"]
        assert list((tmp_path / ".staging").iterdir()) == []
        assert [m.ref for m in reg.list()] == ["pneumonia:1"]
        monkeypatch.setattr(registry_module, "_write_text_synced", original)
        assert save(reg, model).version == 2

    def test_failed_model_write_leaves_nothing(self, tmp_path):
        model = tiny_model()

        def broken_save(*args, **kwargs):
            raise RuntimeError("serialisation failed (simulated)")

        model.save = broken_save  # type: ignore[method-assign]
        reg = ModelRegistry(tmp_path)
        with pytest.raises(RuntimeError, match=r"simulated"):
            save(reg, model)
        assert reg.list() == []
        assert not (tmp_path / "pneumonia").exists()
        assert list((tmp_path / ".staging").iterdir()) == []

    def test_concurrent_saves_get_distinct_versions(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        results: list[int] = []
        errors: list[BaseException] = []

        def worker():
            try:
                results.append(save(ModelRegistry(tmp_path), model).version)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(results) == [1, 2, 3, 4]
        assert [m.version for m in reg.list()] == [1, 2, 3, 4]

    def test_sha_mismatch_after_flipping_a_byte(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        path = tmp_path / "pneumonia" / "1" / "model.keras"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(ModelCorruptError, match=r"sha256 of .*model.keras is [0-9a-f]{64}"):
            reg.load("pneumonia:1")

    def test_missing_model_file(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        (tmp_path / "pneumonia" / "1" / "model.keras").unlink()
        with pytest.raises(ModelCorruptError, match=r"model.keras is missing"):
            reg.load(None)

    def test_bad_manifest_json(self, tmp_path, model, caplog):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        save(reg, model)
        (tmp_path / "pneumonia" / "2" / "manifest.json").write_text("{truncated")
        with pytest.raises(ModelCorruptError, match=r"manifest.json: manifest is not valid JSON"):
            reg.load("pneumonia:2")
        # listing skips it (with a warning) instead of hiding the good versions
        assert [m.ref for m in reg.list()] == ["pneumonia:1"]
        assert "skipping pneumonia:2" in caplog.text

    def test_manifest_moved_to_another_version(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        os.rename(tmp_path / "pneumonia" / "1", tmp_path / "pneumonia" / "5")
        with pytest.raises(ModelCorruptError, match=r"describes pneumonia:1, not pneumonia:5"):
            reg.load("pneumonia:5")

    def test_incompatible_preprocessing_version(self, tmp_path, model, monkeypatch):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: "test-pp-2")
        with pytest.raises(
            ModelIncompatibleError, match=r"'test-pp-1'; this radlens uses 'test-pp-2'"
        ):
            reg.load("pneumonia")

    def test_an_older_version_preprocessing_still_reproduces_loads(
        self, tmp_path, model, monkeypatch
    ):
        reg = ModelRegistry(tmp_path)
        monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: "1")
        save(reg, model)
        monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: "2")
        assert reg.load("pneumonia").manifest.preprocessing_version == "1"
        monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: "3")
        monkeypatch.setattr(registry_module, "_readable_preprocessing_versions", lambda: ("3",))
        with pytest.raises(ModelIncompatibleError, match=r"'1'; this radlens uses '3'"):
            reg.load("pneumonia")

    def test_real_preprocessing_version_is_recorded(self, tmp_path, model, monkeypatch):
        preprocessing = pytest.importorskip("radlens.models.preprocessing")
        monkeypatch.undo()  # the real models.preprocessing.PREPROCESSING_VERSION
        reg = ModelRegistry(tmp_path)
        manifest = save(reg, model)
        assert manifest.preprocessing_version == preprocessing.PREPROCESSING_VERSION
        assert reg.load(None).manifest == manifest


class TestResolve:
    @pytest.fixture
    def reg(self, tmp_path, model, monkeypatch) -> ModelRegistry:
        reg = ModelRegistry(tmp_path)
        stamps = iter(
            [
                "2026-01-01T00:00:00.000000+00:00",  # a:1
                "2026-01-03T00:00:00.000000+00:00",  # a:2
                "2026-01-02T00:00:00.000000+00:00",  # b:1
                "2026-01-04T00:00:00.000000+00:00",  # b:2 (newest overall)
            ]
        )
        monkeypatch.setattr(registry_module, "utc_now_iso", lambda: next(stamps))
        for name in ("a", "a", "b", "b"):
            save(reg, model, name=name)
        return reg

    def test_rules(self, reg):
        assert reg.resolve("a") == ("a", 2)
        assert reg.resolve("a:1") == ("a", 1)
        assert reg.resolve(" b:1 ") == ("b", 1)
        assert reg.resolve(None) == ("b", 2)
        assert reg.resolve("") == ("b", 2)

    def test_newest_is_by_creation_time_not_name(self, reg, tmp_path):
        import shutil

        shutil.rmtree(tmp_path / "b" / "2")
        assert reg.resolve(None) == ("a", 2)

    def test_missing_model_and_version(self, reg):
        with pytest.raises(ModelNotFoundError, match=r"no model named 'c'.*models there: a, b"):
            reg.resolve("c")
        with pytest.raises(ModelNotFoundError, match=r"no version 9.*versions: 1, 2"):
            reg.load("a:9")

    @pytest.mark.parametrize("ref", ["a:x", "a:0", "a:", "a:1:2", "../a", ":3"])
    def test_malformed_refs_quote_them(self, reg, ref):
        with pytest.raises(ConfigurationError, match=r"Received: " + repr(ref).replace(".", r"\.")):
            reg.resolve(ref)

    def test_empty_or_absent_store(self, tmp_path):
        with pytest.raises(ModelNotFoundError, match=r"holds no models"):
            ModelRegistry(tmp_path / "nowhere").resolve(None)
        assert ModelRegistry(tmp_path / "nowhere").list() == []
        assert not (tmp_path / "nowhere").exists()

    def test_staging_and_junk_are_ignored(self, reg, tmp_path):
        (tmp_path / ".staging" / "a-123").mkdir(parents=True)
        (tmp_path / "a" / "notaversion").mkdir()
        (tmp_path / "a" / "007").mkdir()
        assert [m.ref for m in reg.list()] == ["a:1", "a:2", "b:1", "b:2"]


class TestDecideAndPredict:
    def manifest(self, classes, threshold):
        return ModelManifest.from_dict(
            valid_manifest_dict() | {"class_names": classes, "threshold": threshold}
        )

    def test_binary_threshold(self):
        m = self.manifest(["normal", "pneumonia"], 0.3)
        assert decide(np.array([0.7, 0.3]), m) == "pneumonia"  # >= threshold
        assert decide(np.array([0.71, 0.29]), m) == "normal"

    def test_binary_default_threshold_is_half(self):
        m = self.manifest(["normal", "pneumonia"], None)
        assert decide(np.array([0.5, 0.5]), m) == "pneumonia"
        assert decide(np.array([0.6, 0.4]), m) == "normal"

    def test_multiclass_argmax(self):
        m = self.manifest(["a", "b", "c"], None)
        assert decide(np.array([0.2, 0.3, 0.5]), m) == "c"
        assert decide(np.array([0.6, 0.3, 0.1]), m) == "a"

    def test_wrong_score_count(self):
        with pytest.raises(ValueError, match=r"expected 2 scores.*Received shape \(3,\)"):
            decide(np.array([0.2, 0.3, 0.5]), self.manifest(["a", "b"], None))

    def test_predict_scores_shapes(self, model):
        scores = predict_scores(model, np.zeros((5, 8, 8, 1), dtype=np.float32))
        assert scores.shape == (5, 2)
        assert scores.dtype == np.float32
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)

    def test_predict_scores_bad_batch(self, model):
        with pytest.raises(InvalidImageError, match=r"\(N, 8, 8, 1\).*Received shape \(8, 8, 1\)"):
            predict_scores(model, np.zeros((8, 8, 1), dtype=np.float32))
        with pytest.raises(InvalidImageError, match=r"Received shape \(1, 9, 8, 1\)"):
            predict_scores(model, np.zeros((1, 9, 8, 1), dtype=np.float32))
        with pytest.raises(TypeError, match=r"list"):
            predict_scores(model, [[0.0]])

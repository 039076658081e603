"""The manifest's own records of how the data was split, the leakage check's result and the
calibration (they were under ``metrics`` before): sealed like every field, written only when
set, so a manifest saved by an older radlens keeps loading and keeps its seal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import pytest

from radlens.models import registry as registry_module
from radlens.models.errors import ModelCorruptError, ModelTamperedError
from radlens.models.manifest import ModelManifest
from radlens.models.registry import ModelRegistry

SPLIT = {
    "method": "by patient",
    "patient_source": "PatientID/StudyInstanceUID",
    "patient_ids": "keyed hash (HMAC-SHA256)",
    "sizes": {"train": 8, "val": 4, "test": 4},
    "test_split": True,
}
LEAKAGE = {"passed": True, "patients_in_two_splits": 0}
CALIBRATION = {
    "method": "temperature scaling",
    "temperature": 1.7,
    "fitted_on": "val",
    "evaluated_on": "test",
    "ece_before": 0.12,
    "ece_after": 0.03,
}


@pytest.fixture(autouse=True)
def no_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: "3")
    monkeypatch.delenv("RADLENS_MODEL_SIGNING_KEY", raising=False)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def save(root: Path, model: keras.Model, **records: Any) -> ModelManifest:
    return ModelRegistry(root).save(
        model,
        name="chest",
        architecture="simple_cnn",
        class_names=["normal", "pneumonia"],
        threshold=0.4,
        window=None,
        filters=[],
        metrics={"val": {"auc": 0.9}},
        training_config={"epochs": 1},
        data_fingerprint=None,
        **records,
    )


def manifest_file(root: Path) -> Path:
    return root / "chest" / "1" / "manifest.json"


class TestRecords:
    def test_saved_as_top_level_fields_and_read_back(self, tmp_path: Path, model: Any) -> None:
        save(tmp_path, model, data_split=SPLIT, leakage_check=LEAKAGE, calibration=CALIBRATION)
        data = json.loads(manifest_file(tmp_path).read_text())
        assert (data["data_split"], data["leakage_check"], data["calibration"]) == (
            SPLIT,
            LEAKAGE,
            CALIBRATION,
        )
        assert {"data_split", "leakage_check", "calibration"} <= set(data["integrity"]["fields"])
        manifest = ModelRegistry(tmp_path).load("chest").manifest
        assert manifest.data_split == SPLIT
        assert manifest.leakage_check == LEAKAGE
        assert manifest.calibration == CALIBRATION

    def test_an_edited_calibration_is_refused_by_the_seal(self, tmp_path: Path, model: Any) -> None:
        save(tmp_path, model, calibration=CALIBRATION)
        data = json.loads(manifest_file(tmp_path).read_text())
        data["calibration"]["ece_after"] = 0.0
        manifest_file(tmp_path).write_text(json.dumps(data))
        with pytest.raises(ModelTamperedError, match=r"field 'calibration' changed"):
            ModelRegistry(tmp_path).verify("chest", 1)

    def test_unset_records_are_not_written(self, tmp_path: Path, model: Any) -> None:
        manifest = save(tmp_path, model)
        data = json.loads(manifest_file(tmp_path).read_text())
        assert not {"data_split", "leakage_check", "calibration"} & set(data)
        assert manifest.calibration is None and manifest.data_split is None
        assert "calibration" not in manifest.to_dict()

    @pytest.mark.parametrize("field", ["data_split", "leakage_check", "calibration"])
    def test_a_record_that_is_not_an_object_is_corrupt(self, field: str, tmp_path: Path) -> None:
        from tests.models.test_registry import valid_manifest_dict

        with pytest.raises(ModelCorruptError, match=rf"field '{field}' must be an object"):
            ModelManifest.from_dict(valid_manifest_dict() | {field: ["by patient"]})


class TestOlderManifests:
    def test_a_manifest_with_the_records_under_metrics_still_loads(
        self, tmp_path: Path, model: Any
    ) -> None:
        """What the previous radlens wrote: calibration and split under metrics, sealed."""
        reg = ModelRegistry(tmp_path)
        reg.save(
            model,
            name="chest",
            architecture="simple_cnn",
            class_names=["normal", "pneumonia"],
            threshold=0.4,
            window=None,
            filters=[],
            metrics={"val": {"auc": 0.9}, "calibration": CALIBRATION, "split": SPLIT},
            training_config={"epochs": 1},
            data_fingerprint=None,
        )
        before = manifest_file(tmp_path).read_text()
        manifest = reg.load("chest").manifest
        assert manifest.calibration is None and manifest.metrics["calibration"] == CALIBRATION
        # re-sealing (radlens models seal) writes the same fields: nothing appears or moves
        reg.seal("chest:1")
        after = json.loads(manifest_file(tmp_path).read_text())
        assert set(after) == set(json.loads(before))
        assert after["integrity"]["digest"] == json.loads(before)["integrity"]["digest"]

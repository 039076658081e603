"""Tamper-evident manifests: every field sealed, an edit refused with the field named, legacy
manifests refused until deliberately sealed, an optional HMAC signature."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from radlens.models import registry as registry_module
from radlens.models.errors import ModelCorruptError, ModelTamperedError, ModelUnsealedError
from radlens.models.manifest import check_seal, seal
from radlens.models.registry import ModelRegistry

PP_VERSION = "test-pp-1"
KEY = b"a-signing-key-of-32-characters!!"


@pytest.fixture(autouse=True)
def fixed_preprocessing_version(monkeypatch):
    monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: PP_VERSION)
    monkeypatch.delenv("RADLENS_MODEL_SIGNING_KEY", raising=False)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def save(reg: ModelRegistry, model: keras.Model) -> None:
    reg.save(
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
    )


def manifest_path(root: Path) -> Path:
    return root / "chest" / "1" / "manifest.json"


def edit(root: Path, change) -> None:
    path = manifest_path(root)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


class TestSealOnSave:
    def test_saved_manifest_is_sealed_and_verifies(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        data = json.loads(manifest_path(tmp_path).read_text())
        integrity = data["integrity"]
        assert integrity["scheme"] == "radlens-manifest-seal-v1"
        # every other top-level field has a digest, the model hash included
        assert set(integrity["fields"]) == set(data) - {"integrity"}
        assert "model_sha256" in integrity["fields"] and "hmac" not in integrity
        assert reg.verify("chest", 1).ref == "chest:1"
        assert reg.load("chest").manifest.validated_for_clinical_use is False

    @pytest.mark.parametrize(
        ("field", "change"),
        [
            ("validated_for_clinical_use", lambda d: d.update(validated_for_clinical_use=True)),
            ("threshold", lambda d: d.update(threshold=0.1)),
            ("class_names", lambda d: d["class_names"].__setitem__(1, "normal2")),
            ("window", lambda d: d.update(window="lung")),
            ("model_sha256", lambda d: d.update(model_sha256="0" * 64)),
        ],
    )
    def test_an_edited_field_is_refused_and_named(self, tmp_path, model, field, change):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        edit(tmp_path, change)
        with pytest.raises(ModelTamperedError, match=rf"field '{field}' changed") as info:
            reg.load("chest")
        assert isinstance(info.value, ModelCorruptError)  # existing handlers still catch it
        assert "radlens models seal" in str(info.value)
        # nothing else is blamed
        assert str(info.value).count("field '") == 1

    def test_added_and_removed_fields_are_named(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)

        def change(d):
            d["approved_by"] = "someone"
            del d["description"]

        edit(tmp_path, change)
        with pytest.raises(
            ModelTamperedError, match=r"field 'approved_by' added; field 'description' removed"
        ):
            reg.verify("chest", 1)

    def test_edited_digest_table_is_refused(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)

        def change(d):  # a field and its digest both edited, the overall digest not
            d["threshold"] = 0.1
            fresh = seal(d)
            d["integrity"]["fields"]["threshold"] = fresh["fields"]["threshold"]

        edit(tmp_path, change)
        with pytest.raises(ModelTamperedError, match="digest does not match its field table"):
            reg.verify("chest", 1)

    def test_whitespace_and_key_order_do_not_matter(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        path = manifest_path(tmp_path)
        data = json.loads(path.read_text())
        path.write_text(json.dumps(dict(reversed(list(data.items())))))
        assert reg.verify("chest", 1).ref == "chest:1"


class TestLegacyAndReseal:
    def test_legacy_manifest_is_refused_with_the_command_to_run(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        edit(tmp_path, lambda d: d.pop("integrity"))  # what an older radlens wrote
        with pytest.raises(ModelUnsealedError, match="no 'integrity' field") as info:
            reg.load("chest")
        assert "radlens models seal NAME:VERSION" in str(info.value)
        # still listed (reading is not verifying)
        assert [m.ref for m in reg.list()] == ["chest:1"]

    def test_seal_adopts_a_deliberate_edit(self, tmp_path, model, caplog):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        before = reg.read_manifest("chest", 1)
        edit(tmp_path, lambda d: d.update(validated_for_clinical_use=True))
        with caplog.at_level("WARNING", logger="radlens.models.registry"):
            sealed = reg.seal("chest:1")
        assert "sealed the manifest of chest:1" in caplog.text
        assert sealed.validated_for_clinical_use is True
        assert (sealed.model_sha256, sealed.created_at) == (before.model_sha256, before.created_at)
        assert reg.verify("chest", 1).validated_for_clinical_use is True
        assert not list((tmp_path / "chest" / "1").glob(".*.tmp"))

    def test_seal_refuses_a_model_file_that_does_not_match(self, tmp_path, model):
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        with open(tmp_path / "chest" / "1" / "model.keras", "ab") as fh:
            fh.write(b"x")
        with pytest.raises(ModelCorruptError, match="refusing to seal"):
            reg.seal("chest:1")


class TestSignature:
    def test_signed_manifest_verifies_only_with_the_key(self, tmp_path, model):
        signer = ModelRegistry(tmp_path, signing_key=KEY)
        save(signer, model)
        assert "hmac" in json.loads(manifest_path(tmp_path).read_text())["integrity"]
        assert signer.verify("chest", 1).ref == "chest:1"
        with pytest.raises(ModelTamperedError, match="signature does not verify"):
            ModelRegistry(tmp_path, signing_key=b"another-key-of-enough-length").verify("chest", 1)

    def test_a_resealed_edit_without_the_key_is_refused_with_it(self, tmp_path, model):
        save(ModelRegistry(tmp_path, signing_key=KEY), model)
        edit(tmp_path, lambda d: d.update(validated_for_clinical_use=True))
        ModelRegistry(tmp_path).seal("chest:1")  # someone without the key re-seals
        with pytest.raises(
            ModelTamperedError, match="is not signed, but RADLENS_MODEL_SIGNING_KEY"
        ) as raised:
            ModelRegistry(tmp_path, signing_key=KEY).verify("chest", 1)
        # its title says unsigned, not "changed after it was sealed" (QA round 12)
        assert raised.value.code == "model-unsigned"
        assert str(raised.value).startswith("The stored model's manifest is not signed")

    def test_key_read_from_the_environment(self, tmp_path, model, monkeypatch):
        monkeypatch.setenv("RADLENS_MODEL_SIGNING_KEY", KEY.decode())
        save(ModelRegistry(tmp_path), model)
        data = json.loads(manifest_path(tmp_path).read_text())
        check_seal(data, KEY)
        with pytest.raises(ModelTamperedError, match="signature"):
            check_seal(data, b"wrong-key-wrong-key")

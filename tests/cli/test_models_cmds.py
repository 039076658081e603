"""`radlens models list` and `radlens models show`, through cli.main.main on a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from radlens.cli.main import main
from radlens.models import registry as registry_module
from radlens.models.registry import ModelRegistry
from tests.conftest import REPO_ROOT


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("radlens: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store with pneumonia:1, pneumonia:2 (val AUC .91) and ct:1 (3 classes, no metrics)."""
    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setattr(registry_module, "_current_preprocessing_version", lambda: "pp-test")
    try:
        reg = ModelRegistry(root)
        for name, classes, metrics in [
            ("pneumonia", ["normal", "pneumonia"], {"val": {"auc": 0.8}}),
            ("pneumonia", ["normal", "pneumonia"], {"val": {"auc": 0.9123, "accuracy": 0.85}}),
            ("ct", ["a", "b", "c"], {}),
        ]:
            inputs = keras.Input((8, 8, 1))
            x = keras.layers.Flatten()(inputs)
            model = keras.Model(inputs, keras.layers.Dense(len(classes), "softmax")(x))
            reg.save(
                model,
                name=name,
                architecture="simple_cnn",
                class_names=classes,
                threshold=0.35 if len(classes) == 2 else None,
                window="lung" if name == "ct" else None,
                filters=["sobel_h"] if name == "ct" else [],
                metrics=metrics,
                training_config={"epochs": 2},
                data_fingerprint="fp",
                description="test model",
            )
    finally:
        mp.undo()
    return root


class TestList:
    def test_table(self, store, capsys):
        assert main(["models", "list", "--store", str(store)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == [
            "NAME",
            "VERSION",
            "ARCHITECTURE",
            "CREATED",
            "CLASSES",
            "VAL",
            "AUC",
        ]
        rows = [line.split() for line in lines[1:]]
        assert [(r[0], r[1], r[2]) for r in rows] == [
            ("ct", "1", "simple_cnn"),
            ("pneumonia", "1", "simple_cnn"),
            ("pneumonia", "2", "simple_cnn"),
        ]
        assert rows[0][-2:] == ["a,b,c", "-"]
        assert rows[2][-2:] == ["normal,pneumonia", "0.912"]

    def test_json(self, store, capsys):
        assert main(["models", "list", "--store", str(store), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert [(m["name"], m["version"]) for m in data] == [
            ("ct", 1),
            ("pneumonia", 1),
            ("pneumonia", 2),
        ]
        assert data[2]["metrics"]["val"]["auc"] == 0.9123
        assert data[0]["class_names"] == ["a", "b", "c"]

    def test_store_from_environment(self, store, capsys, monkeypatch):
        monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
        assert main(["models", "list", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 3

    def test_empty_store(self, tmp_path, capsys):
        assert main(["models", "list", "--store", str(tmp_path / "empty")]) == 0
        assert capsys.readouterr().out.strip() == f"no models in {tmp_path / 'empty'}"
        assert main(["models", "list", "--store", str(tmp_path / "empty"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []

    def test_listing_does_not_load_tensorflow(self, store):
        code = (
            "import sys; from cli.main import main; "
            f"rc = main(['models', 'list', '--store', {str(store)!r}]); "
            "print(rc, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout
        assert out.splitlines()[-1] == "0 False False"


class TestShow:
    def test_newest_version_text(self, store, capsys):
        assert main(["models", "show", "pneumonia", "--store", str(store)]) == 0
        out = capsys.readouterr().out
        assert "model: pneumonia:2" in out
        assert f"path: {store / 'pneumonia' / '2'}" in out
        assert "classes: normal, pneumonia" in out
        assert "threshold: 0.35" in out
        assert "input shape: 8x8x1" in out
        assert "preprocessing version: pp-test" in out
        assert "metrics (val): accuracy=0.85, auc=0.9123" in out
        assert "validated for clinical use: no (not for clinical use)" in out
        assert "description: test model" in out

    def test_explicit_version_json(self, store, capsys):
        assert main(["models", "show", "pneumonia:1", "--store", str(store), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert (data["name"], data["version"]) == ("pneumonia", 1)
        assert data["metrics"] == {"val": {"auc": 0.8}}
        manifest = json.loads((store / "pneumonia" / "1" / "manifest.json").read_text())
        assert data == manifest

    def test_verify(self, store, capsys):
        assert main(["models", "show", "ct", "--store", str(store), "--verify"]) == 0
        out = capsys.readouterr().out
        assert "window: lung" in out
        assert "filters: sobel_h" in out
        assert "integrity: model.keras matches the manifest's sha256" in out

    def test_verify_detects_tampering(self, store, tmp_path, capsys):
        import shutil

        copy = tmp_path / "store"
        shutil.copytree(store, copy)
        path = copy / "ct" / "1" / "model.keras"
        path.write_bytes(path.read_bytes() + b"x")
        assert main(["models", "show", "ct", "--store", str(copy), "--verify"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "stored model is corrupt" in line
        assert "sha256 of" in line

    @pytest.mark.parametrize(
        ("ref", "message"),
        [
            ("missing", "no model named 'missing'"),
            ("pneumonia:7", "has no version 7"),
        ],
    )
    def test_missing_model_exits_2_with_one_line(self, store, capsys, ref, message):
        assert main(["models", "show", ref, "--store", str(store)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert message in line
        assert "No such model in the store" in line

    def test_malformed_reference(self, store, capsys):
        assert main(["models", "show", "pneumonia:two", "--store", str(store)]) == 2
        assert "'pneumonia:two'" in one_error_line(capsys.readouterr().err)

    def test_corrupt_manifest_exits_2(self, store, tmp_path, capsys):
        import shutil

        copy = tmp_path / "store"
        shutil.copytree(store, copy)
        (copy / "ct" / "1" / "manifest.json").write_text('{"name": "ct"}')
        assert main(["models", "show", "ct:1", "--store", str(copy)]) == 2
        assert "no 'version' field" in one_error_line(capsys.readouterr().err)

"""`radlens models convert`, `radlens models seal`, and `radlens serve` refusing a tampered or
unservable model in one line, through cli.main.main on a real store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.runtime import openvino_version
from tests.app.conftest import save_tiny_model
from tests.conftest import shared_data_path

needs_openvino = pytest.mark.skipif(openvino_version() is None, reason="openvino not installed")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RADLENS_"):
            monkeypatch.delenv(key)
    from radlens.app.settings import get_settings

    get_settings.cache_clear()


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("radlens: error: ")
    return lines[0]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    save_tiny_model(root, class_names=["normal", "pneumonia"])
    return root


def manifest_path(store: Path) -> Path:
    return store / "tiny" / "1" / "manifest.json"


@needs_openvino
def test_convert_with_parity_on_real_validation_images(store: Path, capsys) -> None:
    data = shared_data_path("pneumoniamnist", "pneumoniamnist_28_trainval.npz")
    before = json.loads(manifest_path(store).read_text())
    code = main(["models", "convert", "tiny:1", "--store", str(store), "--data", str(data)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "converted tiny:1 to OpenVINO IR" in out
    assert "fp32 parity: AUC difference" in out and "/524 labels flipped" in out
    after = json.loads(manifest_path(store).read_text())
    for field in ("name", "version", "created_at", "model_sha256", "threshold"):
        assert after[field] == before[field]
    parity = after["runtimes"]["openvino"]["parity"]["fp32"]
    assert parity["n"] == 524 and "(val, 524 images)" in parity["data"]

    assert main(["models", "show", "tiny:1", "--store", str(store), "--verify"]) == 0
    shown = capsys.readouterr().out
    assert "runtime openvino: openvino-" in shown and "fp32 parity: AUC difference" in shown
    assert "integrity: the openvino files match their sha256" in shown


@needs_openvino
def test_convert_unknown_model_is_one_line(store: Path, capsys) -> None:
    assert main(["models", "convert", "nope", "--store", str(store)]) == 2
    assert "No such model" in one_error_line(capsys.readouterr().err)


def test_seal_a_legacy_manifest(store: Path, capsys) -> None:
    data = json.loads(manifest_path(store).read_text())
    del data["integrity"]  # as an older radlens wrote it
    manifest_path(store).write_text(json.dumps(data))
    assert main(["models", "show", "tiny", "--store", str(store), "--verify"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no integrity seal" in line and "radlens models seal" in line
    assert main(["models", "seal", "tiny:1", "--store", str(store)]) == 0
    assert "sealed tiny:1: unsigned" in capsys.readouterr().out
    assert main(["models", "show", "tiny", "--store", str(store), "--verify"]) == 0


class TestServeRefuses:
    def serve(self, store: Path, tmp_path: Path, monkeypatch, **env: str) -> int:
        monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
        monkeypatch.setenv("RADLENS_DATABASE_URL", f"sqlite:///{tmp_path / 'var' / 'r.db'}")
        monkeypatch.setenv("RADLENS_DEVICE", "cpu")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return main(["serve"])

    def test_edited_clinical_flag_names_the_field(self, store, tmp_path, monkeypatch, capsys):
        data = json.loads(manifest_path(store).read_text())
        data["validated_for_clinical_use"] = True
        manifest_path(store).write_text(json.dumps(data))
        assert self.serve(store, tmp_path, monkeypatch) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "field 'validated_for_clinical_use' changed" in line

    def test_unsigned_manifest_with_a_signing_key(self, store, tmp_path, monkeypatch, capsys):
        key = "k" * 32
        assert self.serve(store, tmp_path, monkeypatch, RADLENS_MODEL_SIGNING_KEY=key) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "not signed" in line and key not in line

    @needs_openvino
    def test_explicit_openvino_without_conversion(self, store, tmp_path, monkeypatch, capsys):
        assert self.serve(store, tmp_path, monkeypatch, RADLENS_RUNTIME="openvino") == 2
        line = one_error_line(capsys.readouterr().err)
        assert "radlens models convert tiny:1" in line

    def test_tensorflow_with_bf16(self, store, tmp_path, monkeypatch, capsys):
        code = self.serve(
            store, tmp_path, monkeypatch, RADLENS_RUNTIME="tensorflow", RADLENS_PRECISION="bf16"
        )
        assert code == 2
        assert "bf16 is served by OpenVINO" in one_error_line(capsys.readouterr().err)

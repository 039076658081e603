"""A RADLENS_MODEL_SIGNING_KEY shorter than `radlens serve` accepts (16 characters) is refused
by the commands that seal too (QA round 29 found the CLI took it): a model sealed with it
would be served by no `radlens serve`, whose settings refuse the key. `radlens train` refuses
it before it trains, `radlens models seal` before it writes; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.models.registry import ModelRegistry, signing_key_from_env
from tests.cli.test_options_not_ignored import _folder
from tests.cli.test_qa24_cli_refusals import one_error_line


def test_the_registry_refuses_a_short_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_MODEL_SIGNING_KEY", "short-key")
    with pytest.raises(ConfigurationError, match=r"at least 16 characters.*9 characters"):
        signing_key_from_env()
    monkeypatch.setenv("RADLENS_MODEL_SIGNING_KEY", "k" * 16)
    assert signing_key_from_env() == b"k" * 16
    monkeypatch.setenv("RADLENS_MODEL_SIGNING_KEY", "")
    assert signing_key_from_env() is None


def test_models_seal_with_a_short_key_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.app.conftest import save_tiny_model

    monkeypatch.delenv("RADLENS_MODEL_SIGNING_KEY", raising=False)
    store = tmp_path / "store"
    save_tiny_model(store)
    manifest = store / "tiny" / "1" / "manifest.json"
    before = manifest.read_bytes()
    monkeypatch.setenv("RADLENS_MODEL_SIGNING_KEY", "short-key")
    assert main(["models", "seal", "tiny:1", "--store", str(store)]) == 2
    line = one_error_line(capsys)
    assert "RADLENS_MODEL_SIGNING_KEY must be at least 16 characters" in line
    assert "short-key" not in line  # the key itself is never echoed
    assert manifest.read_bytes() == before
    monkeypatch.delenv("RADLENS_MODEL_SIGNING_KEY")
    ModelRegistry(store).verify("tiny", 1)


def test_train_with_a_short_key_stops_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")
    monkeypatch.setenv("RADLENS_MODEL_SIGNING_KEY", "short-key")
    runs, store = tmp_path / "runs", tmp_path / "store"
    data = _folder(tmp_path / "data")
    args = ["train", "--data", str(data), "--runs-dir", str(runs), "--epochs", "1"]
    assert main([*args, "--store", str(store), "--arch", "simple_cnn"]) == 2
    assert "RADLENS_MODEL_SIGNING_KEY must be at least 16" in one_error_line(capsys)
    assert not runs.exists() and not store.exists()

"""Settings: RADLENS_* environment, defaults, and start-up failures that quote the value."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from radlens.app.settings import REPO_ROOT, Settings, describe_validation_error, get_settings


@pytest.fixture(autouse=True)
def clean_env(clean_radlens_env: None) -> None:
    """Every test here starts from no RADLENS_ variables (tests/conftest.py)."""


def test_defaults_run_a_fresh_clone() -> None:
    settings = Settings()
    assert settings.database_url == f"sqlite:///{REPO_ROOT / 'var' / 'radlens.db'}"
    assert settings.model_store == REPO_ROOT / "models" / "store"
    assert (settings.model, settings.device) == (None, "auto")
    assert settings.max_upload_bytes == 64 * 1024 * 1024
    from radlens.models.preprocessing import DEFAULT_MAX_PIXELS

    assert settings.max_pixels == DEFAULT_MAX_PIXELS
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADLENS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("RADLENS_MODEL_STORE", str(tmp_path))
    monkeypatch.setenv("RADLENS_MODEL", "chest:3")
    monkeypatch.setenv("RADLENS_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("RADLENS_LOG_LEVEL", "DEBUG")
    settings = get_settings()
    assert settings.model_store == tmp_path
    assert (settings.model, settings.max_batch_size, settings.log_level) == ("chest:3", 3, "debug")
    assert get_settings() is settings  # cached


@pytest.mark.parametrize(
    ("field", "value", "quoted"),
    [
        ("database_url", "mysql://root@localhost/db", "mysql"),
        ("database_url", "not a url", "not a url"),
        ("model", "chest:v3", "chest:v3"),
        ("model", "../etc", "../etc"),
        ("device", "tpu", "tpu"),
        ("port", "0", "0"),
        ("max_batch_size", "0", "0"),
        ("max_batch_wait_ms", "-1", "-1"),
        ("max_upload_bytes", "0", "0"),
        ("log_level", "loud", "loud"),
    ],
)
def test_bad_values_fail_at_start_with_the_value(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, quoted: str
) -> None:
    monkeypatch.setenv(f"RADLENS_{field.upper()}", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    line = describe_validation_error(info.value)
    assert f"RADLENS_{field.upper()}" in line
    assert quoted in line
    assert "\n" not in line


def test_model_store_must_be_a_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValidationError, match="must be a directory"):
        Settings(model_store=not_a_dir)


def test_empty_model_means_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_MODEL", "")
    assert Settings().model is None


def test_model_store_that_is_a_file_names_the_variable(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValidationError) as info:
        Settings(model_store=not_a_dir)
    line = describe_validation_error(info.value)
    assert "RADLENS_MODEL_STORE" in line and str(not_a_dir) in line
    assert "radlens train" in line  # what to do
    assert "\n" not in line

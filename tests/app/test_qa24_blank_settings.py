"""QA round 24: a RADLENS_* address or folder set to an empty string (an unset shell variable
in RADLENS_HOST=${HOST}) is refused, naming the variable: uvicorn and pynetdicom read an empty
address as every interface, and Path("") is whatever directory the service started in."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from radlens.app.settings import Settings, describe_validation_error
from radlens.cli.common import CliError, settings_for


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RADLENS_HOST", ""),
        ("RADLENS_HOST", "  "),
        ("RADLENS_DIMSE_BIND", ""),
        ("RADLENS_MODEL_STORE", ""),
        ("RADLENS_DICOM_OUTBOX_DIR", ""),
        ("RADLENS_DIMSE_INBOX_DIR", " "),
    ],
)
def test_blank_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    message = describe_validation_error(info.value)
    assert variable in message and "is empty" in message
    assert "\n" not in message


def test_blank_host_flag_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RADLENS_HOST", raising=False)
    with pytest.raises(CliError, match="every interface"):
        settings_for(host="")  # radlens serve --host ''


def test_explicit_addresses_still_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_HOST", "0.0.0.0")
    monkeypatch.setenv("RADLENS_DIMSE_BIND", "::1")
    settings = Settings()
    assert (settings.host, settings.dimse_bind) == ("0.0.0.0", "::1")
    monkeypatch.delenv("RADLENS_HOST")
    assert Settings().host == "127.0.0.1"

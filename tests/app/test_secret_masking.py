"""Secrets never printed: a rejected RADLENS_DATABASE_URL is quoted with its password masked,
in the one-line message, in pydantic's own text and by the CLI; the settings' repr masks it too
(tests/cli for the commands that echo the URL on success)."""

from __future__ import annotations

from pathlib import Path

import pytest

SECRET = "s3cret-Pa55"

BAD_URLS = [
    f"mysql://radlens:{SECRET}@db:3306/radlens",  # parseable, unsupported backend
    f"postgresql+psycopg://radlens:{SECRET}@db:notaport/radlens",  # port is no number
    f"radlens:{SECRET}@db/radlens",  # no scheme: SQLAlchemy cannot parse it at all
]


@pytest.fixture(autouse=True)
def clean_env(clean_radlens_env: None) -> None:
    """Every test here starts from no RADLENS_ variables (tests/conftest.py)."""


@pytest.mark.parametrize("url", BAD_URLS)
def test_rejected_database_url_is_quoted_masked(url: str) -> None:
    from pydantic import ValidationError

    from radlens.app.settings import Settings, describe_validation_error

    with pytest.raises(ValidationError) as caught:
        Settings(database_url=url)
    line = describe_validation_error(caught.value)
    assert line.startswith("invalid configuration: RADLENS_DATABASE_URL: ")
    assert (
        SECRET not in line and SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    )
    assert "radlens:***@" in line  # what was received, minus the password
    assert "\n" not in line


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://u:p@h:5432/d", "postgresql+psycopg://u:***@h:5432/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("u:p@h/d", "u:***@h/d"),
        ("x://u:p:q@h:nan/d", "x://u:***@h:nan/d"),
        ("sqlite:///var/radlens.db", "sqlite:///var/radlens.db"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_password(url: str, masked: str) -> None:
    from radlens.app.settings import mask_url_password

    assert mask_url_password(url) == masked


def test_settings_repr_and_str_mask_the_database_password() -> None:
    from pydantic import SecretStr

    from radlens.app.settings import Settings

    settings = Settings(
        database_url=f"postgresql+psycopg://radlens:{SECRET}@db:5432/radlens",
        uid_pseudonym_key=SecretStr("k" * 32),
        dedupe_key=SecretStr("d" * 32),
    )
    for text in (repr(settings), str(settings), f"{settings}"):
        assert SECRET not in text and "k" * 32 not in text and "d" * 32 not in text
        assert "radlens:***@db:5432/radlens" in text
    # the value itself is intact for the engine
    assert settings.database_url.endswith(f":{SECRET}@db:5432/radlens")


def test_a_check_across_settings_quotes_no_secret_and_no_password() -> None:
    """A check across fields (a model validator) fails with every value given as its input:
    the one-line message must not quote it (it held the keys and the database password)."""
    from pydantic import ValidationError

    from radlens.app.settings import Settings, describe_validation_error

    with pytest.raises(ValidationError) as info:
        Settings(
            database_url=f"postgresql+psycopg://radlens:{SECRET}@db:5432/radlens",
            uid_pseudonym_key="k" * 32,
            dedupe_key="d" * 32,
            model_signing_key="s" * 32,
            runtime="tensorflow",
            precision="bf16",  # refused together: the error is the whole model's
        )
    line = describe_validation_error(info.value)
    assert "RADLENS_PRECISION=bf16 is served by OpenVINO" in line
    for secret in (SECRET, "k" * 32, "d" * 32, "s" * 32):
        assert secret not in line


@pytest.mark.parametrize("url", BAD_URLS[:3])
def test_cli_prints_a_rejected_url_masked(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from radlens.cli.main import main

    assert main(["db", "upgrade", "--database-url", url]) != 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "RADLENS_DATABASE_URL" in lines[0] and "radlens:***@" in lines[0]
    assert SECRET not in captured.err + captured.out


def test_cli_hides_the_password_of_an_unreachable_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from radlens.cli.main import main

    url = f"postgresql+psycopg://radlens:{SECRET}@127.0.0.1:1/radlens"  # nothing listens on 1
    assert main(["db", "upgrade", "--database-url", url]) != 0
    captured = capsys.readouterr()
    assert captured.err.strip(), "expected an error line"
    assert SECRET not in captured.err + captured.out


@pytest.mark.postgres
def test_cli_echoes_a_working_database_url_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """`radlens db upgrade` names the database it upgraded, password masked (the server here
    trusts loopback, so the password is accepted and ignored)."""
    from radlens.cli.main import main
    from tests.app.conftest import PG_ADMIN_URL, Databases, postgres_available

    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    import uuid

    import psycopg

    name = f"radlens_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/{name}"
        assert main(["db", "upgrade", "--database-url", url]) == 0
        captured = capsys.readouterr()
        assert "postgres:***@127.0.0.1:5432" in captured.out
        assert SECRET not in captured.err + captured.out
    finally:
        Databases("postgresql", Path(), [name]).drop_all()  # in the background

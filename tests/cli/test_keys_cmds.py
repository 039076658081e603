"""`radlens keys create|list|revoke`: the key is printed once, stored as a hash, listed
without its secret, and refused once revoked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from radlens.cli.main import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RADLENS_"):
            monkeypatch.delenv(key)


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'radlens.db'}"


def authenticate(url: str, key: str) -> object:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.keys import authenticate as check

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return check(session, key)
    finally:
        engine.dispose()


def test_create_list_revoke(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "keys",
                "create",
                "--name",
                "ci bot",
                "--scopes",
                "read,predict",
                "--database-url",
                url,
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    key = captured.out.strip()
    assert key.startswith("rl_") and len(key) == 3 + 12 + 1 + 43
    assert "shown only now" in captured.err
    row = authenticate(url, key)
    assert row is not None

    assert main(["keys", "list", "--json", "--database-url", url]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == "ci bot" and listed["scopes"] == ["predict", "read"]
    assert listed["revoked_at"] is None and key not in json.dumps(listed)
    assert key.startswith(f"rl_{listed['key_id']}_")

    assert main(["keys", "revoke", listed["key_id"], "--database-url", url]) == 0
    assert f"revoked key {listed['key_id']}" in capsys.readouterr().out
    assert authenticate(url, key) is None
    assert main(["keys", "list", "--database-url", url]) == 0
    assert "revoked" in capsys.readouterr().out

    assert main(["audit", "--json", "--database-url", url]) == 0
    actions = [(e["action"], e["target"]) for e in json.loads(capsys.readouterr().out)]
    assert actions == [("key.create", listed["key_id"]), ("key.revoke", listed["key_id"])]


def test_json_create_and_database_from_environment(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADLENS_DATABASE_URL", url)
    assert (
        main(["keys", "create", "--name", "admin", "--scopes", "admin,read,predict", "--json"]) == 0
    )
    created = json.loads(capsys.readouterr().out)
    assert created["scopes"] == ["admin", "predict", "read"]
    assert authenticate(url, created["key"]) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--scopes", "read,delete"], "Received: 'read,delete'"),
        (["--name", "x", "--scopes", ""], "Received: ''"),
        (["--name", "-bad name", "--scopes", "read"], "Received: '-bad name'"),
    ],
)
def test_bad_input_is_one_line(
    url: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", *args, "--database-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("radlens: error: ") and "\n" not in err and message in err


def test_revoke_unknown_key(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "revoke", "0123456789ab", "--database-url", url]) == 2
    assert "no API key with id '0123456789ab'" in capsys.readouterr().err


def test_empty_list(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "list", "--database-url", url]) == 0
    assert "no API keys" in capsys.readouterr().out

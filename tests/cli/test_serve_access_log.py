"""`radlens serve` runs uvicorn without its access log unless RADLENS_ACCESS_LOG asks for it
(its lines carry raw paths and query strings)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from radlens.cli.main import main


@pytest.fixture()
def captured_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for key in list(os.environ):
        if key.startswith("RADLENS_"):
            monkeypatch.delenv(key)
    import uvicorn

    from radlens.app import startup

    calls: dict[str, Any] = {}
    report = SimpleNamespace(model=SimpleNamespace(ref="m:1"), schema_revision="head")
    monkeypatch.setattr(startup, "preflight", lambda settings, **kwargs: report)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.update(kwargs))
    return calls


def test_access_log_is_off_by_default(captured_run: dict[str, Any]) -> None:
    assert main(["serve"]) == 0
    assert captured_run["access_log"] is False
    assert captured_run["factory"] is True


def test_access_log_on_when_asked(
    captured_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADLENS_ACCESS_LOG", "true")
    assert main(["serve"]) == 0
    assert captured_run["access_log"] is True

"""`make run` (scripts/quickstart.py) announces the address `radlens serve` will really use:
RADLENS_HOST and RADLENS_PORT, not a fixed 127.0.0.1:8000."""

from __future__ import annotations

import pytest

from scripts import quickstart


@pytest.fixture(autouse=True)
def clean_env(clean_radlens_env: None) -> None:
    """Every test here starts from no RADLENS_ variables (tests/conftest.py)."""


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """quickstart.main up to its final exec, with the set-up steps stubbed out."""
    execs: list[list[str]] = []
    monkeypatch.setattr(quickstart, "radlens", lambda *args, capture=False: "")
    monkeypatch.setattr(quickstart, "ensure_api_key", lambda: None)
    monkeypatch.setattr(quickstart, "store_is_empty", lambda: False)
    monkeypatch.setattr(quickstart.os, "execv", lambda path, argv: execs.append(argv))
    return execs


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:8000"),
        ({"RADLENS_PORT": "8731"}, "http://127.0.0.1:8731"),
        ({"RADLENS_HOST": "0.0.0.0", "RADLENS_PORT": "8732"}, "http://0.0.0.0:8732"),
        ({"RADLENS_HOST": "::1"}, "http://[::1]:8000"),
    ],
)
def test_announces_the_configured_address(
    served: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    url: str,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    quickstart.main([])
    out = capsys.readouterr().out
    assert f"==> Serving on {url} (Swagger UI: {url}/docs)" in out
    assert served and served[0][1:] == ["serve"]

"""QA round 32: every RADLENS_ environment variable the code reads is in the README, not only
the service's settings (tests/test_readme.py checks those): a user learns of the others
nowhere else."""

from __future__ import annotations

import ast
import re

from radlens.app.settings import Settings
from tests.conftest import REPO_ROOT

ENV_NAME = re.compile(r"RADLENS_[A-Z0-9_]+")


def _names_the_code_reads() -> dict[str, set[str]]:
    """String constants that are exactly a RADLENS_ name, in the installed packages: what
    os.environ lookups and the *_ENV constants hold (messages that quote a name are longer)."""
    found: dict[str, set[str]] = {}
    for package in ("app", "models", "training", "cli"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                value = node.value if isinstance(node, ast.Constant) else None
                if isinstance(value, str) and ENV_NAME.fullmatch(value):
                    found.setdefault(value, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def test_the_scan_finds_the_variables_read_outside_the_settings() -> None:
    names = _names_the_code_reads()
    assert {"RADLENS_MODEL_STORE", "RADLENS_PATIENT_HASH_KEY"} <= set(names)


def test_every_environment_variable_the_code_reads_is_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    settings = {f"RADLENS_{name.upper()}" for name in Settings.model_fields}
    missing = {
        name: sorted(where)
        for name, where in _names_the_code_reads().items()
        if name not in settings and not re.search(rf"\b{name}\b", readme)
    }
    assert missing == {}

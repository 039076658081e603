"""The README stays true: its configuration table names every setting, and its two commands
are the Makefile targets CI runs."""

from __future__ import annotations

import re

from radlens.app.settings import Settings
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    documented = set(re.findall(r"`(RADLENS_[A-Z_]+)`", README))
    fields = {f"RADLENS_{name.upper()}" for name in Settings.model_fields}
    assert sorted(fields - documented) == []
    assert sorted(documented - fields) == []


def test_the_two_commands_are_make_targets_and_ci_runs_the_test_one():
    assert "make run" in README and "make test" in README
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()

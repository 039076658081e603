"""QA 91 (a new user following the README and docs/ as written): examples that a user copies
or reads against what radlens prints stay true.

- docs/pacs-integration.md's Grad-CAM overlay title is the one `models.gradcam.overlay_title`
  draws for a binary model (it said `<class> <score> · Grad-CAM <layer>`, the multi-class
  form, after the binary title had changed in QA round 83);
- docs/series-training.md's worked example starts with a command that writes its data set
  (it named a test helper's call with no way to run it);
- every `radlens ...` command in README.md and docs/*.md names a real command and real
  options of it (a guard: none was wrong in round 91).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import typer

from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def _unwrapped(text: str) -> str:
    """Markdown prose with its line breaks as spaces (examples wrap anywhere)."""
    return " ".join(text.split())


def test_the_documented_binary_overlay_title_is_the_one_drawn() -> None:
    from radlens.models.gradcam import overlay_title

    title = overlay_title(
        ["normal", "abnormal"],
        1,
        np.array([0.0081, 0.9919]),
        "backbone/conv5_block3_out",
        label="abnormal",
        threshold=0.4044,
    )
    assert title == "abnormal (abnormal score 0.9919 ≥ threshold 0.4044) · Grad-CAM of abnormal"
    doc = _unwrapped((REPO_ROOT / "docs" / "pacs-integration.md").read_text())
    grad_cam = doc[doc.index("## Grad-CAM") : doc.index("### Storage")]
    assert f"`{title}`" in grad_cam
    # the multi-class form is documented as such, not as every model's title
    assert "and a title `<class> <score> · Grad-CAM <layer>`" not in grad_cam


def test_the_series_worked_example_writes_its_data_set(tmp_path: Path) -> None:
    doc = (REPO_ROOT / "docs" / "series-training.md").read_text()
    example = doc[doc.index("## Worked example") :]
    start = example.index("```bash") + len("```bash")
    block = example[start : example.index("```", start)]
    [command] = [line for line in block.splitlines() if line.startswith("python -c ")]
    argv = shlex.split(command)
    # run from a checkout's root, as the doc says: there `tests` is importable
    result = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ct" / "series.csv").is_file()
    rows = (tmp_path / "ct" / "series.csv").read_text().splitlines()
    assert rows[0] == "patient_id,label,series_path" and len(rows) == 1 + 16


def _documented_commands() -> list[tuple[str, str]]:
    """(file, the words after `radlens`) for each command in a code block or inline code."""
    found = []
    for path in DOCS:
        text = re.sub(r"\\\n\s*", " ", path.read_text())  # shell line continuations
        in_block = False
        for line in text.splitlines():
            if line.startswith("```"):
                in_block = not in_block
                continue
            pattern = r"(?:^|[\s;&|(])radlens ([^#`]*)" if in_block else r"`radlens ([^`]*)`"
            found += [(path.name, m.group(1)) for m in re.finditer(pattern, line)]
    return found


def test_every_documented_command_and_option_exists() -> None:
    from radlens.cli.main import app

    root = typer.main.get_command(app)
    commands = _documented_commands()
    assert len(commands) > 100  # the scan reads the docs' commands
    wrong = []
    checked = 0
    for where, words in commands:
        command, used = root, []
        for word in words.split():
            children = getattr(command, "commands", None)
            if not isinstance(children, dict) or word not in children:
                break
            command, used = children[word], [*used, word]
        if not used or isinstance(getattr(command, "commands", None), dict):
            continue  # prose ("radlens produced"), or a group named alone
        checked += 1
        options = {"--help"}
        for param in command.params:
            options.update(param.opts)
            options.update(param.secondary_opts)
        for word in words.split()[len(used) :]:
            option = re.match(r"--[a-z0-9-]+", word)
            if option and option.group(0) not in options:
                wrong.append(f"{where}: radlens {' '.join(used)} {option.group(0)}")
    assert checked > 100
    assert wrong == []

"""What the README's examples write into the checkout is ignored by git.

The examples save results (SR/SC objects carry study UIDs, an overlay can show burned-in
text), an API key file and evaluation reports in the working directory; a `git add .` must
not commit any of them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a file an example writes: curl's -o, a shell redirection, an --out of the CLI
_WRITES = re.compile(r"(?:^|\s)(?:-o|--out|>)\s+([^\s;|&]+)")


def _written_by_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M)
    paths = {m.group(1) for block in blocks for m in _WRITES.finditer(block)}
    return sorted(p for p in paths if not p.startswith(("/", "$", "<", "&")))


def test_the_readme_examples_write_files() -> None:
    written = _written_by_examples()
    assert {"sr.dcm", "heatmap.png", ".env"} <= set(written), written


def test_every_file_the_readme_examples_write_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to ask git about")
    written = _written_by_examples()
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin", "-v", "-n"],
        input="\n".join(written) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    not_ignored = [
        line.split("\t", 1)[1] for line in result.stdout.splitlines() if line.startswith("::")
    ]
    assert not_ignored == [], f"README examples write files git would commit: {not_ignored}"

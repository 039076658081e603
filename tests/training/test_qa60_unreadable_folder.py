"""QA round 60: `radlens train --data FOLDER` on a folder the user cannot read said
"<FOLDER>/labels.csv: permission denied": a file the user never named (radlens looks for a
manifest there first). The refusal names the folder and says what to do.

Permissions are real: the calls run in a child process that cannot read the folder (as root:
with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped, so the folder's mode applies).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.training.data_fixtures import random_gray, write_png

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import check_dicom_root, open_data, open_source
for call in (open_data, open_source, lambda p: check_dicom_root(p, "elsewhere")):
    try:
        call(sys.argv[1])
    except ConfigurationError as exc:
        print("REFUSED", exc)
    except OSError as exc:
        print("OSERROR", exc)
    else:
        print("OPENED")
"""


def _unprivileged(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop the permission override")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *args]


@pytest.mark.parametrize("mode", [0o000, 0o300, 0o600])  # nothing; no listing; no entering
def test_an_unreadable_data_folder_is_named(tmp_path: Path, mode: int) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for cls in ("normal", "abnormal"):
        for i in range(2):
            write_png(data / cls / f"{i}.png", random_gray(rng, 16))
    data.chmod(mode)
    try:
        done = subprocess.run(
            _unprivileged([sys.executable, "-c", PROBE, str(data)]),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=120,
            check=False,
        )
    finally:
        data.chmod(0o755)
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout + done.stderr
    for line in lines:
        assert line.startswith("REFUSED"), line
        assert f"the data folder {str(data)!r} cannot be read" in line
        assert "labels.csv" not in line
        assert "permission" in line

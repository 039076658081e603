"""QA 39: `radlens train --resume RUN` stopped (Ctrl-C or SIGTERM) before the resumed run
announced its directory (while it reads and checks the data, which takes minutes on a large
set) said "no run directory was written yet; start the run again": wrong, the run directory
is the one given, and starting again throws its epochs away. It says to resume it again.

The run is a stand-in for ``training.run`` (no TensorFlow), in a subprocess so the test
runner is not the one signalled.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time, types
    # a foreground process's Ctrl-C: a runner started in the background without job control
    # hands its children SIGINT ignored, and Python then installs no KeyboardInterrupt for it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fake = types.ModuleType("radlens.training.run")
    def resume(run_dir, *, on_start):
        # stopped before on_start: the data is still being read
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        time.sleep(30)
    fake.resume = resume
    import radlens.training
    sys.modules["radlens.training.run"] = fake
    radlens.training.run = fake
    from radlens.cli.main import main
    sys.exit(main(["train", "--resume", sys.argv[1]]))
    """
)


@pytest.mark.parametrize(
    ("signame", "code", "how"),
    [("SIGTERM", 128 + signal.SIGTERM, "stopped by SIGTERM"), ("SIGINT", 130, "interrupted")],
)
def test_resume_stopped_before_it_starts_says_to_resume_again(
    tmp_path: Path, signame: str, code: int, how: str
) -> None:
    run = tmp_path / "runs" / "chest-1"
    run.mkdir(parents=True)
    # a run directory (QA 106: `--resume` of a folder that is none is refused before the
    # trainer is imported)
    (run / "config.json").write_text("{}\n")
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(run), signame],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"RADLENS_PATIENT_HASH_KEY": "radlens-tests-patient-key", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert f"radlens: {how}; continue with: radlens train --resume {run}" in done.stderr
    assert "start the run again" not in done.stderr

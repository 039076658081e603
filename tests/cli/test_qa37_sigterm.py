"""QA 37: `radlens train` stopped by SIGTERM (docker stop, Kubernetes, a batch scheduler)
stops as Ctrl-C does: the interrupt's clean-up runs and it says how to resume, exit 143. It
ended at once, saying nothing (exit -15).

The run is a stand-in for ``training.run`` (no TensorFlow): it announces its run directory,
then the process sends itself SIGTERM, in a subprocess so the test runner is not the one
signalled.
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
    announce = sys.argv[2] == "announce"
    fake = types.ModuleType("radlens.training.run")
    def train(config, *, on_start):
        if announce:
            on_start(os.path.join(sys.argv[1], "runs", "x-1"))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal arrives during the run, as during an epoch
    fake.train = train
    import radlens.training
    sys.modules["radlens.training.run"] = fake
    radlens.training.run = fake
    from radlens.cli.main import main
    code = main(["train", "--data", sys.argv[1], "--arch", "simple_cnn"])
    # the handler is the previous one again once the command returns
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGTERM)
    sys.exit(code)
    """
)


@pytest.mark.parametrize("announce", ["announce", "before"])
def test_sigterm_stops_train_with_how_to_resume(tmp_path: Path, announce: str) -> None:
    for name in ("normal", "abnormal"):
        (tmp_path / name).mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path), announce],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"RADLENS_PATIENT_HASH_KEY": "radlens-tests-patient-key", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 128 + signal.SIGTERM, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    if announce == "announce":
        where = tmp_path / "runs" / "x-1"
        assert f"radlens: stopped by SIGTERM; continue with: radlens train --resume {where}" in (
            done.stderr
        )
    else:
        assert "stopped by SIGTERM; no run directory was written yet" in done.stderr

"""Ctrl-C or SIGTERM while `radlens train` imports the trainer (TensorFlow: seconds, longer on
a busy machine) says what happened and what to do, as one later does (QA round 57: it exited
130 without a word, and SIGTERM killed it silently)."""

from __future__ import annotations

import importlib.abc
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import radlens.training
from radlens.cli.main import main


class _InterruptOnImport(importlib.abc.MetaPathFinder):
    """A Ctrl-C arriving while radlens.training.run is being imported."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname == "radlens.training.run":
            raise KeyboardInterrupt
        return None


def test_ctrl_c_while_the_trainer_loads_says_nothing_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "radlens.training.run", raising=False)
    monkeypatch.delattr(radlens.training, "run", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptOnImport(), *sys.meta_path])
    data = tmp_path / "scans"
    data.mkdir()

    code = main(["train", "--data", str(data), "--runs-dir", str(tmp_path / "runs")])

    assert code == 130
    err = capsys.readouterr().err
    assert "radlens: interrupted; no run directory was written yet; start the run again" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# SIGTERM while the trainer is imported, in a child process (on the old code it killed it)
_CHILD = """
import importlib.abc, os, signal, sys, time

class TermOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "radlens.training.run":
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(200):  # the handler runs at the next bytecode boundary
                time.sleep(0.01)
        return None

sys.meta_path.insert(0, TermOnImport())
from radlens.cli.main import main
sys.exit(main(["train", "--data", sys.argv[1], "--runs-dir", sys.argv[2]]))
"""


def test_sigterm_while_the_trainer_loads_is_reported_and_exits_143(tmp_path: Path) -> None:
    data = tmp_path / "scans"
    data.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(data), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 128 + signal.SIGTERM, (result.returncode, result.stderr)
    assert "radlens: stopped by SIGTERM; no run directory was written yet" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()

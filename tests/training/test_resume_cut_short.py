"""`radlens train --resume` after the phase backup was cut short (a kill or a full disk in the
middle of Keras writing latest.weights.h5): it resumes from the state before, kept beside it,
or, with none, starts the phase again, said in train.log. Before: "internal error: OSError:
Unable to synchronously open file (truncated file ...)" and no way to finish the run (QA
round 33)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import pytest

from radlens.training.run import resume, train
from tests.training.conftest import tiny_config
from tests.training.test_run import _Recorder


class _InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated interruption after epoch {epoch + 1}")


def _interrupted(data: Path, tmp_path: Path, after: int) -> Path:
    config = tiny_config(data, tmp_path, epochs_head=3, histogram_freq=0)
    started: list[Path] = []
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_InterruptAfter(after)], verbose=0, on_start=started.append)
    return started[0]


def _cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:4096])  # what h5py leaves when the write stops early


def test_a_cut_short_backup_resumes_from_the_state_before(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    run_dir = _interrupted(tiny_demo_data, tmp_path, after=1)  # backups after epochs 1 and 2
    backup = run_dir / "backup" / "phase1"
    assert (backup / "latest.weights.h5.bkp").is_file()
    _cut_short(backup / "latest.weights.h5")
    recorder = _Recorder()
    result = resume(run_dir, callbacks=[recorder], verbose=0)
    assert recorder.epochs == [1, 2]  # from the state after epoch 1
    assert result.epochs_run == 3 and (run_dir / "result.json").is_file()


def test_with_no_readable_backup_the_phase_starts_again(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    run_dir = _interrupted(tiny_demo_data, tmp_path, after=0)  # one backup, nothing before it
    backup = run_dir / "backup" / "phase1"
    assert not (backup / "latest.weights.h5.bkp").exists()
    _cut_short(backup / "latest.weights.h5")
    recorder = _Recorder()
    result = resume(run_dir, callbacks=[recorder], verbose=0)
    assert recorder.epochs == [0, 1, 2]
    assert result.epochs_run == 3
    log = (run_dir / "train.log").read_text()
    assert "cannot be read (OSError, cut short by a kill or a full disk)" in log
    assert "starts again from its first epoch" in log

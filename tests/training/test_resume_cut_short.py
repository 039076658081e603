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
    # no OpenVINO conversion at export: resuming is what is checked
    config = tiny_config(data, tmp_path, epochs_head=3, histogram_freq=0, openvino=False)
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


def test_an_empty_training_metadata_file_restarts_the_phase(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    """Keras opens training_metadata.json for writing before it writes it: a kill or a full
    disk there left it empty, and the resume failed on a JSONDecodeError (QA round 34)."""
    run_dir = _interrupted(tiny_demo_data, tmp_path, after=0)
    (run_dir / "backup" / "phase1" / "training_metadata.json").write_text("")
    recorder = _Recorder()
    assert resume(run_dir, callbacks=[recorder], verbose=0).epochs_run == 3
    assert recorder.epochs == [0, 1, 2]


def test_the_cli_never_removes_the_phase_backup(tmp_path: Path) -> None:
    """The CLI's clean-up after a full disk removed backup/phase<N>/latest.weights.h5: the
    state PhaseBackup falls back on, or, when the failed write was Keras' copy of it to
    ``.bkp`` (shutil names the source first), the intact backup itself (QA round 34)."""
    import errno

    from radlens.cli.common import written_file
    from radlens.cli.training_cmds import _remove_unfinished_weights

    run = tmp_path / "run"
    latest = run / "backup" / "phase1" / "latest.weights.h5"
    best = run / "checkpoints" / "best.weights.h5"
    for path in (latest, best):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"weights")
    copy_failed = OSError(
        errno.ENOSPC, "No space left on device", str(latest), None, f"{latest}.bkp"
    )
    assert written_file(copy_failed) == f"{latest}.bkp"
    assert _remove_unfinished_weights(str(latest), run) == "" and latest.is_file()
    assert _remove_unfinished_weights(f"{latest}.bkp", run) == "" and latest.is_file()
    assert (
        _remove_unfinished_weights(str(best), run) == "the incomplete best.weights.h5 was removed"
    )
    assert not best.exists()
    assert _remove_unfinished_weights(str(tmp_path / "other.weights.h5"), run) == ""

"""`radlens train --resume` of a run another process is training is refused (QA round 102).

Two resumes of one interrupted run (a scheduler's retry while the first still ran, a second
terminal) both trained it: each appended the same epochs to history.csv, both wrote the one
checkpoint and backup, one exported a model whose best weights could be the other's, and the
other failed at the end on a missing backup file. The run directory is now locked by the
process training it, and a second one stops at once with one line, writing nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from radlens.cli.main import main


@pytest.fixture(autouse=True)
def _patient_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def test_a_second_resume_is_refused_while_the_run_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.training import rundir
    from radlens.training.config import TrainConfig
    from radlens.training.data.demo import write_demo_dataset

    data = tmp_path / "data"
    write_demo_dataset(data, n_per_class=12, size=32, seed=1, val_fraction=0.15, test_fraction=0.15)
    config = TrainConfig(
        data=str(data),
        architecture="simple_cnn",
        image_size=32,
        epochs_head=1,
        batch_size=8,
        runs_dir=str(tmp_path / "runs"),
        store=str(tmp_path / "store"),
        name="busy",
        min_calibration_positives=1,
        openvino=False,
        ood_method="none",
    )
    run = rundir.open_run_dir(config, None)  # a started run: config.json, no result.json
    # the process training it, holding the run as radlens train does
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; "
            f"fd = os.open({str(run / '.run.lock')!r}, os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code = main(["train", "--resume", str(run)])
    finally:
        holder.communicate("")
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("radlens: error: ")]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"the run in '{run}' is being trained by another radlens process" in lines[0]
    assert not (run / "history.csv").exists()  # nothing trained beside the other process
    assert not (tmp_path / "store" / "busy").exists()


def test_the_run_can_be_resumed_once_the_other_process_let_go(tmp_path: Path) -> None:
    from radlens.models.errors import ConfigurationError
    from radlens.training import rundir

    run = tmp_path / "run"
    run.mkdir()
    with (
        rundir.held(run),
        pytest.raises(ConfigurationError, match="being trained by another radlens"),
        rundir.held(run),
    ):
        pass
    with rundir.held(run):  # released at the end of the block (an interrupt's too)
        pass

"""A full disk while training or evaluating: one line and exit 2, nothing half-written left
where a later step would read it (QA round 33)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.training.conftest import TEST_PATIENT_KEY


def _no_space(*_args: Any) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class TestBestCheckpoint:
    def test_a_failed_save_keeps_the_previous_best(self, tmp_path: Path) -> None:
        import keras

        from radlens.training.callbacks import BestCheckpoint

        (tmp_path / "checkpoints").mkdir()
        network = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        state: dict[str, Any] = {}
        callback = BestCheckpoint(tmp_path, state, network)
        callback.on_epoch_end(0, {"val_auc": 0.7})
        best = tmp_path / "checkpoints" / "best.weights.h5"
        saved = [w.copy() for w in network.get_weights()]

        def save_cut_short(path: Any, *args: Any, **kwargs: Any) -> None:
            # what h5py leaves on a full disk or a kill: the file emptied, half written
            Path(path).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
            raise _no_space()

        network.set_weights([w + 1.0 for w in saved])
        network.save_weights = save_cut_short  # type: ignore[method-assign]
        with pytest.raises(OSError, match="No space left"):
            callback.on_epoch_end(1, {"val_auc": 0.9})

        fresh = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        fresh.load_weights(best)  # the epoch-1 best, whole
        for got, want in zip(fresh.get_weights(), saved, strict=True):
            np.testing.assert_array_equal(got, want)
        assert state["best_epoch"] == 1
        assert sorted(p.name for p in best.parent.iterdir()) == ["best.weights.h5"]


class TestEvaluateReport:
    def test_a_full_disk_leaves_the_earlier_report_as_it_was(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from radlens.training.evaluate import write_report

        out = tmp_path / "eval"
        out.mkdir()
        earlier = {
            "metrics.json": b'{"split": "test", "auc": 0.5}\n',
            "confusion_matrix.png": b"earlier confusion matrix",
            "reliability.png": b"earlier reliability diagram",
            "roc_curve.png": b"earlier roc curve",
        }
        for name, data in earlier.items():
            (out / name).write_bytes(data)
        labels = np.array([0, 1, 0, 1])
        probabilities = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
        metrics = {"split": "test", "auc": 1.0, "confusion_matrix": [[2, 0], [0, 2]]}

        # the disk fills during the second file: half of it is written, then ENOSPC
        calls = {"n": 0}
        real_write_bytes = Path.write_bytes

        def filling(path: Path, data: Any) -> int:
            calls["n"] += 1
            if calls["n"] >= 2:
                real_write_bytes(path, bytes(data)[: len(data) // 2])
                raise _no_space()
            return real_write_bytes(path, bytes(data))

        def filling_text(path: Path, text: str, *args: Any, **kwargs: Any) -> int:
            return filling(path, text.encode())

        monkeypatch.setattr(Path, "write_bytes", filling)
        monkeypatch.setattr(Path, "write_text", filling_text)
        with pytest.raises(OSError) as caught:
            write_report(out, metrics, labels, probabilities, ["normal", "abnormal"])
        monkeypatch.undo()

        assert caught.value.errno == errno.ENOSPC
        assert caught.value.filename == str(out)  # the CLI names the --out folder
        assert sorted(p.name for p in out.iterdir()) == sorted(earlier)
        for name, data in earlier.items():
            assert (out / name).read_bytes() == data, name

        files = write_report(out, metrics, labels, probabilities, ["normal", "abnormal"])
        assert sorted(p.name for p in out.iterdir()) == sorted(earlier)
        assert list(files) == ["metrics", "confusion_matrix", "reliability", "roc_curve"]
        assert (out / "roc_curve.png").read_bytes().startswith(b"\x89PNG")


# `radlens train` whose run folder cannot take a checkpoint: the file size limit (ulimit -f)
# makes the write fail as a full disk does (EFBIG instead of ENOSPC), without a mount
_LIMITED_TRAIN = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from radlens.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _radlens(args: list[str], file_size_limit: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RADLENS_PATIENT_HASH_KEY": TEST_PATIENT_KEY,
        "MPLCONFIGDIR": str(tmp / "mpl"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    return subprocess.run(
        [sys.executable, "-c", _LIMITED_TRAIN, str(file_size_limit), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_into_a_full_run_folder_is_one_line_and_resumes(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    runs, store = tmp_path / "runs", tmp_path / "store"
    args = [
        "train",
        "--data",
        str(tiny_demo_data),
        "--arch",
        "simple_cnn",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--min-calibration-positives",
        "2",
        "--name",
        "full",
        "--runs-dir",
        str(runs),
        "--store",
        str(store),
    ]
    # the checkpoints (a few MB) cannot be written; the smaller run files can
    failed = _radlens(args, 1_000_000, tmp_path)

    # before: exit 1 "internal error" (on a real full disk also a SIGSEGV in HDF5 at exit)
    assert failed.returncode == 2, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("radlens: ")]
    assert len(errors) == 1, failed.stderr[-3000:]
    assert errors[0].startswith("radlens: error: writing '"), errors[0]
    assert "file too large" in errors[0] and "radlens train --resume" in errors[0]
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    (run,) = runs.iterdir()
    assert not (store / "full").exists()

    resumed = _radlens(["train", "--resume", str(run)], 2**62, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (store / "full" / "1" / "manifest.json").is_file()

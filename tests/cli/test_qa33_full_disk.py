"""A full disk under the CLI: one line and exit 2, not an "internal error", and no half-written
demo data set left for `radlens train` to read (QA round 33)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from radlens.cli.common import report_error
from radlens.cli.main import main


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("radlens: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


class TestReportError:
    def test_a_write_without_a_file_name_is_exit_2(self, capsys: pytest.CaptureFixture[str]):
        # f.write() on a full disk: Python's OSError names no file
        assert report_error(_no_space()) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith("radlens: error: a write failed: no space left on device; ")
        assert "free space on that file system" in line

    def test_a_wrapped_write_error_is_exit_2(self, capsys: pytest.CaptureFixture[str]):
        # pydicom re-raises a write's error with the tag it was writing, without its errno
        try:
            try:
                raise _no_space()
            except OSError as exc:
                raise OSError(f"With tag (7FE0,0010) got exception: {exc}\nTraceback ...") from exc
        except OSError as wrapped:
            assert report_error(wrapped) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "no space left on device" in line and "Traceback" not in line

    def test_h5py_names_the_file_in_its_message(self, capsys: pytest.CaptureFixture[str]):
        h5 = OSError(
            errno.ENOSPC,
            "Can't synchronously write data (file write failed: time = Sun Dec  6 23:26:08 "
            "2026\n, filename = 'runs/r/backup/phase1/latest.weights.h5', file descriptor = 7, "
            "errno = 28, error message = 'No space left on device')",
        )
        assert report_error(h5) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "writing 'runs/r/backup/phase1/latest.weights.h5' failed: no space left" in line

    def test_a_named_file_says_to_free_space(self, capsys: pytest.CaptureFixture[str]):
        named = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "eval/metrics.json")
        assert report_error(named) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith("radlens: error: eval/metrics.json: no space left on device; ")
        assert "free space on that file system" in line

    def test_another_error_is_still_internal(self, capsys: pytest.CaptureFixture[str]):
        assert report_error(OSError(errno.EIO, "I/O error")) == 1
        assert "internal error" in capsys.readouterr().err


class TestDemoData:
    @pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
    def test_a_full_disk_leaves_no_partial_data_set(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        existing: bool,
    ) -> None:
        from radlens.training.data import demo

        real_write = demo.write_dicom
        written = {"n": 0}

        def filling(path: Path, *args: Any, **kwargs: Any) -> None:
            written["n"] += 1
            if written["n"] > 5:  # the sixth file: half of it, then the disk is full
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\0" * 128 + b"DICM")
                try:
                    raise _no_space()
                except OSError as exc:  # as pydicom's writer re-raises it
                    raise OSError(f"With tag (7FE0,0010) got exception: {exc}") from exc
            real_write(path, *args, **kwargs)

        monkeypatch.setattr(demo, "write_dicom", filling)
        out = tmp_path / "demo"
        if existing:
            out.mkdir()
        code = main(["demo-data", str(out), "--n-per-class", "4", "--size", "32"])

        assert code == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"writing the demo data set to {str(out)!r} failed" in line
        assert "No space left on device" in line and "removed" in line
        assert out.is_dir() == existing
        if existing:
            assert list(out.iterdir()) == []

        # space freed: the same command works without --overwrite
        monkeypatch.setattr(demo, "write_dicom", real_write)
        assert main(["demo-data", str(out), "--n-per-class", "4", "--size", "32"]) == 0
        assert (out / "labels.csv").is_file()

"""A version its training run is still completing (OOD detector, OpenVINO runtime) is nobody's
newest model, and what a killed save or conversion leaves under ``.staging`` is cleared.

Before: training saved the version, then spent minutes fitting its OOD detector and converting
it; a service started in between served the new version without a detector (no
out-of-distribution check), and one killed there left it so for good. A ``.staging`` folder a
killed save left stayed until removed by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from radlens.models import registry as registry_module
from radlens.models.errors import ModelUnfinishedError
from radlens.models.registry import STAGING_DIR, UNFINISHED_FILE, ModelRegistry
from tests.models.test_registry import PP_VERSION, save, tiny_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fixed_preprocessing_version(monkeypatch):
    monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: PP_VERSION)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_model()


def _hold_in_child(path: Path) -> subprocess.Popen:
    """Another process holding an exclusive flock on ``path`` (as a live writer does)."""
    code = textwrap.dedent(
        f"""
        import fcntl, os, sys, time
        fd = os.open({str(path)!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def _stop(child: subprocess.Popen) -> None:
    child.communicate(timeout=30)  # closes its stdin: it exits, and its lock with it


def test_an_unfinished_version_is_not_the_newest_until_finished(tmp_path: Path, model) -> None:
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    second = save(reg, model, finish_later=True)
    assert second.version == 2
    assert (tmp_path / "pneumonia" / "2" / UNFINISHED_FILE).is_file()
    assert reg.unfinished("pneumonia", 2) == "being written"
    assert reg.unfinished("pneumonia", 1) is None
    assert reg.resolve(None) == ("pneumonia", 1)
    assert reg.resolve("pneumonia") == ("pneumonia", 1)
    assert reg.resolve("pneumonia:2") == ("pneumonia", 2)  # what attaches its parts names it
    with pytest.raises(ModelUnfinishedError, match=r"pneumonia:2 is unfinished \(being written\)"):
        reg.check_finished("pneumonia", 2)
    # its parts are attached by reference while it is unfinished
    staged = reg.staging_dir("pneumonia")
    (staged / "model.xml").write_text("<net/>")
    reg.add_runtime("pneumonia:2", "openvino", staged, {"format": "test"})
    assert reg.resolve(None) == ("pneumonia", 1)

    finished = reg.finish("pneumonia:2")
    assert finished.version == 2 and "openvino" in finished.runtimes
    assert not (tmp_path / "pneumonia" / "2" / UNFINISHED_FILE).exists()
    assert reg.unfinished("pneumonia", 2) is None
    assert reg.resolve(None) == ("pneumonia", 2)
    assert reg.resolve("pneumonia") == ("pneumonia", 2)
    reg.check_finished("pneumonia", 2)
    assert reg.finish("pneumonia:2").version == 2  # finishing a finished version changes nothing


def test_a_store_holding_only_unfinished_versions_names_them(tmp_path: Path, model) -> None:
    reg = ModelRegistry(tmp_path)
    save(reg, model, finish_later=True)
    with pytest.raises(ModelUnfinishedError, match=r"no finished model: pneumonia:1 is unfinished"):
        reg.resolve(None)
    with pytest.raises(ModelUnfinishedError, match=r"'pneumonia' has no finished version"):
        reg.resolve("pneumonia")
    assert [m.ref for m in reg.list()] == ["pneumonia:1"]  # listed, with its state


def test_a_version_whose_run_died_is_abandoned_and_finished_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real process saves with finish_later and is killed (SIGKILL) before it finishes."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from radlens.models import registry as registry_module
        registry_module._current_preprocessing_version = lambda: {PP_VERSION!r}
        from tests.models.test_registry import save, tiny_model
        save(registry_module.ModelRegistry({str(tmp_path)!r}), tiny_model(), finish_later=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=300)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    reg = ModelRegistry(tmp_path)
    assert reg.unfinished("pneumonia", 1) == "abandoned"
    with pytest.raises(ModelUnfinishedError, match=r"stopped before it attached") as info:
        reg.check_finished("pneumonia", 1)
    assert "radlens models finish pneumonia:1" in str(info.value)

    from radlens.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["models", *args, "--store", str(tmp_path)])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("list")
    assert code == 0 and "1 (unfinished: abandoned)" in out, out
    code, out, _ = run("list", "--json")
    assert json.loads(out)[0]["unfinished"] == "abandoned"
    code, out, _ = run("show", "pneumonia:1")
    assert "state: unfinished (abandoned)" in out, out
    code, _, err = run("finish", "pneumonia")
    assert code == 2 and "name the version to finish, e.g. pneumonia:3" in err, err
    assert reg.unfinished("pneumonia", 1) == "abandoned"
    code, out, _ = run("finish", "pneumonia:1")
    assert code == 0, out
    assert "finished pneumonia:1 (without an OOD detector or an OpenVINO runtime)" in out
    assert reg.resolve(None) == ("pneumonia", 1)


def test_finish_refuses_while_its_run_is_alive(tmp_path: Path, model) -> None:
    reg = ModelRegistry(tmp_path)
    save(reg, model)
    marker = tmp_path / "pneumonia" / "1" / UNFINISHED_FILE
    marker.write_text(json.dumps({"pid": 4242}))  # as another process's save wrote it
    child = _hold_in_child(marker)
    try:
        assert reg.unfinished("pneumonia", 1) == "being written"
        with pytest.raises(ModelUnfinishedError, match=r"still being written .*process 4242"):
            reg.finish("pneumonia:1")
        assert marker.exists()
    finally:
        _stop(child)
    assert reg.unfinished("pneumonia", 1) == "abandoned"
    reg.finish("pneumonia:1")
    assert not marker.exists()


def test_leftovers_under_staging_are_removed_but_not_a_live_writers(tmp_path: Path, model) -> None:
    staging = tmp_path / STAGING_DIR
    dead = staging / "pneumonia-0123456789abcdef"
    dead.mkdir(parents=True)
    (dead / "model.keras").write_bytes(b"half a model")
    stray = staging / "detector.npz"
    stray.write_bytes(b"half a detector")
    live = staging / "pneumonia-fedcba9876543210"
    live.mkdir()
    (live / "model.keras").write_bytes(b"being written")
    child = _hold_in_child(live)
    try:
        reg = ModelRegistry(tmp_path)
        save(reg, model)
        assert not dead.exists() and not stray.exists()
        assert (live / "model.keras").read_bytes() == b"being written"
        ours = reg.staging_dir("pneumonia")  # held by this process: a second sweep keeps it
        reg.staging_dir("pneumonia").rmdir()
        assert ours.is_dir() and live.is_dir()
    finally:
        _stop(child)
    ours.rmdir()
    save(ModelRegistry(tmp_path), model)
    assert sorted(p.name for p in staging.iterdir()) == []


def test_the_service_refuses_an_unfinished_version_named_and_serves_the_one_before(
    tmp_path: Path, model
) -> None:
    from radlens.app.startup import check_model
    from tests.app.conftest import make_settings

    reg = ModelRegistry(tmp_path)
    save(reg, model)
    save(reg, model, finish_later=True)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with pytest.raises(ModelUnfinishedError, match=r"pneumonia:2 is unfinished"):
        check_model(make_settings(url, tmp_path, model="pneumonia:2", ood="off"))
    assert check_model(make_settings(url, tmp_path, ood="off")).version == 1
    assert check_model(make_settings(url, tmp_path, model="pneumonia", ood="off")).version == 1


def test_make_run_trains_again_when_the_store_holds_only_an_abandoned_version(
    tmp_path: Path, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` killed while its demo training fitted the detector: the next `make run`
    found the store "not empty", skipped training, and start-up then found no model to serve."""
    from scripts import quickstart

    reg = ModelRegistry(tmp_path)
    save(reg, model)
    (tmp_path / "pneumonia" / "1" / UNFINISHED_FILE).write_text("{}")  # its run died
    monkeypatch.setenv("RADLENS_MODEL_STORE", str(tmp_path))
    assert quickstart.store_is_empty()
    reg.finish("pneumonia:1")
    assert not quickstart.store_is_empty()


def test_a_store_without_flock_still_finishes_and_tells_abandoned_by_the_pid(
    tmp_path: Path, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where flock(LOCK_EX) on a read-only descriptor fails (NFSv4: EBADF), the saving
    process did not count as holding its own marker, and finish() refused with "still being
    written by its training run": every train failed at its end (QA round 34). The marker's
    pid then tells a live writer from a dead one."""
    import errno
    import fcntl
    import os

    real = fcntl.flock

    def no_flock(fd: int, op: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/.lock"):  # the store's lock file
            return real(fd, op)
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(registry_module.fcntl, "flock", no_flock)
    reg = ModelRegistry(tmp_path)
    saved = save(reg, model, finish_later=True)
    assert reg.unfinished("pneumonia", 1) == "being written"
    assert reg.finish(saved.ref).version == 1  # the saver finishes its own version
    assert reg.unfinished("pneumonia", 1) is None
    marker = tmp_path / "pneumonia" / "1" / UNFINISHED_FILE
    marker.write_text(json.dumps({"pid": os.getpid()}))  # another registry's, alive
    assert reg.unfinished("pneumonia", 1) == "being written"
    with pytest.raises(ModelUnfinishedError, match="still being written"):
        reg.finish("pneumonia:1")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    marker.write_text(json.dumps({"pid": int(dead.stdout)}))
    assert reg.unfinished("pneumonia", 1) == "abandoned"
    reg.finish("pneumonia:1")
    assert not marker.exists()


def test_removing_a_staging_dir_drops_its_lock(tmp_path: Path) -> None:
    """Each staging_dir() the OOD fit and the OpenVINO conversion removed by hand kept its
    lock's descriptor open for the life of the process (QA round 34)."""
    reg = ModelRegistry(tmp_path)
    before = len(registry_module._HELD)
    for _ in range(3):
        staging = reg.staging_dir("pneumonia")
        (staging / "detector.npz").write_bytes(b"x")
        reg.remove_staging(staging)
        assert not staging.exists()
    assert len(registry_module._HELD) == before

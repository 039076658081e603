"""`radlens serve`: a bad address, port or spool directory (HTTP and DICOM) and a bad model store
stop the command in one line naming the variable (or the flag), before the model is loaded;
a variable a flag overrides is ignored, also by the served app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radlens.cli.main import main
from tests.app.conftest import save_tiny_model
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def clean_env(clean_radlens_env: None) -> None:
    """Every test here starts from no RADLENS_ variables (tests/conftest.py)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store")
    save_tiny_model(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def busy_port() -> Iterator[int]:
    """A port another process (here: this test) is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a directory")
    return path


@pytest.fixture()
def serve_env(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A service that would start: migrated-on-start SQLite, the tiny model, a free port; and
    uvicorn.run replaced by a failure, since reaching it means the model would load before
    the problem is found."""
    import uvicorn

    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("uvicorn.run reached: the problem was not found before the model")

    monkeypatch.setattr(uvicorn, "run", reached)
    env = {
        "RADLENS_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'radlens.db'}",
        "RADLENS_MODEL_STORE": str(store),
        "RADLENS_PORT": str(free_port()),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("radlens: error: "), err
    assert "Traceback" not in err
    return lines[0]


def serve_fails(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    *args: str,
) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    status = main(["serve", *args])
    line = one_error_line(capsys.readouterr().err)
    assert status == 2, line
    return line


class TestHttpListener:
    def test_host_that_does_not_resolve(
        self, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
    ) -> None:
        line = serve_fails(monkeypatch, capsys, {"RADLENS_HOST": "not a host"})
        assert "RADLENS_HOST='not a host'" in line and "127.0.0.1" in line

    def test_host_flag_is_named_when_it_is_the_flag(
        self, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
    ) -> None:
        line = serve_fails(monkeypatch, capsys, {}, "--host", "not-a-host.invalid")
        assert "--host 'not-a-host.invalid'" in line and "RADLENS_HOST" not in line

    def test_address_not_of_this_machine(
        self, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
    ) -> None:
        line = serve_fails(monkeypatch, capsys, {"RADLENS_HOST": "192.0.2.1"})  # TEST-NET-1
        assert "RADLENS_HOST='192.0.2.1'" in line and "not an address of this machine" in line

    def test_port_in_use(
        self,
        serve_env: dict[str, str],
        busy_port: int,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        line = serve_fails(monkeypatch, capsys, {"RADLENS_PORT": str(busy_port)})
        assert f"RADLENS_PORT={busy_port}" in line and "already in use" in line

    def test_port_flag_in_use(
        self,
        serve_env: dict[str, str],
        busy_port: int,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        line = serve_fails(monkeypatch, capsys, {}, "--port", str(busy_port))
        assert f"--port {busy_port}" in line and "already in use" in line

    def test_port_taken_while_the_model_loads_is_named_after_uvicorn_stops(
        self, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
    ) -> None:
        """uvicorn binds after the lifespan: a port taken in between (the pre-flight's race)
        stops uvicorn with its own errno line; the command then names the variable."""
        import uvicorn

        port = int(serve_env["RADLENS_PORT"])
        taken: list[socket.socket] = []

        def run(*args: Any, **kwargs: Any) -> None:
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
            taken.append(sock)
            raise SystemExit(1)  # what uvicorn does when its bind fails

        monkeypatch.setattr(uvicorn, "run", run)
        try:
            assert main(["serve"]) == 2
        finally:
            for sock in taken:
                sock.close()
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert line.startswith("radlens: error: ") and "Traceback" not in err
        assert f"RADLENS_PORT={port}" in line and "already in use" in line


class TestDimseListener:
    def test_bind_that_does_not_resolve(
        self, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
    ) -> None:
        env = {"RADLENS_DIMSE_PORT": str(free_port()), "RADLENS_DIMSE_BIND": "not-an-ip"}
        line = serve_fails(monkeypatch, capsys, env)
        assert "RADLENS_DIMSE_BIND='not-an-ip'" in line

    def test_port_in_use(
        self,
        serve_env: dict[str, str],
        busy_port: int,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        line = serve_fails(monkeypatch, capsys, {"RADLENS_DIMSE_PORT": str(busy_port)})
        assert f"RADLENS_DIMSE_PORT={busy_port}" in line and "already in use" in line

    def test_same_port_as_the_http_service(
        self, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
    ) -> None:
        env = {"RADLENS_DIMSE_PORT": serve_env["RADLENS_PORT"]}
        line = serve_fails(monkeypatch, capsys, env)
        assert f"RADLENS_DIMSE_PORT={env['RADLENS_DIMSE_PORT']}" in line
        assert "RADLENS_PORT" in line

    def test_tls_files_that_are_not_pem(
        self,
        serve_env: dict[str, str],
        a_file: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        env = {
            "RADLENS_DIMSE_PORT": str(free_port()),
            "RADLENS_DIMSE_TLS_CERT": str(a_file),
            "RADLENS_DIMSE_TLS_KEY": str(a_file),
        }
        line = serve_fails(monkeypatch, capsys, env)
        assert f"RADLENS_DIMSE_TLS_CERT='{a_file}'" in line and "not a PEM certificate" in line


class TestSpoolDirectories:
    def test_dimse_inbox_under_a_file(
        self,
        serve_env: dict[str, str],
        a_file: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        env = {
            "RADLENS_DIMSE_PORT": str(free_port()),
            "RADLENS_DIMSE_ACK": "queued",
            "RADLENS_DIMSE_INBOX_DIR": str(a_file / "inbox"),
        }
        line = serve_fails(monkeypatch, capsys, env)
        assert f"RADLENS_DIMSE_INBOX_DIR='{a_file / 'inbox'}'" in line
        assert "Not a directory" in line

    def test_outbox_under_a_file(
        self,
        serve_env: dict[str, str],
        a_file: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        env = {
            "RADLENS_DICOM_DESTINATIONS": "PACS@127.0.0.1:8725/sr",
            "RADLENS_DICOM_OUTBOX_DIR": str(a_file / "outbox"),
        }
        line = serve_fails(monkeypatch, capsys, env)
        assert f"RADLENS_DICOM_OUTBOX_DIR='{a_file / 'outbox'}'" in line

    def test_unused_spools_are_not_checked(
        self,
        serve_env: dict[str, str],
        a_file: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        """No destinations and no queued DIMSE: their directories are not the service's."""
        import uvicorn

        monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
        monkeypatch.setenv("RADLENS_DIMSE_INBOX_DIR", str(a_file / "inbox"))
        monkeypatch.setenv("RADLENS_DICOM_OUTBOX_DIR", str(a_file / "outbox"))
        assert main(["serve"]) == 0, capsys.readouterr().err


class TestModelStore:
    def test_a_regular_file(
        self,
        serve_env: dict[str, str],
        a_file: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        line = serve_fails(monkeypatch, capsys, {"RADLENS_MODEL_STORE": str(a_file)})
        assert "RADLENS_MODEL_STORE" in line and "must be a directory" in line
        assert str(a_file) in line

    def test_missing(
        self,
        serve_env: dict[str, str],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: Any,
    ) -> None:
        missing = tmp_path / "nonexistent"
        line = serve_fails(monkeypatch, capsys, {"RADLENS_MODEL_STORE": str(missing)})
        assert f"RADLENS_MODEL_STORE={missing}" in line and "does not exist" in line
        assert "radlens train" in line


class TestFlagsOverrideTheEnvironment:
    def test_the_served_app_reads_the_flags_not_the_overridden_variables(
        self, serve_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
    ) -> None:
        """The app factory reads the settings from the environment again (in uvicorn, in every
        worker): a variable a flag overrides must not stop it."""
        import uvicorn

        from radlens.app.settings import Settings

        seen: dict[str, Any] = {}

        def run(*args: Any, **kwargs: Any) -> None:
            settings = Settings()  # what create_app's get_settings() reads
            seen.update(host=settings.host, port=settings.port, workers=settings.workers)
            seen.update(kwargs)

        monkeypatch.setattr(uvicorn, "run", run)
        monkeypatch.setenv("RADLENS_PORT", "99999")
        monkeypatch.setenv("RADLENS_HOST", "not a host")
        monkeypatch.setenv("RADLENS_WORKERS", "0")
        port = free_port()
        assert main(["serve", "--port", str(port), "--host", "127.0.0.1", "--workers", "1"]) == 0
        assert (seen["host"], seen["port"], seen["workers"]) == ("127.0.0.1", port, 1)
        assert (seen["host"], seen["port"]) == ("127.0.0.1", port)
        # and the environment is the caller's again afterwards
        assert os.environ["RADLENS_PORT"] == "99999"
        assert os.environ["RADLENS_HOST"] == "not a host"
        assert os.environ["RADLENS_WORKERS"] == "0"


def _serve(tmp_path: Path, store: Path, extra: dict[str, str], *args: str) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RADLENS_")},
        "RADLENS_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'radlens.db'}",
        "RADLENS_MODEL_STORE": str(store),
        "RADLENS_DEVICE": "cpu",
        "RADLENS_AUTH": "disabled",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": str(REPO_ROOT),
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "radlens.cli.main", "serve", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_bad_dimse_bind_stops_the_real_command_in_one_line(tmp_path: Path, store: Path) -> None:
    """The QA run's command, in a process: one line, exit 2, no traceback, no model load."""
    extra = {
        "RADLENS_PORT": str(free_port()),
        "RADLENS_DIMSE_PORT": str(free_port()),
        "RADLENS_DIMSE_BIND": "not-an-ip",
    }
    proc = _serve(tmp_path, store, extra)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    line = one_error_line(out)
    assert "RADLENS_DIMSE_BIND='not-an-ip'" in line


@pytest.mark.slow
def test_flags_win_over_bad_variables_in_a_real_server(tmp_path: Path, store: Path) -> None:
    """`RADLENS_PORT=99999 radlens serve --port N` serves on N (the QA run: an internal error
    after the model loaded, from the app's own reading of the environment)."""
    import httpx

    port = free_port()
    extra = {"RADLENS_PORT": "99999", "RADLENS_HOST": "not a host"}
    proc = _serve(tmp_path, store, extra, "--host", "127.0.0.1", "--port", str(port))
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert ready is not None and ready.status_code == 200, out
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "internal error" not in out

"""`radlens db upgrade|downgrade|current` and `radlens serve` (pre-flight failures in one line,
and one real server process)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radlens.cli.main import main
from tests.app.conftest import (
    Databases,
    dicom_bytes,
    png_bytes,
    postgres_available,
    save_tiny_model,
)
from tests.app.test_api import MARKERS
from tests.conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def clean_env(clean_radlens_env: None) -> None:
    """Every test here starts from no RADLENS_ variables (tests/conftest.py)."""


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'radlens.db'}"


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("radlens: error: ")
    return lines[0]


class TestDb:
    def test_upgrade_current_downgrade(
        self, sqlite_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from radlens.app.migrate import head_revision

        head = head_revision()
        assert main(["db", "current", "--database-url", sqlite_url]) == 0
        assert f"current: none (empty database); head: {head}" in capsys.readouterr().out
        assert main(["db", "upgrade", "--database-url", sqlite_url]) == 0
        assert "upgraded to head" in capsys.readouterr().out
        assert main(["db", "current", "--database-url", sqlite_url]) == 0
        assert f"current: {head}; head: {head} (up to date)" in capsys.readouterr().out
        assert main(["db", "downgrade", "base", "--database-url", sqlite_url]) == 0
        assert main(["db", "current", "--database-url", sqlite_url]) == 0
        assert "current: none" in capsys.readouterr().out

    def test_url_from_environment_and_any_cwd(
        self,
        sqlite_url: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("RADLENS_DATABASE_URL", sqlite_url)
        monkeypatch.chdir(tmp_path)
        assert main(["db", "upgrade", "--revision", "head"]) == 0
        assert main(["db", "current"]) == 0
        assert "(up to date)" in capsys.readouterr().out

    def test_unknown_revision_is_one_line(
        self, sqlite_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["db", "downgrade", "nonsense", "--database-url", sqlite_url]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "nonsense" in line

    def test_bad_url_is_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["db", "upgrade", "--database-url", "mysql://x@y/z"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "RADLENS_DATABASE_URL" in line and "mysql" in line

    def test_unreachable_server_is_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
        assert main(["db", "upgrade", "--database-url", url]) == 2
        assert "cannot be reached" in one_error_line(capsys.readouterr().err)


class TestServePreflight:
    def test_empty_store(
        self,
        sqlite_url: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("RADLENS_DATABASE_URL", sqlite_url)
        monkeypatch.setenv("RADLENS_MODEL_STORE", str(tmp_path / "store"))
        assert main(["serve"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "No such model" in line and str(tmp_path / "store") in line

    def test_corrupt_model(
        self,
        sqlite_url: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        store = tmp_path / "store"
        save_tiny_model(store)
        with open(store / "tiny" / "1" / "model.keras", "ab") as fh:
            fh.write(b"x")
        monkeypatch.setenv("RADLENS_DATABASE_URL", sqlite_url)
        monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
        assert main(["serve"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "corrupt" in line and "sha256" in line

    def test_operating_point_with_a_multi_label_model(
        self,
        sqlite_url: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        from tests.app.test_findings_api import save_findings_model

        store = tmp_path / "store"
        save_findings_model(store)
        monkeypatch.setenv("RADLENS_DATABASE_URL", sqlite_url)
        monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
        monkeypatch.setenv("RADLENS_MODEL", "findings")
        monkeypatch.setenv("RADLENS_OPERATING_POINT", "sens95")
        assert main(["serve"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "is multi-label" in line and "Unset RADLENS_OPERATING_POINT" in line

    def test_bad_option_value(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["serve", "--port", "70000"]) == 2
        assert "RADLENS_PORT" in one_error_line(capsys.readouterr().err)

    def test_unmigrated_postgres(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        reason = postgres_available()
        if reason is not None:
            pytest.skip(reason)
        import uuid

        import psycopg

        name = f"radlens_test_{uuid.uuid4().hex[:16]}"
        admin = "postgresql://postgres@127.0.0.1:5432/test"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            monkeypatch.setenv(
                "RADLENS_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
            )
            monkeypatch.setenv("RADLENS_MODEL_STORE", str(tmp_path / "store"))
            assert main(["serve"]) == 2
            assert "run `radlens db upgrade`" in one_error_line(capsys.readouterr().err)
        finally:
            Databases("postgresql", tmp_path, [name]).drop_all()  # in the background


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_runs_uvicorn_on_the_factory(tmp_path: Path) -> None:
    import httpx

    store = tmp_path / "store"
    save_tiny_model(store)
    port = _free_port()
    env = {
        **os.environ,
        "RADLENS_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'radlens.db'}",
        "RADLENS_MODEL_STORE": str(store),
        "RADLENS_DEVICE": "cpu",
        "RADLENS_LOG_LEVEL": "debug",
        "RADLENS_ACCESS_LOG": "true",  # off by default; on here so its lines are checked too
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    from radlens.app.migrate import upgrade
    from tests.app.conftest import create_api_key

    upgrade(env["RADLENS_DATABASE_URL"])
    auth = {"Authorization": f"Bearer {create_api_key(env['RADLENS_DATABASE_URL'])}"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "radlens.cli.main", "serve", "--port", str(port)],
            cwd=tmp_path,  # any directory: migrations and the app come from the package
            env={**env, "PYTHONPATH": str(REPO_ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, log.read_text()
        upload = {"file": ("a.png", png_bytes())}
        assert httpx.post(f"{base}/v1/predictions", files=upload, timeout=30).status_code == 401
        response = httpx.post(f"{base}/v1/predictions", files=upload, headers=auth, timeout=30)
        assert response.status_code == 201, response.text
        location = f"{base}/v1/predictions/{response.json()['id']}"
        assert httpx.get(location, headers=auth).status_code == 200
        phi = dicom_bytes(patient=MARKERS)
        response = httpx.post(
            f"{base}/v1/predictions", files={"file": ("p.dcm", phi)}, headers=auth, timeout=30
        )
        assert response.status_code == 201, response.text
        bad = httpx.post(
            f"{base}/v1/predictions",
            files={"file": ("p.dcm", phi[:-100])},
            headers=auth,
            timeout=30,
        )
        assert bad.status_code == 422, bad.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "radlens: serving model tiny:1" in text
    assert "Traceback" not in text
    assert '"POST /v1/predictions HTTP/1.1" 201' in text  # uvicorn's access log line
    for marker in MARKERS.values():  # the server's logs, access log and debug level: no PHI
        assert marker not in text

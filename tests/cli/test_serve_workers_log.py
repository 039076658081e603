"""`radlens serve --workers N` logs radlens' own lines from every worker (QA round 26).

uvicorn spawns the workers as new processes; the logging `serve` set up (basicConfig) lived only
in the parent, so a worker's root logger had no handler: radlens' INFO lines ("ready: model
...", "request abandoned", STOW-RS summaries) were lost, and its warnings came out through
Python's last-resort handler without level or logger name. `serve` now hands uvicorn a logging
configuration (uvicorn's own plus a root handler in radlens' format), which uvicorn applies in
each worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radlens.cli.service_cmds import LOG_FORMAT, log_config
from tests.app.conftest import save_tiny_model
from tests.conftest import REPO_ROOT

START_TIMEOUT_S = 300  # two TensorFlow imports at once on a busy 2-core machine


def test_the_config_keeps_uvicorns_loggers_and_adds_radlens_root_handler() -> None:
    config = log_config("INFO")
    assert {"uvicorn", "uvicorn.error", "uvicorn.access"} <= set(config["loggers"])
    assert config["root"] == {"handlers": ["radlens"], "level": "INFO"}
    assert config["formatters"]["radlens"] == {"format": LOG_FORMAT}
    assert log_config("INFO") == config and log_config("INFO") is not config  # a copy each time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_every_worker_logs_its_ready_line(tmp_path: Path) -> None:
    from radlens.app.migrate import upgrade

    store = tmp_path / "store"
    save_tiny_model(store)
    url = f"sqlite:///{tmp_path / 'radlens.db'}"
    upgrade(url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RADLENS_")},
        "RADLENS_DATABASE_URL": url,
        "RADLENS_MODEL_STORE": str(store),
        "RADLENS_DEVICE": "cpu",
        "RADLENS_INFERENCE_STREAMS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = tmp_path / "serve.log"
    code = "from radlens.cli.main import main; main()"
    args = ["serve", "--host", "127.0.0.1", "--port", str(_free_port()), "--workers", "2"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            ready: list[str] = []
            while time.monotonic() < deadline and process.poll() is None:
                lines = log.read_text(errors="replace").splitlines()
                ready = [line for line in lines if "radlens.app.main: ready: model tiny:1" in line]
                if len(ready) == 2:
                    break
                time.sleep(1)
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert len(ready) == 2, text[-3000:]
    assert all(line.startswith("INFO:     radlens.app.main: ready") for line in ready)
    assert text.count("Started server process") == 2

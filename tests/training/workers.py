"""Helpers for tests that start TensorFlow worker processes on localhost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from typing import Any

import pytest

from tests.conftest import REPO_ROOT


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free right now (bound together so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def worker_env(tf_config: str | None = None) -> dict[str, str]:
    """The environment for a CPU-only worker process, with TF_CONFIG when given."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    return env


def collect_outputs(
    processes: dict[str, subprocess.Popen[str]], timeout: float, *, json_out: bool = True
) -> dict[str, Any]:
    """Wait for each worker process and (``json_out``) read the JSON object its stdout ends
    with, by name; kill whatever is left and fail the test (naming each process and its
    stderr's tail) when one times out or exits non-zero."""
    outputs: dict[str, Any] = {}
    errors: list[str] = []
    try:
        for name, process in processes.items():
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                errors.append(f"{name} did not finish in {timeout} s")
                break
            if process.returncode != 0:
                errors.append(f"{name} exited {process.returncode}: {stderr[-3000:]}")
                continue
            if json_out:
                outputs[name] = json.loads(stdout[stdout.index("{") :])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    if errors:
        pytest.fail("; ".join(errors))
    return outputs

"""Helpers for tests that start TensorFlow worker processes on localhost."""

from __future__ import annotations

import os
import socket

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

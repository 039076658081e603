"""``radlens train`` on one process vs two MultiWorkerMirroredStrategy workers on loopback.

    python -m bench.multiworker [--epochs 3] [--image-size 64] [--n-per-class 60]

Writes ``radlens demo-data`` to a temporary folder, then trains the same recipe (the small
CNN, the same global batch, seed and data) twice: once as one process (``--strategy
default``, Keras ``fit``), once as two worker processes started together with their own
``TF_CONFIG`` on free 127.0.0.1 ports (``--strategy multiworker``, the custom
``strategy.run`` loop; docs/distributed-training.md). It prints each run's wall time, the
ratio, and checks that only the chief exported (one model version) and that the other worker
wrote its run files beside the chief's (``<run>.worker1``). On one 2-core machine the two
workers share the cores the single process had, so the ratio measures the collective
all-reduce's overhead, not a speed-up. Prints the CPU model. Never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.serve import cpu_model

REPO_ROOT = Path(__file__).resolve().parent.parent
RADLENS = [sys.executable, "-c", "from radlens.cli.main import main; main()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", "RADLENS_PATIENT_HASH_KEY": "bench" * 8, **extra}


def _tf_config(workers: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _train_args(args: argparse.Namespace, data: Path, root: Path, strategy: str) -> list[str]:
    return [
        *RADLENS, "train", "--data", str(data), "--arch", "simple_cnn",
        "--image-size", str(args.image_size), "--epochs", str(args.epochs),
        "--batch-size", "16", "--patience", "0", "--seed", "3", "--no-openvino",
        "--no-augment", "--min-calibration-positives", "2", "--strategy", strategy,
        "--name", f"bench-{strategy}", "--store", str(root / "store"),
        "--runs-dir", str(root / "runs"), "--json",
    ]  # fmt: skip


def _run(commands: list[tuple[list[str], dict[str, str]]], timeout: float) -> float:
    """Start every command at once; the wall time until the last ends (each must exit 0)."""
    t0 = time.perf_counter()
    processes = [
        subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for cmd, env in commands
    ]
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        if process.returncode != 0:
            tail = (err or out).decode(errors="replace").strip().splitlines()[-3:]
            raise SystemExit(f"bench.multiworker: a run failed: {' | '.join(tail)}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-per-class", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-multiworker-") as tmp:
        root = Path(tmp)
        data = root / "demo"
        subprocess.run(
            [*RADLENS, "demo-data", str(data), "--n-per-class", str(args.n_per_class),
             "--size", str(args.image_size)],
            cwd=REPO_ROOT, env=_env(), check=True, capture_output=True,
        )  # fmt: skip
        single = _run([(_train_args(args, data, root / "one", "default"), _env())], args.timeout)
        print(f"1 process (default strategy, fit): {single:.1f} s", flush=True)
        workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
        commands = [
            (
                _train_args(args, data, root / "two", "multiworker"),
                _env(TF_CONFIG=_tf_config(workers, i)),
            )
            for i in range(2)
        ]
        double = _run(commands, args.timeout)
        print(f"2 workers (multiworker, TF_CONFIG on loopback): {double:.1f} s", flush=True)
        versions = sorted(p.name for p in (root / "two" / "store").glob("*/*") if p.is_dir())
        runs = sorted(p.name for p in (root / "two" / "runs").iterdir())
        print(f"model versions exported by the 2 workers: {versions}; run folders: {runs}")
        if len(versions) != 1 or not any(name.endswith(".worker1") for name in runs):
            raise SystemExit(
                "bench.multiworker: expected one export (the chief's) and a .worker1 run"
            )
        print(
            f"{args.epochs} epochs, {2 * args.n_per_class} images at {args.image_size} px: "
            f"2 workers take {double / single:.2f}x the single process's wall time"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

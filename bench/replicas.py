"""Throughput of 1 vs N ``radlens serve`` processes on one PostgreSQL database (issue 22).

    python -m bench.replicas [--replicas 2] [--seconds 30] [--clients 16] [--rounds 2]

Each round starts 1 replica, then N, of this checkout's code on free loopback ports, sharing
a fresh PostgreSQL database (created on 127.0.0.1:5432 and dropped at the end) and one model
store holding the bench ResNet50 (224 px, weights=None, as bench/serve.py); clients post
distinct 256x256 PNGs round-robin over the replicas for a fixed time after a warm-up. It
prints predictions per second for each and the ratio N:1 measured in the same round, with
the CPU model and load average: on a 2-core machine the second process competes for the
same cores as the first, so the ratio shows what replicas cost there, not what they give on
more cores. Never a test.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from bench.serve import cpu_model, save_model

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _create_key(database_url: str) -> str:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.keys import create_key

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            key = create_key(session, name="bench-replicas", scopes="predict,read")
            session.commit()
            return key.secret
    finally:
        engine.dispose()


def _start(count: int, database_url: str, store: Path, logs: Path) -> list[tuple]:
    replicas = []
    for i in range(count):
        port = _free_port()
        env = {
            **os.environ,
            "RADLENS_DATABASE_URL": database_url,
            "RADLENS_MODEL_STORE": str(store),
            "RADLENS_DEVICE": "cpu",
            "RADLENS_RUNTIME": "tensorflow",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        log = (logs / f"replica-{count}-{i}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-c", "from radlens.cli.main import main; main()", "serve",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        replicas.append((process, f"http://127.0.0.1:{port}", log))
    deadline = time.monotonic() + 300
    for process, base, _ in replicas:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench.replicas: a replica did not start; see {logs}")
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    return replicas


def _stop(replicas: list[tuple]) -> None:
    for process, _, log in replicas:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _load(bases: list[str], key: str, clients: int, seconds: float, seed: int) -> float:
    """Predictions per second stored by ``clients`` threads posting for ``seconds``."""
    counts = [0] * clients
    errors: list[str] = []
    stop_at = [0.0]
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        rng = np.random.default_rng(seed * 1000 + index)
        base = bases[index % len(bases)]
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            start.wait()
            while time.monotonic() < stop_at[0]:
                response = http.post(f"{base}/v1/predictions", files={"file": ("x.png", _png(rng))})
                if response.status_code == 201:
                    counts[index] += 1
                else:
                    errors.append(f"{response.status_code} {response.text[:120]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + seconds
    t0 = time.monotonic()
    start.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"bench.replicas: {len(errors)} failed uploads, e.g. {errors[0]}")
    return sum(counts) / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.replicas < 2 or args.clients < args.replicas:
        parser.error("--replicas must be >= 2 and --clients >= --replicas")

    import psycopg

    from radlens.app.migrate import upgrade

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; load average {os.getloadavg()}")
    name = f"radlens_bench_replicas_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
            store = Path(tmp) / "store"
            print(f"model: {save_model(store)} (ResNet50 224 px, weights=None)", flush=True)
            upgrade(url)
            key = _create_key(url)
            results: dict[int, list[float]] = {1: [], args.replicas: []}
            for round_ in range(args.rounds):
                for count in (1, args.replicas):
                    replicas = _start(count, url, store, Path(tmp))
                    try:
                        bases = [base for _, base, _ in replicas]
                        # fresh seeds every time: a repeated image would be a dedupe hit (200)
                        seeds = 2 * (round_ * 2 + (count > 1))
                        _load(bases, key, args.clients, args.warmup_seconds, seed=seeds)
                        rate = _load(bases, key, args.clients, args.seconds, seed=seeds + 1)
                    finally:
                        _stop(replicas)
                    results[count].append(rate)
                    print(
                        f"round {round_ + 1}: {count} process(es), {args.clients} clients: "
                        f"{rate:.2f} predictions/s; load average {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
            for round_ in range(args.rounds):
                one, many = results[1][round_], results[args.replicas][round_]
                print(f"round {round_ + 1}: {args.replicas} vs 1 process: {many / one:.3f}x")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

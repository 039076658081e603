"""What the shared (database) rate limiter costs per request, against the in-memory one and none.

Not a test. Run from the repository root (figures: docs/benchmarks/ratelimit.md):

    .venv/bin/python -m bench.ratelimit                         # SQLite file + PostgreSQL
    .venv/bin/python -m bench.ratelimit --calls 2000 --requests 400 --rounds 5

Two levels, each measured on a SQLite file and a PostgreSQL database (127.0.0.1:5432, skipped
with the reason when unreachable) in the same run, the variants interleaved round by round so
a change in the machine's load hits all of them alike:

- ``acquire``: the limiter's own call, ``--calls`` per round: ``none`` (an empty function,
  the loop's overhead), ``memory`` (app/ratelimit.py ``RateLimiter``) and ``database``
  (``DatabaseRateLimiter``: one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``).
- ``request``: ``GET /v1/models`` through the real app (lifespan, API key checked and cached,
  the limiter charged, a thread hop for the database one) with Starlette's TestClient,
  ``--requests`` per round, the app's limiter set to none / memory / database in turn.

On PostgreSQL the ``acquire`` level is also measured on a second database whose
``rate_limit_buckets`` was made ``LOGGED`` again: what migration 0012's ``UNLOGGED`` saves
(a WAL flush per charge).

The limit is far above what the run spends (nothing is refused): the cost of a charge, not of
a refusal. Printed per variant: the median over rounds of wall-clock and of this process's CPU
time (``time.process_time``) per call, and their ratios to ``none`` and to ``memory``. The
PostgreSQL server's own CPU is another process and is not in the CPU column; the wall column
includes it. Prints the CPU model and the load average: on a shared machine wall time is noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.serve import cpu_model

LIMIT = 1_000_000  # per minute: never reached in a run
VARIANTS = ("none", "memory", "database")
LOGGED = "postgresql, table SET LOGGED"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@contextmanager
def databases(skip_postgres: bool) -> Iterator[list[tuple[str, str]]]:
    """(label, migrated URL) for a SQLite file and, when reachable, a PostgreSQL database."""
    from radlens.app.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as tmp:
        found = [("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}")]
        name = f"radlens_bench_rl_{uuid.uuid4().hex[:10]}"
        created = False
        if not skip_postgres:
            try:
                import psycopg

                with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                created = True
                found.append(("postgresql", PG_URL.format(name=name)))
                with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}_logged"')
                found.append((LOGGED, PG_URL.format(name=f"{name}_logged")))
            except Exception as exc:  # unreachable server: measure SQLite only, say why
                print(f"PostgreSQL skipped: {type(exc).__name__}: {exc}")
        try:
            for label, url in found:
                upgrade(url)
                if label == LOGGED:  # what 0012 would cost without UNLOGGED
                    from sqlalchemy import create_engine, text

                    engine = create_engine(url)
                    with engine.begin() as conn:
                        conn.execute(text("ALTER TABLE rate_limit_buckets SET LOGGED"))
                    engine.dispose()
            yield found
        finally:
            if created:
                import psycopg

                with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}_logged" WITH (FORCE)')


def _timed(calls: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds per call of ``fn`` over ``calls`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def _report(title: str, samples: dict[str, list[tuple[float, float]]]) -> None:
    medians = {
        v: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs))
        for v, runs in samples.items()
    }
    print(f"\n{title}")
    print(
        f"  {'variant':<9} {'wall us':>9} {'CPU us':>9}  {'wall/none':>9} {'wall/mem':>9}"
        f"  {'CPU/none':>9} {'CPU/mem':>9}"
    )
    none, memory = medians["none"], medians["memory"]
    for variant, (wall, cpu) in medians.items():
        print(
            f"  {variant:<9} {wall * 1e6:9.1f} {cpu * 1e6:9.1f}"
            f"  {wall / none[0]:9.2f} {wall / memory[0]:9.2f}"
            f"  {cpu / max(none[1], 1e-9):9.2f} {cpu / max(memory[1], 1e-9):9.2f}"
        )


def bench_acquire(url: str, calls: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    from radlens.app.db import make_engine
    from radlens.app.ratelimit import DatabaseRateLimiter, RateLimiter

    engine = make_engine(url)
    try:
        memory = RateLimiter(LIMIT)
        database = DatabaseRateLimiter(LIMIT, engine)
        database.acquire("warm-up")  # the pool's first connection and the compiled statement
        key = f"bench-{uuid.uuid4().hex[:8]}"
        fns: dict[str, Callable[[], object]] = {
            "none": lambda: None,
            "memory": lambda: memory.acquire(key),
            "database": lambda: database.acquire(key),
        }
        samples: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:
                samples[variant].append(_timed(calls, fns[variant]))
        return samples
    finally:
        engine.dispose()


def bench_requests(
    url: str, store: Path, requests: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    from fastapi.testclient import TestClient

    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.keys import create_key
    from radlens.app.main import create_app
    from radlens.app.ratelimit import DatabaseRateLimiter, RateLimiter
    from radlens.app.settings import Settings

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            secret = create_key(session, name="bench", scopes="read").secret
            session.commit()
    finally:
        engine.dispose()
    settings = Settings(
        database_url=url,
        model_store=store,
        device="cpu",
        auth="enabled",
        auth_cache_ttl_s=300.0,  # the key is looked up once: the limiter is what differs
        rate_limit_per_minute=LIMIT,
    )
    app = create_app(settings)
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with TestClient(app, headers={"Authorization": f"Bearer {secret}"}) as client:
        limiters: dict[str, Any] = {
            "none": None,
            "memory": RateLimiter(LIMIT),
            "database": DatabaseRateLimiter(LIMIT, app.state.resources.engine),
        }

        def get() -> None:
            response = client.get("/v1/models")
            if response.status_code != 200:
                raise RuntimeError(f"GET /v1/models: {response.status_code} {response.text}")

        for variant in VARIANTS:  # warm up every path once
            app.state.rate_limiter = limiters[variant]
            get()
        for _ in range(rounds):
            for variant in VARIANTS:
                app.state.rate_limiter = limiters[variant]
                samples[variant].append(_timed(requests, get))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="acquire calls per round")
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average {os.getloadavg()}")
    print(f"acquire: {args.calls} calls x {args.rounds} rounds; request: {args.requests} x")
    from bench._reliability import save_small_model

    with tempfile.TemporaryDirectory(prefix="bench-ratelimit-store-") as store_dir:
        store = Path(store_dir)
        save_small_model(store, size=32)
        with databases(args.no_postgres) as found:
            for label, url in found:
                _report(f"{label}: acquire", bench_acquire(url, args.calls, args.rounds))
                if label == LOGGED:
                    continue  # the table's WAL is what differs: the acquire figures say it
                samples = bench_requests(url, store, args.requests, args.rounds)
                _report(f"{label}: GET /v1/models", samples)
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()

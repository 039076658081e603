"""Soak test (issue 7): many minutes of concurrent uploads, no failed request, bounded memory.

Not a test. Run from the repository root (figures: docs/benchmarks/reliability.md):

    .venv/bin/python -m bench.soak                       # 10 min, 16 clients, SQLite
    .venv/bin/python -m bench.soak --minutes 1           # a short smoke run
    .venv/bin/python -m bench.soak --database postgres   # a private PostgreSQL cluster

What it does: saves a small model (simple_cnn at 64 px by default, weights=None, so the two
shared cores are not saturated for ten minutes), migrates the database and creates an API key
with `radlens keys create`, starts the real service (uvicorn, loopback, API keys on), and
runs N concurrent closed-loop clients for the given time. Each client posts a fresh upload
(random PNGs and DICOMs with a new SOP Instance UID: nothing is de-duplicated) and, every
eighth request, reads its prediction back; it pauses ``--think-ms`` between requests. The
service's resident memory (VmRSS from /proc) is sampled every 5 s. Growth is measured from the
end of the warm-up (first minute: allocator pools, TensorFlow graph caches and the SQLAlchemy
pool fill up once) to the end. Afterwards the predictions table must hold one row per 201.

Pass: no failed request (any status other than 201 on POST and 200 on GET, or a transport
error) and RSS growth < 10 %. Exit status 0 on pass, 1 on fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._reliability import (
    Uploads,
    assert_auth_enforced,
    auth_headers,
    prepare_database,
    private_postgres,
    rss_bytes,
    save_small_model,
    start_service,
    stop_service,
    wait_ready,
)

MIB = 1024 * 1024


async def soak(base: str, pid: int, api_key: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    uploads = Uploads(size=args.size)
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    latencies: list[float] = []
    created = 0
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60.0
    headers = auth_headers(api_key)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal created
        n = 0
        while time.monotonic() < deadline:
            n += 1
            name, data = uploads.next()
            start = time.perf_counter()
            try:
                r = await client.post(
                    "/v1/predictions", files={"file": (name, data, "application/octet-stream")}
                )
            except httpx.HTTPError as exc:
                statuses["transport"] += 1
                failures.append(f"POST: {type(exc).__name__}: {exc}")
                continue
            latencies.append((time.perf_counter() - start) * 1000.0)
            statuses[f"POST {r.status_code}"] += 1
            if r.status_code != 201:
                failures.append(f"POST {r.status_code}: {r.text[:200]}")
                continue
            created += 1
            if n % 8 == 0:
                try:
                    g = await client.get(r.headers["location"])
                except httpx.HTTPError as exc:
                    statuses["transport"] += 1
                    failures.append(f"GET: {type(exc).__name__}: {exc}")
                    continue
                statuses[f"GET {g.status_code}"] += 1
                if g.status_code != 200 or g.json()["id"] != r.json()["id"]:
                    failures.append(f"GET {g.status_code}: {g.text[:200]}")
            if args.think_ms:
                await asyncio.sleep(args.think_ms / 1000.0)

    async def sampler() -> None:
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - t0, rss_bytes(pid)))
            await asyncio.sleep(5.0)
        samples.append((time.monotonic() - t0, rss_bytes(pid)))

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(
        base_url=base, timeout=60.0, limits=limits, headers=headers
    ) as client:
        await asyncio.gather(sampler(), *(client_loop(client) for _ in range(args.clients)))
    elapsed = time.monotonic() - t0
    return {
        "elapsed_s": elapsed,
        "statuses": dict(statuses),
        "failures": failures,
        "latencies_ms": latencies,
        "created": created,
        "samples": samples,
    }


def count_rows(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM predictions")).scalar_one())
    finally:
        engine.dispose()


def report(result: dict[str, Any], rows: int, args: argparse.Namespace) -> bool:
    samples = result["samples"]
    warm = [rss for t, rss in samples if t >= args.warmup_s] or [samples[-1][1]]
    baseline, final, peak = warm[0], samples[-1][1], max(rss for _, rss in samples)
    growth = (final - baseline) / baseline * 100.0
    # a least-squares slope over the post-warm-up samples: drift, not one noisy endpoint
    post = [(t, rss) for t, rss in samples if t >= args.warmup_s]
    slope_mib_per_min = 0.0
    if len(post) >= 3:
        ts = [t for t, _ in post]
        ys = [rss / MIB for _, rss in post]
        mt, my = statistics.fmean(ts), statistics.fmean(ys)
        num = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True))
        den = sum((t - mt) ** 2 for t in ts) or 1.0
        slope_mib_per_min = num / den * 60.0
    lat = sorted(result["latencies_ms"])

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    requests = sum(result["statuses"].values())
    print(f"soak: {args.clients} clients, {result['elapsed_s']:.0f} s, think {args.think_ms} ms")
    print(f"  model: {args.architecture} at {args.size} px; database: {args.database}; auth on")
    print(f"  requests: {requests} ({requests / result['elapsed_s']:.1f}/s)  {result['statuses']}")
    print(f"  POST latency ms: p50 {pct(0.5):.1f}  p95 {pct(0.95):.1f}  p99 {pct(0.99):.1f}")
    print(f"  failed requests: {len(result['failures'])}")
    for failure in result["failures"][:10]:
        print(f"    {failure}")
    print(
        f"  RSS MiB: first {samples[0][1] / MIB:.1f}, after warm-up ({args.warmup_s:.0f} s) "
        f"{baseline / MIB:.1f}, final {final / MIB:.1f}, peak {peak / MIB:.1f}; growth "
        f"{growth:+.2f} % (limit 10 %), trend {slope_mib_per_min:+.3f} MiB/min"
    )
    print(f"  rows in predictions: {rows}; 201 responses: {result['created']}")
    ok = not result["failures"] and growth < 10.0 and rows == result["created"]
    print("PASS" if ok else "FAIL")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--think-ms", type=float, default=50.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--architecture", default="simple_cnn", choices=["simple_cnn", "resnet50"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="radlens-soak-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        ref = save_small_model(store, args.architecture, args.size)
        with contextlib.ExitStack() as stack:
            if args.database == "postgres":
                url = stack.enter_context(private_postgres()).url
            else:
                url = f"sqlite:///{tmp / 'soak.db'}"
            api_key = prepare_database(url)
            service = start_service(tmp, store, ref, url, RADLENS_AUTH="enabled")
            try:
                ready_s = asyncio.run(wait_ready(service))
                print(f"service ready in {ready_s:.1f} s (pid {service.pid})")
                asyncio.run(assert_auth_enforced(service))
                result = asyncio.run(soak(service.base, service.pid, api_key, args))
            finally:
                stop_service(service)
            ok = report(result, count_rows(url), args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

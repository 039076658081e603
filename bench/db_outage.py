"""Database outage under load (issue 7): 503 + Retry-After while PostgreSQL is down, recovery
without a restart when it returns, and every 201 in the database afterwards.

Not a test. Run from the repository root (figures: docs/benchmarks/reliability.md):

    .venv/bin/python -m bench.db_outage                  # 20 s up, 30 s down, 30 s up
    .venv/bin/python -m bench.db_outage --outage-s 10    # shorter

It never touches the shared PostgreSQL on 5432: it initdb's a private throwaway cluster in a
temporary directory on a free port (as the postgres user when run as root), migrates it,
creates an API key with `radlens keys create`, and starts the real service against it
(uvicorn, loopback, auth on, a small simple_cnn model). Then ``--clients`` closed-loop clients
post fresh uploads while a prober reads /readyz every 0.5 s, through three phases:
before (the database up), outage (``pg_ctl stop -m fast``, which also ends the service's
pooled connections; started again after ``--outage-s``), after (the database back). Every
response is classified by when it was sent. At the end the cluster is stopped and deleted.

Pass when: no 5xx other than 503 and no transport error at any time; every response during
the outage is a 201 (one that started before the stop and committed) or a 503
application/problem+json with a Retry-After header; /readyz says 503 while the database is down
and 200 after; the same service process serves 201s again after the database returns, and
every prediction id that got a 201 is in the database afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench._reliability import (
    PrivatePostgres,
    Uploads,
    assert_auth_enforced,
    auth_headers,
    is_problem,
    prepare_database,
    private_postgres,
    save_small_model,
    start_service,
    stop_service,
    wait_ready,
)


@dataclass
class Record:
    sent: float  # seconds since the start of load
    done: float
    status: int  # 0 = transport error
    problem: bool = False
    retry_after: str | None = None
    prediction_id: str | None = None
    detail: str = ""


@dataclass
class Timeline:
    outage_start: float = float("inf")
    outage_end: float = float("inf")
    records: list[Record] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)

    def phase(self, t: float) -> str:
        if t < self.outage_start:
            return "before"
        if t < self.outage_end:
            return "outage"
        return "after"


async def run(base: str, pg: PrivatePostgres, key: str, args: argparse.Namespace) -> Timeline:
    import httpx

    timeline = Timeline()
    uploads = Uploads(size=args.size)
    t0 = time.monotonic()
    total = args.before_s + args.outage_s + args.after_s
    stop = asyncio.Event()

    def now() -> float:
        return time.monotonic() - t0

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            name, data = uploads.next()
            sent = now()
            try:
                r = await client.post(
                    "/v1/predictions", files={"file": (name, data, "application/octet-stream")}
                )
            except httpx.HTTPError as exc:
                timeline.records.append(Record(sent, now(), 0, detail=type(exc).__name__))
                continue
            record = Record(
                sent,
                now(),
                r.status_code,
                problem=is_problem(r),
                retry_after=r.headers.get("retry-after"),
                prediction_id=r.json().get("id") if r.status_code in (200, 201) else None,
                detail="" if r.status_code == 201 else r.text[:300],
            )
            timeline.records.append(record)
            if r.status_code == 503 and record.retry_after:
                # a well-behaved client honours Retry-After (bounded so the bench stays short)
                await asyncio.sleep(min(float(record.retry_after), 1.0))
            elif args.think_ms:
                await asyncio.sleep(args.think_ms / 1000.0)

    async def prober(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                r = await client.get("/readyz")
                status = r.status_code
                if status == 503 and not (is_problem(r) and r.headers.get("retry-after")):
                    status = -503  # reported as a failure: a 503 without problem or Retry-After
            except httpx.HTTPError:
                status = 0
            timeline.ready.append((now(), status))
            await asyncio.sleep(0.5)

    async def conductor() -> None:
        await asyncio.sleep(args.before_s)
        timeline.outage_start = now()
        await asyncio.to_thread(pg.stop, "fast")
        print(f"  database stopped at {timeline.outage_start:.1f} s")
        await asyncio.sleep(args.outage_s)
        await asyncio.to_thread(pg.start)
        timeline.outage_end = now()
        print(f"  database started at {timeline.outage_end:.1f} s")
        await asyncio.sleep(max(0.0, total - now()))
        stop.set()

    limits = httpx.Limits(max_connections=args.clients + 2)
    async with httpx.AsyncClient(
        base_url=base, timeout=30.0, limits=limits, headers=auth_headers(key)
    ) as client:
        await asyncio.gather(
            conductor(), prober(client), *(client_loop(client) for _ in range(args.clients))
        )
    return timeline


def stored_ids(database_url: str) -> set[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {str(row[0]) for row in conn.execute(text("SELECT id FROM predictions"))}
    finally:
        engine.dispose()


def report(timeline: Timeline, stored: set[str], same_pid: bool) -> bool:
    by_phase: dict[str, Counter[str]] = {
        "before": Counter(),
        "outage": Counter(),
        "after": Counter(),
    }
    bad: list[str] = []
    for r in timeline.records:
        phase = timeline.phase(r.sent)
        by_phase[phase][str(r.status)] += 1
        if r.status == 0 or (r.status >= 500 and r.status != 503):
            bad.append(f"{phase} {r.status}: {r.detail[:200]}")
        if r.status == 503 and not (r.problem and r.retry_after):
            bad.append(f"{phase} 503 without problem+json or Retry-After: {r.detail[:200]}")
        if r.status == 200:
            # an upload answered from the database ("already stored"): report which one
            earlier = any(
                o.status == 201 and o.prediction_id == r.prediction_id for o in timeline.records
            )
            print(
                f"    200 ({phase}, sent {r.sent:.2f} s, answered {r.done:.2f} s): id "
                f"{r.prediction_id}, {'a 201 earlier' if earlier else 'no 201 for it'}, "
                f"in the database: {r.prediction_id in stored}"
            )
        if r.status not in (0, 201, 503):
            bad.append(f"{phase} unexpected {r.status}: {r.detail[:200]}")
    ready_by_phase: dict[str, Counter[int]] = {
        "before": Counter(),
        "outage": Counter(),
        "after": Counter(),
    }
    for t, status in timeline.ready:
        ready_by_phase[timeline.phase(t)][status] += 1
    # recovery: first 201 sent after the database was back, and first /readyz 200
    after_201 = [
        r.done for r in timeline.records if r.sent >= timeline.outage_end and r.status == 201
    ]
    after_ready = [t for t, s in timeline.ready if t >= timeline.outage_end and s == 200]
    first_201 = min(after_201) - timeline.outage_end if after_201 else float("inf")
    first_ready = min(after_ready) - timeline.outage_end if after_ready else float("inf")
    # outage onset: the last 201 answered after the stop (a request that committed before it)
    during = [r for r in timeline.records if timeline.phase(r.sent) == "outage"]
    created = {r.prediction_id for r in timeline.records if r.status == 201 and r.prediction_id}
    missing = created - stored
    outage_len = timeline.outage_end - timeline.outage_start

    print(f"db_outage: outage {outage_len:.1f} s")
    for phase in ("before", "outage", "after"):
        responses, ready = dict(by_phase[phase]), dict(ready_by_phase[phase])
        print(f"  {phase:>6}: responses {responses}  /readyz {ready}")
    print(
        f"  outage responses: {len(during)}, of which 503 problem+json with Retry-After: "
        f"{sum(1 for r in during if r.status == 503 and r.problem and r.retry_after)}"
    )
    print(
        f"  recovery after the database returned: first 201 after {first_201:.2f} s, "
        f"/readyz 200 after {first_ready:.2f} s; same service process: {same_pid}"
    )
    print(
        f"  201 responses: {len(created)}; their ids in the database: "
        f"{len(created) - len(missing)}; rows in the database: {len(stored)}"
    )
    for line in bad[:10]:
        print(f"    {line}")
    ok = (
        not bad
        and not missing
        and same_pid
        and by_phase["outage"]["503"] > 0
        and ready_by_phase["outage"][503] > 0
        and ready_by_phase["outage"][200] == 0
    )
    ok = ok and first_201 < 30 and first_ready < 30 and by_phase["after"]["201"] > 0
    print("PASS" if ok else "FAIL")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-s", type=float, default=20.0)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--after-s", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--think-ms", type=float, default=50.0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="radlens-outage-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        ref = save_small_model(store, "simple_cnn", args.size)
        with private_postgres() as pg:
            print(f"private PostgreSQL on 127.0.0.1:{pg.port} in {pg.datadir}")
            key = prepare_database(pg.url)
            service = start_service(tmp, store, ref, pg.url, RADLENS_AUTH="enabled")
            try:
                asyncio.run(wait_ready(service))
                asyncio.run(assert_auth_enforced(service))
                pid = service.pid
                timeline = asyncio.run(run(service.base, pg, key, args))
                same_pid = service.proc.poll() is None and service.pid == pid
            finally:
                stop_service(service)
            ok = report(timeline, stored_ids(pg.url), same_pid)
            tail = service.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            if not ok and tail:
                print("  service log (last lines):\n    " + "\n    ".join(tail))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""SIGKILL in the middle of writes (issue 7): no partial rows, and the count adds up.

Not a test. Run from the repository root (figures: docs/benchmarks/reliability.md):

    .venv/bin/python -m bench.kill_during_writes                      # SQLite, 3 rounds
    .venv/bin/python -m bench.kill_during_writes --database postgres  # a private cluster

Each round starts the real service (uvicorn, loopback, auth on, simple_cnn at 64 px) on the
same database, runs ``--clients`` closed-loop clients posting fresh uploads, and after a random
3-8 s sends SIGKILL to the service process: no shutdown, no lifespan, no rollback; whatever
was in flight is cut at an arbitrary point (mid-request, mid-transaction, mid-commit).

Why the count must add up. A prediction is one INSERT plus its audit row, committed in the
request's one transaction *before* the response is sent (app/deps.py get_session runs at
function scope, app/auth.py adds the audit row to the same session). So for every request:
- the client got 201 => its transaction had committed => its row is in the database;
- the client got no answer (connection cut by the kill) => either the process died before the
  COMMIT reached the database (no row; SQLite drops the uncommitted WAL frames at the next
  open, PostgreSQL aborts the backend's transaction when its client vanishes), or the commit
  completed and the process died before the response was written (a row the client never
  heard about). Nothing in between: COMMIT is atomic in both engines.
Hence: 201 ids subset of rows, and rows - 201s <= requests cut in flight. The bench checks
exactly that, plus that every row is complete and self-consistent (scores for every class,
label = the decision for those scores, dedupe key = its UID or sha256, one audit row with
status 201 per prediction), the database passes its integrity check (SQLite
``PRAGMA integrity_check``), and the next service start on the same files is ready and stores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._reliability import (
    ServiceProcess,
    Uploads,
    assert_auth_enforced,
    auth_headers,
    prepare_database,
    private_postgres,
    save_small_model,
    start_service,
    stop_service,
    wait_ready,
)

CLASS_NAMES = ("normal", "abnormal")
THRESHOLD = 0.5


@dataclass
class Round:
    created: set[str] = field(default_factory=set)
    cut: int = 0  # requests whose outcome the client never saw
    other: dict[int, int] = field(default_factory=dict)
    kill_at_s: float = 0.0


async def load_then_kill(
    service: ServiceProcess, key: str, args: argparse.Namespace, seed: int
) -> Round:
    import httpx

    result = Round()
    uploads = Uploads(size=args.size, seed=seed)
    result.kill_at_s = random.Random(seed).uniform(3.0, 8.0)
    killed = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not killed.is_set():
            name, data = uploads.next()
            try:
                r = await client.post(
                    "/v1/predictions", files={"file": (name, data, "application/octet-stream")}
                )
            except httpx.HTTPError:
                result.cut += 1
                continue
            if r.status_code == 201:
                result.created.add(r.json()["id"])
            else:
                result.other[r.status_code] = result.other.get(r.status_code, 0) + 1
            if killed.is_set():
                return

    async def killer() -> None:
        await asyncio.sleep(result.kill_at_s)
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait()
        killed.set()

    async with httpx.AsyncClient(
        base_url=service.base, timeout=30.0, headers=auth_headers(key)
    ) as client:
        await asyncio.gather(killer(), *(client_loop(client) for _ in range(args.clients)))
    service.log_file.close()
    return result


def inspect_database(database_url: str) -> dict[str, Any]:
    """Every prediction row with its audit rows, read with plain SQL; integrity check."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(text("SELECT * FROM predictions")).mappings()]
            audits = [
                dict(r)
                for r in conn.execute(
                    text(
                        "SELECT target, status, action FROM audit_events "
                        "WHERE action = 'prediction.create' AND status = 201"
                    )
                ).mappings()
            ]
            integrity = "n/a (PostgreSQL: transactional, checked by reading every row)"
            if engine.dialect.name == "sqlite":
                integrity = str(conn.execute(text("PRAGMA integrity_check")).scalar_one())
    finally:
        engine.dispose()
    return {"rows": rows, "audits": audits, "integrity": integrity}


def row_problems(row: dict[str, Any]) -> list[str]:
    problems = []
    scores = row["scores"]
    if isinstance(scores, str):
        scores = json.loads(scores)
    if set(scores) != set(CLASS_NAMES):
        problems.append(f"scores for {sorted(scores)}")
    elif abs(sum(scores.values()) - 1.0) > 1e-3:
        problems.append(f"scores sum to {sum(scores.values())}")
    else:
        expected = "abnormal" if scores["abnormal"] >= THRESHOLD else "normal"
        if row["label"] != expected:
            problems.append(f"label {row['label']} for scores {scores}")
    key = row["dedupe_key"]
    if not (
        key == f"sha256:{row['input_sha256']}"
        or (row["sop_instance_uid"] and key == f"sop:{row['sop_instance_uid']}")
    ):
        problems.append(f"dedupe key {key!r}")
    if len(row["input_sha256"]) != 64 or row["rows"] <= 0 or row["columns"] <= 0:
        problems.append("geometry or sha256")
    if row["inference_ms"] < 0 or row["batch_size"] < 1:
        problems.append("inference figures")
    return [f"{row['id']}: {p}" for p in problems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)

    ok = True
    with (
        tempfile.TemporaryDirectory(prefix="radlens-kill-") as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        store = tmp / "store"
        ref = save_small_model(store, "simple_cnn", args.size)
        if args.database == "postgres":
            url = stack.enter_context(private_postgres()).url
        else:
            url = f"sqlite:///{tmp / 'kill.db'}"
        key = prepare_database(url)
        all_created: set[str] = set()
        all_cut = 0
        for n in range(args.rounds):
            service = start_service(tmp, store, ref, url, RADLENS_AUTH="enabled")
            t0 = time.monotonic()
            asyncio.run(wait_ready(service))
            ready_s = time.monotonic() - t0
            if n == 0:
                asyncio.run(assert_auth_enforced(service))
            result = asyncio.run(load_then_kill(service, key, args, seed=n))
            all_created |= result.created
            all_cut += result.cut
            state = inspect_database(url)
            ids = {str(r["id"]).replace("-", "") for r in state["rows"]}
            created = {i.replace("-", "") for i in all_created}
            missing = created - ids
            extra = len(ids) - len(created & ids)
            problems = [p for r in state["rows"] for p in row_problems(r)]
            audited = {str(a["target"]).replace("-", "") for a in state["audits"]}
            unaudited = ids - audited
            orphan_audits = {a for a in audited if a and a not in ids}
            print(
                f"round {n + 1}: ready in {ready_s:.1f} s, SIGKILL at {result.kill_at_s:.1f} s; "
                f"201s {len(result.created)}, cut in flight {result.cut}, other {result.other}"
            )
            print(
                f"  database: {len(ids)} rows; 201s so far {len(created)}, missing {len(missing)}, "
                f"rows without a 201 {extra} (allowed <= cut in flight so far: {all_cut}); "
                f"incomplete rows {len(problems)}; predictions without their audit row "
                f"{len(unaudited)}; audit rows (201) without a prediction {len(orphan_audits)}; "
                f"integrity {state['integrity']}"
            )
            for p in problems[:5]:
                print(f"    {p}")
            integrity_ok = args.database == "postgres" or state["integrity"] == "ok"
            round_ok = (
                not missing
                and extra <= all_cut
                and not problems
                and not unaudited
                and not orphan_audits
                and integrity_ok
            )
            ok = ok and round_ok and not result.other
        # the database still serves after the last kill
        service = start_service(tmp, store, ref, url, RADLENS_AUTH="enabled")
        try:
            asyncio.run(wait_ready(service))
            final = asyncio.run(_one_post(service, key))
        finally:
            stop_service(service)
        print(
            f"after {args.rounds} kills: the service starts on the same database and stores: "
            f"{final}"
        )
        ok = ok and final == 201
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


async def _one_post(service: ServiceProcess, key: str) -> int:
    import httpx

    name, data = Uploads(seed=999).next()
    async with httpx.AsyncClient(
        base_url=service.base, timeout=30.0, headers=auth_headers(key)
    ) as c:
        r = await c.post(
            "/v1/predictions", files={"file": (name, data, "application/octet-stream")}
        )
    return r.status_code


if __name__ == "__main__":
    sys.exit(main())

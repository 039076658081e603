"""What `radlens purge` costs on a large backlog: time, peak memory, and how long it locks out
the service's writes (QA round 58).

Not a test. Run from the repository root:

    nice -n 10 .venv/bin/python -m bench.purge                  # 20k rows, SQLite + PostgreSQL
    nice -n 10 .venv/bin/python -m bench.purge --rows 100000 --backend sqlite

Each measurement runs in a fresh child process on a freshly filled, migrated database:
``--rows`` expired predictions in series of 50, each with two finding rows, one in ten with a
64 KiB explanation (the overlay PNG), plus 1,000 recent predictions that stay. Two purges, in the
same run:

- ``baseline``: the purge before QA 58 (app/audit.py at 05f373c): every expired id loaded, then
  one transaction deleting them 500 at a time, an audit row flushed per prediction, a sweep of
  every series record;
- ``batched``: ``audit.retention_purge`` (a transaction per ``--batch`` predictions).

While each runs, a writer thread inserts a prediction every 20 ms, as the service would, and
records how long each insert waited (on SQLite the purge's transaction holds the one write lock;
on PostgreSQL inserts of new rows do not wait for deletes of old ones). Printed per backend:
seconds, rows per second, the Python heap's peak (tracemalloc) and the child's peak RSS, the
purge's longest transaction (what it holds locks for), the writer's longest wait, and
batched/baseline ratios, with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench._machine import cpu_model

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
RETENTION = 30
SERIES_SIZE = 50
RECENT = 1000
OVERLAY = b"\x89PNG" + bytes(64 * 1024 - 4)


def _prediction(created_at: datetime, series: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "created_at": created_at,
        "model_name": "bench",
        "model_version": 1,
        "preprocessing_version": "2",
        "device": "/CPU:0",
        "label": "normal",
        "scores": {"normal": 0.9, "abnormal": 0.1},
        "threshold": 0.5,
        "inference_ms": 1.0,
        "batch_size": 1,
        "dedupe_key": f"sop:2.25.{uuid.uuid4().int}",
        "input_sha256": uuid.uuid4().hex * 2,
        "input_format": "dicom",
        "series_instance_uid": series,
        "rows": 64,
        "columns": 64,
        "frames": 1,
    }


def fill(url: str, rows: int) -> None:
    """Migrate and fill the database (see the module docstring)."""
    from sqlalchemy import insert

    from radlens.app.db import make_engine
    from radlens.app.migrate import upgrade
    from radlens.app.tables import Explanation, Prediction, PredictionFinding, PredictionSeries

    upgrade(url)
    engine = make_engine(url)
    old = datetime.now(UTC) - timedelta(days=RETENTION + 10)
    new = datetime.now(UTC) - timedelta(days=1)
    try:
        for first in range(0, rows + RECENT, 5000):
            predictions, findings, explanations, series = [], [], [], []
            for n in range(first, min(first + 5000, rows + RECENT)):
                if n % SERIES_SIZE == 0:
                    uid = f"2.25.{uuid.uuid4().int}"
                    series.append(
                        {
                            "series_instance_uid": uid,
                            "modality": "CT",
                            "rows": 64,
                            "columns": 64,
                            "created_at": old,
                        }
                    )
                row = _prediction(old if n < rows else new, uid)
                predictions.append(row)
                for finding in ("Effusion", "Nodule"):
                    findings.append(
                        {
                            "id": uuid.uuid4(),
                            "prediction_id": row["id"],
                            "finding": finding,
                            "score": 0.3,
                            "threshold": 0.5,
                            "positive": False,
                        }
                    )
                if n % 10 == 0:
                    explanations.append(
                        {
                            "id": uuid.uuid4(),
                            "prediction_id": row["id"],
                            "created_at": row["created_at"],
                            "layer": "conv5",
                            "class_index": 1,
                            "class_name": "abnormal",
                            "score": 0.4,
                            "png": OVERLAY,
                        }
                    )
            with engine.begin() as conn:
                if series:
                    conn.execute(insert(PredictionSeries), series)
                conn.execute(insert(Prediction), predictions)
                conn.execute(insert(PredictionFinding), findings)
                if explanations:
                    conn.execute(insert(Explanation), explanations)
    finally:
        engine.dispose()


def baseline_purge(sessionmaker: Any, retention_days: int) -> int:
    """The purge as it was before QA 58 (one transaction; see the module docstring)."""
    from sqlalchemy import delete, exists, select

    from radlens.app import audit
    from radlens.app.db import utcnow
    from radlens.app.tables import Prediction, PredictionSeries

    now = utcnow()
    with sessionmaker() as session:
        cutoff = now - timedelta(days=retention_days)
        stmt = select(Prediction.id).where(Prediction.created_at < cutoff).order_by(Prediction.id)
        ids = list(session.scalars(stmt))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            session.execute(delete(Prediction).where(Prediction.id.in_(chunk)))
            for prediction_id in chunk:
                audit.record(
                    session,
                    actor="cli",
                    action="prediction.purge",
                    target=str(prediction_id),
                    query=f"retention_days={retention_days}",
                    status=200,
                    at=now,
                )
        session.execute(
            delete(PredictionSeries).where(
                ~exists().where(
                    Prediction.series_instance_uid == PredictionSeries.series_instance_uid
                )
            )
        )
        session.commit()
    return len(ids)


class Writer(threading.Thread):
    """Inserts a recent prediction every 20 ms; records each insert's duration."""

    def __init__(self, sessionmaker: Any) -> None:
        super().__init__(daemon=True)
        self.sessionmaker = sessionmaker
        self.waits: list[float] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from sqlalchemy import insert
        from sqlalchemy.exc import OperationalError

        from radlens.app.tables import Prediction

        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                with self.sessionmaker() as session:
                    row = _prediction(datetime.now(UTC), f"2.25.{uuid.uuid4().int}")
                    session.execute(insert(Prediction), [row])
                    session.commit()
            except OperationalError:  # SQLite's busy timeout (15 s) ran out: refused
                self.failed += 1
            self.waits.append(time.perf_counter() - start)
            self.stop.wait(0.02)


def child(kind: str, url: str, batch: int) -> dict[str, Any]:
    """One purge in this (fresh) process: its figures."""
    from sqlalchemy import event

    from radlens.app import audit
    from radlens.app.db import make_engine, make_sessionmaker

    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    writer_engine = make_engine(url)  # its own: only the purge's transactions are timed
    writer = Writer(make_sessionmaker(writer_engine))
    began: list[float] = []
    held: list[float] = []  # each purge transaction's duration: how long it holds its locks
    event.listen(engine, "begin", lambda _conn: began.append(time.perf_counter()))
    event.listen(engine, "commit", lambda _conn: held.append(time.perf_counter() - began[-1]))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    writer.start()
    time.sleep(0.2)
    start = time.perf_counter()
    if kind == "baseline":
        deleted = baseline_purge(sessionmaker, RETENTION)
    else:
        deleted = audit.retention_purge(
            sessionmaker, retention_days=RETENTION, batch_size=batch
        ).predictions
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    writer.stop.set()
    writer.join()
    engine.dispose()
    writer_engine.dispose()
    return {
        "deleted": deleted,
        "seconds": seconds,
        "heap_peak_mib": peak / 2**20,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before / 1024,
        "writer_max_wait_s": max(writer.waits, default=0.0),
        "longest_transaction_s": max(held, default=0.0),
        "writes": len(writer.waits),
        "writes_refused": writer.failed,
    }


def database(backend: str, folder: str) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{folder}/{uuid.uuid4().hex}.db", None
    import psycopg

    name = f"radlens_bench_purge_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_URL.format(name=name), name


def drop(name: str | None) -> None:
    if name is None:
        return
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(backend: str, rows: int, batch: int) -> dict[str, dict[str, Any]]:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("baseline", "batched"):
            url, name = database(backend, folder)
            try:
                fill(url, rows)
                out = subprocess.run(
                    [sys.executable, "-m", "bench.purge", "--child", kind, url, str(batch)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                results[kind] = json.loads(out.strip().splitlines()[-1])
                assert results[kind]["deleted"] == rows, results[kind]
            finally:
                drop(name)
    return results


def report(backend: str, rows: int, batch: int, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{backend}: purge of {rows} expired predictions (batch {batch})")
    print(
        f"  {'':<9} {'seconds':>8} {'rows/s':>8} {'heap peak':>10} {'RSS peak':>9} "
        f"{'longest txn':>12} {'writer max wait':>16} {'refused':>8}"
    )
    for kind, r in results.items():
        print(
            f"  {kind:<9} {r['seconds']:>8.2f} {rows / r['seconds']:>8.0f} "
            f"{r['heap_peak_mib']:>7.1f} MiB {r['rss_peak_mib']:>5.0f} MiB "
            f"{r['longest_transaction_s']:>10.2f} s "
            f"{r['writer_max_wait_s']:>14.3f} s {r['writes_refused']:>4}/{r['writes']}"
        )
    print(
        "  (RSS after the imports, before the purge: "
        f"{results['batched']['rss_before_mib']:.0f} MiB)"
    )
    b, n = results["baseline"], results["batched"]
    print(
        f"  batched/baseline: time {n['seconds'] / b['seconds']:.2f}, heap peak "
        f"{n['heap_peak_mib'] / b['heap_peak_mib']:.2f}, longest transaction "
        f"{n['longest_transaction_s'] / b['longest_transaction_s']:.3f}, writer max wait "
        f"{n['writer_max_wait_s'] / max(b['writer_max_wait_s'], 1e-6):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--backend", choices=("sqlite", "postgresql", "both"), default="both", help="database"
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("KIND", "URL", "BATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        kind, url, batch = args.child
        print(json.dumps(child(kind, url, int(batch))))
        return
    print(f"CPU: {cpu_model()}")
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    for backend in backends:
        report(backend, args.rows, args.batch, measure(backend, args.rows, args.batch))


if __name__ == "__main__":
    main()

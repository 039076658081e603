"""What the de-duplication identity (migration 0010) costs the write path.

Not a test. Run from the repository root (figures: docs/benchmarks/dedupe.md):

    .venv/bin/python -m bench.dedupe                       # SQLite file + PostgreSQL
    .venv/bin/python -m bench.dedupe --rows 4000 --rounds 5

Every prediction is stored by ``services.record_prediction`` in the writer's group transactions
(app/writer.py); since 0010 the table has a second unique index, (model, version,
dedupe_identity), which every insert maintains and a re-post's lookup also searches. Two
databases are measured in the same run, one group transaction on each in turn:

- ``identity``: the schema as migrated;
- ``baseline``: the same schema without 0010's unique constraint on the identity (the column
  stays, unindexed), with rows that leave it NULL, so a re-post is looked up by ``dedupe_key``
  alone: the cost before 0010. (Until 2026-12-07 it was downgraded to 0005 and given the
  column back, which later migrations' columns made impossible: the ORM writes them.)

Per round, three timed phases on each: ``--rows`` new rows in transactions of 64; as many
re-posts in the same pseudonymisation state (a conflict on both indexes, then the lookup);
on ``identity`` only, as many re-posts after a change of state (another ``dedupe_key``, i.e.
the UID as stored, and the same identity: before 0010 these were new rows, so there is no
baseline for them). Printed: rows per second (median over rounds), and identity/baseline
ratios, with the CPU model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench._machine import cpu_model

GROUP = 64  # rows per transaction, as the writer's MAX_GROUP
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def row(uid: str, stored_uid: str, key: bytes, *, identity: bool = True) -> Any:
    """A prediction of one instance as the Ingestor builds it (``stored_uid``: as stored);
    ``identity=False``: as before 0010 (no identity, so the lookup is by dedupe_key only)."""
    from radlens.app.dedupe import dedupe_identity
    from radlens.app.tables import Prediction, dedupe_key

    digest = uuid.uuid5(uuid.NAMESPACE_OID, uid).hex * 2
    return Prediction(
        id=uuid.uuid4(),
        model_name="bench",
        model_version=1,
        preprocessing_version="2",
        device="/CPU:0",
        label="normal",
        scores={"normal": 0.9, "abnormal": 0.1},
        threshold=0.5,
        inference_ms=1.0,
        batch_size=1,
        dedupe_key=dedupe_key(sop_instance_uid=stored_uid, input_sha256=digest),
        dedupe_identity=(
            dedupe_identity(sop_instance_uid=uid, input_sha256=digest, key=key)
            if identity
            else None
        ),
        input_sha256=digest,
        input_format="dicom",
        sop_instance_uid=stored_uid,
        rows=64,
        columns=64,
        frames=1,
    )


def write(makers: dict[str, Callable[[], Any]], rows: dict[str, list[Any]]) -> dict[str, Any]:
    """Store each kind's ``rows`` in group transactions, one kind's transaction after the
    other's (in alternating order, so both see the same load on a shared CPU); returns
    (seconds, rows created) per kind."""
    from radlens.app import services

    spent = dict.fromkeys(rows, 0.0)
    created = dict.fromkeys(rows, 0)
    kinds = list(rows)
    count = len(next(iter(rows.values())))
    for number, first in enumerate(range(0, count, GROUP)):
        for kind in kinds if number % 2 == 0 else kinds[::-1]:
            start = time.perf_counter()
            with makers[kind]() as session:
                for item in rows[kind][first : first + GROUP]:
                    created[kind] += services.record_prediction(session, item)[1]
                session.commit()
            spent[kind] += time.perf_counter() - start
    return {kind: (spent[kind], created[kind]) for kind in kinds}


IDENTITY_CONSTRAINT = "uq_predictions_model_name_model_version_dedupe_identity"  # 0010


@contextmanager
def databases(backend: str, folder: Path) -> Iterator[dict[str, str]]:
    """Two migrated databases: "identity" (as migrated) and "baseline" (constraint dropped)."""

    from radlens.app.db import make_engine
    from radlens.app.migrate import upgrade

    names = {
        kind: f"radlens_bench_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("identity", "baseline")
    }
    if backend == "sqlite":
        urls = {kind: f"sqlite:///{folder / (name + '.db')}" for kind, name in names.items()}
    else:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'CREATE DATABASE "{name}"')
        urls = {kind: PG_URL.format(name=name) for kind, name in names.items()}
    try:
        for url in urls.values():
            upgrade(url)
        # the baseline: the schema at head without 0010's unique constraint (the column stays,
        # without its index). Not a downgrade to 0005: the rows the ORM writes hold the
        # columns of every later migration (operating point, burned-in annotation, ...)
        from alembic.migration import MigrationContext
        from alembic.operations import Operations

        engine = make_engine(urls["baseline"])
        with engine.begin() as conn:
            operations = Operations(MigrationContext.configure(conn))
            with operations.batch_alter_table("predictions") as batch:
                batch.drop_constraint(IDENTITY_CONSTRAINT, type_="unique")
        engine.dispose()
        yield urls
    finally:
        if backend == "postgresql":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                for name in names.values():
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def unique_indexes(url: str) -> int:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        found = inspector.get_unique_constraints("predictions")
        return len(found)
    finally:
        engine.dispose()


def measure(backend: str, rows: int, rounds: int) -> dict[str, list[float]]:
    from radlens.app.db import make_engine, make_sessionmaker

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, databases(backend, Path(tmp)) as urls:
        counts = {kind: unique_indexes(url) for kind, url in urls.items()}
        assert counts["identity"] == counts["baseline"] + 1, counts
        engines = {kind: make_engine(url) for kind, url in urls.items()}
        makers = {kind: make_sessionmaker(engine) for kind, engine in engines.items()}
        try:
            for _ in range(rounds):
                uids = [f"2.25.{uuid.uuid4().int}" for _ in range(rows)]

                def batch(kind: str, uids: list[str] = uids) -> list[Any]:
                    return [row(u, u, b"k" * 16, identity=kind == "identity") for u in uids]

                for phase, expected in (("new", rows), ("re-post", 0)):
                    done = write(makers, {kind: batch(kind) for kind in ("baseline", "identity")})
                    for kind, (seconds, created) in done.items():
                        assert created == expected, (kind, phase, created)
                        results.setdefault(f"{kind} {phase}", []).append(rows / seconds)
                # the same instances with their UIDs stored in another form (pseudonymised)
                other = [row(u, f"2.25.{uuid.uuid4().int}", b"k" * 16) for u in uids]
                seconds, created = write(makers, {"identity": other})["identity"]
                assert created == 0  # recognised by the identity alone
                results.setdefault("identity re-post after a change", []).append(rows / seconds)
        finally:
            for engine in engines.values():
                engine.dispose()
    return results


def report(backend: str, results: dict[str, list[float]]) -> None:
    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"\n{backend}: rows per second (median of {len(results['identity new'])} rounds)")
    for name, value in median.items():
        print(f"  {name:<34} {value:>9.0f}")
    for phase in ("new", "re-post"):
        ratio = median[f"identity {phase}"] / median[f"baseline {phase}"]
        print(f"  identity/baseline, {phase:<15} {ratio:>9.3f}")


def postgres_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any failure: say why and skip it
        return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", choices=("both", "sqlite", "postgresql"), default="both")
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_model()}; rows {args.rows}, rounds {args.rounds}, group {GROUP}")
    backends = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    for backend in backends:
        if backend == "postgresql" and (reason := postgres_reason()) is not None:
            print(f"\npostgresql: skipped ({reason})")
            continue
        report(backend, measure(backend, args.rows, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every migration step, down and up, keeps the predictions' Grad-CAM overlays and findings.

On SQLite a batch migration that has to rebuild ``predictions`` (dropping a column, adding a
unique constraint) copies it, drops it and renames the copy; with foreign keys on (app/db.py)
that DROP TABLE deleted, by their ON DELETE CASCADE, every ``explanations`` and
``prediction_findings`` row (QA 39 found it in 0015's downgrade; 0013, 0011, 0010, 0006, 0005,
0004 and 0002 did the same, and 0010's *upgrade*, which adds a unique constraint, lost them on
the way up). Migrations now run with SQLite's foreign keys off and check them before they
commit (migrations/env.py). Checked step by step on SQLite and PostgreSQL (this test replaces
QA 39's test of 0015 alone).
"""

from __future__ import annotations

import uuid

from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from radlens.app.db import make_engine, make_sessionmaker
from radlens.app.migrate import alembic_config, current_revision, downgrade, upgrade
from tests.app.conftest import prediction_row

LOWEST = "0007"  # the first revision with both tables (explanations since 0002, findings 0007)


def _chain() -> list[str]:
    """The revisions from LOWEST to head, oldest first."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    revisions = [r.revision for r in script.walk_revisions()]  # head first
    return list(reversed(revisions[: revisions.index(LOWEST) + 1]))


def _counts(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [
            int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("predictions", "explanations", "prediction_findings")
        ]


def _store_one(engine: Engine) -> None:
    from radlens.app.tables import Explanation, PredictionFinding

    with make_sessionmaker(engine)() as session:
        row = prediction_row("sha256:foreign-keys")
        session.add(row)
        session.flush()
        session.add(
            Explanation(
                id=uuid.uuid4(),
                prediction_id=row.id,
                layer="conv",
                class_index=1,
                class_name="abnormal",
                score=0.1,
                png=b"\x89PNG overlay",
            )
        )
        session.add(
            PredictionFinding(
                id=uuid.uuid4(),
                prediction_id=row.id,
                finding="effusion",
                score=0.2,
                threshold=0.5,
                positive=False,
            )
        )
        session.commit()


def test_every_step_down_and_up_keeps_the_overlays_and_findings(
    migrated_database_url: str,
) -> None:
    url = migrated_database_url
    chain = _chain()
    engine = make_engine(url)
    try:
        _store_one(engine)
        lost = []
        for revision in reversed(chain[:-1]):  # one step down at a time, to LOWEST
            downgrade(url, revision)
            assert current_revision(engine) == revision
            if _counts(engine) != [1, 1, 1]:
                lost.append(f"down to {revision}: {_counts(engine)}")
        for revision in chain[1:]:  # and up again, one step at a time
            upgrade(url, revision)
            if _counts(engine) != [1, 1, 1]:
                lost.append(f"up to {revision}: {_counts(engine)}")
        assert lost == []
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":  # the connections the service opens enforce them
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()

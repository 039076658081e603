"""QA 39: undoing migration 0015 (predictions.instance_number) keeps every prediction's
Grad-CAM overlay and findings. On SQLite its batch copy dropped and recreated the
predictions table, and dropping it with foreign keys on (app/db.py) deleted, by their ON
DELETE CASCADE, every explanations and prediction_findings row: a `radlens db downgrade`
by one release lost the stored overlays. PostgreSQL's ALTER TABLE never did; checked on both.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, inspect, text

from radlens.app.db import make_engine, make_sessionmaker
from radlens.app.migrate import current_revision, downgrade, head_revision, upgrade
from tests.app.conftest import prediction_row


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_0015_down_and_up_keeps_the_overlays_and_findings(migrated_database_url: str) -> None:
    from radlens.app.tables import Explanation, PredictionFinding

    url = migrated_database_url
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            row = prediction_row("sha256:qa39-downgrade")
            row.instance_number = 7
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
        downgrade(url, "0015-1")  # the revision before 0015
        assert current_revision(engine) != "0015"
        columns = {c["name"] for c in inspect(engine).get_columns("predictions")}
        assert "instance_number" not in columns
        counts = [_count(engine, t) for t in ("predictions", "explanations", "prediction_findings")]
        assert counts == [1, 1, 1]
        upgrade(url)
        assert current_revision(engine) == head_revision()
        assert [_count(engine, t) for t in ("explanations", "prediction_findings")] == [1, 1]
    finally:
        engine.dispose()

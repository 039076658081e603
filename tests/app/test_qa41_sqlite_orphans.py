"""QA 41 (upgrading a deployment): migrations on SQLite check the foreign keys before they
commit (migrations/env.py), and that check counted every row referencing a missing one, also
those there before the upgrade. An explanation whose prediction was deleted with the sqlite3
shell (its foreign keys are off by default) stopped `radlens db upgrade`, and the service's
automatic upgrade at start-up, with "the migration left 1 row(s) referencing a missing row":
the release could not be installed. Only the references a migration breaks stop it now."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from sqlalchemy import text

from radlens.app.db import make_engine
from radlens.app.migrate import current_revision, downgrade, head_revision, upgrade


def _orphan_explanation(path: Path) -> None:
    """An explanation referencing no prediction, written as the sqlite3 shell does (foreign
    keys off), in the schema of the release before migration 0015."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "INSERT INTO explanations (id, prediction_id, created_at, layer, class_index, "
            "class_name, score, png) VALUES (?, ?, '2026-12-01 10:00:00', 'conv', 1, "
            "'abnormal', 0.7, x'89504e47')",
            (uuid.uuid4().hex, uuid.uuid4().hex),
        )
        conn.commit()
    finally:
        conn.close()


def test_a_reference_broken_before_the_upgrade_does_not_stop_it(tmp_path: Path) -> None:
    path = tmp_path / "radlens.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0013")  # the release before this session's migration
    _orphan_explanation(path)

    upgrade(url)  # raised MigrationError before the fix
    downgrade(url, "0013")  # 0015's downgrade rebuilds predictions (a batch copy)
    upgrade(url)

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert current_revision(engine) == head_revision()
            kept = conn.execute(text("SELECT count(*) FROM explanations")).scalar_one()
        assert kept == 1  # the migration neither stopped on it nor deleted it
    finally:
        engine.dispose()

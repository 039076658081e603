"""Alembic migrations build exactly the tables the code declares, and undo them, on SQLite
and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from radlens.app.db import Base, make_engine
from radlens.app.migrate import current_revision, downgrade, head_revision, upgrade
from tests.app.conftest import Databases


def _diff(url: str) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import radlens.app.tables  # noqa: F401

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_match_the_declared_tables(migrated_database_url: str) -> None:
    assert _diff(migrated_database_url) == []


def test_empty_database_differs_from_the_declared_tables(empty_database_url: str) -> None:
    # the comparison can fail: without migrations the predictions table is reported missing
    diff = _diff(empty_database_url)
    assert any(op[0] == "add_table" and op[1].name == "predictions" for op in diff)  # type: ignore[index]


def test_downgrade_to_base_and_back(migrated_database_url: str) -> None:
    url = migrated_database_url
    engine = make_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        downgrade(url, "base")
        assert current_revision(engine) is None
        assert "predictions" not in _tables(url)
        upgrade(url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    assert _diff(url) == []


def test_migrations_run_from_any_directory(
    databases: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini, no migrations/ here
    url = databases.new()
    upgrade(url, "head")
    assert "predictions" in _tables(url)


def test_sqlite_directory_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'var' / 'radlens.db'}"
    upgrade(url)
    assert (tmp_path / "deep" / "var" / "radlens.db").is_file()


def _columns(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_0013_burned_in_annotation_down_and_up_keeps_the_predictions(
    migrated_database_url: str,
) -> None:
    """0013 adds one nullable column; undoing it drops only that column (the rows stay), and
    redoing it leaves the existing rows unknown (NULL), as rows stored before 0013 are."""
    from sqlalchemy import text

    from radlens.app.db import make_sessionmaker
    from tests.app.conftest import prediction_row

    url = migrated_database_url
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            row = prediction_row("sha256:burned")
            row.burned_in_annotation = "YES"
            session.add(row)
            session.commit()
        downgrade(url, "0013-1")  # the revision before 0013, whatever the chain becomes
        assert current_revision(engine) != "0013"
        assert "burned_in_annotation" not in _columns(url, "predictions")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
        upgrade(url, "0013")
        with engine.connect() as conn:
            values = conn.execute(text("SELECT burned_in_annotation FROM predictions")).all()
        assert [tuple(v) for v in values] == [(None,)]
        upgrade(url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    assert _diff(url) == []

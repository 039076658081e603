"""QA 58 (a data-protection officer's question): after `radlens purge`, does anything derived
from a deleted prediction remain anywhere radlens keeps data?

It did: the outbox kept a purged prediction's queued SR/SC (the sender's UIDs, the result) and
sent it; an unreadable DIMSE inbox file (a whole instance) was kept forever; on SQLite an
explanation whose prediction was deleted with foreign keys off kept its overlay pixels; and the
purge was one transaction over every expired row. Now the purge deletes in batches (a
transaction each: a prediction is whole or gone), then drops the outbox entries of purged
predictions (matched by their ``prediction.purge`` rows, so a re-run finishes an interrupted
run's files) and deletes the expired unreadable inbox files; ``--dry-run`` counts all of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.engine import Engine

from radlens.app.tables import Explanation, Prediction, PredictionFinding, PredictionSeries
from tests.app.conftest import (
    Service,
    dicom_bytes,
    make_settings,
    new_uid,
    prediction_row,
)

OLD_DAYS = 9500  # older than any other test's rows: only this file's are purged
RETENTION = 9000
CLOSED_PORT = 25898  # QA 58's range; nothing listens: a delivery attempt is refused at once


def _age(sessionmaker: Any, ids: list[str], days: int) -> None:
    with sessionmaker() as session:
        session.execute(
            update(Prediction)
            .where(Prediction.id.in_([uuid.UUID(i) for i in ids]))
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )
        session.commit()


def _outbox(service: Service, spool: Path, model_store: Path, with_audit: bool = False) -> Any:
    from radlens.app.outbox import Outbox

    settings = make_settings(
        service.database_url,
        model_store,
        dicom_destinations=f"PACS@127.0.0.1:{CLOSED_PORT}/sr+sc",
        dicom_outbox_dir=spool,
        dimse_network_timeout_s=2,
        dimse_acse_timeout_s=2,
    )
    sessionmaker = service.app.state.resources.sessionmaker if with_audit else None
    return Outbox(settings, sessionmaker=sessionmaker)


def _states(spool: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for path in spool.glob("*.json"):
        state = json.loads(path.read_text())
        found.setdefault(state["prediction_id"], []).append(state)
    return found


def _payloads(spool: Path) -> int:
    return len([p for p in spool.iterdir() if p.suffix in (".dcm", ".enc")])


def _cli(monkeypatch: pytest.MonkeyPatch, spool: Path, inbox: Path, url: str, *extra: str) -> int:
    from radlens.cli.main import main

    monkeypatch.setenv("RADLENS_DICOM_OUTBOX_DIR", str(spool))
    monkeypatch.setenv("RADLENS_DIMSE_INBOX_DIR", str(inbox))
    return main(["purge", "--database-url", url, "--retention-days", str(RETENTION), *extra])


def _audit(service: Service, action: str) -> list[tuple[str | None, str | None]]:
    with service.app.state.resources.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT target, query FROM audit_events WHERE action = :a"), {"a": action}
        ).all()
    return [(r[0], r[1]) for r in rows]


class TestOutbox:
    def test_queued_results_of_a_purged_prediction_are_dropped_not_sent(
        self,
        service: Service,
        model_store: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        study, series = new_uid(), new_uid()
        old = service.post(dicom_bytes(study=study, series=series, seed=581)).json()["id"]
        recent = service.post(dicom_bytes(seed=582)).json()["id"]
        _age(service.app.state.resources.sessionmaker, [old], OLD_DAYS)
        spool, inbox = tmp_path / "outbox", tmp_path / "inbox"
        outbox = _outbox(service, spool, model_store)
        for prediction_id in (old, recent):
            outbox.enqueue(prediction_id, "sr", dicom_bytes(seed=5))
        stranger = str(uuid.uuid4())  # a spool shared with another database: not ours to drop
        outbox.enqueue(stranger, "sr", dicom_bytes(seed=6))
        assert _payloads(spool) == 3

        assert _cli(monkeypatch, spool, inbox, service.database_url, "--dry-run") == 0
        out = capsys.readouterr().out
        assert out.startswith("would delete 1 prediction(s)"), out
        assert "1 queued SR/SC outbox entry" in out, out
        assert _payloads(spool) == 3 and service.client.get(f"/v1/predictions/{old}").is_success

        assert _cli(monkeypatch, spool, inbox, service.database_url) == 0
        out = capsys.readouterr().out
        # its series record, and any other test's left empty in this shared database
        assert out.startswith("deleted 1 prediction(s)"), out
        assert re.search(r"and [1-9][0-9]* series record\(s\)", out), out
        assert "1 queued SR/SC outbox entry dropped" in out, out
        states = _states(spool)
        assert [(s["state"], s["reason"]) for s in states[old]] == [
            ("dropped", "prediction purged (retention)")
        ]
        assert [s["state"] for s in states[recent]] == ["pending"]
        assert [s["state"] for s in states[stranger]] == ["pending"]
        assert _payloads(spool) == 2  # the purged one's SR is gone from the disk
        assert old not in {e.prediction_id for e in outbox.entries()}  # never sent

        # the service's next pass audits the drop and forgets the entry
        _outbox(service, spool, model_store, with_audit=True).deliver_due()
        assert old not in _states(spool)
        drops = [q for t, q in _audit(service, "dicom.send.drop") if t == old]
        assert drops and "reason=prediction purged (retention)" in drops[0]

        # nothing of it is served any more
        client = service.client
        for path in (
            f"/v1/predictions/{old}",
            f"/v1/predictions/{old}/heatmap",
            f"/v1/predictions/{old}/dicom/sr",
            f"/v1/series/{series}",
            f"/v1/studies/{study}",
        ):
            assert client.get(path).status_code == 404, path
        assert client.get(f"/dicomweb/studies/{study}/series").status_code in (204, 404)
        assert client.get(f"/v1/predictions/{recent}").status_code == 200

    def test_a_rerun_drops_what_an_interrupted_purge_left_in_the_outbox(
        self,
        service: Service,
        model_store: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Killed between the database's commit and the files: nothing is expired any more,
        and the next run still finds the purged prediction's entry (its purge row)."""
        from radlens.app import audit

        sessionmaker = service.app.state.resources.sessionmaker
        old = service.post(dicom_bytes(seed=583)).json()["id"]
        _age(sessionmaker, [old], OLD_DAYS)
        spool, inbox = tmp_path / "outbox", tmp_path / "inbox"
        _outbox(service, spool, model_store).enqueue(old, "sr", dicom_bytes(seed=7))
        with sessionmaker() as session:  # the database part only, as a run killed after it
            assert uuid.UUID(old) in audit.purge(session, retention_days=RETENTION)
            session.commit()
        assert [s["state"] for s in _states(spool)[old]] == ["pending"]

        assert _cli(monkeypatch, spool, inbox, service.database_url, "--dry-run") == 0
        assert "1 queued SR/SC outbox entry" in capsys.readouterr().out
        assert _cli(monkeypatch, spool, inbox, service.database_url) == 0
        assert capsys.readouterr().out.startswith("deleted 0 prediction(s)")
        assert [s["state"] for s in _states(spool)[old]] == ["dropped"]
        assert _payloads(spool) == 0


def test_an_entry_the_service_is_sending_is_left_for_the_next_run(
    tmp_path: Path, model_store: Path
) -> None:
    """The purge claims an entry as the delivery thread does (the payload's flock): one being
    sent right now is not touched, and counted; once released, the next run drops it."""
    from radlens.app.outbox import Outbox, drop_purged_entries

    spool = tmp_path / "outbox"
    settings = make_settings(
        f"sqlite:///{tmp_path / 'x.db'}",
        model_store,
        dicom_destinations=f"PACS@127.0.0.1:{CLOSED_PORT}",
        dicom_outbox_dir=spool,
    )
    outbox = Outbox(settings)
    outbox.enqueue(str(uuid.uuid4()), "sr", dicom_bytes(seed=8))
    [entry] = outbox.entries()
    sending = os.open(spool / f"{entry.id}.dcm", os.O_RDONLY)
    try:
        fcntl.flock(sending, fcntl.LOCK_EX)
        assert drop_purged_entries(spool, lambda ids: ids) == (0, 1)
        assert outbox.entries() == [entry]
    finally:
        os.close(sending)
    assert drop_purged_entries(spool, lambda ids: ids, dry_run=True) == (1, 0)
    assert drop_purged_entries(spool, lambda ids: ids) == (1, 0)
    assert outbox.entries() == [] and [e.reason for e in outbox.unaudited()] == [
        "prediction purged (retention)"
    ]
    assert not (spool / f"{entry.id}.dcm").exists()


class TestDimseInbox:
    def test_unreadable_files_past_retention_are_deleted_and_audited(
        self,
        service: Service,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        spool, inbox = tmp_path / "outbox", tmp_path / "inbox"
        inbox.mkdir()
        queued_old = time.time_ns() - (OLD_DAYS * 86_400 * 10**9)
        expired = inbox / f"{queued_old:020d}-0123456789ab-5041435300.dcm.unreadable"
        kept_new = inbox / f"{time.time_ns():020d}-0123456789ab-5041435300.dcm.unreadable"
        still_owed = inbox / f"{queued_old:020d}-ba9876543210-5041435300.dcm"
        for path in (expired, kept_new, still_owed):
            path.write_bytes(b"encrypted instance")

        assert _cli(monkeypatch, spool, inbox, service.database_url, "--dry-run") == 0
        assert "1 unreadable DIMSE inbox file(s)" in capsys.readouterr().out
        assert expired.exists()
        assert _cli(monkeypatch, spool, inbox, service.database_url) == 0
        assert "1 unreadable DIMSE inbox file(s)" in capsys.readouterr().out
        assert not expired.exists()
        assert kept_new.exists() and still_owed.exists()  # a queued instance is owed a result
        assert (None, f"files=1&retention_days={RETENTION}") in _audit(service, "dimse.inbox.purge")
        assert not spool.exists()  # a spool that is not there is not created


# --- the database part: batches, counts, interruption -------------------------------------


def _seed(url: str, count: int, *, days: int = OLD_DAYS) -> tuple[list[uuid.UUID], str]:
    """``count`` old predictions of one series, each with an explanation and two findings."""
    from radlens.app.db import make_engine, make_sessionmaker

    series = new_uid()
    engine = make_engine(url)
    ids = []
    try:
        with make_sessionmaker(engine)() as session:
            session.add(
                PredictionSeries(series_instance_uid=series, modality="CT", rows=8, columns=8)
            )
            for n in range(count):
                row = prediction_row(f"sop:qa58-{uuid.uuid4()}")
                row.created_at = datetime.now(UTC) - timedelta(days=days, minutes=n)
                row.series_instance_uid = series
                session.add(row)
                session.flush()
                session.add(
                    Explanation(
                        prediction_id=row.id,
                        layer="conv",
                        class_index=1,
                        class_name="abnormal",
                        score=0.5,
                        png=b"\x89PNG overlay",
                    )
                )
                for finding in ("Effusion", "Nodule"):
                    session.add(
                        PredictionFinding(
                            prediction_id=row.id,
                            finding=finding,
                            score=0.4,
                            threshold=0.5,
                            positive=False,
                        )
                    )
                ids.append(row.id)
            session.commit()
    finally:
        engine.dispose()
    return ids, series


def _tally(sessionmaker: Any) -> dict[str, int]:
    from radlens.app.security_tables import AuditEvent

    with sessionmaker() as session:
        return {
            name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for name, table in (
                ("predictions", Prediction),
                ("explanations", Explanation),
                ("findings", PredictionFinding),
                ("series", PredictionSeries),
            )
        } | {
            "purge_rows": int(
                session.scalar(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(AuditEvent.action == "prediction.purge")
                )
                or 0
            )
        }


@pytest.fixture()
def database(migrated_database_url: str) -> Any:
    from radlens.app.db import make_engine, make_sessionmaker

    engine = make_engine(migrated_database_url)
    yield migrated_database_url, make_sessionmaker(engine)
    engine.dispose()


class TestBatches:
    def test_dry_run_counts_what_the_batched_purge_then_deletes(self, database: Any) -> None:
        from radlens.app import audit

        url, sessionmaker = database
        _seed(url, 5)
        _seed(url, 1, days=1)  # recent: its series stays, and its rows
        would = audit.retention_purge(sessionmaker, retention_days=RETENTION, dry_run=True)
        assert (would.predictions, would.explanations, would.findings, would.series) == (
            5,
            5,
            10,
            1,
        )
        assert _tally(sessionmaker)["predictions"] == 6
        done = audit.retention_purge(sessionmaker, retention_days=RETENTION, batch_size=2)
        assert (done.predictions, done.explanations, done.findings, done.series) == (5, 5, 10, 1)
        assert done.batches == 3
        assert _tally(sessionmaker) == {
            "predictions": 1,
            "explanations": 1,
            "findings": 2,
            "series": 1,
            "purge_rows": 5,
        }

    def test_an_interrupted_purge_leaves_whole_predictions_and_a_rerun_finishes(
        self, database: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from radlens.app import audit

        url, sessionmaker = database
        _seed(url, 5)
        real = audit._purge_rows
        calls = []

        def dies_in_the_second_batch(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            deleted = real(*args, **kwargs)
            if len(calls) == 2:  # its deletes were executed, not committed
                raise KeyboardInterrupt
            return deleted

        monkeypatch.setattr(audit, "_purge_rows", dies_in_the_second_batch)
        with pytest.raises(KeyboardInterrupt):
            audit.retention_purge(sessionmaker, retention_days=RETENTION, batch_size=2)
        # the first batch is gone with all of it; the other three are whole
        assert _tally(sessionmaker) == {
            "predictions": 3,
            "explanations": 3,
            "findings": 6,
            "series": 1,
            "purge_rows": 2,
        }
        monkeypatch.setattr(audit, "_purge_rows", real)
        done = audit.retention_purge(sessionmaker, retention_days=RETENTION, batch_size=2)
        assert done.predictions == 3 and done.series == 1
        assert _tally(sessionmaker) == {
            "predictions": 0,
            "explanations": 0,
            "findings": 0,
            "series": 0,
            "purge_rows": 5,  # one each, none twice
        }


def test_sqlite_overlays_of_predictions_deleted_outside_radlens_are_purged(
    database: Any,
) -> None:
    """A prediction deleted with the sqlite3 shell (foreign keys off) left its explanation: its
    overlay pixels, which no route reaches. The purge removes such rows (none on PostgreSQL,
    which enforces the keys)."""
    from radlens.app import audit

    url, sessionmaker = database
    if not url.startswith("sqlite"):
        pytest.skip("PostgreSQL enforces the foreign keys: no orphan can exist")
    ids, _ = _seed(url, 1, days=1)
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        conn.execute("DELETE FROM predictions WHERE id = ?", (ids[0].hex,))
        conn.commit()
    finally:
        conn.close()
    assert _tally(sessionmaker)["explanations"] == 1
    assert audit.retention_purge(sessionmaker, retention_days=RETENTION, dry_run=True).orphans == 3
    assert audit.retention_purge(sessionmaker, retention_days=RETENTION).orphans == 3
    tally = _tally(sessionmaker)
    assert (tally["explanations"], tally["findings"], tally["series"]) == (0, 0, 0)


def test_sqlite_purged_overlays_leave_no_bytes_in_the_database_files(
    database: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite keeps a deleted row's bytes in the file's free pages until they are reused: a
    purged overlay's pixels could still be read from radlens.db. The purge deletes with
    secure_delete (zeros) and checkpoints the WAL into the file."""
    from radlens.app.db import make_engine, make_sessionmaker

    url, _ = database
    if not url.startswith("sqlite"):
        pytest.skip("SQLite's free pages; PostgreSQL's dead rows are vacuumed (docs/security.md)")
    marker = b"QA58-OVERLAY-PIXELS-" + uuid.uuid4().hex.encode()
    ids, _ = _seed(url, 3)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            session.execute(
                update(Explanation)
                .where(Explanation.prediction_id.in_(ids))
                .values(png=marker * 2000)  # 100 KB: overflow pages, as a real overlay's
            )
            session.commit()
    finally:
        engine.dispose()
    path = Path(url.removeprefix("sqlite:///"))

    def found() -> bool:
        files = [path, path.with_name(path.name + "-wal")]
        return any(marker in f.read_bytes() for f in files if f.exists())

    assert found()

    # SQLite as most builds ship it (Debian's turns secure_delete on at compile time)
    def default_off(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA secure_delete=OFF")

    event.listen(Engine, "connect", default_off)
    try:
        assert _cli(monkeypatch, tmp_path / "outbox", tmp_path / "inbox", url) == 0
    finally:
        event.remove(Engine, "connect", default_off)
    assert not found()

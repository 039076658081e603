"""QA 61: a DIMSE inbox file replayed after `radlens purge` deleted its prediction.

With RADLENS_DIMSE_ACK=queued a crash between an instance's prediction commit and its file's
deletion leaves the file, and the service's next start predicts it again (the re-post finds the
stored prediction: nothing new). When the service stayed down past the retention period and
`radlens purge` ran meanwhile, the prediction was gone, and the replay stored it again as a new
prediction: purged data back, for another retention period. Now the purge first deletes the
queued files whose instance has a prediction it purges (matched by the sha256 of the
instance's bytes, the row's ``input_sha256``; the file decrypted under
RADLENS_UID_PSEUDONYM_KEY); a queued file never predicted is still kept, owed a prediction.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from tests.app.conftest import dicom_bytes, make_settings, new_uid, prediction_row
from tests.app.test_outbox import wait_for

pytest.importorskip("pynetdicom")

PSEUDONYM_KEY = "qa61-inbox-pseudonym-key-0123456789"
DEDUPE_KEY = "qa61-inbox-dedupe-key-0123456789"
RETENTION = 30
DAY_NS = 86_400 * 10**9


def _rows(app: Any, sql: str) -> list[Any]:
    with app.state.resources.engine.connect() as conn:
        return list(conn.execute(text(sql)))


def _settings(url: str, store: Path, inbox: Path) -> Any:
    return make_settings(
        url,
        store,
        dimse_port=0,
        dimse_ack="queued",
        dimse_inbox_dir=inbox,
        uid_pseudonym_key=PSEUDONYM_KEY,
        dedupe_key=DEDUPE_KEY,
    )


def _queued_days_ago(path: Path, days: int) -> Path:
    """The file renamed as if queued ``days`` ago (the time is the name's, as ``put`` makes it)."""
    stamp = time.time_ns() - days * DAY_NS
    old = path.with_name(f"{stamp:020d}-{path.name.split('-', 1)[1]}")
    path.rename(old)
    return old


def test_a_crash_leftover_of_a_purged_prediction_is_not_predicted_again(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from radlens.app.dimse_inbox import DimseInbox
    from radlens.app.main import create_app
    from radlens.cli.main import main

    inbox_dir = tmp_path / "inbox"
    inbox = DimseInbox(inbox_dir, PSEUDONYM_KEY.encode())
    predicted = dicom_bytes(sop=new_uid(), study=new_uid(), seed=611)
    path = inbox.put(predicted, "MODALITY")
    queued = path.read_bytes()  # as it was on disk while its prediction was committed
    settings = _settings(migrated_database_url, model_store, inbox_dir)
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        wait_for(lambda: _rows(app, "SELECT id FROM predictions"), 120, "the prediction")
        wait_for(lambda: not list(inbox_dir.glob("*.dcm")), 30, "an empty inbox")
        with app.state.resources.sessionmaker() as session:  # made RETENTION + 5 days ago
            from radlens.app.tables import Prediction

            session.execute(
                update(Prediction).values(
                    created_at=datetime.now(UTC) - timedelta(days=RETENTION + 5)
                )
            )
            session.commit()
    # the crash: the process stopped after the commit, before the file's deletion
    path.write_bytes(queued)
    leftover = _queued_days_ago(path, RETENTION + 5)
    # an instance acknowledged as long ago and never predicted (the service was down): owed
    owed_bytes = dicom_bytes(sop=new_uid(), study=new_uid(), seed=612)
    owed = _queued_days_ago(inbox.put(owed_bytes, "MODALITY"), RETENTION + 5)

    monkeypatch.setenv("RADLENS_DIMSE_INBOX_DIR", str(inbox_dir))
    monkeypatch.setenv("RADLENS_DICOM_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("RADLENS_UID_PSEUDONYM_KEY", PSEUDONYM_KEY)
    monkeypatch.setenv("RADLENS_DEDUPE_KEY", DEDUPE_KEY)
    purge = ["purge", "--database-url", migrated_database_url, "--retention-days", str(RETENTION)]
    assert main([*purge, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete 1 prediction(s)" in out and "1 queued one(s) of purged" in out, out
    assert leftover.exists()
    assert main(purge) == 0
    out = capsys.readouterr().out
    assert "deleted 1 prediction(s)" in out and "1 queued one(s) of purged" in out, out
    assert not leftover.exists(), "replayed at the next start, it is stored again"
    assert owed.exists()

    with TestClient(create_app(settings)) as client:  # the next start
        app = client.app
        wait_for(lambda: not list(inbox_dir.glob("*.dcm")), 120, "the owed instance predicted")
        stored = [r[0] for r in _rows(app, "SELECT input_sha256 FROM predictions")]
        audited = [
            r[0] for r in _rows(app, "SELECT query FROM audit_events WHERE action LIKE 'dimse.%'")
        ]
    assert stored == [hashlib.sha256(owed_bytes).hexdigest()]  # not the purged one again
    assert f"predicted_files=1&retention_days={RETENTION}" in audited


def test_only_files_of_predictions_purged_now_go(
    tmp_path: Path, migrated_database_url: str
) -> None:
    """Without a key (plain Part 10 files): a file whose prediction is still within retention,
    one queued after the cutoff, and one another key encrypted are kept."""
    from radlens.app import audit
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.dimse_inbox import DimseInbox

    inbox_dir = tmp_path / "inbox"
    inbox = DimseInbox(inbox_dir, None)
    old, recent, new_file, other_key = (dicom_bytes(seed=s) for s in (613, 614, 615, 616))
    engine = make_engine(migrated_database_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        with sessionmaker() as session:
            for data, days in ((old, RETENTION + 5), (recent, 1), (new_file, RETENTION + 5)):
                row = prediction_row(f"sha256:{hashlib.sha256(data).hexdigest()}")
                row.input_sha256 = hashlib.sha256(data).hexdigest()
                row.created_at = datetime.now(UTC) - timedelta(days=days)
                session.add(row)
            session.commit()
        gone = _queued_days_ago(inbox.put(old, "A"), RETENTION + 6)
        kept = [
            _queued_days_ago(inbox.put(recent, "A"), RETENTION + 6),  # its row is not purged
            inbox.put(new_file, "A"),  # queued now: not the leftover of an old prediction
            _queued_days_ago(DimseInbox(inbox_dir, b"another key").put(other_key, "A"), 40),
        ]
        counts = audit.retention_purge(
            sessionmaker, retention_days=RETENTION, inbox_dir=inbox_dir, dry_run=True
        )
        assert (counts.predictions, counts.inbox_predicted) == (2, 1)
        assert gone.exists()
        counts = audit.retention_purge(sessionmaker, retention_days=RETENTION, inbox_dir=inbox_dir)
        assert (counts.predictions, counts.inbox_predicted) == (2, 1)
        assert not gone.exists()
        assert all(path.exists() for path in kept)
    finally:
        engine.dispose()

"""QA 82: one RADLENS_DIMSE_INBOX_DIR shared by several processes (replicas on a shared volume,
two DIMSE listeners), and the retention purge's matching of queued files (SQLite and
PostgreSQL where a database is used).

A starting process predicted every queued file of the directory, those another live process
had queued and was predicting included (each instance predicted twice, and one process's file
deleted under the other), and deleted every ``*.part`` file, another process's write in progress
included (its C-STORE then failed). Now each file is held (flock) by the process that queued it
until it is finished, and a starting process takes over only what no live process holds
(app/dimse_inbox.py). `radlens purge` deleted a queued file whenever some prediction older than
the cutoff had the same bytes, also one made before the file was queued (the instance sent
again, or by a second sender: the file was owed its own prediction) and one a live replica
holds; now only a prediction made after the file was queued matches it, and held files are
left to their process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.app.conftest import dicom_bytes, make_settings, new_uid, prediction_row
from tests.app.test_outbox import wait_for
from tests.conftest import REPO_ROOT

pytest.importorskip("pynetdicom")

RETENTION = 30
DAY_NS = 86_400 * 10**9

# Another radlens process queueing one instance in the shared inbox, then staying alive (until
# its stdin closes) as a replica that has not finished it yet.
OTHER_PROCESS = """
import sys
from pathlib import Path
from radlens.app.dimse_inbox import DimseInbox
directory, source = Path(sys.argv[1]), Path(sys.argv[2])
try:
    inbox = DimseInbox(directory, None, owner=True)
except TypeError:  # before QA 82 a process held nothing
    inbox = DimseInbox(directory, None)
print(inbox.put(source.read_bytes(), "REPLICA2").name, flush=True)
sys.stdin.read()
"""


def _rows(app: Any, sql: str) -> list[Any]:
    with app.state.resources.engine.connect() as conn:
        return list(conn.execute(text(sql)))


def _queued_days_ago(path: Path, days: int) -> Path:
    """The file renamed as if queued ``days`` ago (the time is the name's, as ``put`` makes it)."""
    stamp = time.time_ns() - days * DAY_NS
    old = path.with_name(f"{stamp:020d}-{path.name.split('-', 1)[1]}")
    path.rename(old)
    return old


def test_a_process_leaves_a_live_processs_files_and_takes_over_a_dead_ones(
    tmp_path: Path, model_store: Path, migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app import dimse
    from radlens.app.dimse_inbox import DimseInbox
    from radlens.app.main import create_app

    monkeypatch.setattr(dimse, "ADOPT_INTERVAL_S", 0.5, raising=False)
    passes: list[tuple[int, int]] = []  # each adopt pass: (files taken over, left to others)
    adopt = DimseInbox.adopt

    def counted(inbox: DimseInbox) -> tuple[list[Path], int]:
        adopted, others = adopt(inbox)
        passes.append((len(adopted), others))
        return adopted, others

    monkeypatch.setattr(DimseInbox, "adopt", counted)

    inbox = tmp_path / "inbox"
    source = tmp_path / "instance.dcm"
    source.write_bytes(dicom_bytes(sop=new_uid(), study=new_uid(), seed=821))
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_PROCESS, str(inbox), str(source)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        queued = inbox / other.stdout.readline().strip()
        assert queued.is_file()
        settings = make_settings(
            migrated_database_url, model_store, dimse_port=0, dimse_ack="queued",
            dimse_inbox_dir=inbox,
        )  # fmt: skip
        with TestClient(create_app(settings)) as client:
            app: Any = client.app
            scp = app.state.dimse
            # several passes have run (counted, not slept for): each left the file alone
            wait_for(lambda: len(passes) >= 3, 120, "three adopt passes")
            assert passes[:3] == [(0, 1)] * 3, passes
            assert queued.is_file(), "deleted under the live process that queued it"
            assert _rows(app, "SELECT id FROM predictions") == []  # not predicted here
            assert scp.inbox.pending() == []
            # the other process stops with its instance unfinished: this one takes it over
            # (at its next pass; a process starting later would at its start)
            assert other.stdin is not None
            other.stdin.close()
            assert other.wait(timeout=30) == 0
            wait_for(lambda: _rows(app, "SELECT id FROM predictions"), 120, "the prediction")
            wait_for(lambda: not queued.exists(), 30, "its file deleted")
            assert len(_rows(app, "SELECT id FROM predictions")) == 1
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(timeout=30)
        for stream in (other.stdin, other.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def test_a_write_in_progress_of_another_process_is_not_removed(tmp_path: Path) -> None:
    from radlens.app.dimse_inbox import DimseInbox

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    partial = inbox / "01796655245137847812-054a541f7b31-4d4f44414c495459.dcm.part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer holds it (app/outbox.py _write_locked)
        DimseInbox(inbox, None)  # a process starting meanwhile
        assert partial.exists()
    finally:
        os.close(fd)
    DimseInbox(inbox, None)  # the writer is gone: a crash's leftover, removed
    assert not partial.exists()


def test_the_purge_matches_a_queued_file_only_by_a_prediction_made_after_it(
    tmp_path: Path, migrated_database_url: str
) -> None:
    """Of the queued files with the bytes of a prediction to purge (made RETENTION + 6 days
    ago), the one queued before it (a crash leftover) goes; the one queued after it (the
    instance sent again) is owed a prediction and stays, and so does a leftover another live
    process holds (it is predicting it)."""
    from radlens.app import audit
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.dimse_inbox import DimseInbox

    inbox_dir = tmp_path / "inbox"
    inbox = DimseInbox(inbox_dir, None)
    data, held_data = dicom_bytes(seed=822), dicom_bytes(seed=823)
    engine = make_engine(migrated_database_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        with sessionmaker() as session:
            for each in (data, held_data):
                row = prediction_row(f"sha256:{hashlib.sha256(each).hexdigest()}")
                row.input_sha256 = hashlib.sha256(each).hexdigest()
                row.created_at = datetime.now(UTC) - timedelta(days=RETENTION + 6)
                session.add(row)
            session.commit()
        leftover = _queued_days_ago(inbox.put(data, "A"), RETENTION + 7)
        sent_again = _queued_days_ago(inbox.put(data, "B"), RETENTION + 5)
        held = _queued_days_ago(inbox.put(held_data, "A"), RETENTION + 7)
        fd = os.open(held, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a live replica's (DimseInbox(owner=True) holds it)
            counts = audit.retention_purge(
                sessionmaker, retention_days=RETENTION, inbox_dir=inbox_dir, dry_run=True
            )
            assert (counts.predictions, counts.inbox_predicted) == (2, 1)
            counts = audit.retention_purge(
                sessionmaker, retention_days=RETENTION, inbox_dir=inbox_dir
            )
            assert (counts.predictions, counts.inbox_predicted) == (2, 1)
        finally:
            os.close(fd)
        assert not leftover.exists()
        assert sent_again.exists(), "an instance sent again after its prediction was deleted"
        assert held.exists(), "deleted under the live process predicting it"
    finally:
        engine.dispose()

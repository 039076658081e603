"""QA round 54: results that never reach the outbox (app/outbox.py, app/ingest.py _send_back).

A prediction is committed before its SR/SC are queued for RADLENS_DICOM_DESTINATIONS, so a
failure to queue them (the spool cannot be written, an output cannot be built, the stored
overlay cannot be read) is not the upload's: it is answered 201. A log line was all that said
the PACS would never get the result; each one is now counted by
radlens_dicom_outbox_enqueue_failures_total{kind,reason}, which RadlensResultsNotQueued
(monitoring/prometheus/alerts.yml) alerts on, and one kind failing no longer stops the other.
A database error writing the dicom.send.queue audit row loses nothing (the entries are in the
spool) and is not counted.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import dicom_bytes, new_uid
from tests.app.test_outbox import (
    SwitchableSessions,
    audit_actions,
    make_outbox,
    metric,
    outbox_settings,
    post_dicom,
    sessions,  # noqa: F401 (a fixture)
    waiting_outbox_client,
)

PACS = "PACS@127.0.0.1:25411"  # QA 54's port range; nothing listens: entries stay pending
FAILURES = "radlens_dicom_outbox_enqueue_failures_total"


def failures(client: TestClient) -> dict[tuple[str, str], float]:
    """radlens_dicom_outbox_enqueue_failures_total by (kind, reason), as /metrics shows it."""
    found = {}
    for line in metric(client, FAILURES + "{"):
        match = re.fullmatch(rf'{FAILURES}\{{kind="(\w+)",reason="([\w-]+)"\}} (\S+)', line)
        assert match, line
        found[(match[1], match[2])] = float(match[3])
    return found


@pytest.fixture()
def client(tmp_path: Path, model_store: Path, migrated_database_url: str) -> Iterator[TestClient]:
    """A service sending SR and SC to a destination that is down (the entries wait)."""
    with waiting_outbox_client(
        migrated_database_url, model_store, tmp_path / "spool", f"{PACS}/sr+sc"
    ) as test_client:
        yield test_client


def _outbox(client: TestClient) -> Any:
    app: Any = client.app
    return app.state.resources.ingestor.outbox


def test_every_series_is_exported_at_zero_whatever_the_destinations() -> None:
    """Exported from the start (an alert's increase() needs the 0 before the first failure),
    by the service's metrics, with or without destinations: the rule's series always exists
    (tests/app/test_drift.py checks that every series a rule names is exported)."""
    from prometheus_client import generate_latest

    from radlens.app.metrics import OUTBOX_FAILURE_REASONS, OUTBOX_KINDS, ServiceMetrics

    text = generate_latest(ServiceMetrics().registry).decode()
    found = [line for line in text.splitlines() if line.startswith(FAILURES + "{")]
    assert len(found) == len(OUTBOX_KINDS) * len(OUTBOX_FAILURE_REASONS) == 10
    assert all(line.endswith(" 0.0") for line in found), found
    assert 'radlens_dicom_outbox_enqueue_failures_total{kind="sr",reason="spool"} 0.0' in found


def test_a_full_spool_answers_201_logs_and_counts_each_result_lost(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(path: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("radlens.app.outbox._write_locked", full)
    caplog.set_level(logging.ERROR, logger="radlens.app.ingest")
    body = post_dicom(client, dicom_bytes(sop=new_uid()))  # asserts 201
    assert _outbox(client).entries() == []
    found = failures(client)
    assert found[("sr", "spool")] == 1.0 and found[("sc", "spool")] == 1.0
    assert sum(found.values()) == 2.0
    for kind in ("SR", "SC"):
        assert (
            f"prediction {body['id']}: {kind} not queued for the DICOM destinations "
            "(spool: OSError)" in caplog.text
        )
    # nothing was queued, so no queue row: the instance sent again gets its results
    assert ("dicom.send.queue", body["id"]) not in [(a, t) for a, t, _ in audit_actions(client.app)]


def test_an_sr_that_cannot_be_built_leaves_the_sc_queued(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SR was built first and its error stopped the SC (nothing queued, nothing counted)."""
    from radlens.app.dicom_outputs import DicomOutputError

    def refused(prediction: Any, source: Any, findings: Any = ()) -> bytes:
        raise DicomOutputError("highdicom refused the SR (a test)")

    monkeypatch.setattr("radlens.app.dicom_outputs.build_sr", refused)
    body = post_dicom(client, dicom_bytes(sop=new_uid()))
    assert [e.kind for e in _outbox(client).entries()] == ["sc"]
    found = failures(client)
    assert found[("sr", "build")] == 1.0 and sum(found.values()) == 1.0
    rows = [(a, t, q) for a, t, q in audit_actions(client.app) if a == "dicom.send.queue"]
    # the row says what was queued, so a re-send queues the SR (QA 68)
    assert rows == [("dicom.send.queue", body["id"], "entries=1&queued=sc")]


def test_an_unreadable_stored_overlay_loses_the_sc_not_the_sr(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance sent again whose results were never queued (the process died in between)
    has its SC drawn from the stored overlay: the database failing that read lost the SR too."""
    from sqlalchemy.exc import OperationalError

    app: Any = client.app
    ingestor = app.state.resources.ingestor
    # the re-post would wait up to 5 s for the first request's queue row, which never comes
    monkeypatch.setattr("radlens.app.outbox.CLAIM_WAIT_S", 0.0)
    data = dicom_bytes(sop=new_uid())
    send_back = ingestor._send_back

    async def crashed(written: Any, candidate: Any) -> None:
        return None  # committed, then the process "died" before queueing

    ingestor._send_back = crashed
    first = post_dicom(client, data)
    ingestor._send_back = send_back

    def unreadable(prediction_id: Any) -> bytes:
        raise OperationalError("SELECT png", {}, Exception("server closed the connection"))

    monkeypatch.setattr(ingestor, "_stored_overlay", unreadable)
    again = client.post("/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert [e.kind for e in _outbox(client).entries()] == ["sr"]
    found = failures(client)
    assert found[("sc", "database")] == 1.0 and sum(found.values()) == 1.0


def test_a_database_error_on_the_queue_row_loses_nothing_and_is_not_counted(
    client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the brief feared: the dicom.send.queue row not written. The entries are written
    before it, in the spool, and are delivered; a WARNING says the row is missing."""
    caplog.set_level(logging.WARNING, logger="radlens.app.outbox")
    outbox = _outbox(client)
    down = SwitchableSessions(outbox.sessionmaker, f"sqlite:///{tmp_path / 'none' / 'a.db'}")
    down.down = True
    outbox.sessionmaker = down
    try:
        body = post_dicom(client, dicom_bytes(sop=new_uid()))
        assert sorted(e.kind for e in outbox.entries()) == ["sc", "sr"]
    finally:
        outbox.sessionmaker = down.sessions
        down.broken_engine.dispose()
    assert f"outbox: prediction {body['id']} queued, its dicom.send.queue audit row" in (
        caplog.text
    )
    assert set(failures(client).values()) == {0.0}


def test_submit_queues_what_it_can_and_names_what_it_could_not(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    sessions: Any,  # noqa: F811
) -> None:
    """Outbox.submit on its own: no overlay for the SC is a failure it raises (it logged it
    and returned), after queueing and recording the SR."""
    from radlens.app.dicom_outputs import SourceRef
    from radlens.app.outbox import ResultsNotQueuedError
    from tests.app.conftest import prediction_row

    settings = outbox_settings(
        migrated_database_url, model_store, tmp_path / "spool", f"{PACS}/sr+sc"
    )
    outbox = make_outbox(settings, sessions)
    row = prediction_row("sha256:" + "5" * 64)
    row.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    source = SourceRef(new_uid(), new_uid(), new_uid(), row.sop_class_uid, "CT")
    with pytest.raises(ResultsNotQueuedError) as raised:
        outbox.submit(row, source, None, resend=False)
    assert [(k, r) for k, r, _ in raised.value.failures] == [("sc", "no-overlay")]
    assert raised.value.queued == 1
    assert [e.kind for e in outbox.entries()] == ["sr"]
    # the SC is missing: the instance received again queues it, not the SR (QA 68)
    assert outbox.handled_or_wait(str(row.id)) == (False, 0.0)


# --- the alert rule, checked by promtool ---------------------------------------------------

PROMTOOL = shutil.which("promtool")


needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool absent (Debian: apt-get install prometheus)"
)


@needs_promtool
def test_the_rule_passes_its_unit_tests() -> None:
    """RadlensResultsNotQueued exists once and passes its promtool unit tests (alerts_test.yml:
    a firing case and a quiet one with a counter reset)."""
    from tests.test_prometheus import PROMETHEUS_DIR, _promtool

    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    assert text.count("alert: RadlensResultsNotQueued") == 1
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize(
    ("rule", "broken"),
    [
        (
            "sum by (instance, kind, reason) (increase(radlens_dicom_outbox_enqueue_failures_total",
            "sum by (instance) (increase(radlens_dicom_outbox_enqueue_failures_total",
        ),
        ("enqueue_failures_total[15m])) > 0", "enqueue_failures_total[1m])) > 0"),
        ("enqueue_failures_total[15m])) > 0", "enqueue_failures_total[15m])) >= 0"),
    ],
)
def test_the_rule_tests_catch_a_changed_rule(tmp_path: Path, rule: str, broken: str) -> None:
    """A lost label, a shorter window or a rule that fires on no failure fails them."""
    from tests.test_prometheus import PROMETHEUS_DIR, _promtool

    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    assert text.count(rule) == 1, rule
    (tmp_path / "alerts.yml").write_text(text.replace(rule, broken))
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path)
    result = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "RadlensResultsNotQueued" in result.stdout + result.stderr

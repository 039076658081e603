"""Results sent back by C-STORE (app/outbox.py, app/destinations.py): dcmtk's storescp plays
the PACS; a pynetdicom SCP plays one that refuses; the spool survives a restart."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import create_api_key, dicom_bytes, make_settings, new_uid

pytest.importorskip("pynetdicom")
from pydicom import dcmread

PSEUDONYM_KEY = "outbox-test-pseudonym-key-0123456789"
DEDUPE_KEY = "outbox-test-dedupe-key-0123456789"  # required with a pseudonym key
needs_storescp = pytest.mark.skipif(
    shutil.which("storescp") is None, reason="dcmtk (storescp) is not installed"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class StoreSCP:
    """dcmtk's storescp on loopback, writing what it receives into ``directory``."""

    def __init__(self, directory: Path, port: int, ae_title: str = "PACS") -> None:
        self.directory = directory
        self.port = port
        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(directory), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(self._listening, 30, f"storescp on port {port}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def received(self) -> list[Any]:
        return [dcmread(p) for p in sorted(self.directory.iterdir()) if p.is_file()]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[Callable[[int], StoreSCP]]:
    started: list[StoreSCP] = []

    def start(port: int) -> StoreSCP:
        scp = StoreSCP(tmp_path / f"pacs-{len(started)}", port)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def outbox_settings(url: str, store: Path, spool: Path, destinations: str, **extra: Any) -> Any:
    values: dict[str, Any] = {
        "dicom_destinations": destinations,
        "dicom_outbox_dir": spool,
        "dicom_outbox_retry_s": 0.2,
        "dicom_outbox_retry_max_s": 0.5,
        "dimse_acse_timeout_s": 5,
        "dimse_network_timeout_s": 5,
        **extra,
    }
    return make_settings(url, store, **values)


@contextmanager
def waiting_outbox_client(
    url: str, store: Path, spool: Path, destinations: str
) -> Iterator[TestClient]:
    """A service whose DICOM destinations are down and retried only after 60 s: what it queues
    waits in the spool for the test to read."""
    from radlens.app.main import create_app

    settings = outbox_settings(
        url, store, spool, destinations, dicom_outbox_retry_s=60, dicom_outbox_retry_max_s=60
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def post_dicom(client: TestClient, data: bytes) -> dict[str, Any]:
    response = client.post("/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def audit_actions(app: Any) -> list[tuple[str, str | None, str | None]]:
    from sqlalchemy import text

    with app.state.resources.engine.connect() as conn:
        rows = conn.execute(text("SELECT action, target, query FROM audit_events")).all()
    return [(r[0], r[1], r[2]) for r in rows]


def metric(client: TestClient, name: str) -> list[str]:
    return [line for line in client.get("/metrics").text.splitlines() if line.startswith(name)]


# --- RADLENS_DICOM_DESTINATIONS ------------------------------------------------------


class TestParseDestinations:
    def test_syntax(self) -> None:
        from radlens.app.destinations import parse_destinations

        found = parse_destinations(
            " PACS@10.0.0.5:104 , VIEW@viewer.local:11112/sr+sc,A@[::1]:4/sc"
        )
        assert [(d.ae_title, d.host, d.port, sorted(d.outputs)) for d in found] == [
            ("PACS", "10.0.0.5", 104, ["sr"]),
            ("VIEW", "viewer.local", 11112, ["sc", "sr"]),
            ("A", "::1", 4, ["sc"]),
        ]
        assert found[2].name == "A@[::1]:4"
        assert parse_destinations(None) == [] == parse_destinations("  ")

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("10.0.0.5:104", "starts with its AE title"),
            ("PACS@10.0.0.5", "needs host:port"),
            ("PACS@10.0.0.5:0", "port must be 1 to 65535"),
            ("PACS@10.0.0.5:99999", "port must be 1 to 65535"),
            ("PACS@:104", "needs host:port"),
            ("PACS@10.0.0.5:104/pdf", "outputs must be sr, sc or sr[+]sc"),
            ("PACS@10.0.0.5:104/sr+sr", "outputs must be sr, sc or sr[+]sc"),
            ("A_TITLE_LONGER_THAN_16@h:104", "1 to 16 printable ASCII"),
            ("P@h:104,P@h:104/sc", "may appear once"),
        ],
    )
    def test_malformed_stops_start_up_quoting_it(self, value: str, message: str) -> None:
        from pydantic import ValidationError

        from radlens.app.settings import Settings, describe_validation_error

        with pytest.raises(ValidationError) as info:
            Settings(dicom_destinations=value)
        line = describe_validation_error(info.value)
        assert "RADLENS_DICOM_DESTINATIONS" in line
        assert __import__("re").search(message, line), line


# --- the outbox on its own -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_outbox(settings: Any, sessions: Any = None, clock: Clock | None = None) -> Any:
    from prometheus_client import CollectorRegistry

    from radlens.app.outbox import Outbox

    return Outbox(
        settings, sessionmaker=sessions, registry=CollectorRegistry(), clock=clock or time.time
    )


@pytest.fixture()
def sessions(migrated_database_url: str) -> Iterator[Any]:
    from radlens.app.db import make_engine, make_sessionmaker

    engine = make_engine(migrated_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def rows(url: str, action: str) -> list[Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    text("SELECT actor, target, query, status FROM audit_events WHERE action = :a"),
                    {"a": action},
                )
            )
    finally:
        engine.dispose()


def test_encrypted_at_rest_with_a_pseudonym_key(tmp_path: Path, model_store: Path) -> None:
    secret = b"2.25.123456789 the sender's study UID"
    settings = outbox_settings(
        "sqlite://",
        model_store,
        tmp_path,
        f"PACS@127.0.0.1:{free_port()}",
        uid_pseudonym_key=PSEUDONYM_KEY,
        dedupe_key=DEDUPE_KEY,
    )
    outbox = make_outbox(settings)
    assert outbox.enqueue("p-1", "sr", secret) == 1
    (entry,) = outbox.entries()
    assert entry.encrypted
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{entry.id}.enc", f"{entry.id}.json"]
    assert b"2.25.123456789" not in (tmp_path / f"{entry.id}.enc").read_bytes()
    assert "2.25.123456789" not in (tmp_path / f"{entry.id}.json").read_text()
    assert outbox.payload(entry) == secret
    plain = make_outbox(outbox_settings("sqlite://", model_store, tmp_path / "p", "P@h:1"))
    plain.enqueue("p-2", "sr", secret)
    assert not plain.entries()[0].encrypted
    assert plain.payload(plain.entries()[0]) == secret


def test_sc_only_destination_gets_no_sr(tmp_path: Path, model_store: Path) -> None:
    settings = outbox_settings("sqlite://", model_store, tmp_path, "A@h:1/sc,B@h:2")
    outbox = make_outbox(settings)
    assert outbox.enqueue("p", "sr", b"x") == 1
    assert outbox.enqueue("p", "sc", b"y") == 1
    assert {(e.kind, e.destination) for e in outbox.entries()} == {("sr", "B@h:2"), ("sc", "A@h:1")}


def test_partial_files_of_a_crash_are_removed_at_start(tmp_path: Path, model_store: Path) -> None:
    settings = outbox_settings("sqlite://", model_store, tmp_path, "PACS@h:1")
    outbox = make_outbox(settings)
    outbox.enqueue("p", "sr", b"whole")
    (tmp_path / "0000000000001-abc.dcm").write_bytes(b"payload without state")
    (tmp_path / "0000000000002-def.json.part").write_bytes(b"{")
    again = make_outbox(settings)
    assert [e.prediction_id for e in again.entries()] == ["p"]
    assert len(list(tmp_path.iterdir())) == 2


def test_down_destination_backs_off_then_expires_with_an_audit_row(
    tmp_path: Path, model_store: Path, migrated_database_url: str, sessions: Any
) -> None:
    clock = Clock()
    settings = outbox_settings(
        migrated_database_url,
        model_store,
        tmp_path,
        f"PACS@127.0.0.1:{free_port()}",
        dicom_outbox_retry_s=10,
        dicom_outbox_retry_max_s=25,
        dicom_outbox_max_age_s=100,
    )
    outbox = make_outbox(settings, sessions, clock)
    outbox.enqueue("00000000-0000-4000-8000-000000000001", "sr", dicom_bytes())
    gauge = outbox.gauge.labels(
        destination=f"PACS@127.0.0.1:{settings.dicom_destination_list[0].port}"
    )
    assert gauge._value.get() == 1
    delays = []
    for _ in range(4):
        outbox.deliver_due()
        (entry,) = outbox.entries()
        delays.append(entry.next_attempt_at - clock.now)
        assert "association" in (entry.last_error or "")
        outbox.deliver_due()  # not due yet: no attempt
        assert outbox.entries()[0].attempts == entry.attempts
        clock.now = entry.next_attempt_at
    assert delays == [10, 20, 25, 25]  # doubling, capped at RADLENS_DICOM_OUTBOX_RETRY_MAX_S
    assert rows(migrated_database_url, "dicom.send.drop") == []
    clock.now = 1_000_000.0 + 100
    outbox.deliver_due()
    assert outbox.entries() == []
    assert list(tmp_path.iterdir()) == []
    assert gauge._value.get() == 0
    ((actor, target, query, status),) = rows(migrated_database_url, "dicom.send.drop")
    assert (actor, target, status) == ("dicom-send", "00000000-0000-4000-8000-000000000001", 410)
    assert "undelivered after 4 attempts" in query


def test_changed_key_drops_the_undecryptable_with_an_audit_row(
    tmp_path: Path, model_store: Path, migrated_database_url: str, sessions: Any
) -> None:
    destination = f"PACS@127.0.0.1:{free_port()}"
    first = outbox_settings(
        migrated_database_url,
        model_store,
        tmp_path,
        destination,
        uid_pseudonym_key=PSEUDONYM_KEY,
        dedupe_key=DEDUPE_KEY,
    )
    make_outbox(first).enqueue("00000000-0000-4000-8000-000000000002", "sr", dicom_bytes())
    second = outbox_settings(
        migrated_database_url,
        model_store,
        tmp_path,
        destination,
        uid_pseudonym_key="another-pseudonym-key-9876543210",
        dedupe_key=DEDUPE_KEY,
    )
    make_outbox(second, sessions).deliver_due()
    assert list(tmp_path.iterdir()) == []
    ((_, target, query, _),) = rows(migrated_database_url, "dicom.send.drop")
    assert target == "00000000-0000-4000-8000-000000000002" and "cannot be decrypted" in query


def test_refusing_pacs_is_retried_with_its_status(tmp_path: Path, model_store: Path) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    received: list[int] = []

    def refuse(event: Any) -> int:
        received.append(1)
        return 0xA700

    scp_ae = AE(ae_title="BUSY")
    scp_ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = scp_ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)]
    )
    try:
        settings = outbox_settings("sqlite://", model_store, tmp_path, f"BUSY@127.0.0.1:{port}")
        outbox = make_outbox(settings)
        outbox.enqueue("p", "sr", dicom_bytes())
        outbox.deliver_due()
    finally:
        server.shutdown()
    (entry,) = outbox.entries()
    assert received == [1]
    assert entry.attempts == 1
    assert "0xA700" in (entry.last_error or "")


# --- end to end: the service sends back --------------------------------------------------


@needs_storescp
def test_sr_and_sc_reach_the_pacs_with_the_senders_uids(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    storescp: Callable[[int], StoreSCP],
) -> None:
    from radlens.app.main import create_app

    pacs = storescp(free_port())
    study, series, sop = new_uid(), new_uid(), new_uid()
    settings = outbox_settings(
        migrated_database_url,
        model_store,
        tmp_path / "spool",
        f"PACS@127.0.0.1:{pacs.port}/sr+sc",
        uid_pseudonym_key=PSEUDONYM_KEY,
        dedupe_key=DEDUPE_KEY,
        auth="enabled",
    )
    key = create_api_key(migrated_database_url)
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        body = post_dicom(client, dicom_bytes(study=study, series=series, sop=sop))
        assert body["study_instance_uid"] != study  # stored as a pseudonym
        objects = wait_for(lambda: len(pacs.received()) == 2 and pacs.received(), what="SR + SC")
        wait_for(lambda: client.get("/v1/dicom/outbox").json()["pending"] == [], what="empty")
        assert metric(client, "radlens_dicom_outbox_pending{") == [
            f'radlens_dicom_outbox_pending{{destination="PACS@127.0.0.1:{pacs.port}"}} 0.0'
        ]
        assert client.get("/v1/dicom/outbox", headers={"Authorization": ""}).status_code == 401

        # a pass writes its audit rows after releasing the association, so an empty outbox can
        # be seen before the last pass's rows (the SC may go in a later pass than the SR)
        def both_audited() -> list[tuple[str, str | None, str | None]]:
            found = audit_actions(app)
            return found if sum(a[0] == "dicom.send.deliver" for a in found) == 2 else []

        actions = wait_for(both_audited, what="both deliveries audited")
    by_modality = {ds.Modality: ds for ds in objects}
    sr, sc = by_modality["SR"], by_modality["OT"]
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == study  # filed into the sender's study
        assert ds.SeriesInstanceUID != series
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == study
    referenced = evidence.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series
    assert referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sop
    assert str(body["id"]) in repr(sc.DerivationDescription)
    delivered = [a for a in actions if a[0] == "dicom.send.deliver"]
    assert sorted(q or "" for _, _, q in delivered) == [
        f"destination=PACS@127.0.0.1:{pacs.port}&kind=sc",
        f"destination=PACS@127.0.0.1:{pacs.port}&kind=sr",
    ]
    assert {t for _, t, _ in delivered} == {body["id"]}
    assert list((tmp_path / "spool").iterdir()) == []  # deleted once delivered


@needs_storescp
def test_down_destination_and_a_restart_lose_nothing(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    storescp: Callable[[int], StoreSCP],
) -> None:
    from radlens.app.main import create_app

    port = free_port()  # nothing listens there yet: the PACS is down
    spool = tmp_path / "spool"
    settings = outbox_settings(
        migrated_database_url,
        model_store,
        spool,
        f"PACS@127.0.0.1:{port}",
        dimse_port=0,
    )
    sop = new_uid()
    with TestClient(create_app(settings)) as client:
        app = client.app
        # received by C-STORE from a modality, predicted, its SR queued
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage

        sender = AE(ae_title="MODALITY")
        sender.add_requested_context(CTImageStorage)
        assoc = sender.associate("127.0.0.1", app.state.dimse.port, ae_title="RADLENS")  # type: ignore[attr-defined]
        status = assoc.send_c_store(dcmread(io.BytesIO(dicom_bytes(sop=sop))))
        assoc.release()
        assert status.Status == 0x0000

        def retried() -> list[Any]:
            pending = client.get("/v1/dicom/outbox").json()["pending"]
            return [p for p in pending if p["attempts"] >= 2]

        (pending,) = wait_for(retried, what="two failed attempts")
        assert pending["kind"] == "sr" and pending["destination"] == f"PACS@127.0.0.1:{port}"
        assert "association" in pending["last_error"]
        assert metric(client, "radlens_dicom_outbox_pending{")[0].endswith(" 1.0")
    assert len(list(spool.glob("*.json"))) == 1  # still there after the shutdown

    pacs = storescp(port)  # the PACS is back; so is radlens, a new process's worth of state
    with TestClient(create_app(settings)) as client:
        (sr,) = wait_for(pacs.received, what="the SR after the restart")
        wait_for(lambda: client.get("/v1/dicom/outbox").json()["pending"] == [], what="empty")
    assert sr.Modality == "SR"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
    assert list(spool.iterdir()) == []


def test_no_destinations_no_outbox(service: Any) -> None:
    body = service.client.get("/v1/dicom/outbox").json()
    assert body == {"destinations": [], "pending": []}
    assert service.app.state.resources.ingestor.outbox is None


def test_unreadable_payload_is_dropped_with_an_audit_row(
    tmp_path: Path, model_store: Path, migrated_database_url: str, sessions: Any
) -> None:
    settings = outbox_settings(
        migrated_database_url, model_store, tmp_path, f"PACS@127.0.0.1:{free_port()}"
    )
    outbox = make_outbox(settings, sessions)
    outbox.enqueue("00000000-0000-4000-8000-000000000003", "sr", b"not a DICOM file")
    outbox.deliver_due()
    assert outbox.entries() == []
    ((_, target, query, _),) = rows(migrated_database_url, "dicom.send.drop")
    assert target == "00000000-0000-4000-8000-000000000003" and "payload unreadable" in query


# --- the audit trail loses no outcome (a database outage, a restart) ---------------------


class AcceptingPACS:
    """A pynetdicom Storage SCP that answers Success and keeps the SOP Instance UIDs."""

    def __init__(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000


@pytest.fixture()
def pacs() -> Iterator[AcceptingPACS]:
    scp = AcceptingPACS()
    yield scp
    scp.server.shutdown()


class SwitchableSessions:
    """The outbox's sessionmaker: the test database, or (``down``) one that cannot be reached,
    so the audit transaction fails with an OperationalError."""

    def __init__(self, sessions: Any, broken_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.orm import sessionmaker

        self.sessions = sessions
        self.broken_engine = create_engine(broken_url)
        self.broken = sessionmaker(bind=self.broken_engine)
        self.down = False

    def __call__(self) -> Any:
        return (self.broken if self.down else self.sessions)()


@pytest.fixture()
def switchable(sessions: Any, tmp_path: Path) -> Iterator[SwitchableSessions]:
    switch = SwitchableSessions(sessions, f"sqlite:///{tmp_path / 'no-such-dir' / 'audit.db'}")
    yield switch
    switch.broken_engine.dispose()


def spool_states(spool: Path) -> list[dict[str, Any]]:
    """The state files of the spool, as written."""
    import json

    return [json.loads(p.read_text()) for p in sorted(spool.glob("*.json"))]


def test_delivery_is_audited_once_the_database_is_back(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    switchable: SwitchableSessions,
    pacs: AcceptingPACS,
) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    clock = Clock()
    spool = tmp_path / "spool"
    settings = outbox_settings(
        migrated_database_url,
        model_store,
        spool,
        f"PACS@127.0.0.1:{pacs.port}",
        dicom_outbox_max_age_s=100,
    )
    switchable.down = True
    with pytest.raises(OperationalError), switchable() as session:  # the outage to meet
        session.execute(text("SELECT 1"))
    outbox = make_outbox(settings, switchable, clock)
    gauge = outbox.gauge.labels(destination=f"PACS@127.0.0.1:{pacs.port}")
    sop = new_uid()
    outbox.enqueue("00000000-0000-4000-8000-00000000000d", "sr", dicom_bytes(sop=sop))
    outbox.deliver_due()
    assert pacs.received == [sop]
    assert rows(migrated_database_url, "dicom.send.deliver") == []
    (state,) = spool_states(spool)  # kept until its audit row is committed, without its payload
    assert state["state"] == "delivered"
    assert [p.suffix for p in spool.iterdir()] == [".json"]
    assert outbox.entries() == []  # not queued any more: neither listed nor counted
    assert [e.id for e in outbox.unaudited()] == [state["id"]]
    assert gauge._value.get() == 0

    clock.now += 1000  # past RADLENS_DICOM_OUTBOX_MAX_AGE_S: a delivered entry is not dropped
    outbox.deliver_due()  # the database is still down: nothing sent, nothing lost
    assert pacs.received == [sop]
    assert [s["state"] for s in spool_states(spool)] == ["delivered"]

    switchable.down = False
    outbox.deliver_due()
    ((actor, target, query, status),) = rows(migrated_database_url, "dicom.send.deliver")
    assert (actor, target, status) == ("dicom-send", "00000000-0000-4000-8000-00000000000d", 200)
    assert query == f"destination=PACS@127.0.0.1:{pacs.port}&kind=sr"
    assert rows(migrated_database_url, "dicom.send.drop") == []
    assert list(spool.iterdir()) == []
    outbox.deliver_due()
    assert pacs.received == [sop]  # one copy in the PACS
    assert len(rows(migrated_database_url, "dicom.send.deliver")) == 1
    assert gauge._value.get() == 0


def test_drop_is_audited_once_the_database_is_back(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    switchable: SwitchableSessions,
) -> None:
    clock = Clock()
    spool = tmp_path / "spool"
    settings = outbox_settings(
        migrated_database_url,
        model_store,
        spool,
        f"PACS@127.0.0.1:{free_port()}",  # nothing listens: never delivered
        dicom_outbox_max_age_s=100,
    )
    outbox = make_outbox(settings, switchable, clock)
    gauge = outbox.gauge.labels(destination=settings.dicom_destination_list[0].name)
    outbox.enqueue("00000000-0000-4000-8000-00000000000e", "sr", dicom_bytes())
    outbox.deliver_due()
    assert outbox.entries()[0].attempts == 1
    clock.now += 100
    switchable.down = True
    outbox.deliver_due()
    assert rows(migrated_database_url, "dicom.send.drop") == []
    (state,) = spool_states(spool)
    assert state["state"] == "dropped"
    assert state["reason"] == "undelivered after 1 attempts"
    assert [p.suffix for p in spool.iterdir()] == [".json"]
    assert outbox.entries() == []
    assert gauge._value.get() == 0

    clock.now += 1000
    outbox.deliver_due()  # still down: still one entry waiting for its row, dropped once
    assert [s["state"] for s in spool_states(spool)] == ["dropped"]

    switchable.down = False
    outbox.deliver_due()
    ((actor, target, query, status),) = rows(migrated_database_url, "dicom.send.drop")
    assert (actor, target, status) == ("dicom-send", "00000000-0000-4000-8000-00000000000e", 410)
    assert query.endswith("&kind=sr&reason=undelivered after 1 attempts")
    assert list(spool.iterdir()) == []
    outbox.deliver_due()
    assert len(rows(migrated_database_url, "dicom.send.drop")) == 1


def test_restart_writes_the_audit_row_left_behind_without_sending_again(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    sessions: Any,
    switchable: SwitchableSessions,
    pacs: AcceptingPACS,
) -> None:
    spool = tmp_path / "spool"
    settings = outbox_settings(
        migrated_database_url, model_store, spool, f"PACS@127.0.0.1:{pacs.port}"
    )
    sop = new_uid()
    payload = dicom_bytes(sop=sop)
    first = make_outbox(settings, switchable)
    first.enqueue("00000000-0000-4000-8000-00000000000f", "sr", payload)
    switchable.down = True
    first.deliver_due()  # delivered; the process then ends before the database is back
    assert pacs.received == [sop]
    (state,) = spool_states(spool)
    assert state["state"] == "delivered"
    # as if the crash came between the state's rewrite and the payload's removal
    (spool / f"{state['id']}.dcm").write_bytes(payload)

    again = make_outbox(settings, sessions)  # a new process, the database reachable
    assert [p.suffix for p in spool.iterdir()] == [".json"]  # the leftover payload removed
    assert again.entries() == []
    assert again.gauge.labels(destination=f"PACS@127.0.0.1:{pacs.port}")._value.get() == 0
    again.deliver_due()
    assert pacs.received == [sop]  # not sent again
    ((_, target, _, status),) = rows(migrated_database_url, "dicom.send.deliver")
    assert (target, status) == ("00000000-0000-4000-8000-00000000000f", 200)
    assert list(spool.iterdir()) == []


def test_a_state_file_of_an_earlier_version_is_still_to_be_delivered(
    tmp_path: Path, model_store: Path, migrated_database_url: str, sessions: Any, pacs: Any
) -> None:
    import json

    spool = tmp_path / "spool"
    spool.mkdir()
    sop = new_uid()
    old = {  # no "state" field
        "id": "0000000000001-0123456789abcdef0123456789abcdef",
        "prediction_id": "00000000-0000-4000-8000-000000000010",
        "kind": "sr",
        "destination": f"PACS@127.0.0.1:{pacs.port}",
        "created_at": time.time(),
        "attempts": 2,
        "next_attempt_at": 0.0,
        "last_error": "association failed by PACS",
        "encrypted": False,
    }
    (spool / f"{old['id']}.dcm").write_bytes(dicom_bytes(sop=sop))
    (spool / f"{old['id']}.json").write_text(json.dumps(old))
    settings = outbox_settings(
        migrated_database_url, model_store, spool, f"PACS@127.0.0.1:{pacs.port}"
    )
    outbox = make_outbox(settings, sessions)
    (entry,) = outbox.entries()
    assert (entry.id, entry.state, entry.attempts) == (old["id"], "pending", 2)
    outbox.deliver_due()
    assert pacs.received == [sop]
    assert [r[1] for r in rows(migrated_database_url, "dicom.send.deliver")] == [
        "00000000-0000-4000-8000-000000000010"
    ]
    assert list(spool.iterdir()) == []


def _retired_ultrasound(data: bytes) -> bytes:
    """``data`` as Ultrasound Image Storage (Retired), 1.2.840.10008.5.1.4.1.1.6, the class of
    pydicom-data's color-pl.dcm: old modalities still send it, highdicom maps no IOD to it."""
    ds = dcmread(io.BytesIO(data))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6"
    ds.Modality = "US"
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _without_preamble(data: bytes) -> bytes:
    """``data`` as a bare dataset: no preamble, no file meta (pydicom-data's OT-PAL-8-face)."""
    ds = dcmread(io.BytesIO(data))
    del ds.file_meta
    ds.preamble = None
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=False)
    raw = buf.getvalue()
    assert raw[128:132] != b"DICM" and not raw.startswith(b"\x02\x00")
    return raw


def test_a_retired_sop_class_and_a_bare_dataset_are_answered_and_queued(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    """QA round 13: a retired SOP class made highdicom raise KeyError building the SR after the
    prediction was committed (a 500; the results never queued), and a dataset without preamble
    or file meta a 500 wherever destinations are set (InvalidDicomError reading its header
    again)."""
    from radlens.app.main import create_app

    retired_sop, bare_sop = new_uid(), new_uid()
    settings = outbox_settings(
        migrated_database_url, model_store, tmp_path / "spool", f"PACS@127.0.0.1:{free_port()}"
    )
    with TestClient(create_app(settings)) as client:
        post_dicom(client, _retired_ultrasound(dicom_bytes(sop=retired_sop, seed=11)))
        post_dicom(client, _without_preamble(dicom_bytes(sop=bare_sop, seed=12)))
        outbox = client.app.state.resources.ingestor.outbox  # type: ignore[attr-defined]
        # an SR each (an SC needs an explanation)
        entries = wait_for(lambda: len(outbox.entries()) == 2 and outbox.entries(), what="2")
        srs = [dcmread(io.BytesIO(outbox.payload(e))) for e in entries if e.kind == "sr"]
    (retired,) = [
        sr
        for sr in srs
        if sr.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == retired_sop
    ]
    reference = (
        retired.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
    )
    assert reference.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.6"  # its own class
    assert "1.2.840.10008.5.1.4.1.1.7" not in repr(retired)  # no stand-in left behind


def test_an_instance_without_a_study_uid_is_answered_and_the_log_says_why_nothing_is_sent(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """QA round 13: pydicom's JPEG-LS secondary captures have no Study Instance UID; they were
    predicted and silently never sent back."""
    from radlens.app.main import create_app

    ds = dcmread(io.BytesIO(dicom_bytes(seed=13)))
    del ds.StudyInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    settings = outbox_settings(
        migrated_database_url, model_store, tmp_path / "spool", f"PACS@127.0.0.1:{free_port()}"
    )
    with TestClient(create_app(settings)) as client:
        caplog.clear()
        post_dicom(client, buf.getvalue())
        outbox = client.app.state.resources.ingestor.outbox  # type: ignore[attr-defined]
        assert outbox.entries() == []
    assert "results not sent to the DICOM destinations: the instance lacks StudyInstanceUID" in (
        caplog.text
    )


def test_results_never_queued_are_queued_when_the_instance_comes_again(
    tmp_path: Path, model_store: Path, migrated_database_url: str, pacs: AcceptingPACS
) -> None:
    """A crash between a prediction's commit and the queueing of its SR (or a queued DIMSE
    instance replayed after a restart, or a C-STORE answered at its timeout) left the
    prediction stored and its SR never sent: the sender's retry was answered "existing" and
    nothing was queued (QA round 15: 18 of 47 SRs after a kill -9). The results of a stored
    prediction are queued when its instance comes again, unless they were queued before."""
    from radlens.app.main import create_app

    settings = outbox_settings(
        migrated_database_url, model_store, tmp_path / "spool", f"PACS@127.0.0.1:{pacs.port}"
    )
    data = dicom_bytes(sop=new_uid(), study=new_uid())
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        ingestor = app.state.resources.ingestor
        send_back = ingestor._send_back

        async def crashed(written: Any, candidate: Any) -> None:
            return None  # committed, then the process "died" before the SR was queued

        ingestor._send_back = crashed
        first = post_dicom(client, data)
        ingestor._send_back = send_back
        assert pacs.received == []

        again = client.post(
            "/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")}
        )
        assert again.status_code == 200 and again.json()["id"] == first["id"]  # existing
        (sr,) = wait_for(lambda: list(pacs.received), what="the SR of the stored prediction")
        wait_for(
            lambda: (
                ("dicom.send.deliver", first["id"]) in [(a, t) for a, t, _ in audit_actions(app)]
            ),
            what="its delivery's audit row",
        )
        # sent once: a third post of the instance queues nothing more
        third = client.post(
            "/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")}
        )
        assert third.status_code == 200
        assert client.get("/v1/dicom/outbox").json()["pending"] == []
    assert pacs.received == [sr]

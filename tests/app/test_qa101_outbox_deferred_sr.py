"""QA 101: when the database cannot be read while the outbox builds a prediction's SR (its stored
findings, just after the prediction's commit), the SR is not sent without them: it is queued to
be built at its delivery, and each delivery attempt reads them again, sending nothing until
they can be read.

Before, the SR was queued and sent at once without the per-finding measurement groups of a
multi-label model (QA 86's WARNING said so), and nothing ever replaced it: the PACS kept an SR
missing the findings, and sending the instance again did not queue another (its results were
queued). On SQLite and PostgreSQL, with the spool in plain Part 10 and encrypted
(RADLENS_UID_PSEUDONYM_KEY); a Storage SCP on QA 101's port keeps what it receives.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, dicom_bytes, make_settings, new_uid
from tests.app.test_qa86_sr_routes import ORDER, _content, _finding_groups, ordered_store

pytest.importorskip("pynetdicom")
from pydicom import Dataset, dcmread

__all__ = ["ordered_store"]  # the fixture, trained once per run

PORT = 30101  # QA 101's port range
PSEUDONYM_KEY = "qa101-pseudonym-key-0123456789"
DEDUPE_KEY = "qa101-dedupe-key-0123456789"


class KeepingPACS:
    """A pynetdicom Storage SCP that answers Success and keeps every dataset received."""

    def __init__(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[Dataset] = []
        self.server: Any = None
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", PORT), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


class Database:
    """The stored findings the outbox reads: readable, or (``down``) an OperationalError."""

    def __init__(self) -> None:
        from radlens.app import catalogue

        self.read = catalogue.sr_findings
        self.down = False
        self.reads = 0

    def sr_findings(self, session: Any, predictions: Any) -> Any:
        from sqlalchemy.exc import OperationalError

        self.reads += 1
        if self.down:
            raise OperationalError("SELECT", {}, Exception("the database went away (a test)"))
        return self.read(session, predictions)


@dataclass
class Service:
    client: TestClient
    outbox: Any
    pacs: KeepingPACS
    database: Database
    spool: Path


@pytest.fixture(params=[None, PSEUDONYM_KEY], ids=["plain", "encrypted"])
def service(
    request: pytest.FixtureRequest,
    databases: Databases,
    ordered_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Service]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    database = Database()
    monkeypatch.setattr("radlens.app.catalogue.sr_findings", database.sr_findings)
    settings = make_settings(
        url,
        ordered_store,
        dicom_destinations=f"PACS@127.0.0.1:{PORT}/sr",
        dicom_outbox_dir=tmp_path / "spool",
        dicom_outbox_retry_s=600,  # no retry but those the test asks for (moving the clock)
        dicom_outbox_retry_max_s=600,
        dimse_acse_timeout_s=5,
        dimse_network_timeout_s=5,
        uid_pseudonym_key=request.param,
        dedupe_key=DEDUPE_KEY,
        dicom_copy_patient=True,
    )
    pacs = KeepingPACS()
    try:
        with TestClient(create_app(settings)) as client:
            outbox = client.app.state.resources.ingestor.outbox  # type: ignore[attr-defined]
            yield Service(client, outbox, pacs, database, tmp_path / "spool")
    finally:
        pacs.stop()


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _attempted(service: Service) -> bool:
    return any(e.attempts for e in service.outbox.entries()) or bool(service.pacs.received)


def _next_pass(service: Service) -> None:
    """The delivery thread's next pass, with every entry due (its clock moved 10 minutes)."""
    now = service.outbox.clock()
    service.outbox.clock = lambda: now + 601.0
    service.outbox.wake()


def test_an_sr_whose_findings_cannot_be_read_waits_for_them(service: Service) -> None:
    from radlens.app.dicom_outputs import output_sop_uid

    study, sop = new_uid(), new_uid()
    service.database.down = True  # from the prediction's commit on
    response = service.client.post(
        "/v1/predictions",
        files={
            "file": (
                "ct.dcm",
                dicom_bytes(study=study, sop=sop, patient={"PatientName": "Doe^Jane"}),
                "application/dicom",
            )
        },
    )
    assert response.status_code == 201, response.text
    prediction_id = response.json()["id"]
    assert [f["name"] for f in response.json()["findings"]] == ORDER
    # queued (the queue row counts it: a re-post does not queue it again), not built yet
    _wait(lambda: _attempted(service), "the first delivery attempt")
    assert service.pacs.received == []  # was: the SR without its findings, sent at once
    (entry,) = service.outbox.entries()
    assert entry.kind == "sr" and entry.attempts == 1, entry
    assert entry.last_error.startswith("database: its findings could not be read"), entry
    # the database still down at the next attempt: still not sent
    _next_pass(service)
    _wait(lambda: service.outbox.entries()[0].attempts == 2, "the second attempt")
    assert service.pacs.received == []
    # readable again: the next attempt builds the SR with them, and sends it
    service.database.down = False
    _next_pass(service)
    _wait(lambda: bool(service.pacs.received), "the SR at the PACS")
    _wait(lambda: not service.outbox.entries() and not service.outbox.unaudited(), "its audit")
    (sent,) = service.pacs.received
    assert _finding_groups(sent)[1:] == ORDER
    direct = service.client.get(f"/v1/predictions/{prediction_id}/dicom/sr")
    if service.outbox.settings.uid_pseudonym_key is None:  # else 409: it stores pseudonyms
        assert direct.status_code == 200, direct.text
        assert _content(sent) == _content(dcmread(io.BytesIO(direct.content)))
    # the SR an upload's submit builds (with the patient copied): the same object, whenever built
    key = uuid.UUID(prediction_id)
    assert sent.SOPInstanceUID == output_sop_uid(key, "sr", with_patient=True)
    # the sender's own UIDs and (RADLENS_DICOM_COPY_PATIENT) its patient, never pseudonyms
    assert sent.StudyInstanceUID == study
    assert str(sent.PatientName) == "Doe^Jane"
    evidence = sent.CurrentRequestedProcedureEvidenceSequence[0]
    assert (
        evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == sop
    )


def test_the_deferred_entry_holds_no_object_to_send(service: Service) -> None:
    """Its payload is the source reference as DICOM JSON, not a Part 10 object (nothing can
    C-STORE it as the source instance), and its state says it is to be built; the state of
    any other entry is written as before (no new field)."""
    from radlens.app.outbox import Entry

    service.pacs.stop()  # nothing delivered: the entries stay in the spool
    service.database.down = True
    data = dicom_bytes(sop=new_uid())
    assert (
        service.client.post("/v1/predictions", files={"file": ("a.dcm", data)}).status_code == 201
    )
    service.database.down = False
    data = dicom_bytes(sop=new_uid(), seed=2)
    assert (
        service.client.post("/v1/predictions", files={"file": ("b.dcm", data)}).status_code == 201
    )
    states = [json.loads(p.read_text()) for p in sorted(service.spool.glob("*.json"))]
    assert [s.get("build_at_send") for s in states] == [True, None]
    deferred, built = (Entry(**s) for s in states)
    assert b"radlens.outbox.sr-source/1" in service.outbox.payload(deferred)
    assert dcmread(io.BytesIO(service.outbox.payload(built))).Modality == "SR"


def test_a_source_reference_reads_back_as_it_was() -> None:
    """Patient and study identification in Latin-1, the timezone, the instance number."""
    from radlens.app.dicom_outputs import source_from_dataset
    from radlens.app.outbox import _source_from_payload, _source_payload

    ds = dcmread(io.BytesIO(dicom_bytes(patient={"PatientID": "P1"}, instance=7)))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260102", "101112", "ACC9"
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.BurnedInAnnotation = "NO"
    for copy_patient in (True, False):
        source = source_from_dataset(ds, copy_patient=copy_patient)
        assert _source_from_payload(_source_payload(source)) == source
    with pytest.raises(ValueError, match="not an SR source reference"):
        _source_from_payload(json.dumps({"format": "else"}).encode())

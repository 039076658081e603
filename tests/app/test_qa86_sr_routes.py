"""QA 86: a multi-label prediction's SR (and its SC) has the same content whichever way it
leaves radlens: ``GET /v1/predictions/{id}/dicom/sr``, WADO-RS (one instance, a whole study,
its metadata) and the send-back outbox (read from the spool, as tests/app/test_outbox.py
does). Before, WADO-RS and the outbox built the SR without the prediction's findings: no
per-finding measurement groups. On SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, dicom_bytes, make_settings, new_uid
from tests.app.test_findings_api import BIASES, constant_findings_model, save_multilabel

pytest.importorskip("pynetdicom")
from pydicom import Dataset, dcmread

# the model's finding order, not alphabetical: the SR's groups follow it on every route
ORDER = ["Nodule", "Effusion", "Infiltration"]
THRESHOLDS = {"Nodule": 0.6, "Effusion": 0.5, "Infiltration": 0.5}
# nothing listens there (QA 86's port range): what the outbox queues waits in the spool
DOWN_PORT = 28699
DICOM = "application/dicom"


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def ordered_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("qa86-store")
    save_multilabel(store, constant_findings_model(BIASES), "qa86-findings", THRESHOLDS)
    return store


@dataclass
class Sent:
    client: TestClient
    prediction_id: str
    study: str
    spool: Path


@pytest.fixture(scope="module")
def sent(
    databases: Databases, ordered_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sent]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from tests.app.test_outbox import wait_for

    url = databases.new()
    upgrade(url)
    spool = tmp_path_factory.mktemp("qa86-spool")
    settings = make_settings(
        url,
        ordered_store,
        dicom_destinations=f"PACS@127.0.0.1:{DOWN_PORT}/sr+sc",
        dicom_outbox_dir=spool,
        dicom_outbox_retry_s=600,
        dicom_outbox_retry_max_s=600,
        dimse_acse_timeout_s=5,
        dimse_network_timeout_s=5,
    )
    study = new_uid()
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/predictions",
            params={"explain": "true"},
            files={"file": ("ct.dcm", dicom_bytes(study=study), DICOM)},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert [f["name"] for f in body["findings"]] == ORDER
        wait_for(lambda: len(list(spool.glob("*.dcm"))) == 2, 60, "the SR and SC in the spool")
        yield Sent(client, body["id"], study, spool)


def _spooled(sent: Sent, kind: str) -> Dataset:
    """The entry the outbox queued for the PACS, as it will be sent."""
    (state,) = [
        p
        for p in sent.spool.glob("*.json")
        if json.loads(p.read_text())["kind"] == kind
        and json.loads(p.read_text())["prediction_id"] == sent.prediction_id
    ]
    return dcmread(state.with_suffix(".dcm"))


def _direct(sent: Sent, kind: str) -> Dataset:
    path = "dicom/sr" if kind == "sr" else "dicom/secondary-capture"
    response = sent.client.get(f"/v1/predictions/{sent.prediction_id}/{path}")
    assert response.status_code == 200, response.text
    return dcmread(io.BytesIO(response.content))


def _wado_instance(sent: Sent, like: Dataset) -> Dataset:
    response = sent.client.get(
        f"/dicomweb/studies/{sent.study}/series/{like.SeriesInstanceUID}"
        f"/instances/{like.SOPInstanceUID}",
        headers={"Accept": DICOM},
    )
    assert response.status_code == 200, response.text
    return dcmread(io.BytesIO(response.content))


def _wado_study(sent: Sent) -> dict[str, Dataset]:
    """The study's objects, retrieved as one multipart/related body, by modality."""
    response = sent.client.get(
        f"/dicomweb/studies/{sent.study}", headers={"Accept": f'multipart/related; type="{DICOM}"'}
    )
    assert response.status_code == 200, response.text
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    found = {}
    for part in message.iter_parts():
        ds = dcmread(io.BytesIO(part.get_payload(decode=True)))
        found[ds.Modality] = ds
    return found


def _content(ds: Dataset) -> Any:
    """The SR's content tree, comparable."""
    return [item.to_json_dict() for item in ds.ContentSequence]


def _finding_groups(ds: Dataset) -> list[str]:
    """The Finding of each of the SR's measurement groups, in order (the overall group's: the
    label; then one group per finding, its name)."""
    names = []
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeMeaning != "Imaging Measurements":
            continue
        for group in item.ContentSequence:
            for child in group.ContentSequence:
                if child.ConceptNameCodeSequence[0].CodeMeaning == "Finding":
                    names.append(str(child.ConceptCodeSequence[0].CodeMeaning))
    return names


def test_the_direct_sr_has_a_group_per_finding_in_the_models_order(sent: Sent) -> None:
    groups = _finding_groups(_direct(sent, "sr"))
    assert groups[1:] == ORDER  # after the label's group, one per finding


def test_wado_rs_instance_retrieve_is_the_direct_sr(sent: Sent) -> None:
    direct = _direct(sent, "sr")
    wado = _wado_instance(sent, direct)
    assert _finding_groups(wado) == _finding_groups(direct)
    assert wado.SOPInstanceUID == direct.SOPInstanceUID
    assert wado.SeriesInstanceUID == direct.SeriesInstanceUID
    # built from the same rows the same way: the same object, byte for byte in its content
    assert wado.to_json_dict() == direct.to_json_dict()


def test_wado_rs_study_retrieve_and_metadata_have_the_findings(sent: Sent) -> None:
    direct = _direct(sent, "sr")
    study = _wado_study(sent)
    assert _content(study["SR"]) == _content(direct)
    response = sent.client.get(
        f"/dicomweb/studies/{sent.study}/series/{direct.SeriesInstanceUID}/metadata",
        headers={"Accept": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    (document,) = response.json()
    assert (
        Dataset.from_json(document).to_json_dict()["0040A730"] == direct.to_json_dict()["0040A730"]
    )


def test_the_outbox_sends_the_direct_sr(sent: Sent) -> None:
    direct = _direct(sent, "sr")
    spooled = _spooled(sent, "sr")
    assert _finding_groups(spooled) == _finding_groups(direct)
    assert _content(spooled) == _content(direct)
    # the same object: deterministic UIDs per prediction
    assert spooled.SOPInstanceUID == direct.SOPInstanceUID
    assert spooled.SeriesInstanceUID == direct.SeriesInstanceUID
    assert spooled.StudyInstanceUID == direct.StudyInstanceUID == sent.study


def test_the_sc_is_the_same_on_every_route(sent: Sent) -> None:
    direct = _direct(sent, "sc")
    routes = {
        "wado": _wado_instance(sent, direct),
        "study": _wado_study(sent)["OT"],
        "outbox": _spooled(sent, "sc"),
    }
    for name, ds in routes.items():
        for keyword in (
            "SOPInstanceUID",
            "SeriesInstanceUID",
            "DerivationDescription",
            "ImageComments",
            "BurnedInAnnotation",
            "PixelData",
        ):
            assert ds.get(keyword) == direct.get(keyword), (name, keyword)


def test_the_same_request_sr_lists_the_findings_as_the_stored_one(sent: Sent) -> None:
    """``POST /v1/predictions/dicom-sr`` built its groups in the model's order, the stored SR
    in the order the database returned the rows (by name): two orders for one result."""
    response = sent.client.post(
        "/v1/predictions/dicom-sr",
        files={"file": ("ct.dcm", dicom_bytes(study=new_uid(), seed=3), DICOM)},
    )
    assert response.status_code == 201, response.text
    answered = dcmread(io.BytesIO(response.content))
    prediction_id = response.headers["Location"].rsplit("/", 1)[1]
    stored = sent.client.get(f"/v1/predictions/{prediction_id}/dicom/sr")
    assert stored.status_code == 200, stored.text
    assert _finding_groups(answered)[1:] == ORDER
    assert _content(dcmread(io.BytesIO(stored.content))) == _content(answered)


@pytest.fixture()
def tiny_outbox(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> Iterator[TestClient]:
    from tests.app.test_outbox import waiting_outbox_client

    with waiting_outbox_client(
        migrated_database_url, model_store, tmp_path / "spool", f"PACS@127.0.0.1:{DOWN_PORT}/sr+sc"
    ) as client:
        yield client


def test_findings_that_cannot_be_read_still_send_the_sr_and_say_so(
    tiny_outbox: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox reads the stored findings the SR is built with: the database failing that
    read (just after the prediction's commit) loses no result (QA round 54): the SR is queued
    to be built, with its per-finding groups, when it is delivered (QA 101), and a WARNING
    names the prediction."""
    import logging

    from sqlalchemy.exc import OperationalError

    from tests.app.test_outbox import post_dicom
    from tests.app.test_qa54_outbox_failures import failures

    def unreadable(session: Any, predictions: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("the database went away (a test)"))

    caplog.set_level(logging.WARNING, logger="radlens.app.outbox")
    # raising=False: the old code had no such function (and never read the findings)
    monkeypatch.setattr("radlens.app.catalogue.sr_findings", unreadable, raising=False)
    body = post_dicom(tiny_outbox, dicom_bytes(sop=new_uid()))
    app: Any = tiny_outbox.app
    assert sorted(e.kind for e in app.state.resources.ingestor.outbox.entries()) == ["sc", "sr"]
    assert set(failures(tiny_outbox).values()) == {0.0}
    assert (
        f"outbox: prediction {body['id']}: its stored findings could not be read "
        "(OperationalError); its SR is queued to be built with them at its delivery" in caplog.text
    )

"""A re-sent instance whose prediction is stored with its explanation does not have its
Grad-CAM computed again (it was, then dropped by the writer for the stored one: 0.5-0.7 s a
slice each time a PACS forwarded a study again to a site whose destination wants the
Secondary Capture; QA round 30). One stored without an explanation still gets one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Service, TestClient, dicom_bytes, new_uid
from tests.app.test_outbox import (  # noqa: F401  (pacs: a fixture)
    AcceptingPACS,
    outbox_settings,
    pacs,
    post_dicom,
    wait_for,
)

COMPUTED = "explanation for prediction"


def _computed(caplog: pytest.LogCaptureFixture) -> int:
    return sum(COMPUTED in r.getMessage() for r in caplog.records)


def test_a_stored_explanation_is_not_computed_again(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="radlens.app.ingest")
    data = dicom_bytes(seed=50)
    first = service.post(data, "ct.dcm", params={"explain": "true"})
    assert first.status_code == 201, first.text
    assert _computed(caplog) == 1
    again = service.post(data, "ct.dcm", params={"explain": "true"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert _computed(caplog) == 1  # the stored one is returned
    heatmap = service.client.get(f"/v1/predictions/{first.json()['id']}/heatmap")
    assert heatmap.status_code == 200 and heatmap.content.startswith(b"\x89PNG")


def test_a_prediction_stored_without_one_gets_it_when_asked(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="radlens.app.ingest")
    data = dicom_bytes(seed=51)
    first = service.post(data, "ct.dcm")
    assert first.status_code == 201, first.text
    prediction = first.json()["id"]
    assert service.client.get(f"/v1/predictions/{prediction}/heatmap").status_code == 404
    again = service.post(data, "ct.dcm", params={"explain": "true"})
    assert again.status_code == 200 and again.json()["id"] == prediction
    assert _computed(caplog) == 1
    assert service.client.get(f"/v1/predictions/{prediction}/heatmap").status_code == 200


def test_a_resent_instance_whose_results_were_never_queued_gets_its_sc_from_the_stored_one(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    pacs: AcceptingPACS,  # noqa: F811  (the fixture)
) -> None:
    """QA round 34: with the Grad-CAM no longer computed again, the SC of a stored prediction
    whose results were never queued (a crash between commit and queueing) was not sent at
    all ("no Grad-CAM overlay, SC not sent"), and, its SR queued, never would be."""
    from radlens.app.main import create_app

    settings = outbox_settings(
        migrated_database_url, model_store, tmp_path / "spool", f"PACS@127.0.0.1:{pacs.port}/sr+sc"
    )
    data = dicom_bytes(sop=new_uid(), study=new_uid())
    with TestClient(create_app(settings)) as client:
        ingestor = client.app.state.resources.ingestor  # type: ignore[attr-defined]
        send_back = ingestor._send_back

        async def crashed(written: Any, candidate: Any) -> None:
            return None  # committed with its explanation, then the process "died"

        ingestor._send_back = crashed
        first = post_dicom(client, data)
        ingestor._send_back = send_back
        assert client.get(f"/v1/predictions/{first['id']}/heatmap").status_code == 200
        assert pacs.received == []
        again = client.post(
            "/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")}
        )
        assert again.status_code == 200 and again.json()["id"] == first["id"]
        wait_for(lambda: len(pacs.received) >= 2, what="the SR and the SC")
        # the PACS has them before the delivery pass records them delivered: wait for that too
        wait_for(
            lambda: client.get("/v1/dicom/outbox").json()["pending"] == [],
            what="the outbox to record the deliveries",
        )
    assert len(set(pacs.received)) == 2  # two objects (SOP Instance UIDs): the SR and the SC

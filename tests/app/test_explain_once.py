"""A re-sent instance whose prediction is stored with its explanation does not have its
Grad-CAM computed again (it was, then dropped by the writer for the stored one: 0.5-0.7 s a
slice each time a PACS forwarded a study again to a site whose destination wants the
Secondary Capture; QA round 30). One stored without an explanation still gets one."""

from __future__ import annotations

import logging

import pytest

from tests.app.conftest import Service, dicom_bytes

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

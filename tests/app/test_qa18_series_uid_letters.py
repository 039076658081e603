"""QA round 18 (pydicom/deid's example output, `cleaned.dcm`): an anonymiser that writes UUIDs
(`454c62fc-2d72-...`) as Study, Series and SOP Instance UIDs. The service takes such an instance
(a UID is recorded when it fits its column and holds no control character), stores and lists
its prediction, and QIDO-RS shows its study; but `GET /v1/series/{uid}`, its SR and
`GET /v1/studies/{uid}` refused the very UIDs the prediction showed with a 422 "String should
match pattern '^[0-9]+(\\.[0-9]+)*$'", so the series result of a stored series could not be
read. The routes now take any UID the service could have stored; one stored under neither form
is still a 422 when it is not a DICOM UID (saying so), else a 404."""

from __future__ import annotations

import io
import uuid

import pydicom

from tests.app.conftest import Service, assert_problem, dicom_bytes, new_uid


def test_a_series_stored_under_uuid_uids_is_readable(service: Service) -> None:
    study, series, sop = (str(uuid.uuid4()) for _ in range(3))
    created = service.post(dicom_bytes(study=study, series=series, sop=sop, seed=18), "x.dcm")
    assert created.status_code == 201, created.text
    assert created.json()["series_instance_uid"] == series

    result = service.client.get(f"/v1/series/{series}")
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["series_instance_uid"] == series
    assert [link["sop_instance_uid"] for link in body["results"][0]["instances"]] == [sop]

    report = service.client.get(f"/v1/series/{series}/dicom/sr")
    assert report.status_code == 200, report.text
    assert pydicom.dcmread(io.BytesIO(report.content)).StudyInstanceUID == study

    whole = service.client.get(f"/v1/studies/{study}")
    assert whole.status_code == 200, whole.text
    assert [s["series_instance_uid"] for s in whole.json()["series"]] == [series]


def test_an_unknown_uid_is_a_404_or_a_422_that_says_it_is_no_dicom_uid(service: Service) -> None:
    assert_problem(service.client.get(f"/v1/series/{new_uid()}"), 404, code="not-found")
    assert_problem(service.client.get(f"/v1/studies/{new_uid()}"), 404, code="not-found")
    for route in ("series", "studies", "series/{}/dicom/sr"):
        path = "/v1/" + (route.format(uuid.uuid4()) if "{}" in route else f"{route}/{uuid.uuid4()}")
        body = assert_problem(service.client.get(path), 422, code="invalid-uid")
        assert "is not a DICOM UID" in body["detail"] and "no prediction" in body["detail"]
    assert_problem(service.client.get("/v1/series/1.2.3%0A4"), 422)
    assert_problem(service.client.get("/v1/series/" + "1" * 65), 422)

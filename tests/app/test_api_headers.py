"""Every API answer says nosniff, and the REST API's and DICOMweb's say no-store
(app/apiheaders.py): a JSON result, a problem, a 413 from the body limit, a PNG overlay, the
outputs of DICOMweb; /ui keeps its own set. QA round 49: no API response carried either."""

from __future__ import annotations

from tests.app.conftest import Service, dicom_bytes


def _post(service: Service, data: bytes, params: str = "") -> object:
    return service.client.post(
        f"/v1/predictions{params}", files={"file": ("x.dcm", data, "application/dicom")}
    )


def test_api_answers_are_not_stored_and_not_sniffed(service: Service) -> None:
    created = _post(service, dicom_bytes(), "?explain=true")
    assert created.status_code == 201, created.text
    prediction = created.json()["id"]
    answers = {
        "created": created,
        "read": service.client.get(f"/v1/predictions/{prediction}"),
        "list": service.client.get("/v1/predictions"),
        "heatmap": service.client.get(f"/v1/predictions/{prediction}/heatmap"),
        "problem": service.client.get("/v1/predictions/not-a-uuid"),
        "refused upload": _post(service, b"not an image at all"),
        "qido": service.client.get("/dicomweb/studies"),
        "models": service.client.get("/v1/models"),
    }
    for what, response in answers.items():
        assert response.headers.get("x-content-type-options") == "nosniff", what
        assert response.headers.get("cache-control") == "no-store", what


def test_operations_say_nosniff_and_ui_keeps_its_own(service: Service) -> None:
    health = service.client.get("/healthz")
    assert health.headers.get("x-content-type-options") == "nosniff"
    assert "cache-control" not in health.headers  # not an API result
    login = service.client.get("/ui/login")
    assert login.headers.get("cache-control") == "no-store"
    assert "frame-ancestors 'none'" in login.headers["content-security-policy"]
    assert login.headers.get_list("x-content-type-options") == ["nosniff"]  # once, not twice

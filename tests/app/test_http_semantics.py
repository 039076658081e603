"""HTTP semantics found by schemathesis: a 405's ``Allow`` lists every method the path has
(app/errors.py), and the OpenAPI document describes what the service really accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import TestClient, make_settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> TestClient:
    from radlens.app.main import create_app

    url = f"sqlite:///{tmp_path_factory.mktemp('http') / 'http.db'}"
    # No lifespan: routing answers a 405 before any dependency or the model is needed.
    return TestClient(create_app(make_settings(url, model_store)))


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/predictions/dicom-sr", "POST"),  # was GET (the /{prediction_id} route)
        ("OPTIONS", "/v1/predictions", "GET, HEAD, POST"),  # was POST (the upload route came first)
        ("DELETE", "/v1/predictions", "GET, HEAD, POST"),
        ("PUT", "/v1/predictions/0b0a7c3e-6f7d-4c55-9d2a-8d8e0c0f3b11", "GET, HEAD"),
        ("PATCH", "/v1/predictions/0b0a7c3e-6f7d-4c55-9d2a-8d8e0c0f3b11/dicom/sr", "GET, HEAD"),
        ("DELETE", "/dicomweb/studies", "GET, HEAD, POST"),  # QIDO-RS search, STOW-RS store
        ("PUT", "/dicomweb/studies/1.2.3", "GET, HEAD, POST"),  # WADO-RS retrieve, STOW-RS store
        ("POST", "/v1/models", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/openapi.json", "GET, HEAD"),  # not in the document: Starlette's own
    ],
)
def test_405_allow_lists_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].split(", ")) == set(allow.split(", "))
    if path != "/openapi.json":
        assert response.json()["detail"].endswith(f"; allowed: {response.headers['allow']}")


def test_allow_agrees_with_the_openapi_document(client: TestClient) -> None:
    """For every documented path, an undocumented method gets 405 and ``Allow`` names exactly
    the documented methods, and HEAD with GET (what schemathesis' unsupported_method check asks;
    it counts HEAD as implicit)."""
    paths = client.get("/openapi.json").json()["paths"]
    for template, operations in paths.items():
        concrete = template.replace("{prediction_id}", "0b0a7c3e-6f7d-4c55-9d2a-8d8e0c0f3b11")
        concrete = concrete.replace("{study}", "1.2.3").replace("{study_uid}", "1.2.3")
        concrete = concrete.replace("{series_uid}", "1.2.4").replace("{series}", "1.2.4")
        concrete = concrete.replace("{instance}", "1.2.5").replace("{frames}", "1")
        assert "{" not in concrete, f"fill in the parameter of {template}"
        documented = {m.upper() for m in operations if m in ("get", "post", "put", "delete")}
        if "GET" in documented:  # HEAD is GET without the body (app/head.py)
            documented.add("HEAD")
        undocumented = "DELETE" if "DELETE" not in documented else "PATCH"
        response = client.request(undocumented, concrete)
        assert response.status_code == 405, (template, response.status_code)
        assert set(response.headers["allow"].split(", ")) == documented, template


# --- the document describes what is valid (schemathesis' positive_data_acceptance) ---------


def test_upload_parts_name_their_media_types(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def part_types(path: str) -> set[str]:
        form = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]
        return {t.strip() for t in form["encoding"]["file"]["contentType"].split(",")}

    assert part_types("/v1/predictions") == {"application/dicom", "image/png", "image/jpeg"}
    assert part_types("/v1/predictions/dicom-sr") == {"application/dicom"}
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study}"):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        assert list(body["content"]) == ['multipart/related; type="application/dicom"']


def test_cursor_format_is_described_and_a_well_formed_cursor_decodes(client: TestClient) -> None:
    """Any string of the documented format is a cursor the service accepts."""
    import base64
    import json
    import re
    import uuid

    from radlens.app.services import Cursor

    (param,) = [
        p
        for p in client.get("/openapi.json").json()["paths"]["/v1/predictions"]["get"]["parameters"]
        if p["name"] == "cursor"
    ]
    assert param["schema"]["format"] == "radlens-cursor"
    assert "base64url" in param["description"]
    raw = json.dumps(["2031-02-03T04:05:06.789+05:30", str(uuid.uuid4())]).encode()
    text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert re.fullmatch(param["schema"]["pattern"], text)
    assert Cursor.decode(text).created_at.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("value", ["2934113872", "2026-01-01", "1.5"])
def test_created_after_must_be_a_date_time(service: Any, value: str) -> None:
    """pydantic would read 2934113872 as Unix seconds and a bare date as midnight; the document
    says date-time, so they are refused like any other non-date-time."""
    response = service.client.get("/v1/predictions", params={"created_after": value})
    assert response.status_code == 422, response.text
    assert "ISO 8601" in response.text
    ok = service.client.get("/v1/predictions", params={"created_after": "2026-01-01T00:00:00Z"})
    assert ok.status_code == 200


def test_a_filter_given_twice_is_refused(service: Any) -> None:
    """FastAPI would read ``?model_name=a&model_name=b`` as ``b``; the document says one value."""
    response = service.client.get("/v1/predictions?model_name=a&model_name=b")
    assert response.status_code == 422, response.text
    assert "model_name was given 2 times" in response.text
    assert service.client.get("/v1/predictions?model_name=a&label=b").status_code == 200

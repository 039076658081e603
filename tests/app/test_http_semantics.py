"""HTTP semantics found by schemathesis: a 405's ``Allow`` lists every method the path has
(app/errors.py), and the OpenAPI document describes what the service really accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.conftest import TestClient, make_settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> TestClient:
    from app.main import create_app

    url = f"sqlite:///{tmp_path_factory.mktemp('http') / 'http.db'}"
    # No lifespan: routing answers a 405 before any dependency or the model is needed.
    return TestClient(create_app(make_settings(url, model_store)))


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/predictions/dicom-sr", "POST"),  # was GET (the /{prediction_id} route)
        ("OPTIONS", "/v1/predictions", "GET, POST"),  # was POST (the upload route came first)
        ("DELETE", "/v1/predictions", "GET, POST"),
        ("PUT", "/v1/predictions/0b0a7c3e-6f7d-4c55-9d2a-8d8e0c0f3b11", "GET"),
        ("PATCH", "/v1/predictions/0b0a7c3e-6f7d-4c55-9d2a-8d8e0c0f3b11/dicom/sr", "GET"),
        ("DELETE", "/dicomweb/studies", "POST"),
        ("PUT", "/dicomweb/studies/1.2.3", "POST"),
        ("POST", "/v1/models", "GET"),
        ("POST", "/healthz", "GET"),
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
    the documented methods (what schemathesis' unsupported_method check asks)."""
    paths = client.get("/openapi.json").json()["paths"]
    for template, operations in paths.items():
        concrete = template.replace("{prediction_id}", "0b0a7c3e-6f7d-4c55-9d2a-8d8e0c0f3b11")
        concrete = concrete.replace("{study}", "1.2.3").replace("{study_uid}", "1.2.3")
        assert "{" not in concrete, f"fill in the parameter of {template}"
        documented = {m.upper() for m in operations if m in ("get", "post", "put", "delete")}
        undocumented = "DELETE" if "DELETE" not in documented else "PATCH"
        response = client.request(undocumented, concrete)
        assert response.status_code == 405, (template, response.status_code)
        assert set(response.headers["allow"].split(", ")) == documented, template

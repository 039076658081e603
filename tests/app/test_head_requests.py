"""HEAD is answered as GET without its body (RFC 9110 9.3.2: servers MUST support GET and
HEAD). Before: every page and endpoint answered HEAD with 405 (`curl -I /healthz`, uptime
monitors, load balancers' HEAD health checks)."""

from __future__ import annotations

import pytest

from tests.app.conftest import Service, png_bytes


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/v1/models", "/docs", "/ui"])
def test_head_gives_gets_status_and_headers_without_the_body(service: Service, path: str) -> None:
    got = service.client.get(path)
    head = service.client.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path != "/metrics":  # its counters move between the two requests
        assert head.headers["content-length"] == str(len(got.content))


def test_head_on_a_stored_prediction_and_its_absence(service: Service) -> None:
    created = service.post(png_bytes(), "x.png")
    assert created.status_code == 201, created.text
    path = f"/v1/predictions/{created.json()['id']}"
    head = service.client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(service.client.get(path).content)
    missing = service.client.head("/v1/predictions/00000000-0000-0000-0000-000000000000")
    assert missing.status_code in (404, 422) and missing.content == b""
    assert missing.headers["content-type"] == "application/problem+json"


def test_head_needs_the_same_key_as_get(service: Service) -> None:
    anonymous = service.client.head("/v1/models", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and anonymous.content == b""


def test_405_names_head_beside_get(service: Service) -> None:
    refused = service.client.delete("/v1/models")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"
    upload_only = service.client.put("/v1/predictions")
    assert upload_only.headers["allow"] == "GET, HEAD, POST"

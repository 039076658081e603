"""More than one Authorization header is refused (401), not the first taken: a proxy in front
may have checked another one (RFC 9110: Authorization is one field, never a list)."""

from __future__ import annotations

import httpx

from tests.app.conftest import Service


def _send(service: Service, values: list[str]) -> httpx.Response:
    request = service.client.build_request("GET", "/v1/models")
    headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "authorization"]
    request.headers = httpx.Headers([*headers, *(("Authorization", v) for v in values)])
    return service.client.send(request)


def test_two_authorization_headers_are_refused(service: Service) -> None:
    assert service.api_key is not None
    good = f"Bearer {service.api_key}"
    assert _send(service, [good]).status_code == 200
    for values in ([good, "Bearer rl_000000000000_other"], ["Basic dXNlcjpwdw==", good]):
        refused = _send(service, values)
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert "more than one Authorization header" in refused.json()["detail"]
        assert service.api_key not in refused.text

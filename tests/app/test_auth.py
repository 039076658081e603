"""API keys: 401 without a valid key, 403 without the scope, open operations endpoints, the
bearer scheme in OpenAPI, and the development switch RADLENS_AUTH=disabled."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import (
    Service,
    TestClient,
    assert_problem,
    create_api_key,
    make_settings,
    png_bytes,
)


@pytest.fixture()
def bare(service: Service) -> Iterator[TestClient]:
    """A client on the running app that sends no Authorization header."""
    yield TestClient(service.app)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response: Any) -> dict[str, Any]:
    body = assert_problem(response, 401, code="unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    return body


class TestAuthentication:
    def test_no_key_is_401_on_every_v1_route(self, bare: TestClient) -> None:
        for method, path in [
            ("GET", "/v1/predictions"),
            ("GET", "/v1/predictions/00000000-0000-0000-0000-000000000000"),
            ("GET", "/v1/models"),
        ]:
            body = assert_unauthorized(bare.request(method, path))
            assert "no Authorization header" in body["detail"]
        response = bare.post("/v1/predictions", files={"file": ("a.png", png_bytes())})
        assert_unauthorized(response)

    def test_unknown_key_is_401_and_nothing_is_stored(self, service: Service) -> None:
        before = service.count()
        forged = "rl_0123456789ab_" + "A" * 43
        response = service.client.post(
            "/v1/predictions", files={"file": ("a.png", png_bytes())}, headers=bearer(forged)
        )
        body = assert_unauthorized(response)
        assert "'0123456789ab' is unknown or revoked" in body["detail"]
        assert service.count() == before

    def test_right_id_with_wrong_secret_is_401(self, service: Service) -> None:
        assert service.api_key is not None
        tampered = service.api_key[:-1] + ("A" if service.api_key[-1] != "A" else "B")
        assert_unauthorized(service.client.get("/v1/models", headers=bearer(tampered)))

    def test_malformed_token_is_not_echoed(self, service: Service) -> None:
        secret = "sk-live-do-not-echo-me"
        body = assert_unauthorized(service.client.get("/v1/models", headers=bearer(secret)))
        assert secret not in response_text(body)
        assert f"received {len(secret)} characters" in body["detail"]

    def test_other_scheme_is_401(self, service: Service) -> None:
        response = service.client.get("/v1/models", headers={"Authorization": "Basic dXNlcjpwdw=="})
        body = assert_unauthorized(response)
        assert "'Basic'" in body["detail"]
        empty = service.client.get("/v1/models", headers={"Authorization": "Bearer "})
        assert "Bearer scheme but no key" in assert_unauthorized(empty)["detail"]

    def test_a_key_sent_without_the_scheme_is_not_echoed(self, service: Service) -> None:
        """It was quoted as "the scheme" (its id and 4 characters of its secret; QA round 12)."""
        assert service.api_key is not None
        for header in (service.api_key, "sk-live-do-not-echo-me"):
            body = assert_unauthorized(
                service.client.get("/v1/models", headers={"Authorization": header})
            )
            assert header[:8] not in response_text(body), body
            assert "Authorization: Bearer <key>" in body["detail"]

    def test_revoked_key_stops_working(self, service: Service) -> None:
        from radlens.app.keycache import KeyCache

        # RADLENS_AUTH_CACHE_TTL_S=0: no cache, the next request sees the revocation
        # (with a TTL, within it: tests/app/test_key_cache.py)
        original, service.app.state.key_cache = service.app.state.key_cache, KeyCache(0.0)
        try:
            self._revoke_and_check(service)
        finally:
            service.app.state.key_cache = original

    def _revoke_and_check(self, service: Service) -> None:
        from radlens.app.db import make_engine, make_sessionmaker
        from radlens.app.keys import key_id_of, revoke_key

        key = create_api_key(service.database_url, "read", name="to revoke")
        assert service.client.get("/v1/models", headers=bearer(key)).status_code == 200
        engine = make_engine(service.database_url)
        try:
            with make_sessionmaker(engine)() as session:
                key_id = key_id_of(key)
                assert key_id is not None
                revoke_key(session, key_id)
                session.commit()
        finally:
            engine.dispose()
        assert_unauthorized(service.client.get("/v1/models", headers=bearer(key)))

    def test_key_is_stored_only_as_a_hash(self, service: Service) -> None:
        assert service.api_key is not None
        dump = repr(service.rows())
        assert service.api_key not in dump
        # nor its secret part: everything after rl_<key id>_ (the secret itself may hold "_")
        assert service.api_key.split("_", 2)[2] not in dump


def response_text(body: dict[str, Any]) -> str:
    return repr(body)


class TestScopes:
    def test_read_key_can_read_but_not_predict(self, service: Service) -> None:
        key = create_api_key(service.database_url, "read", name="reader")
        assert service.client.get("/v1/predictions", headers=bearer(key)).status_code == 200
        assert service.client.get("/v1/models", headers=bearer(key)).status_code == 200
        before = service.count()
        response = service.client.post(
            "/v1/predictions", files={"file": ("a.png", png_bytes())}, headers=bearer(key)
        )
        body = assert_problem(response, 403, code="forbidden")
        assert "needs 'predict'" in body["detail"] and "has scopes read" in body["detail"]
        assert service.count() == before

    def test_predict_key_can_predict_but_not_read(self, service: Service) -> None:
        key = create_api_key(service.database_url, "predict", name="modality")
        response = service.client.post(
            "/v1/predictions", files={"file": ("a.png", png_bytes())}, headers=bearer(key)
        )
        assert response.status_code == 201, response.text
        location = response.headers["location"]
        body = assert_problem(service.client.get(location, headers=bearer(key)), 403)
        assert "needs 'read'" in body["detail"]

    def test_no_method_beyond_read_and_predict(self, service: Service) -> None:
        """Every keyed route's methods map to a scope a key can hold; anything else is open to
        no key (the former "admin" scope guarded nothing and was removed)."""
        from radlens.app.auth import required_scope
        from radlens.app.keys import SCOPES

        assert SCOPES == ("predict", "read")
        assert required_scope("GET") == "read"
        assert required_scope("HEAD") == "read"
        assert required_scope("POST") == "predict"
        assert required_scope("DELETE") is None
        assert required_scope("PUT") is None
        paths = service.client.get("/openapi.json").json()["paths"]
        keyed = {p: ops for p, ops in paths.items() if p.startswith(("/v1", "/dicomweb"))}
        assert "/v1/predictions" in keyed and "/dicomweb/studies" in keyed
        for path, operations in keyed.items():
            for method in operations:
                if method in ("parameters", "summary", "description", "servers"):
                    continue
                assert required_scope(method.upper()) in SCOPES, (path, method)
        # a full key asking DELETE gets 405 from routing: no route, nothing to guard
        response = service.client.delete("/v1/predictions")
        assert response.status_code == 405

    def test_admin_scope_is_refused_with_the_reason(self, service: Service) -> None:
        from radlens.app.keys import InvalidKeyRequestError

        with pytest.raises(InvalidKeyRequestError, match=r"'admin' scope was removed"):
            create_api_key(service.database_url, "read,admin", name="admin")

    def test_a_stored_admin_scope_grants_nothing_more(self, service: Service) -> None:
        """Keys created before the removal keep working with their other scopes only."""
        from sqlalchemy import update

        from radlens.app.security_tables import ApiKey

        key = create_api_key(service.database_url, "read", name="legacy admin")
        with service.app.state.resources.sessionmaker() as session:
            session.execute(
                update(ApiKey).where(ApiKey.name == "legacy admin").values(scopes="admin,read")
            )
            session.commit()
        assert service.client.get("/v1/models", headers=bearer(key)).status_code == 200
        response = service.client.post(
            "/v1/predictions", files={"file": ("a.png", png_bytes())}, headers=bearer(key)
        )
        assert_problem(response, 403)


class TestOpenEndpoints:
    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
    def test_operations_need_no_key(self, bare: TestClient, path: str) -> None:
        assert bare.get(path).status_code == 200


class TestOpenApi:
    def test_bearer_scheme_is_declared_and_v1_routes_list_it(self, bare: TestClient) -> None:
        schema = bare.get("/openapi.json").json()
        scheme = schema["components"]["securitySchemes"]["ApiKey"]
        assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                secured = {"ApiKey": []} in operation.get("security", [])
                if path.startswith(("/v1", "/dicomweb")):
                    assert secured, f"{method.upper()} {path} does not require the API key"
                else:
                    assert not secured, f"{method.upper()} {path} should stay open"

    def test_every_v1_and_dicomweb_operation_refuses_a_request_without_key(
        self, bare: TestClient
    ) -> None:
        import re

        schema = bare.get("/openapi.json").json()
        checked = 0
        for path, operations in schema["paths"].items():
            if not path.startswith(("/v1", "/dicomweb")):
                continue
            url = re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path)
            for method in operations:
                # uploads are multipart: an upload route refuses other bodies (415) first
                files = {"file": ("a.png", png_bytes())} if method in ("post", "put") else None
                assert_unauthorized(bare.request(method.upper(), url, files=files))
                checked += 1
        assert checked >= 4


class TestDisabled:
    def test_disabled_auth_is_a_logged_development_setting(
        self, service: Service, model_store: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        from radlens.app.main import create_app

        with caplog.at_level(logging.WARNING, logger="radlens.app.main"):
            app = create_app(make_settings(service.database_url, model_store, auth="disabled"))
        assert any("RADLENS_AUTH=disabled" in r.getMessage() for r in caplog.records)
        with TestClient(app) as client:
            assert client.get("/v1/models").status_code == 200
            assert client.get("/v1/predictions", params={"limit": 1}).status_code == 200

    def test_enabled_is_the_default(self) -> None:
        from radlens.app.settings import Settings

        assert Settings().auth == "enabled"
        with pytest.raises(ValueError, match="auth"):
            Settings(auth="off")  # type: ignore[arg-type]

"""The in-process cache of authenticated API keys (app/keycache.py): expiry on an injected
clock, TTL 0 = off, only hashes held, and revocation through the running service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.app.conftest import Service, assert_problem, create_api_key, png_bytes


@pytest.fixture()
def use_cache(service: Service) -> Iterator[Callable[[Any], None]]:
    """Swap the running app's key cache for the test; the original is put back after."""
    original = service.app.state.key_cache

    def use(cache: Any) -> None:
        service.app.state.key_cache = cache

    yield use
    service.app.state.key_cache = original


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestKeyCache:
    def test_value_expires_after_ttl(self) -> None:
        from radlens.app.keycache import KeyCache

        clock = FakeClock()
        cache: KeyCache[str] = KeyCache(5.0, clock=clock)
        cache.put("h", "principal")
        assert cache.get("h") == "principal"
        clock.now += 4.99
        assert cache.get("h") == "principal"
        clock.now += 0.01
        assert cache.get("h") is None
        assert cache.get("other") is None

    def test_ttl_zero_caches_nothing(self) -> None:
        from radlens.app.keycache import KeyCache

        cache: KeyCache[str] = KeyCache(0.0)
        assert not cache.enabled
        cache.put("h", "principal")
        assert cache.get("h") is None

    def test_negative_ttl_is_refused(self) -> None:
        from radlens.app.keycache import KeyCache

        with pytest.raises(ValueError, match="-1"):
            KeyCache(-1.0)

    def test_bounded(self) -> None:
        from radlens.app.keycache import KeyCache

        cache: KeyCache[int] = KeyCache(60.0, max_entries=3)
        for i in range(3):
            cache.put(str(i), i)
        cache.put("3", 3)  # full: starts over rather than growing
        assert cache.get("0") is None
        assert cache.get("3") == 3

    def test_setting_range(self) -> None:
        from pydantic import ValidationError

        from radlens.app.settings import Settings

        assert Settings(auth_cache_ttl_s=0).auth_cache_ttl_s == 0
        with pytest.raises(ValidationError, match="auth_cache_ttl_s"):
            Settings(auth_cache_ttl_s=-1)


class TestRevocationThroughTheService:
    def _revoke(self, database_url: str, key: str) -> None:
        from radlens.app.db import make_engine, make_sessionmaker
        from radlens.app.keys import key_id_of, revoke_key

        engine = make_engine(database_url)
        try:
            with make_sessionmaker(engine)() as session:
                key_id = key_id_of(key)
                assert key_id is not None
                revoke_key(session, key_id)
                session.commit()
        finally:
            engine.dispose()

    def test_revocation_takes_effect_when_the_entry_expires(
        self, service: Service, use_cache: Callable[[Any], None]
    ) -> None:
        from radlens.app.keycache import KeyCache

        clock = FakeClock()
        cache: KeyCache[object] = KeyCache(5.0, clock=clock)
        use_cache(cache)
        key = create_api_key(service.database_url, "read", name="cached then revoked")
        headers = {"Authorization": f"Bearer {key}"}
        assert service.client.get("/v1/models", headers=headers).status_code == 200
        # the cache holds the key's hash, never the key or its secret
        assert key not in repr(cache._entries)
        # rl_<key id>_<secret>: the secret (token_urlsafe) may itself contain "_"
        assert key.split("_", 2)[2] not in repr(cache._entries)

        self._revoke(service.database_url, key)
        clock.now += 4.0  # within the TTL: still the cached principal
        assert service.client.get("/v1/models", headers=headers).status_code == 200
        clock.now += 1.0  # expired: looked up again, revoked
        response = service.client.get("/v1/models", headers=headers)
        assert_problem(response, 401, code="unauthorized")
        assert "unknown or revoked" in response.json()["detail"]
        # a refused key is not cached: it stays refused
        assert_problem(service.client.get("/v1/models", headers=headers), 401)

    def test_ttl_zero_sees_revocation_on_the_next_request(
        self, service: Service, use_cache: Callable[[Any], None]
    ) -> None:
        from radlens.app.keycache import KeyCache

        use_cache(KeyCache(0.0))
        key = create_api_key(service.database_url, "read", name="uncached then revoked")
        headers = {"Authorization": f"Bearer {key}"}
        assert service.client.get("/v1/models", headers=headers).status_code == 200
        self._revoke(service.database_url, key)
        assert_problem(service.client.get("/v1/models", headers=headers), 401)

    def test_cached_key_keeps_its_scopes(
        self, service: Service, use_cache: Callable[[Any], None]
    ) -> None:
        from radlens.app.keycache import KeyCache

        use_cache(KeyCache(60.0, clock=FakeClock()))
        key = create_api_key(service.database_url, "read", name="read only cached")
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(2):  # the second request is served from the cache
            assert service.client.get("/v1/models", headers=headers).status_code == 200
            response = service.client.post(
                "/v1/predictions",
                files={"file": ("x.png", png_bytes(seed=7), "image/png")},
                headers=headers,
            )
            assert_problem(response, 403, code="forbidden")

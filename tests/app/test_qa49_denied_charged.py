"""A key refused for its scope (403) is charged like any other request of that key.

Each 403 writes an ``auth.denied`` row to the append-only audit trail. Uncharged, a key with
the wrong scope wrote such rows as fast as it could send requests, past any rate limit (QA
round 49, a live service with RADLENS_RATE_LIMIT_PER_MINUTE=600: 998 rows in 10 s, no 429).
Now its bucket is charged first: over the allowance it gets the 429, which is not audited.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from radlens.app.keys import key_id_of
from radlens.app.ratelimit import RateLimiter
from tests.app.conftest import Service, TestClient, assert_problem, create_api_key, png_bytes


class FrozenClock:
    def __call__(self) -> float:
        return 1000.0  # never refills during the test


@pytest.fixture()
def three_per_minute(service: Service) -> Iterator[None]:
    previous = service.app.state.rate_limiter
    service.app.state.rate_limiter = RateLimiter(3, clock=FrozenClock())
    try:
        yield
    finally:
        service.app.state.rate_limiter = previous


def denied_rows(service: Service, key_id: str) -> int:
    from radlens.app.security_tables import AuditEvent

    with service.app.state.resources.sessionmaker() as session:
        query = select(func.count()).where(
            AuditEvent.actor == key_id, AuditEvent.action == "auth.denied"
        )
        return int(session.scalar(query) or 0)


def test_refusals_for_scope_are_charged_and_bounded_in_the_audit_trail(
    service: Service, three_per_minute: None
) -> None:
    key = create_api_key(service.database_url, "read", name="qa49 read only")
    key_id = str(key_id_of(key))
    client = TestClient(service.app, headers={"Authorization": f"Bearer {key}"})
    statuses = [
        client.post("/v1/predictions", files={"file": ("a.png", png_bytes(seed=1))}).status_code
        for _ in range(6)
    ]
    assert statuses == [403, 403, 403, 429, 429, 429]
    assert denied_rows(service, key_id) == 3
    # the allowance is spent for the key's permitted requests too
    response = client.get("/v1/models")
    assert_problem(response, 429, code="rate-limited")
    assert response.headers["retry-after"] == "20"


def test_a_refusal_within_the_allowance_is_still_a_403_and_audited(
    service: Service, three_per_minute: None
) -> None:
    key = create_api_key(service.database_url, "predict", name="qa49 predict only")
    client = TestClient(service.app, headers={"Authorization": f"Bearer {key}"})
    assert_problem(client.get("/v1/models"), 403, code="forbidden")
    assert denied_rows(service, str(key_id_of(key))) == 1
    # and an unknown key is never charged (its 401 is logged, not audited): no bucket grows
    bad = TestClient(service.app, headers={"Authorization": "Bearer rl_0123456789ab_" + "A" * 43})
    assert all(bad.get("/v1/models").status_code == 401 for _ in range(5))

"""FastAPI's per-route state is built when the app is, not by the first concurrent requests.

FastAPI builds an included router's route fields lazily inside ``warnings.catch_warnings()``;
built at the first ``url_path_for`` while worker threads entered and left their own
``catch_warnings``, the filters were swapped back under it and a pydantic warning it meant to
silence became a 500 in CI (test_concurrency.py, 32 uploads at once). ``create_app`` builds the
route state up front and the lifespan the OpenAPI document (app/main.py
``_build_route_state``); here nothing is built after them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import make_settings

PREDICTION = "0b0a7c3e-6f7d-4c55-9d2a-8d8e0c0f3b11"


@pytest.fixture
def app(tmp_path: Path, model_store: Path) -> Any:
    from radlens.app.main import create_app

    return create_app(make_settings(f"sqlite:///{tmp_path / 'routes.db'}", model_store))


def refuse_field_building(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi._compat import v2

    def refuse(self: Any) -> None:
        raise AssertionError(f"route field {self.name!r} built at request time")

    monkeypatch.setattr(v2.ModelField, "__post_init__", refuse)


@pytest.fixture
def no_field_building(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_field_building(monkeypatch)


@pytest.mark.parametrize(
    ("name", "params", "path"),
    [
        ("get_prediction", {"prediction_id": PREDICTION}, f"/v1/predictions/{PREDICTION}"),
        ("get_heatmap", {"prediction_id": PREDICTION}, f"/v1/predictions/{PREDICTION}/heatmap"),
        ("get_series", {"series_uid": "1.2.3"}, "/v1/series/1.2.3"),
        ("get_study", {"study_uid": "1.2"}, "/v1/studies/1.2"),
    ],
)
def test_url_path_for_builds_nothing_after_create_app(
    app: Any, no_field_building: None, name: str, params: dict[str, str], path: str
) -> None:
    assert app.url_path_for(name, **params) == path


def test_routing_every_router_builds_nothing_once_serving(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import httpx
    from starlette.routing import NoMatchFound

    async def serve() -> list[int]:
        async with app.router.lifespan_context(app):
            refuse_field_building(monkeypatch)
            with pytest.raises(NoMatchFound):
                app.url_path_for("no-such-route")  # walks every included router
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                # a 405's Allow is read from the OpenAPI document
                paths = ("/v1/predictions", "/v1/models", "/dicomweb/studies", "/healthz")
                return [(await client.request("PATCH", path)).status_code for path in paths]

    assert asyncio.run(serve()) == [405] * 4

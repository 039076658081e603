"""RADLENS_OPERATING_POINT: which of the manifest's operating points decides the label,
refused at start-up when the model has no such point, recorded with every prediction
(response and database, SQLite and PostgreSQL)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from sqlalchemy import text

from radlens.models.errors import ConfigurationError
from tests.app.conftest import Databases, TestClient, make_settings, save_tiny_model

# Thresholds picked so each point decides every image one way: the softmax score of the
# positive class is strictly between 0 and 1, so 0.0 always says "abnormal" and 1.0 never.
POINTS = {
    "chosen": {"threshold": 0.5, "sensitivity": 0.8},
    "youden": {"threshold": 0.5, "sensitivity": 0.8},
    "sens90": {"threshold": 1.0, "sensitivity": 0.0},
    "sens99": {"threshold": 0.0, "sensitivity": 1.0},
}


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def points_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store-points")
    save_tiny_model(
        store,
        metrics={"val": {"auc": 0.5}, "operating_points": POINTS},
        calibration={"method": "temperature scaling", "temperature": 1.5},
        leakage_check={"passed": True, "patients_in_two_splits": 0},
    )
    return store


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def client_for(databases: Databases, points_store: Path) -> Iterator[Any]:
    from radlens.app.main import create_app

    opened: list[TestClient] = []

    def open_client(point: str | None) -> tuple[TestClient, str]:
        from radlens.app.migrate import upgrade

        url = databases.new()
        upgrade(url)
        client = TestClient(create_app(make_settings(url, points_store, operating_point=point)))
        client.__enter__()
        opened.append(client)
        return client, url

    yield open_client
    for client in opened:
        client.__exit__(None, None, None)


def stored(url: str) -> list[dict[str, Any]]:
    from radlens.app.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT label, threshold, operating_point FROM predictions"))
            return [dict(row) for row in rows.mappings()]
    finally:
        engine.dispose()


def post(client: TestClient) -> Any:
    response = client.post(
        "/v1/predictions", files={"file": ("x.png", png(), "application/octet-stream")}
    )
    assert response.status_code == 201, response.text
    return response.json()


class TestServing:
    @pytest.mark.parametrize(
        ("point", "label", "threshold"),
        [("sens99", "abnormal", 0.0), ("sens90", "normal", 1.0)],
    )
    def test_the_named_point_decides_and_is_recorded(
        self, client_for: Any, point: str, label: str, threshold: float
    ) -> None:
        client, url = client_for(point)
        body = post(client)
        assert (body["label"], body["threshold"], body["operating_point"]) == (
            label,
            threshold,
            point,
        )
        assert stored(url) == [{"label": label, "threshold": threshold, "operating_point": point}]
        again = client.get(f"/v1/predictions/{body['id']}").json()
        assert (again["operating_point"], again["threshold"]) == (point, threshold)
        model = client.get("/v1/models").json()["models"][0]
        assert (model["operating_point"], model["decision_threshold"]) == (point, threshold)
        assert model["calibration"]["temperature"] == 1.5
        assert model["leakage_check"]["passed"] is True and model["data_split"] is None

    def test_unset_uses_the_models_own_threshold_named_chosen(self, client_for: Any) -> None:
        client, url = client_for(None)
        body = post(client)
        assert (body["threshold"], body["operating_point"]) == (0.5, "chosen")
        assert stored(url)[0]["operating_point"] == "chosen"


class TestStartUp:
    def test_a_point_the_model_lacks_stops_start_up_naming_the_ones_it_has(
        self, databases: Databases, points_store: Path
    ) -> None:
        from radlens.app.main import create_app
        from radlens.app.migrate import upgrade

        url = databases.new()
        upgrade(url)
        settings = make_settings(url, points_store, operating_point="sens95")
        message = (
            r"RADLENS_OPERATING_POINT='sens95': model tiny:1 has no operating point 'sens95'; "
            r"its operating points are chosen, youden, sens90, sens99"
        )
        with pytest.raises(ConfigurationError, match=message), TestClient(create_app(settings)):
            pass

    def test_preflight_refuses_it_before_keras_loads(
        self, tmp_path: Path, points_store: Path
    ) -> None:
        from radlens.app.startup import check_model

        settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", points_store)
        assert check_model(settings).name == "tiny"
        bad = make_settings(f"sqlite:///{tmp_path / 'x.db'}", points_store, operating_point="x")
        with pytest.raises(ConfigurationError, match=r"has no operating point 'x'"):
            check_model(bad)

    def test_a_model_without_operating_points_says_so(
        self, tmp_path: Path, model_store: Path
    ) -> None:
        from radlens.app.startup import check_model

        settings = make_settings(
            f"sqlite:///{tmp_path / 'x.db'}", model_store, operating_point="sens95"
        )
        with pytest.raises(ConfigurationError, match=r"records no operating points"):
            check_model(settings)

    def test_a_multi_label_model_is_refused_in_its_own_words(
        self, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """Not the multi-class wording ("decides by the highest score"): its findings have
        their own thresholds, and unsetting the variable serves them."""
        from radlens.app.startup import check_model
        from tests.app.test_findings_api import save_findings_model

        store = tmp_path_factory.mktemp("findings-points")
        save_findings_model(store)
        url = f"sqlite:///{tmp_path / 'x.db'}"
        assert check_model(make_settings(url, store, model="findings")).name == "findings"
        bad = make_settings(url, store, model="findings", operating_point="sens95")
        with pytest.raises(ConfigurationError) as caught:
            check_model(bad)
        detail = str(caught.value.detail)
        assert "model findings:1 is multi-label: each of its 3 findings is decided at its own" in (
            detail
        )
        assert "Unset RADLENS_OPERATING_POINT to serve it with those thresholds" in detail
        assert "highest score" not in detail

    @pytest.mark.parametrize("value", ["sens 95", "sens95;drop", "é"])
    def test_a_malformed_name_is_refused_by_the_settings(
        self, tmp_path: Path, model_store: Path, value: str
    ) -> None:
        with pytest.raises(ValidationError, match=r"operating point name.*Received"):
            make_settings(f"sqlite:///{tmp_path / 'x.db'}", model_store, operating_point=value)

    def test_blank_means_unset(self, tmp_path: Path, model_store: Path) -> None:
        settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", model_store, operating_point=" ")
        assert settings.operating_point is None

"""RADLENS_OPERATING_POINT on a multi-label findings model: each finding that has the named
point (the manifest's ``metrics["operating_points_per_finding"]``) is decided at its threshold
there, a finding without it keeps its trained threshold (a start-up WARNING names it), a name
no finding has -- or any name on a model trained before the table -- stops start-up; the
response, GET /v1/models and prediction_findings say which point each finding is at, and a
series keeps the thresholds its instances were decided at. SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from radlens.models.errors import ConfigurationError
from tests.app.conftest import Databases, dicom_bytes, make_settings, new_uid, png_bytes
from tests.app.test_findings_api import (
    BIASES,
    THRESHOLDS,
    constant_findings_model,
    save_findings_model,
    save_multilabel,
)
from tests.app.test_series_findings_threshold import RECORD

# Every upload scores Effusion sigmoid(2) = 0.881, Infiltration 0.119, Nodule 0.5 (the model
# ignores the image). At the trained thresholds (0.5, 0.5, 0.6): Effusion only. At sens95
# both flip -- Effusion 0.881 < 0.9, Infiltration 0.119 >= 0.1 -- and Nodule, whose validation
# had too few positives for a sensitivity point, keeps its 0.6.


def figures(threshold: float) -> dict[str, Any]:
    """A point as training.metrics.point_figures writes it (the counts do not matter here)."""
    return {
        "threshold": threshold,
        "tp": 3,
        "fp": 1,
        "tn": 5,
        "fn": 1,
        "sensitivity": 0.75,
        "sensitivity_ci95": [0.3, 0.95],
        "specificity": 0.83,
        "specificity_ci95": [0.44, 0.97],
        "ppv": 0.75,
        "ppv_ci95": [0.3, 0.95],
        "npv": 0.83,
        "npv_ci95": [0.44, 0.97],
    }


NOT_COMPUTED = {
    "Nodule": {
        "sens90": "4 validation positives, at least 10 needed",
        "sens95": "4 validation positives, at least 20 needed",
        "sens99": "4 validation positives, at least 100 needed",
    },
    "Effusion": {"sens99": "30 validation positives, at least 100 needed"},
    "Infiltration": {"sens99": "25 validation positives, at least 100 needed"},
}
POINTS: dict[str, Any] = {
    "fitted_on": "val",
    "evaluated_on": "test",
    "per_finding": {
        "Effusion": {
            "chosen": figures(0.5),
            "youden": {**figures(0.5), "rule": "youden"},
            "sens90": figures(0.7),
            "sens95": figures(0.9),
        },
        "Infiltration": {
            "chosen": figures(0.5),
            "youden": {**figures(0.5), "rule": "youden"},
            "sens90": figures(0.3),
            "sens95": figures(0.1),
        },
        "Nodule": {"chosen": figures(0.6), "youden": {**figures(0.6), "rule": "youden"}},
    },
    "not_computed": NOT_COMPUTED,
}
AT_SENS95 = {"Effusion": 0.9, "Infiltration": 0.1, "Nodule": 0.6}
POINT_OF = {"Effusion": "sens95", "Infiltration": "sens95", "Nodule": "chosen"}
# the run's series thresholds (tests/app/test_series_findings_threshold.py): Effusion 0.95,
# Nodule 0.45, Infiltration kept at its instance threshold
SERIES_RECORD = RECORD


def save_points_model(store: Path) -> Any:
    """The constant findings model of test_findings_api, its manifest holding the per-finding
    operating points (and series thresholds) as a multi-label run writes them."""
    return save_multilabel(
        store,
        constant_findings_model(BIASES),
        "findings",
        THRESHOLDS,
        metrics={
            "val": {"auc": 0.5},
            "operating_points_per_finding": POINTS,
            "series_threshold": SERIES_RECORD,
        },
        threshold_rule="youden",
    )


@pytest.fixture(scope="session")  # built once: see tests/app/conftest.py databases
def points_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("findings-points-store")
    save_points_model(store)
    return store


@pytest.fixture(scope="session")
def old_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A findings model trained before the per-finding table (no operating points)."""
    store = tmp_path_factory.mktemp("findings-old-store")
    save_findings_model(store)
    return store


class Service:
    def __init__(self, client: TestClient, url: str) -> None:
        self.client, self.url = client, url

    def post(self, seed: int) -> dict[str, Any]:
        files = {"file": ("x.png", png_bytes(seed), "application/octet-stream")}
        response = self.client.post("/v1/predictions", files=files)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def stored(self, prediction_id: str) -> tuple[Any, dict[str, tuple[float, bool]]]:
        """(predictions.operating_point, {finding: (threshold, positive)}) as stored."""
        from sqlalchemy import text

        engine = self.client.app.state.resources.engine  # type: ignore[attr-defined]
        sqlite = engine.dialect.name == "sqlite"
        key = {"id": prediction_id.replace("-", "") if sqlite else prediction_id}
        with engine.connect() as conn:
            point = conn.execute(
                text("SELECT operating_point FROM predictions WHERE CAST(id AS TEXT) = :id"), key
            ).scalar_one()
            rows = conn.execute(
                text(
                    "SELECT finding, threshold, positive FROM prediction_findings "
                    "WHERE CAST(prediction_id AS TEXT) = :id"
                ),
                key,
            )
            return point, {r[0]: (float(r[1]), bool(r[2])) for r in rows}


@pytest.fixture()
def make_service(databases: Databases, points_store: Path) -> Iterator[Any]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    opened: list[TestClient] = []

    def make(store: Path = points_store, **settings: Any) -> Service:
        url = databases.new()
        upgrade(url)
        client = TestClient(create_app(make_settings(url, store, model="findings", **settings)))
        client.__enter__()
        opened.append(client)
        return Service(client, url)

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _by_name(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in findings}


class TestServing:
    def test_each_finding_is_decided_at_its_sens95_threshold(self, make_service: Any) -> None:
        service = make_service(operating_point="sens95")
        body = service.post(1)
        found = _by_name(body["findings"])
        assert {n: f["threshold"] for n, f in found.items()} == AT_SENS95
        assert {n: f["operating_point"] for n, f in found.items()} == POINT_OF
        # both flip against the trained thresholds
        assert found["Effusion"]["positive"] is False and found["Infiltration"]["positive"]
        assert found["Nodule"]["positive"] is False
        assert (body["label"], body["operating_point"], body["threshold"]) == (
            "Infiltration",
            "sens95",
            None,
        )
        # stored with the thresholds actually used, and read back the same
        point, rows = service.stored(body["id"])
        assert point == "sens95"
        assert rows == {
            "Effusion": (0.9, False),
            "Infiltration": (0.1, True),
            "Nodule": (0.6, False),
        }
        again = service.client.get(f"/v1/predictions/{body['id']}").json()
        assert again["findings"] == body["findings"] and again["label"] == "Infiltration"
        listed = service.client.get("/v1/predictions?finding=Infiltration&positive=true")
        assert body["id"] in {item["id"] for item in listed.json()["items"]}

    def test_grad_cam_explains_the_findings_positive_at_the_point(self, make_service: Any) -> None:
        """The heatmap's default is the top positive findings: at sens95 that is Infiltration
        (the response's label), not Effusion, which is positive only at the trained
        thresholds."""
        service = make_service(operating_point="sens95")
        files = {"file": ("x.png", png_bytes(3), "application/octet-stream")}
        created = service.client.post("/v1/predictions?explain=true", files=files)
        assert created.status_code == 201, created.text
        assert created.json()["label"] == "Infiltration"
        heatmap = service.client.get(f"/v1/predictions/{created.json()['id']}/heatmap")
        assert heatmap.status_code == 200, heatmap.text
        assert heatmap.headers["X-Radlens-Explained-Class"] == "Infiltration"

    def test_the_model_page_shows_each_findings_table_and_the_served_thresholds(
        self, make_service: Any
    ) -> None:
        import html

        page = make_service(operating_point="sens95").client.get("/ui/model")
        assert page.status_code == 200, page.text
        text = html.unescape(page.text)
        assert "Effusion 0.900, Infiltration 0.100, Nodule 0.600 (one per finding, as served)" in (
            text
        )
        assert "Operating points per finding" in text
        for finding in THRESHOLDS:
            assert f"<caption>{finding}: thresholds chosen on validation" in text
        assert "sens95</th><td>0.100</td>" in text  # Infiltration's row
        assert "Nodule has no sens90 (4 validation positives, at least 10 needed)" in text
        # one row per finding: trained, served, temperature (the fixture has none), series
        # threshold for the service's aggregation (max, k=3: the record's)
        assert (
            '<th scope="row">Effusion</th><td>0.500</td><td>0.900</td><td>–</td><td>0.950</td>'
        ) in text
        assert (
            '<th scope="row">Infiltration</th><td>0.500</td><td>0.100</td><td>–</td>'
            "<td>its threshold</td>"
        ) in text

    def test_unset_decides_at_the_trained_thresholds(self, make_service: Any) -> None:
        service = make_service()
        body = service.post(2)
        found = _by_name(body["findings"])
        assert {n: f["threshold"] for n, f in found.items()} == THRESHOLDS
        assert {n: f["operating_point"] for n, f in found.items()} == dict.fromkeys(
            THRESHOLDS, "chosen"
        )
        assert (body["label"], body["operating_point"]) == ("Effusion", None)
        assert service.stored(body["id"])[1]["Effusion"] == (0.5, True)

    def test_models_says_which_point_each_finding_is_at(self, make_service: Any) -> None:
        model = make_service(operating_point="sens95").client.get("/v1/models").json()
        (model,) = model["models"]
        assert model["operating_point"] == "sens95"
        assert model["finding_operating_points"] == POINT_OF
        assert model["finding_decision_thresholds"] == AT_SENS95
        assert model["finding_thresholds"] == THRESHOLDS  # the trained ones, as before
        assert model["metrics"]["operating_points_per_finding"]["not_computed"] == NOT_COMPUTED

    def test_a_series_keeps_the_thresholds_its_instances_were_decided_at(
        self, make_service: Any
    ) -> None:
        """As for a binary model's site operating point (app/series.py): a finding decided at
        sens95 keeps that threshold over the series; Nodule, at its trained threshold, is
        decided at the run's series threshold as before."""
        service = make_service(operating_point="sens95")  # max: the run's aggregation
        study, series = new_uid(), new_uid()
        for seed in range(2):
            files = {"file": ("x.dcm", dicom_bytes(study=study, series=series, seed=seed))}
            assert service.client.post("/v1/predictions", files=files).status_code == 201
        (result,) = service.client.get(f"/v1/series/{series}").json()["results"]
        found = {f["name"]: (f["threshold"], f["threshold_source"]) for f in result["findings"]}
        assert found == {
            "Effusion": (0.9, "model"),
            "Infiltration": (0.1, "model"),
            "Nodule": (0.45, "series"),
        }
        assert result["label"] == "Infiltration|Nodule"


class TestStartUp:
    def test_findings_without_the_point_are_named_in_a_warning(
        self, make_service: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="radlens")
        make_service(operating_point="sens95")
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "RADLENS_OPERATING_POINT" in r.getMessage()
        ]
        assert warnings == [
            "RADLENS_OPERATING_POINT=sens95: model findings:1 has no sens95 operating point "
            "for 1 of its 3 findings, which keep their trained threshold: Nodule (4 validation "
            "positives, at least 20 needed)"
        ]

    def test_no_warning_when_every_finding_has_it(
        self, make_service: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="radlens")
        make_service(operating_point="youden")
        assert not [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and "RADLENS_OPERATING_POINT" in r.getMessage()
        ]

    def test_a_point_no_finding_has_is_refused_saying_what_to_do(
        self, tmp_path: Path, points_store: Path
    ) -> None:
        from radlens.app.startup import check_model

        url = f"sqlite:///{tmp_path / 'x.db'}"
        settings = make_settings(url, points_store, model="findings", operating_point="sens99")
        with pytest.raises(ConfigurationError) as caught:
            check_model(settings)
        detail = str(caught.value.detail)
        assert detail.startswith(
            "RADLENS_OPERATING_POINT='sens99': no finding of model findings:1 has an operating "
            "point 'sens99' (training left it out: Nodule: 4 validation positives, at least "
            "100 needed; Effusion: 30 validation positives"
        ), detail
        assert (
            "its findings' operating points are chosen (every finding); youden (every "
            "finding); sens90 (Effusion, Infiltration); sens95 (Effusion, Infiltration)"
        ) in detail
        assert "Choose one of them, or unset RADLENS_OPERATING_POINT" in detail

    def test_a_model_without_the_table_is_refused_saying_what_to_do(
        self, tmp_path: Path, old_store: Path
    ) -> None:
        """An old manifest still loads and serves unset; a named point is refused."""
        from radlens.app.startup import check_model

        url = f"sqlite:///{tmp_path / 'x.db'}"
        assert check_model(make_settings(url, old_store, model="findings")).name == "findings"
        bad = make_settings(url, old_store, model="findings", operating_point="sens95")
        with pytest.raises(ConfigurationError) as caught:
            check_model(bad)
        detail = str(caught.value.detail)
        assert "records no operating points per finding" in detail
        assert "Unset RADLENS_OPERATING_POINT to serve it with those thresholds" in detail
        assert "train it again" in detail
        assert "binary single-label models only" not in detail

    def test_the_service_refuses_to_start_too(self, make_service: Any, old_store: Path) -> None:
        with pytest.raises(ConfigurationError, match=r"records no operating points per finding"):
            make_service(old_store, operating_point="sens95")


class TestDecision:
    """models.decision on the fixture's manifest, without the service."""

    @staticmethod
    def manifest(tmp_path: Path) -> Any:
        return save_points_model(tmp_path / "store")

    def test_the_point_resolves_per_finding(self, tmp_path: Path) -> None:
        from radlens.models.decision import decide, decide_findings, operating_point

        m = self.manifest(tmp_path)
        point = operating_point(m, "sens95")
        assert (point.name, point.threshold) == ("sens95", None)
        assert dict(point.finding_thresholds or {}) == AT_SENS95
        assert dict(point.finding_points or {}) == POINT_OF
        assert point.kept == ["Nodule"]
        scores = np.array([0.881, 0.119, 0.5])
        assert decide(scores, m) == "Effusion"
        assert decide(scores, m, point) == "Infiltration"
        assert [d.threshold for d in decide_findings(scores, m, point)] == [0.9, 0.1, 0.6]

    def test_the_served_manifest_decides_at_the_point_and_writes_nothing(
        self, tmp_path: Path
    ) -> None:
        from radlens.models.decision import decide_findings, operating_point, serve_at
        from radlens.models.manifest import check_seal

        m = self.manifest(tmp_path)
        served = serve_at(m, operating_point(m, "sens95"))
        assert served.decision_thresholds == AT_SENS95
        assert served.finding_thresholds == THRESHOLDS  # the trained ones stay
        assert [d.positive for d in decide_findings(np.array([0.881, 0.119, 0.5]), served)] == [
            False,
            True,
            False,
        ]
        assert served.to_dict() == m.to_dict()  # a deployment's setting: never written
        assert "served_thresholds" not in served.to_dict()
        check_seal(served.to_dict())
        assert serve_at(m, operating_point(m, None)) is m

    def test_which_point_a_stored_decision_was_at(self, tmp_path: Path) -> None:
        from radlens.models.decision import finding_point_of

        m = self.manifest(tmp_path)
        assert finding_point_of(m, "sens95", "Effusion", 0.9) == "sens95"
        assert finding_point_of(m, "sens95", "Nodule", 0.6) == "chosen"
        assert finding_point_of(m, None, "Effusion", 0.5) == "chosen"
        assert finding_point_of(m, "sens95", "Effusion", 0.42) is None  # not this model's


class TestDamagedRecords:
    """A hand-edited or damaged table is refused or skipped saying so, never a traceback, and
    never a finding quietly served at its trained threshold (review of session 23)."""

    @staticmethod
    def with_points(tmp_path: Path, points: Any) -> Any:
        import dataclasses

        m = save_points_model(tmp_path / "store")
        metrics = {**m.metrics, "operating_points_per_finding": points}
        return dataclasses.replace(m, metrics=metrics)

    @pytest.mark.parametrize("bad", [float("nan"), "0.9", 1.5, None])
    def test_a_point_without_a_usable_threshold_stops_start_up(
        self, tmp_path: Path, bad: Any
    ) -> None:
        import copy

        from radlens.models.decision import operating_point
        from radlens.models.errors import ConfigurationError

        points = copy.deepcopy(POINTS)
        points["per_finding"]["Effusion"]["sens95"]["threshold"] = bad
        m = self.with_points(tmp_path, points)
        with pytest.raises(ConfigurationError, match=r"records 'sens95' for Effusion without"):
            operating_point(m, "sens95")
        assert operating_point(m, "sens90").finding_points == {  # the other points still serve
            "Effusion": "sens90",
            "Infiltration": "sens90",
            "Nodule": "chosen",
        }

    def test_a_table_naming_none_of_the_findings_says_so(self, tmp_path: Path) -> None:
        from radlens.models.decision import operating_point
        from radlens.models.errors import ConfigurationError

        renamed = {**POINTS, "per_finding": {"Pleural effusion": POINTS["per_finding"]["Effusion"]}}
        m = self.with_points(tmp_path, renamed)
        with pytest.raises(ConfigurationError, match="name 'Pleural effusion', none of its"):
            operating_point(m, "sens95")

    @pytest.mark.parametrize(
        "not_computed", ["oops", {"Nodule": "sens95 missing"}, {"Nodule": ["sens95"]}, None]
    )
    def test_malformed_reasons_are_skipped_by_every_reader(
        self, tmp_path: Path, not_computed: Any
    ) -> None:
        from radlens.models.decision import finding_points_not_computed, operating_point
        from radlens.training.evaluate import _finding_points
        from radlens.training.findings import format_points_table

        m = self.with_points(tmp_path, {**POINTS, "not_computed": not_computed})
        assert finding_points_not_computed(m.metrics) == {}
        assert operating_point(m, "sens95").kept == ["Nodule"]
        targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
        scores = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3], [0.6, 0.6, 0.4], [0.2, 0.1, 0.9]])
        record = _finding_points(m, targets, scores, "test")
        assert record is not None and record["not_computed"] == {}
        assert format_points_table(record)[0].startswith("finding")


def test_the_model_pages_finding_rows_show_temperatures(tmp_path: Path) -> None:
    """/ui/model's per-finding table reads the temperatures a multi-label run records under
    metrics.calibration, and the series threshold only for the aggregation it was chosen for."""
    import dataclasses
    from types import SimpleNamespace

    from radlens.app.ui.routes import _finding_rows

    m = save_points_model(tmp_path / "store")
    calibration = {"temperatures": {"Effusion": 1.25, "Nodule": "bad"}, "fitted_on": "val"}
    m = dataclasses.replace(m, metrics={**m.metrics, "calibration": calibration})
    rows = {
        r["name"]: r
        for r in _finding_rows(m, SimpleNamespace(series_aggregation="max", series_top_k=3))
    }
    assert rows["Effusion"] == {
        "name": "Effusion",
        "trained": "0.500",
        "served": "0.500",
        "temperature": "1.250",
        "series": "0.950",
    }
    assert rows["Nodule"]["temperature"] == "–" and rows["Nodule"]["series"] == "0.450"
    other = _finding_rows(m, SimpleNamespace(series_aggregation="noisy_or", series_top_k=3))
    assert {r["series"] for r in other} == {"its threshold"}

"""A multi-label model's series threshold per finding (manifest
``metrics["series_threshold"]["thresholds"]``): the service decides each finding of a series
(and study, and the series SR) at it when its aggregation is the run's and the instances were
decided at the model's finding thresholds; ``threshold_source`` says which. SQLite and
PostgreSQL."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, dicom_bytes, make_settings, new_uid
from tests.app.test_findings_api import (
    BIASES,
    THRESHOLDS,
    _finding_groups,
    constant_findings_model,
    save_multilabel,
)

# Every instance scores Effusion sigmoid(2) = 0.881, Infiltration 0.119, Nodule 0.5 (the
# model ignores the image), so each series aggregate (max) is that score. At the instance
# thresholds (0.5, 0.5, 0.6): Effusion positive, Nodule negative. The run's series thresholds
# turn both: Effusion 0.881 < 0.95, Nodule 0.5 >= 0.45. Infiltration's validation series were
# of one class: it keeps its instance threshold.
RECORD: dict[str, Any] = {
    "label_mode": "multi-label",
    "thresholds": {"Effusion": 0.95, "Nodule": 0.45},
    "instance_threshold_kept": ["Infiltration"],
    "n_positive": {"Effusion": 2, "Infiltration": 0, "Nodule": 3},
    "rule": "youden",
    "aggregation": "max",
    "top_k": 3,
    "fitted_on": "val",
    "n_series": 6,
}


def save_with_series_thresholds(store: Path, record: dict[str, Any]) -> Any:
    """The findings model of test_findings_api, its manifest holding ``record`` as a
    multi-label training run writes it (training/run.py ``_finish_findings``)."""
    return save_multilabel(
        store,
        constant_findings_model(BIASES),
        "findings",
        THRESHOLDS,
        "Nothing Seen",
        metrics={"val": {"auc": 0.5}, "series_threshold": record},
    )


@pytest.fixture(scope="session")  # built once: see tests/app/conftest.py databases
def series_findings_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("series-findings-threshold-store")
    save_with_series_thresholds(store, RECORD)
    return store


class Service:
    def __init__(self, client: TestClient, url: str) -> None:
        self.client, self.url = client, url


@pytest.fixture()
def make_service(databases: Databases, series_findings_store: Path) -> Iterator[Any]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    opened: list[TestClient] = []

    def make(**settings: Any) -> Service:
        url = databases.new()
        upgrade(url)
        client = TestClient(create_app(make_settings(url, series_findings_store, **settings)))
        client.__enter__()
        opened.append(client)
        return Service(client, url)

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _store_series(client: TestClient, count: int = 3) -> tuple[str, str]:
    study, series = new_uid(), new_uid()
    for seed in range(count):
        files = {"file": ("x.dcm", dicom_bytes(study=study, series=series, seed=seed))}
        response = client.post("/v1/predictions", files=files)
        assert response.status_code == 201, response.text
        # each instance is decided at the instance thresholds, as before
        by_name = {f["name"]: f for f in response.json()["findings"]}
        assert by_name["Effusion"]["positive"] is True
        assert by_name["Nodule"]["positive"] is False
    return study, series


def _by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in result["findings"]}


def test_findings_are_decided_at_their_series_thresholds(make_service: Any) -> None:
    service = make_service()  # RADLENS_SERIES_AGGREGATION=max, the run's
    study, series = _store_series(service.client)
    (result,) = service.client.get(f"/v1/series/{series}").json()["results"]
    found = _by_name(result)
    effusion, nodule, infiltration = found["Effusion"], found["Nodule"], found["Infiltration"]
    # positive at its instance threshold 0.5, negative at its series threshold 0.95
    assert effusion["score"] == pytest.approx(0.8808, abs=1e-3)
    assert effusion["positive"] is False
    assert (effusion["threshold"], effusion.get("threshold_source")) == (0.95, "series")
    # negative at its instance threshold 0.6, positive at its series threshold 0.45
    assert nodule["score"] == pytest.approx(0.5, abs=1e-3)
    assert nodule["positive"] is True
    assert (nodule["threshold"], nodule.get("threshold_source")) == (0.45, "series")
    # kept by the run: its instance threshold
    assert (infiltration["threshold"], infiltration.get("threshold_source")) == (0.5, "model")
    assert infiltration["positive"] is False
    assert (result["label"], result["class_name"], result["positive"]) == ("Nodule", "Nodule", True)
    assert (result["threshold"], result.get("threshold_source")) == (0.45, "series")
    (study_result,) = service.client.get(f"/v1/studies/{study}").json()["results"]
    assert {
        n: (f["positive"], f.get("threshold_source")) for n, f in _by_name(study_result).items()
    } == {
        "Effusion": (False, "series"),
        "Infiltration": (False, "model"),
        "Nodule": (True, "series"),
    }
    assert study_result["label"] == "Nodule"


def test_the_series_sr_carries_the_series_decisions(make_service: Any) -> None:
    import pydicom

    service = make_service()
    _, series = _store_series(service.client, count=2)
    response = service.client.get(f"/v1/series/{series}/dicom/sr")
    assert response.status_code == 200, response.text
    groups = _finding_groups(pydicom.dcmread(io.BytesIO(response.content)))
    assert {name: g.get("presence") for name, g in groups.items()} == {
        "Effusion": "Absent",
        "Infiltration": "Absent",
        "Nodule": "Present",
    }
    assert groups["Nodule"]["threshold"] == pytest.approx(0.45)
    assert groups["Effusion"]["threshold"] == pytest.approx(0.95)


def test_another_aggregation_keeps_the_instance_thresholds(make_service: Any) -> None:
    service = make_service(series_aggregation="mean_top_k", series_top_k=3)
    _, series = _store_series(service.client)
    (result,) = service.client.get(f"/v1/series/{series}").json()["results"]
    assert {
        n: (f["threshold"], f.get("threshold_source")) for n, f in _by_name(result).items()
    } == {
        "Effusion": (0.5, "model"),
        "Infiltration": (0.5, "model"),
        "Nodule": (0.6, "model"),
    }
    assert (result["label"], result.get("threshold_source")) == ("Effusion", "model")


def test_instances_decided_at_another_threshold_keep_it(make_service: Any) -> None:
    """As a binary model's site operating point: a finding whose instances were decided at
    another threshold than the loaded model's (0.55, not 0.6) keeps its instances' one."""
    from sqlalchemy import create_engine, text

    service = make_service()
    _, series = _store_series(service.client)
    engine = create_engine(service.url)
    try:
        with engine.begin() as connection:
            changed = connection.execute(
                text(
                    "UPDATE prediction_findings SET threshold = 0.55 WHERE finding = 'Nodule' "
                    "AND prediction_id IN (SELECT id FROM predictions "
                    "WHERE series_instance_uid = :series)"
                ),
                {"series": series},
            ).rowcount
    finally:
        engine.dispose()
    assert changed == 3
    (result,) = service.client.get(f"/v1/series/{series}").json()["results"]
    found = _by_name(result)
    assert (found["Nodule"]["threshold"], found["Nodule"].get("threshold_source")) == (
        0.55,
        "model",
    )
    assert found["Nodule"]["positive"] is False
    # the other findings' instances were decided at the model's thresholds
    assert (found["Effusion"]["threshold"], found["Effusion"].get("threshold_source")) == (
        0.95,
        "series",
    )
    # no finding positive at the series' thresholds, while every instance was positive for
    # Effusion (none's stored label names it): the model's own no-finding name
    assert result["positive"] is False and result["label"] == "Nothing Seen"


def test_openapi_documents_the_source(make_service: Any) -> None:
    service = make_service()
    schemas = service.client.get("/openapi.json").json()["components"]["schemas"]
    source = schemas["SeriesFinding"]["properties"]["threshold_source"]
    assert "'series'" in source["description"] and "'model'" in source["description"]
    assert "series threshold" in schemas["SeriesFinding"]["properties"]["threshold"]["description"]


# --- app.series.model_result, pure -----------------------------------------------------------


def _rows(instance_thresholds: dict[str, float], version: int = 1) -> tuple[list[Any], Any]:
    """Two stored predictions of model ``findings``:``version`` with Nodule 0.5 and 0.4,
    Effusion 0.9 and 0.7, their findings decided at ``instance_thresholds``."""
    from radlens.app.tables import PredictionFinding
    from tests.app.conftest import prediction_row

    rows, findings = [], {}
    for i, (nodule, effusion) in enumerate([(0.5, 0.4), (0.9, 0.7)]):
        scores = {"Effusion": effusion, "Nodule": nodule}
        row = prediction_row(f"sop:{i}")
        row.model_name, row.model_version, row.scores = "findings", version, scores
        row.sop_instance_uid, row.created_at, row.threshold = str(i), datetime.now(UTC), None
        row.label = "x"
        findings[row.id] = [
            PredictionFinding(
                id=uuid.uuid4(),
                prediction_id=row.id,
                finding=name,
                score=value,
                threshold=instance_thresholds[name],
                positive=value >= instance_thresholds[name],
            )
            for name, value in scores.items()
        ]
        rows.append(row)
    return rows, findings


def _cuts(pairs: dict[str, tuple[float | None, float]], version: int = 1) -> Any:
    from radlens.app.series import FindingSeriesThresholds

    return {("findings", version): FindingSeriesThresholds(pairs, "Nothing Seen")}


CUTS = {"Nodule": (0.6, 0.95), "Effusion": (0.5, 0.3)}


class TestModelResult:
    def test_series_thresholds_decide_each_finding(self) -> None:
        from radlens.app.series import model_result

        rows, findings = _rows({"Nodule": 0.6, "Effusion": 0.5})
        before = model_result(rows, "max", 3, findings=findings)
        assert {f.name: (f.positive, f.threshold_source) for f in before.findings or []} == {
            "Effusion": (True, "model"),
            "Nodule": (True, "model"),
        }
        after = model_result(rows, "max", 3, _cuts(CUTS), findings)
        assert {
            f.name: (f.threshold, f.positive, f.threshold_source) for f in after.findings or []
        } == {"Effusion": (0.3, True, "series"), "Nodule": (0.95, False, "series")}
        assert (after.label, after.threshold_source) == ("Effusion", "series")

    def test_no_positive_finding_is_the_models_no_finding_name(self) -> None:
        from radlens.app.series import model_result

        rows, findings = _rows({"Nodule": 0.6, "Effusion": 0.5})  # every instance positive
        result = model_result(rows, "max", 3, _cuts({"Nodule": (0.6, 0.95)}), findings)
        assert result.findings is not None
        assert {f.name: f.positive for f in result.findings} == {
            "Effusion": True,
            "Nodule": False,
        }
        result = model_result(
            rows, "max", 3, _cuts({"Nodule": (0.6, 0.95), "Effusion": (0.5, 0.8)}), findings
        )
        assert (result.label, result.positive) == ("Nothing Seen", False)

    def test_other_versions_operating_points_and_binary_pairs_change_nothing(self) -> None:
        from radlens.app.series import model_result

        rows, findings = _rows({"Nodule": 0.6, "Effusion": 0.5}, version=2)
        other = model_result(rows, "max", 3, _cuts(CUTS), findings)
        assert {f.threshold_source for f in other.findings or []} == {"model"}
        # instances decided at 0.55 for Nodule, not the model's 0.6: Nodule keeps 0.55
        rows, findings = _rows({"Nodule": 0.55, "Effusion": 0.5})
        site = model_result(rows, "max", 3, _cuts(CUTS), findings)
        assert {f.name: (f.threshold, f.threshold_source) for f in site.findings or []} == {
            "Effusion": (0.3, "series"),
            "Nodule": (0.55, "model"),
        }
        # a binary model's (model threshold, series threshold) pair is not read per finding
        rows, findings = _rows({"Nodule": 0.6, "Effusion": 0.5})
        binary = model_result(rows, "max", 3, {("findings", 1): (0.5, 0.01)}, findings)
        assert {f.threshold_source for f in binary.findings or []} == {"model"}

"""Multi-label findings through the API, on SQLite and PostgreSQL: the response's findings,
the prediction_findings table, per-finding list filters, and the OpenAPI wording."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, assert_problem, make_settings, png_bytes

FINDINGS = ["Effusion", "Infiltration", "Nodule"]
# sigmoid(2) = 0.881 >= 0.5: positive; sigmoid(-2) = 0.119 < 0.5; sigmoid(0) = 0.5 < 0.6
BIASES = [2.0, -2.0, 0.0]
THRESHOLDS = {"Effusion": 0.5, "Infiltration": 0.5, "Nodule": 0.6}


def save_multilabel(
    store: Path,
    model: Any,
    name: str,
    thresholds: dict[str, float],
    none_name: str = "No Finding",
    *,
    metrics: dict[str, Any] | None = None,
    threshold_rule: str | None = None,
) -> Any:
    """Save a multi-label simple_cnn ``model`` whose findings are ``thresholds``' keys
    (``metrics``: the manifest's, default a validation AUC only; ``threshold_rule``: the
    findings record's, absent by default)."""
    from radlens.models.registry import ModelRegistry

    return ModelRegistry(store).save(
        model,
        name=name,
        architecture="simple_cnn",
        class_names=list(thresholds),
        threshold=None,
        window=None,
        filters=[],
        metrics={"val": {"auc": 0.5}} if metrics is None else metrics,
        training_config={"note": "test fixture", "label_column": "findings"},
        data_fingerprint=None,
        findings={
            "label_mode": "multi-label",
            "scores": "independent",
            "none_name": none_name,
            "thresholds": thresholds,
            **({"threshold_rule": threshold_rule} if threshold_rule else {}),
        },
    )


def constant_findings_model(biases: list[float]) -> Any:
    """A multi-label simple_cnn whose scores do not depend on the image (zero kernel in the
    sigmoid head, fixed biases), so every upload has the same, known findings."""
    import keras

    from radlens.models.architectures import build_model

    keras.utils.set_random_seed(7)
    model = build_model(
        "simple_cnn", input_shape=(32, 32, 1), num_classes=len(biases), multi_label=True
    )
    head = model.get_layer("predictions")
    kernel, _ = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.asarray(biases, dtype=np.float32)])
    return model


def save_findings_model(store: Path, name: str = "findings") -> Any:
    """FINDINGS at BIASES and THRESHOLDS: every upload has the same, known findings."""
    return save_multilabel(store, constant_findings_model(BIASES), name, THRESHOLDS)


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def findings_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("findings-store")
    save_findings_model(store)
    return store


@pytest.fixture(scope="module")
def client(databases: Databases, findings_store: Path) -> Iterator[TestClient]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    app = create_app(make_settings(url, findings_store))
    with TestClient(app) as test_client:
        yield test_client


def _post(client: TestClient, seed: int) -> Any:
    files = {"file": ("x.png", png_bytes(seed), "application/octet-stream")}
    return client.post("/v1/predictions", files=files)


def _finding_rows(client: TestClient, prediction_id: str) -> list[tuple[str, float, bool]]:
    from sqlalchemy import text

    engine = client.app.state.resources.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT finding, threshold, positive FROM prediction_findings "
                "WHERE CAST(prediction_id AS TEXT) = :id ORDER BY finding"
            ),
            {"id": prediction_id.replace("-", "") if _sqlite(client) else prediction_id},
        )
        return [(r[0], float(r[1]), bool(r[2])) for r in rows]


def _sqlite(client: TestClient) -> bool:
    return client.app.state.resources.engine.dialect.name == "sqlite"  # type: ignore[attr-defined]


class TestResponse:
    def test_each_finding_with_score_threshold_and_decision(self, client: TestClient) -> None:
        response = _post(client, 1)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["label_mode"] == "multi-label"
        assert body["threshold"] is None
        assert [f["name"] for f in body["findings"]] == FINDINGS
        by_name = {f["name"]: f for f in body["findings"]}
        assert by_name["Effusion"]["score"] == pytest.approx(0.8808, abs=1e-4)
        assert by_name["Effusion"]["positive"] is True
        assert by_name["Infiltration"]["positive"] is False
        assert by_name["Nodule"]["threshold"] == 0.6 and by_name["Nodule"]["positive"] is False
        assert body["label"] == "Effusion"
        assert sum(body["scores"].values()) == pytest.approx(1.5, abs=1e-4)  # independent
        assert "Not for clinical use" in body["notice"]

    def test_rows_in_prediction_findings(self, client: TestClient) -> None:
        body = _post(client, 2).json()
        assert _finding_rows(client, body["id"]) == [
            ("Effusion", 0.5, True),
            ("Infiltration", 0.5, False),
            ("Nodule", 0.6, False),
        ]

    def test_repost_returns_the_stored_findings_once(self, client: TestClient) -> None:
        first = _post(client, 3).json()
        again = _post(client, 3)
        assert again.status_code == 200
        assert again.json()["findings"] == first["findings"]
        assert len(_finding_rows(client, first["id"])) == 3  # not written twice

    def test_get_one_has_the_findings(self, client: TestClient) -> None:
        created = _post(client, 4).json()
        read = client.get(f"/v1/predictions/{created['id']}").json()
        assert read["label_mode"] == "multi-label"
        assert read["findings"] == created["findings"]

    def test_metrics_count_each_positive_finding(self, client: TestClient) -> None:
        def count(label: str) -> float:
            text = client.get("/metrics").text
            prefix = f'radlens_predictions_total{{label="{label}",model="findings:1"}} '
            lines = [line for line in text.splitlines() if line.startswith(prefix)]
            return float(lines[0].split()[-1]) if lines else 0.0

        before = count("Effusion")
        _post(client, 5)
        assert count("Effusion") == before + 1
        assert count("Infiltration") == 0.0  # never positive with this model

    def test_models_lists_the_thresholds(self, client: TestClient) -> None:
        model = client.get("/v1/models").json()["models"][0]
        assert model["label_mode"] == "multi-label"
        assert model["finding_thresholds"] == THRESHOLDS


class TestListFilters:
    def test_finding_and_positive(self, client: TestClient) -> None:
        ids = {_post(client, seed).json()["id"] for seed in (10, 11)}

        def listed(query: str) -> set[str]:
            response = client.get(f"/v1/predictions?{query}&limit=100")
            assert response.status_code == 200, response.text
            page = response.json()["items"]
            assert all(item["label_mode"] == "multi-label" for item in page)
            return {item["id"] for item in page}

        assert ids <= listed("finding=Effusion&positive=true")
        assert ids <= listed("finding=Effusion")
        assert not ids & listed("finding=Effusion&positive=false")
        assert not ids & listed("finding=Infiltration&positive=true")
        assert ids <= listed("finding=Nodule&positive=false")

    def test_unknown_finding_is_404(self, client: TestClient) -> None:
        body = assert_problem(
            client.get("/v1/predictions?finding=Mass&positive=true"), 404, code="unknown-finding"
        )
        assert "'Mass'" in body["detail"] and "Effusion, Infiltration, Nodule" in body["detail"]

    def test_positive_alone_is_any_positive_finding(self, client: TestClient) -> None:
        ids = {_post(client, seed).json()["id"] for seed in (12, 13)}  # Effusion positive

        def listed(query: str) -> set[str]:
            response = client.get(f"/v1/predictions?{query}&limit=100")
            assert response.status_code == 200, response.text
            return {item["id"] for item in response.json()["items"]}

        assert ids <= listed("positive=true")
        assert not ids & listed("positive=false")

    def test_finding_repeated_is_422(self, client: TestClient) -> None:
        response = client.get("/v1/predictions?finding=Effusion&finding=Nodule")
        assert_problem(response, 422)


def test_openapi_says_when_scores_sum_to_one(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    public = schema["components"]["schemas"]["PredictionPublic"]["properties"]
    assert "sum to one" in public["scores"]["description"]
    assert "independent" in public["scores"]["description"]
    assert public["label_mode"]["enum"] == ["single-label", "multi-label"]
    finding = schema["components"]["schemas"]["FindingPublic"]["properties"]
    assert set(finding) == {"name", "score", "threshold", "positive", "operating_point"}
    params = {p["name"] for p in schema["paths"]["/v1/predictions"]["get"]["parameters"]}
    assert {"finding", "positive"} <= params


def test_single_label_predictions_have_no_findings(service: Any) -> None:
    body = service.post(png_bytes(99)).json()
    assert body["label_mode"] == "single-label" and body["findings"] is None
    assert_problem(
        service.client.get("/v1/predictions?finding=Effusion"), 404, code="unknown-finding"
    )


def _sr_items(ds: Any) -> list[Any]:
    """Every content item of an SR dataset, depth first."""
    found = []
    for item in getattr(ds, "ContentSequence", []):
        found.append(item)
        found.extend(_sr_items(item))
    return found


def _finding_groups(sr: Any) -> dict[str, dict[str, Any]]:
    """finding name -> {"presence": meaning, "score": value, "threshold": value} for each
    measurement group that names a finding type."""
    groups: dict[str, dict[str, Any]] = {}
    for group in _sr_items(sr):
        if group.ConceptNameCodeSequence[0].CodeMeaning != "Measurement Group":
            continue
        children = list(getattr(group, "ContentSequence", []))
        finding = next(
            (
                c.ConceptCodeSequence[0].CodeMeaning
                for c in children
                if c.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
                and c.ConceptCodeSequence[0].CodingSchemeDesignator == "99RADLENS"
            ),
            None,
        )
        if finding is None or finding not in FINDINGS:
            continue
        entry: dict[str, Any] = {}
        for c in _sr_items(group):
            name = c.ConceptNameCodeSequence[0].CodeMeaning
            if name == finding and "ConceptCodeSequence" in c:
                entry["presence"] = c.ConceptCodeSequence[0].CodeMeaning
            elif name == f"Model score for {finding}":
                entry["score"] = float(c.MeasuredValueSequence[0].NumericValue)
            elif name == "Threshold Value":
                entry["threshold"] = float(c.MeasuredValueSequence[0].NumericValue)
        groups[finding] = entry
    return groups


class TestStructuredReport:
    def test_one_group_per_finding_with_its_score(self, client: TestClient) -> None:
        import io

        import pydicom

        from tests.app.conftest import dicom_bytes

        files = {"file": ("ct.dcm", dicom_bytes(seed=5), "application/dicom")}
        created = client.post("/v1/predictions", files=files).json()
        response = client.get(f"/v1/predictions/{created['id']}/dicom/sr")
        assert response.status_code == 200, response.text
        sr = pydicom.dcmread(io.BytesIO(response.content))
        groups = _finding_groups(sr)
        assert set(groups) == set(FINDINGS)
        assert groups["Effusion"]["presence"] == "Present"
        assert groups["Infiltration"]["presence"] == "Absent"
        assert groups["Nodule"]["presence"] == "Absent"
        assert groups["Effusion"]["score"] == pytest.approx(0.8808, abs=1e-4)
        assert groups["Nodule"]["threshold"] == pytest.approx(0.6)

    def test_dicom_sr_upload_route_too(self, client: TestClient) -> None:
        import io

        import pydicom

        from tests.app.conftest import dicom_bytes

        files = {"file": ("ct.dcm", dicom_bytes(seed=6), "application/dicom")}
        response = client.post("/v1/predictions/dicom-sr", files=files)
        assert response.status_code == 201, response.text
        groups = _finding_groups(pydicom.dcmread(io.BytesIO(response.content)))
        assert groups["Effusion"]["presence"] == "Present"
        again = client.post("/v1/predictions/dicom-sr", files=files)  # stored findings
        assert again.status_code == 200
        assert _finding_groups(pydicom.dcmread(io.BytesIO(again.content))) == groups


class TestGradCamPerFinding:
    def _explain(self, client: TestClient, seed: int, query: str = "") -> Any:
        files = {"file": ("x.png", png_bytes(seed), "application/octet-stream")}
        return client.post(f"/v1/predictions?explain=true{query}", files=files)

    def _heatmap(self, client: TestClient, prediction_id: str) -> Any:
        response = client.get(f"/v1/predictions/{prediction_id}/heatmap")
        assert response.status_code == 200, response.text
        return response

    def test_default_is_the_positive_findings(self, client: TestClient) -> None:
        created = self._explain(client, 20).json()
        heatmap = self._heatmap(client, created["id"])
        assert heatmap.headers["X-Radlens-Explained-Class"] == "Effusion"  # the one positive

    def test_named_findings_each_get_a_map(self, client: TestClient) -> None:
        import io

        from PIL import Image

        one = self._explain(client, 21, "&finding=Nodule").json()
        two = self._explain(client, 22, "&finding=Nodule,Infiltration").json()
        single = self._heatmap(client, one["id"])
        double = self._heatmap(client, two["id"])
        assert single.headers["X-Radlens-Explained-Class"] == "Nodule"
        assert double.headers["X-Radlens-Explained-Class"] == "Nodule|Infiltration"
        h1 = Image.open(io.BytesIO(single.content)).height
        h2 = Image.open(io.BytesIO(double.content)).height
        assert h2 == 2 * h1  # two overlays stacked

    def test_unknown_finding_is_404_and_nothing_stored(self, client: TestClient) -> None:
        before = client.get("/v1/predictions?limit=100").json()["items"]
        body = assert_problem(
            self._explain(client, 23, "&finding=Mass"), 404, code="unknown-finding"
        )
        assert "'Mass'" in body["detail"]
        after = client.get("/v1/predictions?limit=100").json()["items"]
        assert len(after) == len(before)

    def test_finding_alone_asks_for_the_explanation(self, client: TestClient) -> None:
        files = {"file": ("x.png", png_bytes(24), "application/octet-stream")}
        created = client.post("/v1/predictions?finding=Nodule", files=files)
        assert created.status_code == 201, created.text
        heatmap = self._heatmap(client, created.json()["id"])
        assert heatmap.headers["X-Radlens-Explained-Class"] == "Nodule"


def test_finding_on_a_single_label_model_is_404(service: Any) -> None:
    response = service.post(png_bytes(98), params={"explain": "true", "finding": "Effusion"})
    assert "single-label" in assert_problem(response, 404, code="unknown-finding")["detail"]


def test_purge_removes_the_findings_with_their_prediction(client: TestClient) -> None:
    from datetime import timedelta

    from radlens.app.audit import purge
    from radlens.app.db import utcnow

    created = _post(client, 30).json()
    assert len(_finding_rows(client, created["id"])) == 3
    sessionmaker = client.app.state.resources.sessionmaker  # type: ignore[attr-defined]
    with sessionmaker() as session:
        purge(session, retention_days=1, now=utcnow() + timedelta(days=2))
        session.commit()
    assert _finding_rows(client, created["id"]) == []  # ON DELETE CASCADE, both databases


def test_stow_rs_instances_get_their_findings(client: TestClient) -> None:
    from tests.app.conftest import dicom_bytes, new_uid
    from tests.app.test_stowrs import multipart_related

    study = new_uid()
    sops = [new_uid(), new_uid()]
    body, content_type = multipart_related(
        [dicom_bytes(study=study, sop=sop, seed=i) for i, sop in enumerate(sops)]
    )
    response = client.post(
        f"/dicomweb/studies/{study}", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    listed = client.get(f"/v1/predictions?study_instance_uid={study}&finding=Effusion")
    items = listed.json()["items"]
    assert {item["sop_instance_uid"] for item in items} == set(sops)
    for item in items:
        assert len(_finding_rows(client, item["id"])) == 3
        assert item["label"] == "Effusion"

"""A multi-label model's series and study results, on SQLite and PostgreSQL: each finding is
aggregated on its own and decided at its own threshold (app/series.py), never read as the
classes of one softmax; the series SR carries one group per finding."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, dicom_bytes, make_settings, new_uid
from tests.app.test_findings_api import (
    _finding_groups,
    constant_findings_model,
    save_multilabel,
)


def save_model(store: Path, name: str, biases: list[float], thresholds: dict[str, float]) -> Any:
    return save_multilabel(store, constant_findings_model(biases), name, thresholds, "Nothing Seen")


def _client(databases: Databases, store: Path) -> Iterator[TestClient]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    with TestClient(create_app(make_settings(url, store))) as client:
        yield client


@pytest.fixture(scope="module")
def three(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Effusion sigmoid(2) = 0.881 >= 0.5; Infiltration 0.119 < 0.5; Nodule sigmoid(0) = 0.5,
    positive at a 0.5 cut but not at its own 0.6."""
    store = tmp_path_factory.mktemp("series-findings-3")
    save_model(
        store, "three", [2.0, -2.0, 0.0], {"Effusion": 0.5, "Infiltration": 0.5, "Nodule": 0.6}
    )
    yield from _client(databases, store)


@pytest.fixture(scope="module")
def two_negative(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """Two findings, both negative (0.119 < 0.5): read as a binary model, the first finding
    would be the series' 'negative class' label."""
    store = tmp_path_factory.mktemp("series-findings-2")
    save_model(store, "two", [-2.0, -2.0], {"Effusion": 0.5, "Nodule": 0.5})
    yield from _client(databases, store)


def _store_series(client: TestClient, count: int = 3) -> tuple[str, str, list[str]]:
    study, series = new_uid(), new_uid()
    sops = []
    for seed in range(count):
        sop = new_uid()
        files = {
            "file": (
                "x.dcm",
                dicom_bytes(study=study, series=series, sop=sop, seed=seed),
                "application/dicom",
            )
        }
        response = client.post("/v1/predictions", files=files)
        assert response.status_code == 201, response.text
        sops.append(sop)
    return study, series, sops


class TestThreeFindings:
    def test_each_finding_aggregated_at_its_own_threshold(self, three: TestClient) -> None:
        _, series, sops = _store_series(three)
        body = three.get(f"/v1/series/{series}").json()
        (result,) = body["results"]
        findings = {f["name"]: f for f in result["findings"]}
        assert list(findings) == ["Effusion", "Infiltration", "Nodule"]
        assert findings["Effusion"]["score"] == pytest.approx(0.8808, abs=1e-3)
        assert findings["Effusion"]["positive"] is True
        assert findings["Infiltration"]["positive"] is False
        # 0.5 is under Nodule's own 0.6: a binary or 0.5 cut would call it positive
        assert findings["Nodule"]["score"] == pytest.approx(0.5, abs=1e-3)
        assert findings["Nodule"]["threshold"] == pytest.approx(0.6)
        assert findings["Nodule"]["positive"] is False
        assert result["label"] == "Effusion"
        assert result["positive"] is True
        assert result["class_name"] == "Effusion"
        assert result["threshold"] == pytest.approx(0.5)
        assert result["instance_count"] == 3
        for finding in findings.values():
            keys = {link["sop_instance_uid"] for link in finding["key_instances"]}
            assert keys <= set(sops) and keys

    def test_study_carries_the_findings(self, three: TestClient) -> None:
        study, _, _ = _store_series(three, count=2)
        (result,) = three.get(f"/v1/studies/{study}").json()["results"]
        assert {f["name"]: f["positive"] for f in result["findings"]} == {
            "Effusion": True,
            "Infiltration": False,
            "Nodule": False,
        }
        assert result["label"] == "Effusion"

    def test_series_sr_has_one_group_per_finding(self, three: TestClient) -> None:
        import pydicom

        _, series, _ = _store_series(three, count=2)
        response = three.get(f"/v1/series/{series}/dicom/sr")
        assert response.status_code == 200, response.text
        groups = _finding_groups(pydicom.dcmread(io.BytesIO(response.content)))
        assert {name: g.get("presence") for name, g in groups.items()} == {
            "Effusion": "Present",
            "Infiltration": "Absent",
            "Nodule": "Absent",
        }
        assert groups["Nodule"]["threshold"] == pytest.approx(0.6)


def test_two_negative_findings_are_no_finding(two_negative: TestClient) -> None:
    _, series, _ = _store_series(two_negative)
    (result,) = two_negative.get(f"/v1/series/{series}").json()["results"]
    assert result["label"] == "Nothing Seen"
    assert result["positive"] is False
    assert [f["positive"] for f in result["findings"]] == [False, False]


def test_single_label_series_have_no_findings(service: Any) -> None:
    study, series = new_uid(), new_uid()
    assert service.post(dicom_bytes(study=study, series=series)).status_code == 201
    (result,) = service.client.get(f"/v1/series/{series}").json()["results"]
    assert result["findings"] is None
    assert result["positive"] in (True, False)

"""The series threshold a training run chose on validation series (manifest
``metrics["series_threshold"]``): the service decides a binary model's series (and study) at it
when its aggregation is the run's, else at the model threshold as before. SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.models.aggregation import recorded_series_threshold
from tests.app.conftest import (
    Databases,
    TestClient,
    dicom_bytes,
    make_settings,
    new_uid,
    save_tiny_model,
)

# far below any score the tiny model gives: every series is positive at it, so a decision at
# the model threshold (0.5) and one at the series threshold cannot be confused
SERIES_THRESHOLD = 0.01
RECORD = {
    "threshold": SERIES_THRESHOLD,
    "rule": "youden",
    "aggregation": "max",
    "top_k": 3,
    "fitted_on": "val",
    "n_series": 4,
    "n_positive": 2,
}


class TestRecordedSeriesThreshold:
    def test_used_for_the_aggregation_it_was_chosen_for(self) -> None:
        metrics = {"series_threshold": RECORD}
        assert recorded_series_threshold(metrics, "max", 3) == SERIES_THRESHOLD
        assert recorded_series_threshold(metrics, "max", 7) == SERIES_THRESHOLD  # k unused
        assert recorded_series_threshold(metrics, "noisy_or", 3) is None
        top_k = {"series_threshold": {**RECORD, "aggregation": "mean_top_k", "top_k": 2}}
        assert recorded_series_threshold(top_k, "mean_top_k", 2) == SERIES_THRESHOLD
        assert recorded_series_threshold(top_k, "mean_top_k", 3) is None

    @pytest.mark.parametrize("bad", [None, "0.3", 1.5, True, {"threshold": 0.3}])
    def test_absent_or_malformed_is_none(self, bad: Any) -> None:
        record = bad if not isinstance(bad, float | str | bool) else {**RECORD, "threshold": bad}
        assert recorded_series_threshold({"series_threshold": record}, "max", 3) is None
        assert recorded_series_threshold({}, "max", 3) is None


def _row(score: float, threshold: float | None, sop: str) -> Any:
    from datetime import UTC, datetime

    from tests.app.conftest import prediction_row

    row = prediction_row(f"sop:{sop}")
    row.scores = {"normal": 1.0 - score, "abnormal": score}
    row.threshold, row.sop_instance_uid, row.created_at = threshold, sop, datetime.now(UTC)
    return row


class TestModelResult:
    def test_series_threshold_decides_the_series(self) -> None:
        from radlens.app.series import model_result

        rows = [_row(0.3, 0.5, "1"), _row(0.4, 0.5, "2")]
        before = model_result(rows, "max", 3)
        assert (before.positive, before.threshold, before.threshold_source) == (
            False,
            0.5,
            "model",
        )
        after = model_result(rows, "max", 3, {("tiny", 1): (0.5, 0.35)})
        assert (after.label, after.positive, after.threshold) == ("abnormal", True, 0.35)
        assert after.threshold_source == "series"

    def test_other_models_and_operating_points_keep_their_threshold(self) -> None:
        from radlens.app.series import model_result

        rows = [_row(0.4, 0.5, "1")]
        other = model_result(rows, "max", 3, {("tiny", 2): (0.5, 0.35)})
        assert (other.threshold, other.threshold_source) == (0.5, "model")
        # instances decided at another operating point (0.45, not the model's 0.5)
        site = model_result([_row(0.4, 0.45, "1")], "max", 3, {("tiny", 1): (0.5, 0.35)})
        assert (site.threshold, site.positive, site.threshold_source) == (0.45, False, "model")


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def series_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("series-threshold-store")
    save_tiny_model(store, metrics={"val": {"auc": 0.5}, "series_threshold": RECORD})
    return store


@pytest.fixture()
def make_client(databases: Databases, series_store: Path) -> Iterator[Any]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    opened: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        url = databases.new()
        upgrade(url)
        client = TestClient(create_app(make_settings(url, series_store, **settings)))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _post_series(client: TestClient, n: int = 3) -> tuple[str, str, list[float]]:
    study, series = new_uid(), new_uid()
    scores = []
    for seed in range(n):
        response = client.post(
            "/v1/predictions",
            files={"file": ("x.dcm", dicom_bytes(study=study, series=series, seed=seed + 70))},
        )
        assert response.status_code == 201, response.text
        assert response.json()["threshold"] == 0.5  # instances: the model threshold
        scores.append(float(response.json()["scores"]["abnormal"]))
    return study, series, scores


def test_series_and_study_use_the_series_threshold(make_client: Any) -> None:
    client = make_client()  # RADLENS_SERIES_AGGREGATION=max, the run's
    study, series, scores = _post_series(client)
    assert max(scores) > SERIES_THRESHOLD
    (result,) = client.get(f"/v1/series/{series}").json()["results"]
    assert result["score"] == pytest.approx(max(scores))
    assert (result["threshold"], result["threshold_source"]) == (SERIES_THRESHOLD, "series")
    assert result["positive"] is True and result["label"] == "abnormal"
    (study_result,) = client.get(f"/v1/studies/{study}").json()["results"]
    assert study_result["threshold"] == SERIES_THRESHOLD
    assert study_result["threshold_source"] == "series" and study_result["positive"] is True


def test_another_aggregation_keeps_the_model_threshold(make_client: Any) -> None:
    client = make_client(series_aggregation="noisy_or")
    _, series, scores = _post_series(client)
    (result,) = client.get(f"/v1/series/{series}").json()["results"]
    assert result["score"] == pytest.approx(1 - np.prod([1 - s for s in scores]), abs=1e-6)
    assert (result["threshold"], result["threshold_source"]) == (0.5, "model")
    assert result["positive"] == (result["score"] >= 0.5)

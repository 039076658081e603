"""A series whose instances were decided at different thresholds (the threshold or the operating
point changed while the series arrived) is decided at its newest instance's threshold -- not at
whichever row the database returned first -- and says so (``instance_thresholds_differ``), for
binary and multi-label models, in /v1/series and /v1/studies. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.app.conftest import prediction_row

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _binary(score: float, threshold: float, minutes: int) -> Any:
    row = prediction_row(f"sop:{minutes}")
    row.scores = {"normal": 1.0 - score, "abnormal": score}
    row.threshold, row.sop_instance_uid = threshold, f"1.2.{minutes}"
    row.created_at = T0 + timedelta(minutes=minutes)
    return row


class TestBinary:
    # the older instance decided at 0.5, the newer at 0.3; the series' max (0.4) lies between
    ROWS = ((0.4, 0.5, 0), (0.2, 0.3, 5))

    @pytest.mark.parametrize("reverse", [False, True])
    def test_the_newest_instance_decides_whatever_the_row_order(self, reverse: bool) -> None:
        from radlens.app.series import model_result

        rows = [_binary(*r) for r in self.ROWS]
        result = model_result(rows[::-1] if reverse else rows, "max", 3)
        assert (result.threshold, result.positive, result.label) == (0.3, True, "abnormal")
        assert result.instance_thresholds_differ is True

    def test_newest_at_the_higher_threshold(self) -> None:
        from radlens.app.series import model_result

        rows = [_binary(0.4, 0.3, 0), _binary(0.2, 0.5, 5)]
        for ordered in (rows, rows[::-1]):
            result = model_result(ordered, "max", 3)
            assert (result.threshold, result.positive) == (0.5, False)

    def test_one_threshold_does_not_differ(self) -> None:
        from radlens.app.series import model_result

        result = model_result([_binary(0.4, 0.5, 0), _binary(0.2, 0.5, 5)], "max", 3)
        assert result.instance_thresholds_differ is False and result.threshold == 0.5

    def test_the_series_threshold_follows_the_newest_instance(self) -> None:
        """The run's series threshold applies when the newest instance was decided at the model
        threshold, whatever an older instance was decided at."""
        from radlens.app.series import model_result

        cuts = {("tiny", 1): (0.5, 0.35)}
        newest_at_model = [_binary(0.4, 0.45, 0), _binary(0.2, 0.5, 5)]
        result = model_result(newest_at_model[::-1], "max", 3, cuts)
        assert (result.threshold, result.threshold_source, result.positive) == (
            0.35,
            "series",
            True,
        )
        newest_at_site = [_binary(0.4, 0.5, 0), _binary(0.2, 0.45, 5)]
        result = model_result(newest_at_site, "max", 3, cuts)
        assert (result.threshold, result.threshold_source, result.positive) == (
            0.45,
            "model",
            False,
        )


def _findings_rows(thresholds: list[dict[str, float]]) -> tuple[list[Any], dict[Any, Any]]:
    """Multi-label predictions, the i-th made i minutes after T0 and decided at
    ``thresholds[i]``; Nodule scores 0.45 on every instance, Effusion 0.9."""
    from radlens.app.tables import PredictionFinding

    rows, findings = [], {}
    for i, cut in enumerate(thresholds):
        scores = {"Effusion": 0.9, "Nodule": 0.45}
        row = prediction_row(f"sop:{i}")
        row.model_name, row.scores, row.threshold, row.label = "findings", scores, None, "x"
        row.sop_instance_uid, row.created_at = f"1.3.{i}", T0 + timedelta(minutes=i)
        findings[row.id] = [
            PredictionFinding(
                id=uuid.uuid4(),
                prediction_id=row.id,
                finding=name,
                score=value,
                threshold=cut[name],
                positive=value >= cut[name],
            )
            for name, value in scores.items()
        ]
        rows.append(row)
    return rows, findings


class TestFindings:
    def test_each_finding_at_its_newest_instances_threshold(self) -> None:
        from radlens.app.series import model_result

        rows, findings = _findings_rows(
            [{"Effusion": 0.5, "Nodule": 0.6}, {"Effusion": 0.5, "Nodule": 0.4}]
        )
        for ordered in (rows, rows[::-1]):
            result = model_result(ordered, "max", 3, findings=findings)
            found = {f.name: f for f in result.findings or []}
            assert (found["Nodule"].threshold, found["Nodule"].positive) == (0.4, True)
            assert result.label == "Effusion|Nodule"
            assert result.instance_thresholds_differ is True

    def test_same_thresholds_do_not_differ(self) -> None:
        from radlens.app.series import model_result

        cut = {"Effusion": 0.5, "Nodule": 0.6}
        rows, findings = _findings_rows([cut, cut])
        result = model_result(rows, "max", 3, findings=findings)
        assert result.instance_thresholds_differ is False and result.label == "Effusion"


# --- through the service ------------------------------------------------------------------------


def test_series_and_study_say_the_thresholds_differed(databases: Any, model_store: Any) -> None:
    """Three instances stored at the model threshold (0.5), then the newest one's threshold set
    to another (as a restart with another operating point would have stored it): the series
    and the study are decided at the newest one's and say the thresholds differed."""
    from sqlalchemy import create_engine, text

    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from tests.app.conftest import TestClient, dicom_bytes, make_settings, new_uid

    url = databases.new()
    upgrade(url)
    with TestClient(create_app(make_settings(url, model_store))) as client:
        study, series = new_uid(), new_uid()
        scores = []
        for seed in range(3):
            response = client.post(
                "/v1/predictions",
                files={"file": ("x.dcm", dicom_bytes(study=study, series=series, seed=seed + 40))},
            )
            assert response.status_code == 201, response.text
            scores.append(float(response.json()["scores"]["abnormal"]))
        (same,) = client.get(f"/v1/series/{series}").json()["results"]
        assert same["instance_thresholds_differ"] is False and same["threshold"] == 0.5
        # a threshold every score reaches, on the newest instance only
        cut = min(scores) / 2
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                newest = connection.execute(
                    text(
                        "SELECT id FROM predictions WHERE series_instance_uid = :s "
                        "ORDER BY created_at DESC LIMIT 1"
                    ),
                    {"s": series},
                ).scalar_one()
                connection.execute(
                    text("UPDATE predictions SET threshold = :t WHERE id = :id"),
                    {"t": cut, "id": newest},
                )
        finally:
            engine.dispose()
        (result,) = client.get(f"/v1/series/{series}").json()["results"]
        assert result["instance_thresholds_differ"] is True
        assert result["threshold"] == pytest.approx(cut) and result["positive"] is True
        (study_result,) = client.get(f"/v1/studies/{study}").json()["results"]
        assert study_result["instance_thresholds_differ"] is True
        assert study_result["threshold"] == pytest.approx(cut)
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        described = schemas["SeriesResult"]["properties"]["instance_thresholds_differ"]
        assert "newest instance" in described["description"]

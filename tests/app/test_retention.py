"""Retention: `radlens purge` deletes predictions older than RADLENS_RETENTION_DAYS, records
each deletion in the audit trail, and deletes nothing with --dry-run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from radlens.app.tables import Prediction
from tests.app.conftest import Service, png_bytes


def make_old(service: Service, days: int) -> str:
    """POST a prediction, then move its creation time ``days`` into the past."""
    prediction_id = service.post(png_bytes(), "old.png").json()["id"]
    with service.app.state.resources.sessionmaker() as session:
        session.execute(
            update(Prediction)
            .where(Prediction.id == uuid.UUID(prediction_id))
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )
        session.commit()
    return prediction_id


def purge_audit_targets(service: Service) -> set[str]:
    return {
        r["target"]
        for r in service.rows()
        if r["table"] == "audit_events" and r["action"] == "prediction.purge"
    }


class TestPurgeFunction:
    def test_deletes_only_expired_and_audits_each(self, service: Service) -> None:
        from radlens.app import audit

        old = make_old(service, days=400)
        recent = make_old(service, days=10)
        with service.app.state.resources.sessionmaker() as session:
            would = audit.purge(session, retention_days=365, dry_run=True)
            session.commit()
        assert uuid.UUID(old) in would and uuid.UUID(recent) not in would
        assert service.client.get(f"/v1/predictions/{old}").status_code == 200  # dry run

        with service.app.state.resources.sessionmaker() as session:
            deleted = audit.purge(session, retention_days=365)
            session.commit()
        assert uuid.UUID(old) in deleted
        assert service.client.get(f"/v1/predictions/{old}").status_code == 404
        assert service.client.get(f"/v1/predictions/{recent}").status_code == 200
        assert old in purge_audit_targets(service)
        assert recent not in purge_audit_targets(service)

    def test_rolled_back_purge_leaves_no_audit_rows(self, service: Service) -> None:
        from radlens.app import audit

        old = make_old(service, days=800)
        with service.app.state.resources.sessionmaker() as session:
            audit.purge(session, retention_days=700)
            session.rollback()
        assert service.client.get(f"/v1/predictions/{old}").status_code == 200
        assert old not in purge_audit_targets(service)

    def test_explanations_go_with_their_prediction(self, service: Service) -> None:
        from radlens.app import audit

        response = service.client.post(
            "/v1/predictions",
            params={"explain": "true"},
            files={"file": ("x.png", png_bytes(), "application/octet-stream")},
        )
        assert response.status_code == 201, response.text
        prediction_id = response.json()["id"]

        def explanations() -> list[object]:
            return [
                r
                for r in service.rows()
                if r["table"] == "explanations"
                and uuid.UUID(str(r["prediction_id"])) == uuid.UUID(prediction_id)
            ]

        assert len(explanations()) == 1
        with service.app.state.resources.sessionmaker() as session:
            session.execute(
                update(Prediction)
                .where(Prediction.id == uuid.UUID(prediction_id))
                .values(created_at=datetime.now(UTC) - timedelta(days=5000))
            )
            session.commit()
        with service.app.state.resources.sessionmaker() as session:
            assert uuid.UUID(prediction_id) in audit.purge(session, retention_days=4999)
            session.commit()
        assert explanations() == []

    def test_retention_below_one_day_is_refused(self, service: Service) -> None:
        from radlens.app import audit

        with (
            service.app.state.resources.sessionmaker() as session,
            pytest.raises(ValueError, match="Received: 0"),
        ):
            audit.purge(session, retention_days=0)


class TestPurgeCommand:
    def test_dry_run_then_purge(self, service: Service, capsys: pytest.CaptureFixture[str]) -> None:
        from radlens.cli.main import main

        old = make_old(service, days=3000)
        argv = ["purge", "--database-url", service.database_url, "--retention-days", "2900"]
        assert main([*argv, "--dry-run"]) == 0
        assert capsys.readouterr().out.startswith("would delete 1 prediction(s)")
        assert service.client.get(f"/v1/predictions/{old}").status_code == 200
        assert main(argv) == 0
        assert capsys.readouterr().out.startswith("deleted 1 prediction(s) older than 2900")
        assert service.client.get(f"/v1/predictions/{old}").status_code == 404

    def test_retention_from_the_environment(
        self, service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from radlens.cli.main import main

        monkeypatch.setenv("RADLENS_DATABASE_URL", service.database_url)
        monkeypatch.setenv("RADLENS_RETENTION_DAYS", "36000")
        assert main(["purge", "--dry-run"]) == 0
        assert "older than 36000 day(s)" in capsys.readouterr().out

    def test_zero_retention_refuses(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from radlens.cli.main import main

        monkeypatch.setenv("RADLENS_RETENTION_DAYS", "0")
        url = f"sqlite:///{tmp_path / 'r.db'}"
        assert main(["purge", "--database-url", url]) == 2
        assert "RADLENS_RETENTION_DAYS is 0" in capsys.readouterr().err
        monkeypatch.setenv("RADLENS_RETENTION_DAYS", "-3")
        assert main(["purge", "--database-url", url]) == 2
        assert "RADLENS_RETENTION_DAYS" in capsys.readouterr().err


def test_purge_forgets_the_series_records_it_emptied(service: Service) -> None:
    """A purged series leaves no prediction_series row (its UIDs) behind; a series that still
    has a stored instance keeps its row."""
    from sqlalchemy import select

    from radlens.app import audit
    from radlens.app.tables import PredictionSeries
    from tests.app.conftest import dicom_bytes, new_uid

    gone, kept = new_uid(), new_uid()
    study = new_uid()
    old_ids = [
        service.post(dicom_bytes(series=gone, study=study, seed=s)).json()["id"] for s in (1, 2)
    ]
    old_ids.append(service.post(dicom_bytes(series=kept, study=study, seed=3)).json()["id"])
    service.post(dicom_bytes(series=kept, study=study, seed=4))  # recent: stays
    with service.app.state.resources.sessionmaker() as session:
        session.execute(
            update(Prediction)
            .where(Prediction.id.in_([uuid.UUID(i) for i in old_ids]))
            .values(created_at=datetime.now(UTC) - timedelta(days=400))
        )
        session.commit()
        audit.purge(session, retention_days=365)
        session.commit()
        left = set(session.scalars(select(PredictionSeries.series_instance_uid)))
    assert gone not in left and kept in left
    assert service.client.get(f"/v1/series/{gone}").status_code == 404
    assert service.client.get(f"/v1/series/{kept}").json()["results"][0]["instance_count"] == 1

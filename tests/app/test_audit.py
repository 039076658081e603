"""The audit trail: one row per prediction action with who, what, when and the outcome, in
the action's own transaction; append-only in the database; no UIDs in it; `radlens audit`."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from radlens.app.keys import key_id_of
from tests.app.conftest import (
    Service,
    assert_problem,
    create_api_key,
    dicom_bytes,
    new_uid,
    png_bytes,
)


def audit_rows(service: Service, **where: Any) -> list[dict[str, Any]]:
    # in id order: SELECT without ORDER BY gives PostgreSQL's heap order, which reuses space
    rows = sorted(
        (r for r in service.rows() if r["table"] == "audit_events"), key=lambda r: r["id"]
    )
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def key_id(service: Service) -> str:
    assert service.api_key is not None
    found = key_id_of(service.api_key)
    assert found is not None
    return found


class TestRecordedActions:
    def test_create_and_repost(self, service: Service) -> None:
        data = png_bytes()
        created = service.post(data, "a.png")
        assert created.status_code == 201
        prediction_id = created.json()["id"]
        (row,) = audit_rows(service, action="prediction.create", target=prediction_id)
        assert (row["actor"], row["status"], row["query"]) == (key_id(service), 201, None)
        again = service.post(data, "a.png")
        assert again.status_code == 200
        statuses = [r["status"] for r in audit_rows(service, target=prediction_id)]
        assert statuses == [201, 200]

    def test_read_and_missing(self, service: Service) -> None:
        prediction_id = service.post(png_bytes(), "b.png").json()["id"]
        assert service.client.get(f"/v1/predictions/{prediction_id}").status_code == 200
        (row,) = audit_rows(service, action="prediction.read", target=prediction_id)
        assert row["status"] == 200 and row["actor"] == key_id(service)
        missing = str(uuid.uuid4())
        assert_problem(service.client.get(f"/v1/predictions/{missing}"), 404)
        (row,) = audit_rows(service, action="prediction.read", target=missing)
        assert row["status"] == 404

    def test_listing_keeps_the_query_without_uids(self, service: Service) -> None:
        study = new_uid()
        assert service.post(dicom_bytes(study=study), "c.dcm").status_code == 201
        response = service.client.get(
            "/v1/predictions", params={"study_instance_uid": study, "label": "normal", "limit": 3}
        )
        assert response.status_code == 200
        rows = audit_rows(service, action="prediction.list")
        assert any(
            r["query"] == "study_instance_uid=*&label=normal&limit=3" and r["status"] == 200
            for r in rows
        ), rows
        audit_dump = repr(audit_rows(service))
        assert study not in audit_dump
        assert "2.25." not in audit_dump  # no DICOM UID of any kind in the trail

    def test_invalid_request_is_recorded_as_failed(self, service: Service) -> None:
        assert_problem(service.client.get("/v1/predictions", params={"limit": 0}), 422)
        rows = audit_rows(service, action="prediction.list", status=422)
        assert rows and rows[-1]["query"] == "limit=0"

    def test_refused_scope_is_recorded(self, service: Service) -> None:
        key = create_api_key(service.database_url, "read", name="audited reader")
        response = service.client.post(
            "/v1/predictions",
            files={"file": ("a.png", png_bytes())},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 403
        (row,) = audit_rows(service, action="auth.denied", actor=key_id_of(key))
        assert (row["status"], row["target"]) == (403, "POST /v1/predictions")


class TestTransaction:
    def test_failed_write_leaves_no_prediction_and_a_failure_row(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from radlens.app import services
        from radlens.app.errors import DatabaseUnavailableError

        real = services.record_prediction
        written: list[str] = []

        def record_then_fail(session: Any, prediction: Any) -> Any:
            stored, _ = real(session, prediction)  # flushed in the request's transaction
            written.append(str(stored.id))
            raise DatabaseUnavailableError("injected failure after the insert")

        monkeypatch.setattr(services, "record_prediction", record_then_fail)
        before = service.count()
        assert_problem(service.post(png_bytes(), "d.png"), 503)
        (prediction_id,) = written
        assert service.count() == before  # the insert was rolled back ...
        assert audit_rows(service, target=prediction_id) == []  # ... with no success row
        failures = audit_rows(service, action="prediction.create", status=503)
        assert failures and failures[-1]["actor"] == key_id(service)
        assert failures[-1]["target"] is None

    def test_success_row_commits_with_the_prediction(self, service: Service) -> None:
        from sqlalchemy import select

        from radlens.app.security_tables import AuditEvent
        from radlens.app.tables import Prediction

        prediction_id = uuid.UUID(service.post(png_bytes(), "e.png").json()["id"])
        with service.app.state.resources.sessionmaker() as session:
            prediction = session.get(Prediction, prediction_id)
            event = session.scalars(
                select(AuditEvent).where(AuditEvent.target == str(prediction_id))
            ).one()
        assert prediction is not None
        assert event.at >= prediction.created_at  # recorded after the insert, same commit


class TestAppendOnly:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE audit_events SET status = 200",
            "DELETE FROM audit_events",
        ],
    )
    def test_update_and_delete_are_refused(self, service: Service, statement: str) -> None:
        service.post(png_bytes(), "f.png")
        before = len(audit_rows(service))
        engine = service.app.state.resources.engine
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
        assert len(audit_rows(service)) == before

    def test_truncate_is_refused_on_postgresql(self, service: Service) -> None:
        if service.backend != "postgresql":
            pytest.skip("SQLite has no TRUNCATE")
        engine = service.app.state.resources.engine
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_events"))


class TestAuditCommand:
    def test_json_and_filters(self, service: Service, capsys: pytest.CaptureFixture[str]) -> None:
        from radlens.cli.main import main

        prediction_id = service.post(png_bytes(), "g.png").json()["id"]
        argv = ["audit", "--database-url", service.database_url, "--json"]
        assert main([*argv, "--action", "prediction.create", "--since", "1h"]) == 0
        events = json.loads(capsys.readouterr().out)
        assert events and {e["action"] for e in events} == {"prediction.create"}
        assert any(e["target"] == prediction_id and e["status"] == 201 for e in events)
        assert main([*argv, "--since", "2999-01-01T00:00:00"]) == 0
        assert json.loads(capsys.readouterr().out) == []
        assert main(["audit", "--database-url", service.database_url, "--limit", "5"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert 1 <= len(lines) <= 5

    def test_bad_since_is_one_line(
        self, service: Service, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from radlens.cli.main import main

        assert main(["audit", "--database-url", service.database_url, "--since", "soon"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("radlens: error: --since must be") and "'soon'" in err

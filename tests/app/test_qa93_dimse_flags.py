"""QA 93: DIMSE C-STORE under RADLENS_GATE=flag says an instance's intended-use verdict, as the
REST answers (QA 88) and STOW-RS (QA 93) do, on SQLite and PostgreSQL.

C-STORE has no status for "stored, but outside the intended use": its only warnings (PS3.4
B.2.3, pynetdicom's STORAGE_SERVICE_CLASS_STATUS: 0xB000 coercion of data elements, 0xB006
elements discarded, 0xB007 data set does not match the SOP class) say what the SCP did to the
data set. So the answer stays Success (0x0000), and the server log (WARNING: the prediction id,
the attribute and value, never a UID) and a "dimse.store" audit row say it, for a new flagged
instance, a flagged re-send, and a re-send judged otherwise than the stored prediction (before
QA 93: a re-send judged otherwise logged only through the ingest's warning, a new flagged
instance nothing at all, and no audit row said either).
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, make_settings, new_uid
from tests.app.test_qa78_gate_before_dedupe import chest_cr, chest_store  # noqa: F401

pynetdicom = pytest.importorskip("pynetdicom")
from pydicom import dcmread  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # noqa: E402


@pytest.fixture(scope="module")
def flagging_node(databases: Databases, chest_store: Path) -> Iterator[Any]:  # noqa: F811
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    app = create_app(make_settings(url, chest_store, gate="flag", dimse_port=0))
    with TestClient(app):
        yield app


def _store(app: Any, data: bytes) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", app.state.dimse.port, ae_title="RADLENS")
    assert assoc.is_established
    status = int(assoc.send_c_store(dcmread(io.BytesIO(data))).Status)
    assoc.release()
    return status


def _audited(app: Any) -> list[tuple[int, str | None, str]]:
    from sqlalchemy import text

    query = "SELECT status, target, query FROM audit_events WHERE action = 'dimse.store'"
    with app.state.resources.engine.connect() as conn:
        return [(int(r[0]), r[1], str(r[2])) for r in conn.execute(text(query + " ORDER BY id"))]


def _prediction_id(app: Any, sop: str) -> str:
    from sqlalchemy import text

    with app.state.resources.engine.connect() as conn:
        found = conn.execute(
            text("SELECT id FROM predictions WHERE sop_instance_uid = :s"), {"s": sop}
        ).scalar()
    return str(uuid.UUID(str(found)))  # SQLite stores it without hyphens


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "radlens.app.dimse"
    ]


def test_c_store_says_a_flagged_instance_and_a_flagged_resend(
    flagging_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = flagging_node
    sop, clean = new_uid(), new_uid()
    before = len(_audited(app))
    with caplog.at_level(logging.WARNING, logger="radlens.app.dimse"):
        assert _store(app, chest_cr(clean)) == 0x0000  # inside: nothing said
        assert _warnings(caplog) == [] and len(_audited(app)) == before
        assert _store(app, chest_cr(sop, BodyPartExamined="WRIST")) == 0x0000  # stored
        (new,) = _warnings(caplog)
        caplog.clear()
        assert _store(app, chest_cr(sop, BodyPartExamined="WRIST")) == 0x0000  # a re-send
        (resent,) = _warnings(caplog)
        caplog.clear()
        assert _store(app, chest_cr(sop)) == 0x0000  # corrected since
        (corrected,) = _warnings(caplog)
    prediction = _prediction_id(app, sop)
    assert f"prediction {prediction} (new) is outside the model's intended use " in new
    assert "(BodyPartExamined 'WRIST')" in new and "answered Success" in new
    assert f"prediction {prediction} (already stored) is outside" in resent
    assert "stored prediction's" not in resent  # the same verdict as the stored one
    assert f"prediction {prediction} (already stored) is inside the model's intended use" in (
        corrected
    )
    assert "the stored prediction's: BodyPartExamined 'WRIST'" in corrected
    for line in (new, resent, corrected):
        assert sop not in line and "MODALITY" in line
    assert _audited(app)[before:] == [
        (201, sop, f"reason=outside-intended-use prediction={prediction}: "
         "BodyPartExamined 'WRIST'"),
        (200, sop, f"reason=outside-intended-use prediction={prediction}: "
         "BodyPartExamined 'WRIST'"),
        (200, sop, f"reason=inside-intended-use prediction={prediction}: none; "
         "stored=BodyPartExamined 'WRIST'"),
    ]  # fmt: skip


def test_a_queued_flagged_instance_is_said_once_predicted(
    databases: Databases,
    chest_store: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """RADLENS_DIMSE_ACK=queued: Success once queued, as before; the verdict is said when the
    queued instance is predicted (the same log line and audit row)."""
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from tests.app.test_outbox import wait_for

    url = databases.new()
    upgrade(url)
    settings = make_settings(
        url, chest_store, gate="flag", dimse_port=0, dimse_ack="queued",
        dimse_inbox_dir=tmp_path / "inbox",
    )  # fmt: skip
    sop = new_uid()
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        assert _store(app, chest_cr(sop, Modality="CT")) == 0x0000
        (row,) = wait_for(lambda: _audited(app), 120, "the audit row")
        prediction = _prediction_id(app, sop)
    assert row == (
        201,
        sop,
        f"reason=outside-intended-use prediction={prediction}: Modality 'CT'",
    )

"""RADLENS_DIMSE_ACK=queued (app/dimse.py, app/dimse_inbox.py): Success once the instance is
durably queued, the series micro-batched, leftovers finished after a restart, late failures
recorded in the audit trail."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import dicom_bytes, make_settings, new_uid
from tests.app.test_outbox import wait_for

pytest.importorskip("pynetdicom")
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

PSEUDONYM_KEY = "queued-test-pseudonym-key-0123456789"
DEDUPE_KEY = "queued-test-dedupe-key-0123456789"  # required with a pseudonym key


def _settings(url: str, store: Path, inbox: Path, **extra: Any) -> Any:
    return make_settings(
        url, store, dimse_port=0, dimse_ack="queued", dimse_inbox_dir=inbox, **extra
    )


def _pseudonymising(url: str, store: Path, inbox: Path) -> Any:
    """Queued settings of a site that pseudonymises UIDs (the inbox is encrypted under it)."""
    return _settings(url, store, inbox, uid_pseudonym_key=PSEUDONYM_KEY, dedupe_key=DEDUPE_KEY)


def _send(port: int, datasets: list[Any]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLENS")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def _rows(app: Any, sql: str) -> list[Any]:
    from sqlalchemy import text

    with app.state.resources.engine.connect() as conn:
        return list(conn.execute(text(sql)))


def _ds(**kwargs: Any) -> Any:
    return dcmread(io.BytesIO(dicom_bytes(**kwargs)))


def test_a_series_on_one_association_is_queued_then_batched(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    import asyncio

    from radlens.app.main import create_app

    inbox = tmp_path / "inbox"
    settings = _settings(
        migrated_database_url, model_store, inbox, max_batch_size=4, inference_streams=1
    )
    study = new_uid()
    series = [_ds(study=study, seed=i) for i in range(12)]
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        scp = app.state.dimse
        loop = scp._loop
        gate = asyncio.Event()
        ingest = scp._ingest

        async def held(data: bytes, calling: str) -> None:
            await gate.wait()
            await ingest(data, calling)

        # hold the prediction of what is queued: with RADLENS_DIMSE_ACK=committed no C-STORE
        # below could be answered; queued, each is answered once its file is in the inbox
        scp._ingest = held
        assert _send(scp.port, series) == [0x0000] * 12
        assert len(list(inbox.glob("*.dcm"))) == 12
        assert _rows(app, "SELECT id FROM predictions") == []
        loop.call_soon_threadsafe(gate.set)  # all twelve reach the model together
        wait_for(lambda: len(_rows(app, "SELECT id FROM predictions")) == 12, 120, "12 predictions")
        wait_for(lambda: not list(inbox.iterdir()), 30, "an empty inbox")
        sizes = [r[0] for r in _rows(app, "SELECT batch_size FROM predictions")]
        actors = {r[0] for r in _rows(app, "SELECT actor FROM audit_events")}
    assert max(sizes) > 1  # the queued series ran in micro-batches
    assert actors == {"dimse:MODALITY"}


def test_queued_instances_are_finished_after_a_restart(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    """What a process acknowledged and did not commit (here: put in its inbox, as the SCP
    does before answering) is predicted by the next process at start-up."""
    from radlens.app.dimse_inbox import DimseInbox
    from radlens.app.main import create_app

    inbox_dir = tmp_path / "inbox"
    inbox = DimseInbox(inbox_dir, PSEUDONYM_KEY.encode())
    sop = new_uid()
    path = inbox.put(dicom_bytes(sop=sop, study=new_uid()), "MODALITY")
    (inbox_dir / "00000000000000000001-abc-4d4f.dcm.part").write_bytes(b"never acknowledged")
    assert sop.encode() not in path.read_bytes()  # encrypted at rest under the pseudonym key
    settings = _pseudonymising(migrated_database_url, model_store, inbox_dir)
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        wait_for(lambda: _rows(app, "SELECT id FROM predictions"), 120, "the queued prediction")
        wait_for(lambda: not list(inbox_dir.iterdir()), 30, "an empty inbox")
        (actor,) = [r[0] for r in _rows(app, "SELECT actor FROM audit_events")]
    assert actor == "dimse:MODALITY"


def test_a_late_failure_is_an_audit_row_and_leaves_nothing(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    from radlens.app.main import create_app

    sop = new_uid()
    bad = _ds(seed=5, sop=sop)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 3]  # truncated: found after the ack
    settings = _settings(migrated_database_url, model_store, tmp_path / "inbox")
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        assert _send(app.state.dimse.port, [bad]) == [0x0000]  # acknowledged when queued
        rows = wait_for(
            lambda: _rows(
                app,
                "SELECT actor, status, query, target FROM audit_events "
                "WHERE action = 'dimse.store'",
            ),
            60,
            "the failure's audit row",
        )
        wait_for(lambda: not list((tmp_path / "inbox").iterdir()), 30, "an empty inbox")
        assert _rows(app, "SELECT id FROM predictions") == []
        assert client.get("/healthz").status_code == 200
    ((actor, status, query, target),) = rows
    assert (actor, status) == ("dimse:MODALITY", 422)
    assert query.startswith("reason=")
    assert target == sop  # which instance to ask the sender for again (QA round 15)


def test_a_full_inbox_refuses_with_out_of_resources(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    from radlens.app.main import create_app

    settings = _settings(
        migrated_database_url, model_store, tmp_path / "inbox", max_queued_predictions=1
    )
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        scp = app.state.dimse
        scp._queued.add(tmp_path / "inbox" / "held.dcm")  # one instance still being processed
        assert _send(scp.port, [_ds(seed=6)]) == [0xA700]
        scp._queued.clear()
        assert _send(scp.port, [_ds(seed=7)]) == [0x0000]


def test_an_instance_without_pixels_is_refused_before_it_is_queued(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    """It was acknowledged Success, then audited as a 422 (QA round 13): the committed mode
    answers 0xC000 at once, and so does the queued one now."""
    from radlens.app.main import create_app

    empty = _ds(seed=8)
    del empty.PixelData
    settings = _settings(migrated_database_url, model_store, tmp_path / "inbox")
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        assert _send(app.state.dimse.port, [empty]) == [0xC000]
        assert list((tmp_path / "inbox").iterdir()) == []
        assert _send(app.state.dimse.port, [_ds(seed=9)]) == [0x0000]  # still serving


def test_a_database_outage_keeps_acknowledged_instances_until_it_ends(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    """A database that could not be reached for a moment made every instance acknowledged in
    that moment fail: audited (if it could be), logged with a traceback, and deleted (QA
    round 15 lost 20 that way). It is waited out: the file stays until it is predicted."""
    from sqlalchemy.exc import OperationalError

    from radlens.app.main import create_app

    inbox = tmp_path / "inbox"
    settings = _settings(migrated_database_url, model_store, inbox)
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        scp = app.state.dimse
        ingest, outage = scp._ingest, {"left": 2}

        async def database_down_twice(data: bytes, calling: str) -> None:
            if outage["left"]:
                outage["left"] -= 1
                raise OperationalError("INSERT ...", {}, ConnectionRefusedError("refused"))
            await ingest(data, calling)

        scp._ingest = database_down_twice
        assert _send(scp.port, [_ds(seed=11)]) == [0x0000]
        assert list(inbox.glob("*.dcm"))  # kept while the database is down
        wait_for(lambda: _rows(app, "SELECT id FROM predictions"), 60, "the prediction")
        wait_for(lambda: not list(inbox.iterdir()), 30, "an empty inbox")
        failures = _rows(app, "SELECT status FROM audit_events WHERE action = 'dimse.store'")
    assert outage["left"] == 0 and failures == []


def test_an_instance_queued_under_another_key_is_kept_aside_not_deleted(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Restarted with another RADLENS_UID_PSEUDONYM_KEY, every queued instance was deleted,
    each audited as "ValueError" (QA round 15). Now it is renamed out of the queue and kept
    for whoever holds the key, and the log and the audit row say so."""
    from radlens.app.dimse_inbox import DimseInbox
    from radlens.app.main import create_app

    inbox_dir = tmp_path / "inbox"
    path = DimseInbox(inbox_dir, b"the-key-it-was-queued-under-0123456789").put(
        dicom_bytes(seed=12), "MODALITY"
    )
    settings = _pseudonymising(migrated_database_url, model_store, inbox_dir)
    with TestClient(create_app(settings)) as client, caplog.at_level("ERROR"):
        app: Any = client.app
        (query,) = wait_for(
            lambda: [
                r[0]
                for r in _rows(app, "SELECT query FROM audit_events WHERE action = 'dimse.store'")
            ],
            60,
            "the audit row",
        )
        assert _rows(app, "SELECT id FROM predictions") == []
    # taken over at start, it carries the service's owner token (QA 110): same time and id
    (kept,) = inbox_dir.glob("*.dcm.unreadable")
    assert kept.name.startswith(path.name[:33]) and not path.exists()
    assert "another RADLENS_UID_PSEUDONYM_KEY" in query
    assert any(kept.name in r.getMessage() for r in caplog.records)


def test_instances_a_queued_service_left_are_predicted_by_a_committed_one(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    """Restarted with RADLENS_DIMSE_ACK=committed, the instances a queued service had
    acknowledged stayed in its inbox unseen, without a word (QA round 15)."""
    from radlens.app.dimse_inbox import DimseInbox
    from radlens.app.main import create_app

    inbox_dir = tmp_path / "inbox"
    DimseInbox(inbox_dir, None).put(dicom_bytes(seed=13, study=new_uid()), "MODALITY")
    settings = make_settings(
        migrated_database_url, model_store, dimse_port=0, dimse_inbox_dir=inbox_dir
    )
    assert settings.dimse_ack == "committed"
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        wait_for(lambda: _rows(app, "SELECT id FROM predictions"), 120, "the left prediction")
        wait_for(lambda: not list(inbox_dir.glob("*.dcm")), 30, "an empty inbox")
        assert _send(app.state.dimse.port, [_ds(seed=14)]) == [0x0000]  # committed as before
        assert not list(inbox_dir.glob("*.dcm"))


def test_an_instance_outside_the_intended_use_is_refused_before_it_is_queued(
    tmp_path: Path, migrated_database_url: str
) -> None:
    """Acknowledged Success, then audited as a 422 (QA round 15: 141 of 247 on one run): the
    gate reads the header only, so the queued mode refuses as the committed one does."""
    from radlens.app.main import create_app
    from tests.app.conftest import save_tiny_model
    from tests.app.test_gate import CHEST_CR_DX

    store = tmp_path / "store"
    save_tiny_model(store, name="chest", intended_use=CHEST_CR_DX)
    settings = _settings(migrated_database_url, store, tmp_path / "inbox")
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", app.state.dimse.port, ae_title="RADLENS")
        assert assoc.is_established
        status = assoc.send_c_store(_ds(seed=15))  # a CT to a chest CR/DX model
        assoc.release()
        assert list((tmp_path / "inbox").iterdir()) == []
    assert status.Status == 0xC000
    assert status.ErrorComment == "Outside intended use: Modality CT"


def test_committed_mode_answers_a_database_outage_out_of_resources(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> None:
    """It answered 0x0110 "processing failure" with a traceback in the log (QA round 15): a
    sender stops on that; 0xA700 says retry, as the REST routes' 503 does."""
    from sqlalchemy.exc import OperationalError

    from radlens.app.main import create_app

    settings = make_settings(migrated_database_url, model_store, dimse_port=0)
    with TestClient(create_app(settings)) as client:
        scp = client.app.state.dimse  # type: ignore[attr-defined]

        async def database_down(data: bytes, calling: str) -> None:
            raise OperationalError("INSERT ...", {}, ConnectionRefusedError("refused"))

        scp._ingest = database_down
        assert _send(scp.port, [_ds(seed=16)]) == [0xA700]

"""QA 75: the ingest tells the outbox a re-send is one (``Outbox.submit(..., resend=)``):
a stored prediction whose results were not all queued gets only what is missing queued, even
when the outbox's in-process marker (set by ``handled_or_wait`` / ``queued_since``) is not
there (evicted past MAX_RESENDS other re-sends, or never set): it queued every kind to every
destination again, the SRs a second time. And the log line of a result not queued says what a
re-send does now (queues what was not queued), not "when nothing of it was queued"."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import dicom_bytes, new_uid
from tests.app.test_outbox import post_dicom, waiting_outbox_client

# QA 75's ports (27500-27599); nothing listens on them: entries stay pending
A = "A@127.0.0.1:27511"
B = "B@127.0.0.1:27512"


@pytest.fixture()
def client(tmp_path: Path, model_store: Path, migrated_database_url: str) -> Iterator[TestClient]:
    """A service sending SR and SC to A and SR to B, both down (the entries wait)."""
    with waiting_outbox_client(
        migrated_database_url, model_store, tmp_path / "spool", f"{A}/sr+sc,{B}/sr"
    ) as test_client:
        yield test_client


def _queued(outbox: Any) -> list[tuple[str, str]]:
    return sorted((e.kind, e.destination) for e in outbox.entries())


def _first_post_loses_the_sc(
    client: TestClient, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    from radlens.app.dicom_outputs import DicomOutputError

    with monkeypatch.context() as patched:

        def refused(*args: Any, **kwargs: Any) -> bytes:
            raise DicomOutputError("the SC could not be built (a test)")

        patched.setattr("radlens.app.dicom_outputs.build_sc", refused)
        return post_dicom(client, data)


def test_a_resend_without_the_outbox_marker_queues_only_what_is_missing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    data = dicom_bytes(sop=new_uid())
    first = _first_post_loses_the_sc(client, data, monkeypatch)
    assert _queued(outbox) == [("sr", A), ("sr", B)]
    # the outbox's in-process marker is gone (QA 78): the ingest's resend= is all it has
    calls: list[Any] = []
    submit = outbox.submit

    def spy(*args: Any, **kwargs: Any) -> int:
        calls.append(kwargs.get("resend"))
        return int(submit(*args, **kwargs))

    monkeypatch.setattr(outbox, "submit", spy)
    again = client.post("/v1/predictions", files={"file": ("ct.dcm", data, "application/dicom")})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    # the lost SC, and not the SRs a second time (was: SC and both SRs again, 5 entries)
    assert _queued(outbox) == [("sc", A), ("sr", A), ("sr", B)]
    assert calls == [True]


def test_a_new_prediction_is_submitted_as_no_resend(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    calls: list[Any] = []
    submit = outbox.submit

    def spy(*args: Any, **kwargs: Any) -> int:
        calls.append(kwargs.get("resend"))
        return int(submit(*args, **kwargs))

    monkeypatch.setattr(outbox, "submit", spy)
    post_dicom(client, dicom_bytes(sop=new_uid()))
    assert calls == [False]
    assert len(outbox.entries()) == 3


def test_the_log_of_a_result_not_queued_says_a_resend_queues_what_is_missing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="radlens.app.ingest"):
        _first_post_loses_the_sc(client, dicom_bytes(sop=new_uid()), monkeypatch)
    lines = [r.getMessage() for r in caplog.records if "not queued for the DICOM" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "sending the instance again queues what of it was not queued" in lines[0]
    assert "when nothing of it was queued" not in lines[0]

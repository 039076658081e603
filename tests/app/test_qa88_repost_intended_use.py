"""QA 88: the answer to a re-post carries the intended-use verdict on the header it was sent
with (app/ingest.py ``Ingested.intended_use_verdict``), on SQLite and PostgreSQL.

RADLENS_GATE=flag: the same instance (SOP Instance UID, same pixels) posted again with its
Body Part Examined or Modality changed is answered with the stored prediction's label and
scores (one result per instance), but with this upload's ``intended_use_violations`` and, as
the stored prediction's verdict differs, ``stored_intended_use_violations`` (what GET, the web
UI and the SR show). Before QA 88 the answer was the stored prediction as is: no flag at all,
the clinician was told nothing was wrong (QA 78 had added a log line and a count only). The
stored row is not changed (its verdict is the upload's it was predicted from). An identical
re-post, and a new prediction, say ``stored_intended_use_violations: null``.
``POST /v1/predictions/dicom-sr`` answers a re-post with the stored SR (its UID derives from
the prediction) and says a differing verdict in its Radlens-Intended-Use header.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, make_settings, new_uid
from tests.app.test_qa78_gate_before_dedupe import (  # noqa: F401 (chest_store: a fixture)
    chest_cr,
    chest_store,
    flagging,
    post,
    predictions,
)

WRIST = {"attribute": "BodyPartExamined", "value": "WRIST", "accepted": ["CHEST"]}
CT = {"attribute": "Modality", "value": "CT", "accepted": ["CR", "DX"]}


def _result(body: dict[str, Any]) -> tuple[Any, ...]:
    return body["id"], body["label"], body["scores"], body["created_at"]


@pytest.mark.parametrize(
    ("changed", "flag"),
    [({"BodyPartExamined": "WRIST"}, WRIST), ({"Modality": "CT"}, CT)],
    ids=["wrist", "ct"],
)
def test_a_repost_outside_the_intended_use_is_answered_with_its_flag(
    flagging: TestClient,  # noqa: F811
    changed: dict[str, str],
    flag: dict[str, Any],
) -> None:
    sop = new_uid()
    first = post(flagging, chest_cr(sop))
    assert first.status_code == 201, first.text
    assert first.json()["intended_use_violations"] is None
    assert first.json().get("stored_intended_use_violations") is None
    stored = predictions(flagging)
    again = post(flagging, chest_cr(sop, **changed))
    assert again.status_code == 200, again.text
    body = again.json()
    assert _result(body) == _result(first.json())  # the stored prediction's result
    assert body["intended_use_violations"] == [flag]  # this upload's verdict (was None)
    assert body["stored_intended_use_violations"] == []  # the stored one was not flagged
    assert predictions(flagging) == stored  # the stored row is not changed
    shown = flagging.get(f"/v1/predictions/{first.json()['id']}").json()
    assert shown["intended_use_violations"] is None
    assert shown["stored_intended_use_violations"] is None
    same = post(flagging, chest_cr(sop))  # identical to the stored one: nothing to say
    assert same.status_code == 200
    assert same.json()["intended_use_violations"] is None
    assert same.json()["stored_intended_use_violations"] is None


def test_a_corrected_repost_of_a_flagged_prediction_says_the_stored_flag(
    flagging: TestClient,  # noqa: F811
) -> None:
    sop = new_uid()
    first = post(flagging, chest_cr(sop, BodyPartExamined="WRIST"))
    assert first.status_code == 201, first.text
    assert first.json()["intended_use_violations"] == [WRIST]
    assert first.json().get("stored_intended_use_violations") is None
    corrected = post(flagging, chest_cr(sop))
    assert corrected.status_code == 200, corrected.text
    assert _result(corrected.json()) == _result(first.json())
    assert corrected.json()["intended_use_violations"] is None  # this header is in use
    assert corrected.json()["stored_intended_use_violations"] == [WRIST]  # the stored one's
    both = post(flagging, chest_cr(sop, BodyPartExamined="WRIST", Modality="CT"))
    assert both.status_code == 200
    assert sorted(both.json()["intended_use_violations"], key=str) == sorted([CT, WRIST], key=str)
    assert both.json()["stored_intended_use_violations"] == [WRIST]
    again = post(flagging, chest_cr(sop, BodyPartExamined="WRIST", InstanceNumber="7"))
    assert again.json()["intended_use_violations"] == [WRIST]  # the same verdict
    assert again.json()["stored_intended_use_violations"] is None


def test_the_dicom_sr_route_says_a_repost_verdict_in_a_header(
    flagging: TestClient,  # noqa: F811
) -> None:
    """The SR answered to a re-post is the stored prediction's (its SOP Instance UID derives
    from the prediction: it cannot carry another verdict); the header says this upload's."""
    sop = new_uid()
    first = post(flagging, chest_cr(sop))
    assert first.status_code == 201, first.text
    wrist = post(flagging, chest_cr(sop, BodyPartExamined="WRIST"), "/v1/predictions/dicom-sr")
    assert wrist.status_code == 200, wrist.text
    assert wrist.headers.get("Radlens-Intended-Use") == (
        "outside: BodyPartExamined WRIST; stored: none"
    )
    same = post(flagging, chest_cr(sop), "/v1/predictions/dicom-sr")
    assert same.status_code == 200, same.text
    assert "Radlens-Intended-Use" not in same.headers
    uids = {pydicom.dcmread(io.BytesIO(r.content)).SOPInstanceUID for r in (wrist, same)}
    assert len(uids) == 1  # the one stored prediction's SR


def _app(url: str, store: Path, **settings: Any) -> Iterator[TestClient]:
    from radlens.app.main import create_app

    with TestClient(create_app(make_settings(url, store, **settings))) as client:
        yield client


def test_refuse_answers_a_clean_repost_of_a_prediction_flagged_under_flag(
    databases: Databases,
    chest_store: Path,  # noqa: F811
) -> None:
    """A prediction stored flagged (RADLENS_GATE=flag), its instance posted again once the
    service refuses (RADLENS_GATE=refuse): a header outside the intended use is refused as a
    first post is (422); one inside is answered with the stored result, this upload's verdict
    (nothing) and the stored flag."""
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    sop = new_uid()
    for client in _app(url, chest_store, gate="flag"):
        first = post(client, chest_cr(sop, BodyPartExamined="WRIST"))
        assert first.status_code == 201, first.text
    for client in _app(url, chest_store):  # RADLENS_GATE defaults to refuse
        refused = post(client, chest_cr(sop, BodyPartExamined="WRIST"))
        assert refused.status_code == 422, refused.text
        assert refused.json()["type"] == "urn:radlens:problem:outside-intended-use"
        clean = post(client, chest_cr(sop))
        assert clean.status_code == 200, clean.text
        assert _result(clean.json()) == _result(first.json())
        assert clean.json()["intended_use_violations"] is None
        assert clean.json()["stored_intended_use_violations"] == [WRIST]
    for client in _app(url, chest_store, gate="off"):  # not judged: the stored verdict
        unjudged = post(client, chest_cr(sop))
        assert unjudged.status_code == 200, unjudged.text
        assert unjudged.json()["intended_use_violations"] == [WRIST]
        assert unjudged.json()["stored_intended_use_violations"] is None

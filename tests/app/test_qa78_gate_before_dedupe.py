"""QA 78: the intended-use gate decides on the upload received, before a stored result is
looked up (app/ingest.py: the gate runs in ``prepare``, the lookup-or-insert in ``commit``),
on SQLite and PostgreSQL.

A re-post of a stored SOP Instance UID whose header changed (Body Part Examined now WRIST,
Modality now CT):

- RADLENS_GATE=refuse: refused with the gate's problem+json (422 outside-intended-use, naming
  the attribute and value), through ``POST /v1/predictions``, ``/v1/predictions/dicom-sr`` and
  STOW-RS alike; the stored prediction is neither returned nor changed. An identical re-post is
  still answered with the stored prediction (200, same id). These pin the order (they passed
  before QA 78 as well: the gate already ran first).
- RADLENS_GATE=flag: answered with the stored prediction (one result per instance, the one
  GET, the web UI and the SR show), which does not carry this upload's flag; that was silent.
  Now the server log says so (WARNING, naming the attribute and value, never the UID) and
  radlens_gated_inputs_total{reason="outside-intended-use",action="flagged"} counts the upload
  (it failed before QA 78: no log line, no count). An identical re-post adds neither.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import (
    Databases,
    assert_problem,
    dicom_bytes,
    make_settings,
    new_uid,
    save_tiny_model,
)

CHEST_CR_DX = {
    "stated": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]},
    "observed": {"images": 0, "formats": {}},
    "accepts": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]},
    "source": "stated",
}
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def chest_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("qa78-chest-store")
    save_tiny_model(store, name="chest", intended_use=CHEST_CR_DX)
    return store


def _client(databases: Databases, store: Path, **settings: Any) -> Iterator[TestClient]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    with TestClient(create_app(make_settings(url, store, **settings))) as client:
        yield client


@pytest.fixture(scope="module")
def refusing(databases: Databases, chest_store: Path) -> Iterator[TestClient]:
    yield from _client(databases, chest_store)  # RADLENS_GATE defaults to refuse


@pytest.fixture(scope="module")
def flagging(databases: Databases, chest_store: Path) -> Iterator[TestClient]:
    yield from _client(databases, chest_store, gate="flag")


def chest_cr(sop: str, **changed: str) -> bytes:
    """A small chest CR (pydicom-written; the same pixels whatever is ``changed``)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(sop=sop, seed=78)))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    for keyword, value in changed.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def post(client: TestClient, data: bytes, path: str = "/v1/predictions") -> Any:
    return client.post(path, files={"file": ("image.dcm", data, "application/dicom")})


def gated(client: TestClient, action: str) -> float:
    app: Any = client.app
    value = app.state.metrics.registry.get_sample_value(
        "radlens_gated_inputs_total", {"reason": "outside-intended-use", "action": action}
    )
    return float(value or 0.0)


def predictions(client: TestClient) -> list[dict[str, Any]]:
    from sqlalchemy import text

    app: Any = client.app
    query = "SELECT id, label, scores, intended_use_violations, created_at FROM predictions"
    with app.state.resources.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(query + " ORDER BY id")).mappings()]


# --- RADLENS_GATE=refuse ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"BodyPartExamined": "WRIST"}, "BodyPartExamined 'WRIST'"),
        ({"Modality": "CT"}, "Modality 'CT'"),
    ],
    ids=["wrist", "ct"],
)
@pytest.mark.parametrize("path", ["/v1/predictions", "/v1/predictions/dicom-sr"])
def test_a_repost_the_gate_refuses_is_refused_not_answered_from_the_store(
    refusing: TestClient, changed: dict[str, str], named: str, path: str
) -> None:
    sop = new_uid()
    first = post(refusing, chest_cr(sop))
    assert first.status_code == 201, first.text
    stored = predictions(refusing)
    refused = gated(refusing, "refused")
    body = assert_problem(post(refusing, chest_cr(sop, **changed), path), 422)
    assert body["type"] == "urn:radlens:problem:outside-intended-use"
    assert named in body["detail"]
    assert first.json()["id"] not in str(body)  # the stored result is not returned
    assert gated(refusing, "refused") == refused + 1
    assert predictions(refusing) == stored  # nothing stored, nothing changed
    again = post(refusing, chest_cr(sop))  # the identical re-post: the stored prediction
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]


def test_stow_rs_fails_a_changed_repost_and_answers_an_identical_one_as_existing(
    refusing: TestClient,
) -> None:
    from tests.app.test_stowrs import multipart_related

    sop, other = new_uid(), new_uid()
    assert post(refusing, chest_cr(sop)).status_code == 201
    assert post(refusing, chest_cr(other)).status_code == 201
    body, content_type = multipart_related(
        [chest_cr(sop, BodyPartExamined="WRIST"), chest_cr(other)]
    )
    response = refusing.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 202, response.text  # one stored (existing), one failed
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [sop]
    assert failed["00081197"]["Value"] == [0xC000]
    assert failed["00991004"]["Value"] == ["outside-intended-use"]
    assert "BodyPartExamined 'WRIST'" in failed["00991005"]["Value"][0]
    (existing,) = response.json()["00081199"]["Value"]
    assert existing["00081155"]["Value"] == [other]


# --- RADLENS_GATE=flag --------------------------------------------------------------------


def test_a_flagged_repost_answered_from_the_store_is_logged_and_counted(
    flagging: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    sop = new_uid()
    first = post(flagging, chest_cr(sop))
    assert first.status_code == 201, first.text
    assert first.json()["intended_use_violations"] is None
    flagged = gated(flagging, "flagged")
    with caplog.at_level(logging.INFO, logger="radlens.app.ingest"):
        wrist = post(flagging, chest_cr(sop, BodyPartExamined="WRIST"))
    # the stored prediction, with the verdict this upload's tags deserve (QA 88: it was the
    # stored, unflagged one) and the stored one beside it
    assert wrist.status_code == 200, wrist.text
    assert wrist.json()["id"] == first.json()["id"]
    assert wrist.json()["intended_use_violations"] == [
        {"attribute": "BodyPartExamined", "value": "WRIST", "accepted": ["CHEST"]}
    ]
    assert wrist.json()["stored_intended_use_violations"] == []
    lines = [r for r in caplog.records if "outside the model's intended use" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert lines[0].levelno == logging.WARNING
    message = lines[0].getMessage()
    assert first.json()["id"] in message and "BodyPartExamined 'WRIST'" in message
    assert sop not in message  # never the UID
    assert gated(flagging, "flagged") == flagged + 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="radlens.app.ingest"):
        same = post(flagging, chest_cr(sop))  # identical: nothing to say, nothing counted
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert not [r for r in caplog.records if "intended use" in r.getMessage()]
    assert gated(flagging, "flagged") == flagged + 1


def test_a_repost_flagged_as_the_stored_one_was_is_not_counted_again(
    flagging: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    sop = new_uid()
    first = post(flagging, chest_cr(sop, BodyPartExamined="WRIST"))
    assert first.status_code == 201, first.text
    assert first.json()["intended_use_violations"] == [
        {"attribute": "BodyPartExamined", "value": "WRIST", "accepted": ["CHEST"]}
    ]
    flagged = gated(flagging, "flagged")
    with caplog.at_level(logging.WARNING, logger="radlens.app.ingest"):
        again = post(flagging, chest_cr(sop, BodyPartExamined="WRIST", InstanceNumber="2"))
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert not [r for r in caplog.records if "intended use" in r.getMessage()]
    assert gated(flagging, "flagged") == flagged

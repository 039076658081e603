"""QA round 26: the HTTP layer under hostile and broken clients (found against a running
`radlens serve`).

- A client that closes the connection before its upload body is complete was a 500: an ERROR
  with a traceback in the log, a 5xx in ``radlens_http_requests_total`` (the 5xx alert's
  input) and an audit row with status 500. It is now 499 (nginx's "client closed request")
  everywhere it is recorded, logged at INFO (app/errors.py, app/auth.py).
- STOW-RS kept every part of the body and answered each part over
  ``RADLENS_STOW_MAX_INSTANCES`` with its own FailedSOPSequence item: 200,000 empty-ish parts
  in a 2 MiB body took 500 MiB and 17 s. The parts over the limit are now counted, not kept,
  and answered with one item (app/routes/dicomweb.py).
- ``POST /v1/predictions`` parsed and kept every part of a multipart/form-data body: a million
  tiny parts (50 MiB, under the size limit) held the event loop for 18 s (``/healthz`` waited
  as long) and took 500 MiB. More than 1,000 parts is now a 400, as Starlette's form parser
  answers (app/upload.py).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.app.conftest import (
    Service,
    TestClient,
    assert_problem,
    dicom_bytes,
    make_settings,
    png_bytes,
    upload_scope,
)


def _requests_with_status(client: TestClient, route: str, status: str) -> float:
    text = client.get("/metrics").text
    pattern = (
        r'^radlens_http_requests_total\{method="POST",route="' + re.escape(route) + r'",'
        r'status="' + status + r'"\} (\S+)$'
    )
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def _audit_statuses(service: Service) -> list[int]:
    return [row["status"] for row in service.rows() if row["table"] == "audit_events"]


def _abandoned_upload(service: Service) -> list[dict[str, Any]]:
    """POST /v1/predictions whose client goes away after 100 of the 100,000 bytes it
    announced (what uvicorn delivers when the connection closes mid-body); the messages sent."""
    assert service.api_key is not None
    scope = upload_scope("qa26", 100_000, key=service.api_key)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"--qa26\r\n" + b"x" * 92, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await service.app(scope, receive, send)

    assert service.client.portal is not None
    service.client.portal.call(call)
    return sent


def test_an_upload_abandoned_mid_body_is_a_499_not_a_500(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    before_500 = _requests_with_status(service.client, "/v1/predictions", "500")
    before_499 = _requests_with_status(service.client, "/v1/predictions", "499")
    audit_before = len(_audit_statuses(service))
    stored = service.count()

    with caplog.at_level(logging.INFO):
        sent = _abandoned_upload(service)

    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [499]
    assert _requests_with_status(service.client, "/v1/predictions", "500") == before_500
    assert _requests_with_status(service.client, "/v1/predictions", "499") == before_499 + 1
    assert _audit_statuses(service)[audit_before:] == [499]  # the failed upload's one row
    assert service.count() == stored
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "request abandoned: POST /v1/predictions -> 499" in caplog.text
    # and the service goes on serving
    response = service.post(png_bytes(seed=2601), filename="after.png")
    assert response.status_code in (200, 201), response.text


# --- multipart/form-data with many parts --------------------------------------------------


def _form(parts: list[tuple[str, str | None, bytes]], boundary: str = "qa26form") -> bytes:
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def _post_form(service: Service, body: bytes, boundary: str = "qa26form") -> Any:
    return service.client.post(
        "/v1/predictions",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


def test_a_form_of_more_than_1000_parts_is_refused_before_the_file(service: Service) -> None:
    stored = service.count()
    fields = [(f"f{i}", None, b"x") for i in range(1000)]
    body = _form([*fields, ("file", "image.png", png_bytes(seed=2602))])
    problem = assert_problem(_post_form(service, body), 400, code="bad-request")
    assert "more than 1000 parts" in problem["detail"]
    assert service.count() == stored


def test_a_form_of_1000_parts_with_the_file_last_is_still_predicted(service: Service) -> None:
    fields = [(f"f{i}", None, b"x") for i in range(999)]
    body = _form([*fields, ("file", "image.png", png_bytes(seed=2603))])
    response = _post_form(service, body)
    assert response.status_code == 201, response.text


# --- STOW-RS with many parts --------------------------------------------------------------


@pytest.fixture(scope="module")
def stow_limit_2(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Service]:
    from radlens.app.main import create_app

    url = f"sqlite:///{tmp_path_factory.mktemp('qa26') / 'stow.db'}"
    app = create_app(make_settings(url, model_store, stow_max_instances=2))
    with TestClient(app) as client:
        yield Service(client=client, app=app, database_url=url, backend="sqlite")


RELATED = 'multipart/related; type="application/dicom"'


def _related(parts: list[bytes], boundary: str) -> bytes:
    chunks = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    ]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def test_stow_parts_over_the_limit_are_one_failure_not_one_each(stow_limit_2: Service) -> None:
    boundary = f"qa26-{uuid.uuid4().hex}"
    body = _related([dicom_bytes(), dicom_bytes()], boundary)[: -len(f"--{boundary}--\r\n")]
    body += f"--{boundary}\r\n\r\nx\r\n".encode() * 20_000 + f"--{boundary}--\r\n".encode()
    response = stow_limit_2.client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert response.status_code == 202, response.text[:500]
    assert len(response.content) < 10_000  # was one item per extra part: 6 MB
    ds = Dataset.from_json(response.json())
    assert len(ds.ReferencedSOPSequence) == 2
    assert len(ds.FailedSOPSequence) == 1
    failure = ds.FailedSOPSequence[0]
    assert failure.FailureReason == 0xA700
    assert failure[0x00991004].value == "too-many-instances"
    reason = failure[0x00991005].value
    assert reason.startswith("parts 2-20001: more than 2 instances"), reason
    assert "RADLENS_STOW_MAX_INSTANCES" in reason
    assert stow_limit_2.count() == 2


def test_stow_empty_parts_do_not_count_towards_the_limit(stow_limit_2: Service) -> None:
    boundary = f"qa26-{uuid.uuid4().hex}"
    empty = f"--{boundary}\r\n\r\n\r\n".encode()  # no headers, no data: no part
    body = empty * 3 + _related([dicom_bytes(), dicom_bytes()], boundary)
    response = stow_limit_2.client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert response.status_code == 200, response.text[:500]
    assert len(Dataset.from_json(response.json()).ReferencedSOPSequence) == 2

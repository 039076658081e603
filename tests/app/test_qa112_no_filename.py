"""QA 112: no refusal repeats an upload's filename. An empty /ui upload was refused with
"the file 'NAME' is empty"; a PACS export's filenames can hold the patient's name, and the
refusal page is an HTML page a browser may keep in its history. No refusal (page or
problem+json) repeats it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.app.conftest import Service, TestClient
from tests.app.test_ui import login

PATIENT_FILE = "DOE^JANET_PID4711_19500102.dcm"
NAME_PARTS = ("DOE", "JANET", "PID4711", "19500102")


@pytest.fixture()
def ui(service: Service) -> Iterator[TestClient]:
    service.client.cookies.clear()
    yield service.client
    service.client.cookies.clear()


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_an_empty_upload_is_refused_without_its_filename(ui: TestClient, service: Service) -> None:
    token = login(ui, service.api_key or "")
    before = service.count()
    empty = ui.post(
        "/ui/upload",
        files={"file": (PATIENT_FILE, b"", "application/dicom")},
        data={"csrf_token": token},
    )
    assert empty.status_code == 422 and "is empty" in empty.text
    for part in NAME_PARTS:
        assert part not in empty.text
    unnamed = ui.post(
        "/ui/upload",
        files={"file": ("", b"", "application/octet-stream")},
        data={"csrf_token": token},
    )
    assert unnamed.status_code == 422, unnamed.text
    text = _text(unnamed.text)
    assert "no file chosen" in text or "has no file" in text, text
    assert service.count() == before


@pytest.mark.parametrize(
    ("content", "media"),
    [
        (b"hello, not an image", "text/plain"),
        (b"DICM" + b"\0" * 200, "application/dicom"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "image/png"),
        (b"", "application/dicom"),
    ],
)
def test_no_refusal_repeats_the_upload_filename(
    ui: TestClient, service: Service, content: bytes, media: str
) -> None:
    token = login(ui, service.api_key or "")
    page = ui.post(
        "/ui/upload",
        files={"file": (PATIENT_FILE, content, media)},
        data={"csrf_token": token},
    )
    api = service.client.post("/v1/predictions", files={"file": (PATIENT_FILE, content, media)})
    for response in (page, api):
        assert 400 <= response.status_code < 500, response.text
        for part in NAME_PARTS:
            assert part not in response.text, response.text

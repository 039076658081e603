"""QA round 16: a site that pseudonymises UIDs (RADLENS_UID_PSEUDONYM_KEY) uploaded real MR
instances through /ui/upload with "explain" on; each prediction's page offered the "DICOM
Structured Report (SR)" and "Secondary Capture (SC)" downloads, and both links answered 409
uids-pseudonymised, as the API does by design (docs/security.md: an SR or SC must name the
source study). The page now offers neither link for such a prediction and says why and what
to do instead; a site that stores UIDs as received keeps both links."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Databases, TestClient, create_api_key, dicom_bytes, make_settings

PSEUDONYMS = {
    "uid_pseudonym_key": "qa16-pseudonym-key-0123456789",
    "dedupe_key": "qa16-dedupe-key-9876543210xx",
}


def _client(databases: Databases, store: Path, **settings: Any) -> Iterator[TestClient]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    key = create_api_key(url, scopes="predict,read")
    app = create_app(make_settings(url, store, auth="enabled", **settings))
    with TestClient(app) as client:
        token = _csrf(client.get("/ui/login"))
        login = client.post(
            "/ui/login", data={"csrf_token": token, "api_key": key}, follow_redirects=False
        )
        assert login.status_code == 303, login.text
        yield client


def _csrf(page: Any) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def _upload_and_open(client: TestClient, seed: int) -> tuple[str, str]:
    """Upload a DICOM instance with explain on; returns its page's path and HTML."""
    token = _csrf(client.get("/ui/upload"))
    response = client.post(
        "/ui/upload",
        data={"csrf_token": token, "explain": "on"},
        files={"file": ("image.dcm", dicom_bytes(seed=seed), "application/dicom")},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = response.headers["location"]
    html = client.get(page)
    assert html.status_code == 200, html.text
    return page, html.text


@pytest.fixture()
def pseudonymising(databases: Databases, model_store: Path) -> Iterator[TestClient]:
    yield from _client(databases, model_store, **PSEUDONYMS)


@pytest.fixture()
def as_received(databases: Databases, model_store: Path) -> Iterator[TestClient]:
    yield from _client(databases, model_store)


def test_no_download_link_that_can_only_fail(
    pseudonymising: TestClient, as_received: TestClient
) -> None:
    page, html = _upload_and_open(pseudonymising, seed=1601)
    # what the links would answer: the API's refusal, by design
    assert pseudonymising.get(f"{page}/sr.dcm").status_code == 409
    assert pseudonymising.get(f"{page}/sc.dcm").status_code == 409
    assert f'href="{page}/sr.dcm"' not in html
    assert f'href="{page}/sc.dcm"' not in html
    assert "stores only as pseudonyms" in html
    assert "POST /v1/predictions/dicom-sr" in html
    assert f'href="{page}/overlay.png"' in html  # the overlay needs no UID

    # UIDs stored as received: both downloads are offered and work
    page, html = _upload_and_open(as_received, seed=1602)
    assert f'href="{page}/sr.dcm"' in html and f'href="{page}/sc.dcm"' in html
    assert "stores only as pseudonyms" not in html
    assert as_received.get(f"{page}/sr.dcm").status_code == 200
    assert as_received.get(f"{page}/sc.dcm").status_code == 200

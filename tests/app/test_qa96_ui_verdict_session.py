"""QA 96: the web UI's upload-verdict cookie (QA 93: an upload answered with a stored
prediction but judged otherwise by the intended-use gate says its own verdict on the page it
lands on) belongs to the login that uploaded, not to the browser. It was path-scoped to the
prediction's page for 10 minutes and nothing else: another user logging in on that browser
(after a logout, or over the session) and opening the page saw the previous uploader's
verdict. Now, with RADLENS_AUTH enabled, the cookie carries an HMAC keyed with the uploading
session's token over the page and the verdict: any other session (or page) ignores it, and
the page deletes it. SQLite and PostgreSQL, RADLENS_GATE=flag."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, create_api_key, make_settings, new_uid
from tests.app.test_qa78_gate_before_dedupe import chest_cr, chest_store  # noqa: F401 (fixture)
from tests.app.test_qa93_repost_flags import COOKIE, _upload
from tests.app.test_ui import csrf_of, login, set_cookie_headers

VERDICT = 'id="upload-verdict"'


class Users:
    def __init__(self, client: TestClient, alice: str, bob: str) -> None:
        self.client, self.alice, self.bob = client, alice, bob


@pytest.fixture(scope="module")
def users(databases: Databases, chest_store: Path) -> Iterator[Users]:  # noqa: F811
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    alice = create_api_key(url, name="qa96-alice")
    bob = create_api_key(url, name="qa96-bob")
    app = create_app(make_settings(url, chest_store, gate="flag", auth="enabled"))
    with TestClient(app) as client:
        yield Users(client, alice, bob)


def _flagged_repost(users: Users) -> str:
    """Alice uploads a chest CR, then the same instance as a WRIST: the page says her upload
    is outside the intended use (the stored prediction is not). Returns the page."""
    client = users.client
    client.cookies.clear()
    login(client, users.alice)
    sop = new_uid()
    location, _ = _upload(client, chest_cr(sop))
    again, page = _upload(client, chest_cr(sop, BodyPartExamined="WRIST"))
    assert again == location
    assert VERDICT in page and "(BodyPartExamined WRIST)" in page
    return location


def _page(client: TestClient, location: str) -> tuple[Any, str]:
    response = client.get(location)
    assert response.status_code == 200, response.text
    return response, re.sub(r"\s+", " ", response.text)


def _verdict_cookie(client: TestClient, location: str) -> str | None:
    for cookie in client.cookies.jar:
        if cookie.name == COOKIE and cookie.path == location:
            return cookie.value
    return None


def test_the_uploading_session_sees_its_verdict_again(users: Users) -> None:
    location = _flagged_repost(users)
    _, text = _page(users.client, location)  # a reload, the same session
    assert VERDICT in text and "(BodyPartExamined WRIST)" in text
    users.client.cookies.clear()


def test_another_user_after_a_logout_does_not_see_it(users: Users) -> None:
    client = users.client
    location = _flagged_repost(users)
    (kept,) = [c for c in client.cookies.jar if c.name == COOKIE]
    logout = client.post(
        "/ui/logout", data={"csrf_token": csrf_of(client.get("/ui/upload"))}, follow_redirects=False
    )
    assert logout.status_code == 303
    assert _verdict_cookie(client, location) is None  # deleted by the logout (QA 101)
    client.cookies.jar.set_cookie(kept)  # a browser that kept it anyway
    login(client, users.bob)
    response, text = _page(client, location)
    assert VERDICT not in text and "WRIST" not in text  # the stored prediction only
    assert "outside intended use" not in text
    deleted = set_cookie_headers(response).get(COOKIE, "")
    assert f"Path={location}" in deleted and "Max-Age=0" in deleted, deleted  # and gone
    assert _verdict_cookie(client, location) is None
    client.cookies.clear()


def test_another_login_over_the_session_does_not_see_it(users: Users) -> None:
    """No logout: Bob logs in on the browser Alice left logged in (the login replaces her
    session); and Alice logging in again is a new session too."""
    client = users.client
    location = _flagged_repost(users)
    login(client, users.bob)
    _, text = _page(client, location)
    assert VERDICT not in text
    location = _flagged_repost(users)
    login(client, users.alice)
    _, text = _page(client, location)
    assert VERDICT not in text
    client.cookies.clear()


def test_a_cookie_moved_to_another_page_or_forged_is_ignored(users: Users) -> None:
    from radlens.app.ui.routes import encode_upload_verdict

    client = users.client
    location = _flagged_repost(users)
    value = _verdict_cookie(client, location)
    assert value and "." in value  # the verdict and its tag
    other, _ = _upload(client, chest_cr(new_uid()))  # another prediction's page
    client.cookies.set(COOKIE, value, path=other)
    _, text = _page(client, other)
    assert VERDICT not in text  # bound to its own page
    forged = encode_upload_verdict([{"attribute": "Modality", "value": "CT"}])  # untagged
    client.cookies.set(COOKIE, forged, path=other)
    _, text = _page(client, other)
    assert VERDICT not in text and "(Modality CT)" not in text
    payload = value.partition(".")[0]
    for tampered in (payload, f"{forged}.{value.partition('.')[2]}", f"{payload}.x"):
        client.cookies.set(COOKIE, tampered, path=location)
        _, text = _page(client, location)
        assert VERDICT not in text, tampered
    client.cookies.clear()

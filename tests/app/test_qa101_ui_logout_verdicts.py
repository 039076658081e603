"""QA 101: a logout (and a login over a session) leaves nothing of the session in the browser.

The web UI's upload-verdict cookie (QA 93/96: an upload answered with a stored prediction but
judged otherwise by the intended-use gate says its own verdict on that prediction's page) is
scoped to the page's path, which the logout's request does not carry: the logout deleted the
session and CSRF cookies and left each verdict cookie (attribute names and header values of
the uploads, e.g. BodyPartExamined WRIST) in the browser for up to 10 minutes. The pages
holding one are now listed in a cookie scoped to /ui, and the logout's and the login's
responses delete the verdict cookie of each, and that list. SQLite and PostgreSQL,
RADLENS_GATE=flag, RADLENS_AUTH enabled.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.app.conftest import new_uid
from tests.app.test_qa78_gate_before_dedupe import chest_cr, chest_store  # noqa: F401 (fixture)
from tests.app.test_qa93_repost_flags import COOKIE, _upload
from tests.app.test_qa96_ui_verdict_session import (  # noqa: F401 (fixture)
    VERDICT,
    Users,
    _flagged_repost,
    users,
)
from tests.app.test_ui import csrf_of, login

PAGES = "radlens_upload_pages"


def _verdict_paths(client: TestClient) -> set[str]:
    return {str(c.path) for c in client.cookies.jar if c.name == COOKIE}


def _names(client: TestClient) -> set[str]:
    return {c.name for c in client.cookies.jar}


def _logout(client: TestClient) -> Any:
    response = client.post(
        "/ui/logout", data={"csrf_token": csrf_of(client.get("/ui/upload"))}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return response


def _deleted(response: Any) -> list[str]:
    """The paths of the verdict cookies the response deletes."""
    paths = []
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{COOKIE}=") and "Max-Age=0" in header:
            assert "HttpOnly" in header and "SameSite=strict" in header, header
            paths.append(header.split("Path=", 1)[1].split(";", 1)[0])
    return paths


def test_a_logout_deletes_every_verdict_cookie_of_the_session(users: Users) -> None:  # noqa: F811
    client = users.client
    first = _flagged_repost(users)  # clears the cookies and logs Alice in
    second, _ = _upload(client, chest_cr(sop := new_uid()))
    again, page = _upload(client, chest_cr(sop, BodyPartExamined="WRIST"))
    assert again == second and VERDICT in page
    assert _verdict_paths(client) == {first, second}
    response = _logout(client)
    assert sorted(_deleted(response)) == sorted([first, second])
    assert _verdict_paths(client) == set()  # was: both still held (path-scoped, 10 minutes)
    assert not _names(client) & {PAGES, "radlens_session", "radlens_csrf"}
    # and the next user sees none of it
    login(client, users.bob)
    for location in (first, second):
        text = client.get(location).text
        assert VERDICT not in text and "WRIST" not in text
    client.cookies.clear()


def test_a_login_over_the_session_deletes_them_too(users: Users) -> None:  # noqa: F811
    client = users.client
    location = _flagged_repost(users)
    token = csrf_of(client.get("/ui/login"))
    response = client.post(
        "/ui/login", data={"csrf_token": token, "api_key": users.bob}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    assert _deleted(response) == [location]
    assert _verdict_paths(client) == set() and PAGES not in _names(client)
    client.cookies.clear()


def test_an_upload_judged_as_stored_unlists_its_page(users: Users) -> None:  # noqa: F811
    """The same instance posted again as it was first (no verdict of its own to show): its
    page's cookie is deleted and the page unlisted; the list goes when it is empty."""
    client = users.client
    client.cookies.clear()
    login(client, users.alice)
    sop = new_uid()
    location, _ = _upload(client, chest_cr(sop))
    assert PAGES not in _names(client)  # a new prediction: no verdict of the upload's own
    _upload(client, chest_cr(sop, BodyPartExamined="WRIST"))
    listed = [c.value for c in client.cookies.jar if c.name == PAGES]
    assert listed == [location.rsplit("/", 1)[1]]
    _upload(client, chest_cr(sop))  # judged as the stored prediction was
    assert _verdict_paths(client) == set() and PAGES not in _names(client)
    client.cookies.clear()


def test_a_list_the_browser_altered_deletes_only_prediction_pages(users: Users) -> None:  # noqa: F811
    client = users.client
    _flagged_repost(users)
    wanted = "00000000-0000-4000-8000-000000000001"
    client.cookies.set(PAGES, f"../x.{wanted}.{wanted.upper()}.not-an-id", path="/ui")
    response = _logout(client)
    assert _deleted(response) == [f"/ui/predictions/{wanted}"]
    client.cookies.clear()

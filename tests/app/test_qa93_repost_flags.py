"""QA 93: the intended-use verdict of an upload reaches the web UI's page and STOW-RS's answer,
as QA 88 made it reach the JSON answer (app/ingest.py ``Ingested.intended_use_verdict``), on
SQLite and PostgreSQL, RADLENS_GATE=flag.

- Web UI: an upload answered with a stored prediction whose verdict differs (its instance
  posted again with Body Part Examined now WRIST, or corrected to CHEST) lands on the stored
  prediction's page, which now says this upload's verdict as well as the stored one's (before:
  the stored prediction only, "valid" for a WRIST upload). The verdict travels in a cookie
  scoped to that page, never in the URL; an upload judged as the stored one was deletes it.
- STOW-RS: each predicted instance's item carries (0099,1007) this upload's intended-use
  violations, new prediction or re-post, and (0099,1008) the stored prediction's when they
  differ (before: nothing but "created"/"existing").
"""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.app.conftest import new_uid
from tests.app.test_qa78_gate_before_dedupe import (  # noqa: F401 (fixtures)
    chest_cr,
    chest_store,
    flagging,
    post,
    predictions,
)
from tests.app.test_stowrs import multipart_related
from tests.app.test_ui import csrf_of

COOKIE = "radlens_upload_verdict"


def _upload(client: TestClient, data: bytes) -> tuple[str, str]:
    """Upload through the web UI's form; returns the page it redirects to and that page's
    text (whitespace runs made one space)."""
    token = csrf_of(client.get("/ui/upload"))
    response = client.post(
        "/ui/upload",
        files={"file": ("image.dcm", data, "application/dicom")},
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert re.fullmatch(r"/ui/predictions/[0-9a-f-]{36}", location), location  # nothing else
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{COOKIE}="):  # set or deleted: for that page only, not for JS
            assert f"Path={location};" in header or header.endswith(f"Path={location}")
            assert "HttpOnly" in header and "SameSite=strict" in header, header
    page = client.get(location)
    assert page.status_code == 200, page.text
    return location, re.sub(r"\s+", " ", page.text)


def _h1(text: str) -> str:
    match = re.search(r"<h1>(.*?)</h1>", text)
    assert match, text
    return match.group(1)


def test_the_ui_page_shows_a_flagged_reposts_verdict(flagging: TestClient) -> None:  # noqa: F811
    flagging.cookies.clear()
    sop = new_uid()
    first, page = _upload(flagging, chest_cr(sop))
    assert "outside intended use" not in _h1(page)
    stored = predictions(flagging)
    again, page = _upload(flagging, chest_cr(sop, BodyPartExamined="WRIST"))
    assert again == first  # the stored prediction's page
    assert predictions(flagging) == stored  # not changed
    assert "not a valid result" in _h1(page) and "outside intended use" in _h1(page)
    assert "The image is outside what the model was made for (BodyPartExamined WRIST)" in page
    assert 'id="upload-verdict"' in page
    assert "the stored prediction was not flagged" in page
    assert "WRIST" not in again  # the verdict is not in the URL
    # the same instance as stored: the earlier upload's verdict is not this one's
    _, page = _upload(flagging, chest_cr(sop))
    assert "outside intended use" not in _h1(page)
    assert 'id="upload-verdict"' not in page
    flagging.cookies.clear()


def test_the_ui_page_of_a_corrected_repost_says_the_stored_flag(
    flagging: TestClient,  # noqa: F811
) -> None:
    flagging.cookies.clear()
    sop = new_uid()
    location, page = _upload(flagging, chest_cr(sop, BodyPartExamined="WRIST"))  # new
    assert "outside intended use" in _h1(page)  # the stored row's flag, as before
    assert 'id="upload-verdict"' not in page
    _, page = _upload(flagging, chest_cr(sop))
    assert "outside intended use" not in _h1(page)  # this header is within the intended use
    assert "The header you uploaded it with is within what the model was made for" in page
    assert "the stored prediction was flagged for its own upload's header" in page
    assert "(BodyPartExamined WRIST)" in page
    flagging.cookies.clear()
    # another browser (no cookie): the stored prediction as it is
    text = re.sub(r"\s+", " ", flagging.get(location).text)
    assert "outside intended use" in _h1(text)
    assert 'id="upload-verdict"' not in text


def test_a_forged_or_broken_verdict_cookie_is_ignored(flagging: TestClient) -> None:  # noqa: F811
    from radlens.app.ui.routes import decode_upload_verdict, encode_upload_verdict

    assert decode_upload_verdict(encode_upload_verdict([])) == []
    records = [{"attribute": "BodyPartExamined", "value": "WR\x00IST\u00e9", "accepted": []}]
    assert decode_upload_verdict(encode_upload_verdict(records)) == [
        {"attribute": "BodyPartExamined", "value": "WRIST"}
    ]
    for broken in ("", "%%%", "e30", "W1sxLDJdXQ", "x" * 5000):  # {}, [[1,2]]
        assert decode_upload_verdict(broken) is None
    location, _ = _upload(flagging, chest_cr(new_uid()))
    ct = encode_upload_verdict([{"attribute": "Modality", "value": "CT"}])
    flagging.cookies.set(COOKIE, ct, path=location)
    shown = re.sub(r"\s+", " ", flagging.get(location).text)
    assert 'id="upload-verdict"' in shown and "(Modality CT)" in shown  # the cookie is read
    flagging.cookies.clear()
    flagging.cookies.set(COOKIE, "not base64 json!", path=location)
    text = flagging.get(location)
    assert text.status_code == 200
    assert 'id="upload-verdict"' not in text.text
    flagging.cookies.clear()


# --- STOW-RS --------------------------------------------------------------------------------


def _stow(client: TestClient, *parts: bytes) -> list[dict[str, Any]]:
    body, content_type = multipart_related(list(parts))
    response = client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    return list(response.json()["00081199"]["Value"])


def test_stow_rs_items_carry_the_intended_use_verdict(flagging: TestClient) -> None:  # noqa: F811
    sop, other, wrist = new_uid(), new_uid(), new_uid()
    assert post(flagging, chest_cr(sop)).status_code == 201
    assert post(flagging, chest_cr(other, BodyPartExamined="WRIST")).status_code == 201
    items = _stow(
        flagging,
        chest_cr(sop, BodyPartExamined="WRIST", Modality="CT"),  # a re-post, now flagged
        chest_cr(other),  # a re-post of a flagged prediction, corrected
        chest_cr(wrist, BodyPartExamined="WRIST"),  # new, flagged
        chest_cr(sop),  # a re-post judged as the stored one was
    )
    by_uid = {i["00081155"]["Value"][0]: i for i in items}
    assert len(by_uid) == 3
    flagged = by_uid[wrist]
    assert flagged["00991003"]["Value"] == ["created"]
    assert flagged["00991007"] == {"vr": "LO", "Value": ["BodyPartExamined WRIST"]}
    assert "00991008" not in flagged  # new: nothing stored to differ from
    reposts = [i for i in items if i["00081155"]["Value"] == [sop]]
    changed, same = reposts
    assert changed["00991003"]["Value"] == ["existing"]
    assert sorted(changed["00991007"]["Value"]) == ["BodyPartExamined WRIST", "Modality CT"]
    assert changed["00991008"] == {"vr": "LO"}  # present, empty: the stored one was not flagged
    assert "00991007" not in same and "00991008" not in same
    corrected = by_uid[other]
    assert corrected["00991003"]["Value"] == ["existing"]
    assert "00991007" not in corrected  # this header is within the intended use
    assert corrected["00991008"] == {"vr": "LO", "Value": ["BodyPartExamined WRIST"]}
    for item in items:  # the private creator is declared for the block the elements are in
        assert item["00990010"]["Value"] == ["RADLENS 1"]

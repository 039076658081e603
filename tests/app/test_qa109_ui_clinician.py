"""QA 109: the /ui pages as a clinician reads them (plain HTTP and HTML; the printed page and
the phone width are in test_qa109_ui_print_browser.py). A real app (tiny chest CR/DX model,
API keys on, SQLite), uploads through the form.

- The Grad-CAM overlay's text alternative said how to read the map but not the result: a
  screen reader heard neither the label nor, for an upload outside the intended use, that it
  is not a valid result. It now starts with both (the series page's thumbnails too), and the
  page title says the label instead of a bare UUID.
- A refused upload was an error page whose one way on was "Back to the predictions", and an
  intended-use refusal told a clinician to "see GET /v1/models". The upload form comes back
  with the refusal (role="alert", tied to the file field), what to do, and a link to the
  model page listing what the model accepts; the status stays the refusal's.
- A session that ended while the upload form was open sent the browser to the login form
  saying "Log in with an API key to see the results", then to the list: nothing said the file
  was not uploaded, and the form was gone. The login now says so and leads back to the form
  (only to that page: an address posted in the form is never followed).
- The series page decided a series all of whose instances were outside the intended use
  ("negative: normal") with only the instances' rows marked; its result now says it is not
  valid, as the series SR does.
- The model page printed its creation time raw (``2026-12-08T00:19:18.107786+00:00``, or a
  training host's offset) beside pages whose times say "(UTC)".
- The list's date filters did not say their days are UTC days.
- The header says which page is open (aria-current), and a page carrying the
  not-for-clinical-use notice links the print stylesheet that repeats it on every sheet.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.app.conftest import create_api_key, dicom_bytes, make_settings, new_uid
from tests.app.test_qa78_gate_before_dedupe import chest_cr, chest_store  # noqa: F401 (fixture)
from tests.app.test_ui import csrf_of, login


def _app(tmp: Path, store: Path, gate: str) -> Iterator[tuple[TestClient, str]]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp / 'ui.db'}"
    upgrade(url)
    key = create_api_key(url, "predict,read", name="qa109")
    app = create_app(make_settings(url, store, auth="enabled", gate=gate))
    with TestClient(app) as client:
        yield client, key


@pytest.fixture(scope="module")
def flagging(
    tmp_path_factory: pytest.TempPathFactory,
    chest_store: Path,  # noqa: F811
) -> Iterator[tuple[TestClient, str]]:
    yield from _app(tmp_path_factory.mktemp("qa109-flag"), chest_store, "flag")


@pytest.fixture(scope="module")
def refusing(
    tmp_path_factory: pytest.TempPathFactory,
    chest_store: Path,  # noqa: F811
) -> Iterator[tuple[TestClient, str]]:
    yield from _app(tmp_path_factory.mktemp("qa109-refuse"), chest_store, "refuse")


@pytest.fixture()
def ui(flagging: tuple[TestClient, str]) -> Iterator[TestClient]:
    client, key = flagging
    client.cookies.clear()
    login(client, key)
    yield client
    client.cookies.clear()


def _upload(client: TestClient, data: bytes, *, explain: bool = True) -> Any:
    form = {"csrf_token": csrf_of(client.get("/ui/upload"))}
    if explain:
        form["explain"] = "on"
    return client.post(
        "/ui/upload",
        files={"file": ("image.dcm", data, "application/dicom")},
        data=form,
        follow_redirects=False,
    )


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(page))


def _attr(html: str, element_id: str, name: str) -> str:
    tag = re.search(rf'<[^>]*\bid="{element_id}"[^>]*>', html, re.S)
    assert tag, element_id
    value = re.search(rf'\b{name}="([^"]*)"', tag.group(0))
    assert value, tag.group(0)
    return _text(value.group(1))


def _title(html: str) -> str:
    match = re.search(r"<title>(.*?)</title>", html, re.S)
    assert match
    return _text(match.group(1)).strip()


# --- the overlay and the title state the result -------------------------------------------


def test_the_overlay_alt_and_title_state_the_result_and_its_validity(ui: TestClient) -> None:
    # a CT to a chest CR/DX model, RADLENS_GATE=flag: predicted, outside the intended use
    response = _upload(ui, dicom_bytes(rows=32, columns=32, instance=1))
    assert response.status_code == 303, response.text
    page = ui.get(response.headers["location"]).text
    label = re.search(r'<span class="label">([^<]+)</span>', page)
    assert label
    alt = _attr(page, "overlay", "alt")
    assert alt.startswith(f"Result: {label.group(1)} (the score for abnormal, "), alt
    assert "not a valid result (outside intended use)" in alt, alt
    assert "do not read the label as a result for this image" in alt, alt
    title = _title(page)
    assert title.startswith(f"Prediction: {label.group(1)}, not a valid result ("), title

    # inside the intended use: the result, and no validity warning
    response = _upload(ui, chest_cr(new_uid()))
    assert response.status_code == 303, response.text
    page = ui.get(response.headers["location"]).text
    label = re.search(r'<span class="label">([^<]+)</span>', page)
    assert label
    alt = _attr(page, "overlay", "alt")
    assert alt.startswith(f"Result: {label.group(1)} (the score for abnormal, "), alt
    assert "not a valid result" not in alt
    assert _title(page).startswith(f"Prediction: {label.group(1)} (")


def test_a_series_thumbnail_alt_says_its_instances_label_and_validity(ui: TestClient) -> None:
    series = new_uid()
    response = _upload(ui, dicom_bytes(series=series, rows=32, columns=32, instance=3))
    assert response.status_code == 303, response.text
    page = _text(ui.get(f"/ui/series/{series}").text)
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', page)
    assert len(alts) == 1, alts
    assert re.search(r"; its label \w+, not a valid result: outside intended use\)", alts[0])
    # the series' own result is said not to be valid, above its decision (it was "negative:
    # normal" with only the instance's row marked)
    heading = re.search(r'<h2 id="model-1">(.*?)</h2>', page)
    assert heading and '<span class="flag">not a valid result</span>' in heading.group(1)
    assert "as this series' result.</strong> 1 of its 1 instance is out of distribution" in page


# --- a refused upload ----------------------------------------------------------------------


def test_a_refused_upload_gives_the_form_back_with_what_to_do(
    refusing: tuple[TestClient, str],
) -> None:
    client, key = refusing
    client.cookies.clear()
    login(client, key)
    response = _upload(client, dicom_bytes(rows=32, columns=32))  # a CT: outside the use
    assert response.status_code == 422, response.text
    page = _text(response.text)
    assert _title(page).startswith("Error:")
    refusal = re.search(r'<div id="refusal" class="message" role="alert">(.*?)</div>', page)
    assert refusal, page
    said = refusal.group(1)
    assert "Upload refused: The image is outside the model's intended use" in said
    assert "GET /v1/models" not in said  # API speak
    assert "Modality 'CT'" in said  # the gate's detail: what was wrong
    assert '<a href="/ui/model">model page</a>' in said  # where to read what it accepts
    # the form, ready for another file, the refusal read with its field
    assert 'action="/ui/upload"' in page
    assert _attr(page, "file", "aria-describedby") == "refusal"

    # not an image: the same form, "choose another file"
    form = {"csrf_token": csrf_of(client.get("/ui/upload"))}
    response = client.post(
        "/ui/upload", files={"file": ("notes.txt", b"not an image", "text/plain")}, data=form
    )
    assert response.status_code == 415, response.text
    page = _text(response.text)
    assert 'role="alert"' in page and "Choose another file below" in page
    assert 'id="file"' in page
    client.cookies.clear()


# --- the session ends while the upload form is open ----------------------------------------


def _expire_sessions(client: TestClient) -> None:
    from radlens.app.security_tables import UiSession

    with client.app.state.resources.sessionmaker() as session:  # type: ignore[attr-defined]
        session.execute(update(UiSession).values(expires_at=datetime.now(UTC) - timedelta(1)))
        session.commit()


def test_an_upload_after_the_session_ended_says_so_and_leads_back(
    flagging: tuple[TestClient, str],
) -> None:
    client, key = flagging
    client.cookies.clear()
    token = login(client, key)
    _expire_sessions(client)
    response = client.post(
        "/ui/upload",
        files={"file": ("image.dcm", chest_cr(new_uid()), "application/dicom")},
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?reason=upload"
    page = client.get(response.headers["location"])
    text = _text(page.text)
    assert "Your file was not uploaded" in text and "choose the file once more" in text
    # a wrong key first: the way back to the form is kept
    refused = client.post(
        "/ui/login",
        data={"csrf_token": csrf_of(page), "api_key": "rl_wrong", "then": "/ui/upload"},
        follow_redirects=False,
    )
    assert refused.status_code == 401 and 'name="then" value="/ui/upload"' in refused.text
    answer = client.post(
        "/ui/login",
        data={"csrf_token": csrf_of(page), "api_key": key, "then": "/ui/upload"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/upload"
    # the page-expiry of a GET keeps its reason and its landing page
    client.cookies.clear()
    page = client.get("/ui/login?reason=expired")
    assert 'name="then"' not in page.text
    client.cookies.clear()


@pytest.mark.parametrize(
    "then", ["https://example.org/", "//example.org/ui/upload", "/ui/logout", "/ui/upload/x"]
)
def test_the_login_follows_no_other_address(flagging: tuple[TestClient, str], then: str) -> None:
    client, key = flagging
    client.cookies.clear()
    page = client.get("/ui/login?reason=upload")
    answer = client.post(
        "/ui/login",
        data={"csrf_token": csrf_of(page), "api_key": key, "then": then},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/predictions"
    client.cookies.clear()


# --- times, the header, the print stylesheet -----------------------------------------------


def test_the_model_page_gives_its_time_in_utc_like_the_others(ui: TestClient) -> None:
    page = _text(ui.get("/ui/model").text)
    match = re.search(r"<dt>Created \(UTC\)</dt><dd>([^<]*)</dd>", page)
    assert match, page
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", match.group(1)), match.group(1)


def test_utc_text_converts_an_offset_and_keeps_the_unreadable() -> None:
    from radlens.app.ui.routes import utc_text

    assert utc_text("2026-03-29T03:30:00.123456+02:00") == "2026-03-29 01:30:00"
    assert utc_text("2026-12-08T00:19:18+00:00") == "2026-12-08 00:19:18"
    assert utc_text("not a time") == "not a time"


def test_the_header_marks_the_open_page(ui: TestClient) -> None:
    for path, name in (("/ui/predictions", "Predictions"), ("/ui/model", "Model")):
        page = ui.get(path).text
        current = re.findall(r'<a href="([^"]+)" aria-current="page">([^<]+)</a>', page)
        assert current == [(path, name)], (path, current)


def test_a_page_with_the_notice_links_the_print_notice(ui: TestClient) -> None:
    page = ui.get("/ui/model").text
    assert "Not for clinical use" in page
    assert '<link rel="stylesheet" href="/ui/static/print.css" media="print">' in page
    assert ui.get("/ui/static/print.css").status_code == 200
    assert '<link rel="stylesheet" href="/ui/static/print-notice.css" media="print">' in page
    css = ui.get("/ui/static/print-notice.css")
    assert css.status_code == 200
    assert "@bottom-center" in css.text and '"Not for clinical use' in css.text


def test_a_validated_models_page_prints_no_notice(tmp_path: Path) -> None:
    """The sheet-by-sheet notice follows the page's: none under a validated, sealed model."""
    from tests.app.test_qa101_models_validated import _service

    for client, _ in _service(tmp_path, validated=True):
        page = client.get("/ui/model").text
        assert '<p class="notice"' not in page
        assert "print-notice.css" not in page
        assert '<link rel="stylesheet" href="/ui/static/print.css" media="print">' in page


def test_the_date_filters_say_their_days_are_utc(ui: TestClient) -> None:
    """The list's times say "(UTC)" and its date filters select whole UTC days (README): a
    clinician east or west of Greenwich read "From date" as a local day."""
    page = ui.get("/ui/predictions").text
    assert '<label for="f-from">From date (UTC day)</label>' in page
    assert '<label for="f-to">To date (UTC day, included)</label>' in page

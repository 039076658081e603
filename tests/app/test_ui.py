"""The /ui pages through the real app (lifespan, tiny model, SQLite and PostgreSQL): login
with an API key into an HttpOnly SameSite=Strict cookie, CSRF on every form, the list with
its filters, the detail page with the overlay and provenance, the SR/SC downloads, the upload
form through the ingest path, the model page; never a patient identifier on a page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import (
    Service,
    TestClient,
    dicom_bytes,
    make_settings,
    png_bytes,
    prediction_row,
    save_tiny_model,
)

PATIENT = {"PatientName": "Doe^Janet", "PatientID": "PID-UI-4711", "PatientBirthDate": "19500102"}


@pytest.fixture()
def ui(service: Service) -> Iterator[TestClient]:
    """The service's client with no /ui cookies before and after (its bearer header is
    ignored by the pages: they read only the session cookie)."""
    service.client.cookies.clear()
    yield service.client
    service.client.cookies.clear()


def csrf_of(page: Any) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def login(client: TestClient, key: str) -> str:
    """Log in through the form; returns the CSRF token of the new session's pages."""
    token = csrf_of(client.get("/ui/login"))
    response = client.post(
        "/ui/login", data={"csrf_token": token, "api_key": key}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/ui/upload"))


def set_cookie_headers(response: Any) -> dict[str, str]:
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


def _page_ids(ui: TestClient, model: str, /, **params: str) -> set[str]:
    """The prediction ids the /ui list shows for these filters (``model`` unless a filter
    names another)."""
    page = ui.get("/ui/predictions", params={"model": model, **params})
    assert page.status_code == 200, page.text
    return set(re.findall(r"/ui/predictions/([0-9a-f-]{36})", page.text))


def _api_ids(service: Service, model: str, /, **params: str) -> set[str]:
    """The prediction ids GET /v1/predictions lists for these filters (one model's rows)."""
    listed = service.client.get(
        "/v1/predictions", params={"model_name": model, "limit": 100, **params}
    )
    assert listed.status_code == 200, listed.text
    return {item["id"] for item in listed.json()["items"]}


# --- login, session, CSRF -----------------------------------------------------------------


def test_pages_redirect_to_login_without_a_session(ui: TestClient) -> None:
    for path in ("/ui/predictions", "/ui/upload", "/ui/model", f"/ui/predictions/{uuid.uuid4()}"):
        response = ui.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/login?reason=login"


def test_login_sets_an_httponly_strict_session_cookie(ui: TestClient, service: Service) -> None:
    assert service.api_key
    token = csrf_of(ui.get("/ui/login"))
    response = ui.post(
        "/ui/login",
        data={"csrf_token": token, "api_key": service.api_key},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/predictions"
    cookies = set_cookie_headers(response)
    session = cookies["radlens_session"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=28800"):
        assert attribute in session, session
    assert "Secure" not in session  # RADLENS_UI_SECURE_COOKIES off by default
    assert "HttpOnly" in cookies["radlens_csrf"]
    page = ui.get("/ui/predictions")
    assert page.status_code == 200
    assert "Log out" in page.text


def test_secure_cookies_when_configured(tmp_path: Path, model_store: Path) -> None:
    from radlens.app.main import create_app

    app = create_app(
        make_settings(f"sqlite:///{tmp_path / 'x.db'}", model_store, ui_secure_cookies=True)
    )
    response = TestClient(app).get("/ui/login")  # no lifespan needed for the form
    assert "Secure" in set_cookie_headers(response)["radlens_csrf"]


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_login_post_without_the_right_csrf_token_is_refused(
    ui: TestClient, service: Service, token: str | None
) -> None:
    csrf_of(ui.get("/ui/login"))  # the browser holds a CSRF cookie
    data = {"api_key": service.api_key or ""}
    if token is not None:
        data["csrf_token"] = token
    response = ui.post("/ui/login", data=data, follow_redirects=False)
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert "radlens_session" not in set_cookie_headers(response)
    assert ui.get("/ui/predictions", follow_redirects=False).status_code == 303


def test_a_wrong_key_shows_the_login_form_again(ui: TestClient) -> None:
    token = csrf_of(ui.get("/ui/login"))
    response = ui.post(
        "/ui/login",
        data={"csrf_token": token, "api_key": "rl_000000000000_" + "x" * 43},
        follow_redirects=False,
    )
    assert response.status_code == 401
    assert "unknown or revoked" in response.text
    assert "radlens_session" not in set_cookie_headers(response)


def test_an_expired_session_redirects_to_login(ui: TestClient, service: Service) -> None:
    from sqlalchemy import update

    from radlens.app.security_tables import UiSession
    from radlens.app.ui.session import token_digest

    login(ui, service.api_key or "")
    digest = token_digest(ui.cookies.get("radlens_session"))
    with service.app.state.resources.sessionmaker() as session:  # the session's row expired
        session.execute(
            update(UiSession)
            .where(UiSession.token_sha256 == digest)
            .values(expires_at=datetime.now(UTC) - timedelta(hours=1))
        )
        session.commit()
    response = ui.get("/ui/predictions", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?reason=expired"
    assert "expired" in ui.get(response.headers["location"]).text


def test_a_revoked_key_ends_its_sessions(ui: TestClient, service: Service) -> None:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.keys import key_id_of, revoke_key
    from tests.app.conftest import create_api_key

    key = create_api_key(service.database_url, "read", name="ui-revoked")
    login(ui, key)
    assert ui.get("/ui/predictions").status_code == 200
    engine = make_engine(service.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            revoke_key(session, key_id_of(key) or "")
            session.commit()
    finally:
        engine.dispose()
    service.app.state.key_cache.clear()  # else refused within RADLENS_AUTH_CACHE_TTL_S
    response = ui.get("/ui/predictions", follow_redirects=False)
    assert response.status_code == 303
    # the revocation deleted the session (QA 68): no session, so "expired", whose message
    # names the revocation too
    assert response.headers["location"] == "/ui/login?reason=expired"
    assert "or its key was revoked" in ui.get(response.headers["location"]).text


def test_a_read_only_key_cannot_upload(ui: TestClient, service: Service) -> None:
    from tests.app.conftest import create_api_key

    token = login(ui, create_api_key(service.database_url, "read", name="ui-reader"))
    before = service.count()
    response = ui.post(
        "/ui/upload",
        files={"file": ("scan.png", png_bytes(seed=77), "image/png")},
        data={"csrf_token": token},
    )
    assert response.status_code == 403
    assert "lacks the scope" in response.text
    assert service.count() == before


def test_logout_needs_the_csrf_token_and_ends_the_session(ui: TestClient, service: Service) -> None:
    token = login(ui, service.api_key or "")
    assert ui.post("/ui/logout", data={}, follow_redirects=False).status_code == 403
    assert ui.get("/ui/predictions").status_code == 200  # still logged in
    response = ui.post("/ui/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    assert ui.get("/ui/predictions", follow_redirects=False).status_code == 303


# --- the list and its filters -------------------------------------------------------------


def _store_rows(service: Service, rows: list[Any]) -> None:
    with service.app.state.resources.sessionmaker() as session:
        session.add_all(rows)
        session.commit()


def test_list_filters_by_label_model_date_and_flag(ui: TestClient, service: Service) -> None:
    tag = uuid.uuid4().hex[:8]  # this test's rows, by model name
    now = datetime.now(UTC)
    rows = []
    for i, (label, age_days) in enumerate(
        [("abnormal", 0), ("normal", 0), ("abnormal", 3), ("normal", 10)]
    ):
        row = prediction_row(f"sha256:{tag}{i}")
        row.model_name = f"ui-{tag}"
        row.label = label
        row.input_sha256 = f"{tag}{i}".ljust(64, "0")
        row.created_at = now - timedelta(days=age_days)
        rows.append(row)
    _store_rows(service, rows)
    login(ui, service.api_key or "")

    def shown(**params: str) -> set[str]:
        return _page_ids(ui, f"ui-{tag}", **params)

    ids = [str(r.id) for r in rows]
    assert shown() == set(ids)
    assert shown(label="abnormal") == {ids[0], ids[2]}
    assert shown(flagged="yes") == {ids[0], ids[2]}  # not the model's first class ("normal")
    assert shown(flagged="no") == {ids[1], ids[3]}
    today = now.date()
    assert shown(date_from=(today - timedelta(days=4)).isoformat()) == set(ids[:3])
    assert shown(date_to=(today - timedelta(days=5)).isoformat()) == {ids[3]}
    assert shown(model=f"ui-{tag}:1") == set(ids)
    assert shown(model=f"ui-{tag}:2") == set()


def _finding(prediction_id: uuid.UUID, name: str, score: float, positive: bool) -> Any:
    from radlens.app.tables import PredictionFinding

    return PredictionFinding(
        prediction_id=prediction_id, finding=name, score=score, threshold=0.4, positive=positive
    )


def test_list_filters_by_finding_and_its_decision(ui: TestClient, service: Service) -> None:
    tag = uuid.uuid4().hex[:8]
    effusion, nodule = f"effusion-{tag}", f"nodule-{tag}"
    rows = []
    for i in range(4):
        row = prediction_row(f"sha256:f{tag}{i}")
        row.model_name = f"ui-{tag}"
        row.input_sha256 = f"f{tag}{i}".ljust(64, "0")
        rows.append(row)
    _store_rows(service, rows)
    # 0: effusion positive; 1: effusion negative, nodule positive; 2: both negative;
    # 3: single-label (no findings)
    _store_rows(
        service,
        [
            _finding(rows[0].id, effusion, 0.8, True),
            _finding(rows[0].id, nodule, 0.1, False),
            _finding(rows[1].id, effusion, 0.2, False),
            _finding(rows[1].id, nodule, 0.7, True),
            _finding(rows[2].id, effusion, 0.1, False),
            _finding(rows[2].id, nodule, 0.2, False),
        ],
    )
    login(ui, service.api_key or "")

    def shown(**params: str) -> set[str]:
        return _page_ids(ui, f"ui-{tag}", **params)

    ids = [str(r.id) for r in rows]
    assert shown() == set(ids)
    assert shown(finding=effusion) == set(ids[:3])
    assert shown(finding=effusion, positive="yes") == {ids[0]}
    assert shown(finding=effusion, positive="no") == {ids[1], ids[2]}
    assert shown(finding=nodule, positive="yes") == {ids[1]}
    assert shown(positive="yes") == {ids[0], ids[1]}  # any positive finding
    assert shown(positive="no") == {ids[2]}  # multi-label with none positive
    page = ui.get("/ui/predictions", params={"finding": effusion, "positive": "yes"})
    assert 'value="effusion-' in page.text  # the form shows the filter back
    assert '<option value="yes" selected>positive</option>' in page.text


def test_list_filters_by_the_ood_verdict(ui: TestClient, service: Service) -> None:
    tag = uuid.uuid4().hex[:8]
    rows = []
    for i, verdict in enumerate([False, True, None]):
        row = prediction_row(f"sha256:o{tag}{i}")
        row.model_name = f"ui-{tag}"
        row.input_sha256 = f"o{tag}{i}".ljust(64, "0")
        row.in_distribution = verdict
        row.ood_score = None if verdict is None else (3.5 if verdict is False else 0.2)
        rows.append(row)
    _store_rows(service, rows)
    login(ui, service.api_key or "")

    def shown(**params: str) -> set[str]:
        return _page_ids(ui, f"ui-{tag}", **params)

    ids = [str(r.id) for r in rows]
    assert shown() == set(ids)
    assert shown(ood="yes") == {ids[0]}
    assert shown(ood="no") == {ids[1]}  # not scored: only when the filter is not set

    def listed(**params: str) -> set[str]:  # the API's list selects the same way
        return _api_ids(service, f"ui-{tag}", **params)

    assert listed() == set(ids)
    assert listed(in_distribution="false") == {ids[0]}
    assert listed(in_distribution="true") == {ids[1]}  # never scored: matches neither
    bad = service.client.get("/v1/predictions", params={"in_distribution": "maybe"})
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert (
        "out of distribution</span>"
        in ui.get("/ui/predictions", params={"model": f"ui-{tag}", "ood": "yes"}).text
    )


def test_list_filters_are_the_apis_prediction_filters_plus_the_pages_own() -> None:
    """The /ui list holds a PredictionFilters (the API's) instead of declaring the filters
    again: only what the API has no use for is its own (flagged, page, messages)."""
    import dataclasses

    from radlens.app.services import PredictionFilters
    from radlens.app.ui.queries import ListFilters, parse_filters

    assert {f.name for f in dataclasses.fields(ListFilters)} == {
        "query",
        "flagged",
        "page",
        "errors",
    }
    form = {
        "label": "abnormal",
        "model": "chest:3",
        "date_from": "2026-01-02",
        "date_to": "2026-01-03",
        "flagged": "no",
        "finding": "Effusion",
        "positive": "yes",
        "ood": "yes",
    }
    parsed = parse_filters({**form, "page": "2"})
    assert parsed.errors == []
    assert parsed.query == PredictionFilters(
        label="abnormal",
        model_name="chest",
        model_version=3,
        created_from=datetime(2026, 1, 2, tzinfo=UTC),
        created_before=datetime(2026, 1, 4, tzinfo=UTC),  # date_to is a whole day
        finding="Effusion",
        positive=True,
        in_distribution=False,
    )
    assert (parsed.flagged, parsed.page) == (False, 2)
    assert parsed.form_values() == form  # shown back as typed
    assert parse_filters({}).query == PredictionFilters()


def test_every_prediction_filter_has_a_condition() -> None:
    """A field added to PredictionFilters without SQL would select everything, silently, in
    both lists: each one set alone yields a condition."""
    import dataclasses

    from radlens.app.services import PredictionFilters, prediction_conditions

    samples: dict[str, Any] = {
        "study_instance_uid": "1.2.3",
        "label": "normal",
        "model_name": "chest",
        "model_version": 1,
        "created_after": datetime(2026, 1, 1, tzinfo=UTC),
        "created_before": datetime(2026, 1, 1, tzinfo=UTC),
        "finding": "Effusion",
        "positive": True,
        "created_from": datetime(2026, 1, 1, tzinfo=UTC),
        "in_distribution": False,
    }
    assert {f.name for f in dataclasses.fields(PredictionFilters)} == set(samples)
    assert prediction_conditions(PredictionFilters()) == []
    for name, value in samples.items():
        assert prediction_conditions(PredictionFilters(**{name: value})), name


def test_the_ui_list_selects_what_the_api_list_selects(ui: TestClient, service: Service) -> None:
    """The same filters through the page and through GET /v1/predictions: the same rows."""
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    effusion = f"effusion-{tag}"
    rows = []
    for i, (label, age_days, version) in enumerate(
        [("abnormal", 0, 1), ("normal", 0, 2), ("abnormal", 3, 1), ("normal", 10, 1)]
    ):
        row = prediction_row(f"sha256:p{tag}{i}")
        row.model_name = f"ui-{tag}"
        row.model_version = version
        row.label = label
        row.input_sha256 = f"p{tag}{i}".ljust(64, "0")
        row.created_at = now - timedelta(days=age_days)
        rows.append(row)
    _store_rows(service, rows)
    _store_rows(
        service,
        [
            _finding(rows[0].id, effusion, 0.8, True),
            _finding(rows[1].id, effusion, 0.2, False),
        ],
    )
    login(ui, service.api_key or "")
    today = now.date()
    day = (today - timedelta(days=4)).isoformat()
    ids = [str(r.id) for r in rows]
    # (the page's parameters, the API's, the rows both must list)
    cases: list[tuple[dict[str, str], dict[str, str], set[str]]] = [
        ({}, {}, set(ids)),
        ({"label": "abnormal"}, {"label": "abnormal"}, {ids[0], ids[2]}),
        ({"model": f"ui-{tag}:2"}, {"model_version": "2"}, {ids[1]}),
        ({"date_from": day}, {"created_after": f"{day}T00:00:00Z"}, set(ids[:3])),
        ({"date_to": day}, {"created_before": f"{today - timedelta(days=3)}T00:00:00Z"}, {ids[3]}),
        ({"finding": effusion}, {"finding": effusion}, {ids[0], ids[1]}),
        (
            {"finding": effusion, "positive": "no"},
            {"finding": effusion, "positive": "false"},
            {ids[1]},
        ),
        (
            {"positive": "yes", "label": "abnormal"},
            {"positive": "true", "label": "abnormal"},
            {ids[0]},
        ),
    ]
    for ui_params, api_params, expected in cases:
        shown = _page_ids(ui, f"ui-{tag}", **ui_params)
        assert shown == _api_ids(service, f"ui-{tag}", **api_params) == expected, ui_params


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"date_from": "yesterday"}, "expected a date as YYYY-MM-DD"),
        ({"date_to": "9999-12-31"}, "date_to: expected a date before 9999-12-31"),
        ({"date_from": "2026-02-02", "date_to": "2026-01-01"}, "is after date_to"),
        ({"flagged": "maybe"}, "expected yes, no or empty"),
        ({"model": "chest:x"}, "expected NAME or NAME:VERSION"),
        ({"page": "0"}, "expected a number from 1"),
        ({"label": "a\x00b"}, "printable characters"),
        ({"positive": "true"}, "positive: expected yes, no or empty"),
        ({"ood": "maybe"}, "ood: expected yes, no or empty"),
        ({"finding": "x" * 200}, "finding: at most 128 printable characters"),
        ({"finding": "no-such-finding"}, "no model finding is called &#39;no-such-finding&#39;"),
    ],
)
def test_bad_filters_show_a_message_not_a_500(
    ui: TestClient, service: Service, params: dict[str, str], message: str
) -> None:
    login(ui, service.api_key or "")
    page = ui.get("/ui/predictions", params=params)
    assert page.status_code == 422
    assert page.headers["content-type"].startswith("text/html")
    assert message in page.text
    assert 'role="alert"' in page.text


# --- detail, downloads, upload ------------------------------------------------------------


def test_detail_shows_overlay_scores_provenance_and_no_patient_identifiers(
    ui: TestClient, service: Service
) -> None:
    data = dicom_bytes(rows=40, columns=60, patient=PATIENT, seed=11)
    created = service.post(data, params={"explain": "true"})
    assert created.status_code in (200, 201), created.text
    body = created.json()
    login(ui, service.api_key or "")
    page = ui.get(f"/ui/predictions/{body['id']}")
    assert page.status_code == 200
    html = page.text
    for expected in (
        body["input_sha256"],
        f"{body['model']['name']}:{body['model']['version']}",
        f"/ui/predictions/{body['id']}/overlay.png",
        f"/ui/predictions/{body['id']}/sr.dcm",
        f"/ui/predictions/{body['id']}/sc.dcm",
        "Not for clinical use",
        "Decision threshold: 0.5000",
        "Preprocessing version",
    ):
        assert expected in html, expected
    for identifier in PATIENT.values():
        assert identifier not in html
        assert identifier.split("^")[0] not in html
    overlay = ui.get(f"/ui/predictions/{body['id']}/overlay.png")
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    sr = ui.get(f"/ui/predictions/{body['id']}/sr.dcm")
    assert sr.status_code == 200 and sr.content[128:132] == b"DICM"
    sc = ui.get(f"/ui/predictions/{body['id']}/sc.dcm")
    assert sc.status_code == 200 and sc.content[128:132] == b"DICM"
    for blob in (overlay.content, sr.content, sc.content):
        assert b"Doe^Janet" not in blob and b"PID-UI-4711" not in blob


def test_detail_shows_the_ood_verdict_violations_and_each_finding(
    ui: TestClient, service: Service
) -> None:
    tag = uuid.uuid4().hex[:8]
    row = prediction_row(f"sha256:d{tag}")
    row.input_sha256 = f"d{tag}".ljust(64, "0")
    row.scores = {f"effusion-{tag}": 0.8125, f"nodule-{tag}": 0.0625}
    row.label = f"effusion-{tag}"
    row.ood_score = 3.25
    row.in_distribution = False
    row.intended_use_violations = [
        {"attribute": "BodyPartExamined", "value": "KNEE", "accepted": ["CHEST"]}
    ]
    _store_rows(service, [row])
    _store_rows(
        service,
        [
            _finding(row.id, f"effusion-{tag}", 0.8125, True),
            _finding(row.id, f"nodule-{tag}", 0.0625, False),
        ],
    )
    plain = prediction_row(f"sha256:p{tag}")  # single-label, not scored by the gate
    plain.input_sha256 = f"p{tag}".ljust(64, "0")
    _store_rows(service, [plain])
    login(ui, service.api_key or "")
    html = re.sub(r"\s+", " ", ui.get(f"/ui/predictions/{row.id}").text)
    assert "Out of distribution</strong>: OOD score 3.2500" in html
    assert "Outside the model's intended use" in html
    assert "BodyPartExamined: KNEE (the model accepts CHEST)" in html
    assert "Findings (multi-label)" in html
    assert f"<td>effusion-{tag}</td><td>0.8125</td><td>0.4000</td><td>positive</td>" in html
    assert f"<td>nodule-{tag}</td><td>0.0625</td><td>0.4000</td><td>negative</td>" in html
    assert html.index(f"effusion-{tag}</td>") < html.index(f"nodule-{tag}</td>")
    other = re.sub(r"\s+", " ", ui.get(f"/ui/predictions/{plain.id}").text)
    assert "Findings (multi-label)" not in other
    assert "intended use" not in other
    assert "Not scored: the model has no OOD detector" in other


def test_unknown_or_malformed_ids_are_404_pages(ui: TestClient, service: Service) -> None:
    login(ui, service.api_key or "")
    for path in (f"/ui/predictions/{uuid.uuid4()}", "/ui/predictions/not-an-id"):
        page = ui.get(path)
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "No such resource" in page.text


def test_upload_form_goes_through_the_ingest_path(ui: TestClient, service: Service) -> None:
    token = login(ui, service.api_key or "")
    before = service.count()
    files = {"file": ("scan.png", png_bytes(seed=4242), "image/png")}
    refused = ui.post("/ui/upload", files=files, data={}, follow_redirects=False)
    assert refused.status_code == 403
    assert service.count() == before
    response = ui.post(
        "/ui/upload",
        files={"file": ("scan.png", png_bytes(seed=4242), "image/png")},
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert service.count() == before + 1
    detail = ui.get(response.headers["location"])
    assert detail.status_code == 200
    assert "SR and SC need a DICOM source" in detail.text  # PNG: no SR


def test_upload_form_refuses_a_bad_file_with_a_page(ui: TestClient, service: Service) -> None:
    from radlens.app.keys import key_id_of

    token = login(ui, service.api_key or "")
    before = service.count()
    response = ui.post(
        "/ui/upload",
        files={"file": ("notes.txt", b"hello, not an image", "text/plain")},
        data={"csrf_token": token},
    )
    assert response.status_code == 415
    assert response.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in response.text
    empty = ui.post(
        "/ui/upload",
        files={"file": ("e.dcm", b"", "application/dicom")},
        data={"csrf_token": token},
    )
    assert empty.status_code == 422 and "is empty" in empty.text
    assert service.count() == before
    # audited like a failed API upload: the key, the route, the status
    refused = [
        (r["actor"], r["status"])
        for r in service.rows()
        if r["table"] == "audit_events" and r["action"] == "POST /ui/upload"
    ]
    assert (key_id_of(service.api_key or ""), 415) in refused
    assert (key_id_of(service.api_key or ""), 422) in refused


def test_burned_in_annotation_warning(ui: TestClient, service: Service) -> None:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows=20, columns=20, seed=5)))
    ds.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    token = login(ui, service.api_key or "")
    response = ui.post(
        "/ui/upload",
        files={"file": ("burned.dcm", buffer.getvalue(), "application/dicom")},
        data={"csrf_token": token},
    )
    assert response.status_code == 200
    assert "Burned-in annotation" in response.text


# --- the model page ------------------------------------------------------------------------


def test_model_page_shows_manifest_metrics_and_the_notice(ui: TestClient, service: Service) -> None:
    login(ui, service.api_key or "")
    page = ui.get("/ui/model")
    assert page.status_code == 200
    manifest = service.app.state.resources.predictor.manifest
    assert f"Model {manifest.name}:{manifest.version}" in page.text
    assert manifest.model_sha256 in page.text
    assert "Not for clinical use" in page.text
    assert "holds no ROC or reliability plot" in page.text
    assert ui.get("/ui/model/plots/roc.png").status_code == 404


def test_model_page_shows_the_manifest_calibration(
    ui: TestClient, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = service.app.state.resources.predictor.manifest
    calibration = {"method": "temperature scaling", "temperature": 1.2345, "ece_after": 0.02}
    monkeypatch.setattr(manifest, "calibration", calibration, raising=False)
    login(ui, service.api_key or "")
    page = ui.get("/ui/model")
    assert "<caption>calibration</caption>" in page.text
    assert "<td>1.234</td>" in page.text and "temperature scaling" in page.text


def test_model_page_shows_plots_from_the_store(tmp_path: Path) -> None:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from tests.app.conftest import create_api_key

    store = tmp_path / "store"
    point = {
        "threshold": 0.42,
        "sensitivity": 0.9,
        "sensitivity_ci95": [0.8, 0.95],
        "specificity": 0.7,
        "specificity_ci95": [0.6, 0.78],
        "ppv": 0.5,
        "npv": 0.95,
    }
    metrics = {"val": {"auc": 0.5}, "operating_points": {"chosen": point}}
    manifest = save_tiny_model(store, name="plotted", metrics=metrics)
    folder = store / manifest.name / str(manifest.version)
    png = png_bytes(seed=1)
    (folder / "roc_curve.png").write_bytes(png)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    key = create_api_key(url)
    app = create_app(make_settings(url, store, auth="enabled"))
    with TestClient(app) as client:
        login(client, key)
        page = client.get("/ui/model")
        assert "/ui/model/plots/roc.png" in page.text
        assert "/ui/model/plots/reliability.png" not in page.text
        assert client.get("/ui/model/plots/roc.png").content == png
        assert "<td>0.420</td><td>0.900 (0.800–0.950)</td>" in page.text  # operating point


def test_detail_names_the_frames_used_and_the_blank_ones_left_out(
    ui: TestClient, service: Service
) -> None:
    """Found by QA round 2: the page said "3 frame(s)" and nothing of the key frame or of the
    blank frames the aggregate left out."""
    import io

    import numpy as np
    import pydicom

    from tests.app.test_series import multiframe_bytes

    data, arrays = multiframe_bytes(3, seed=12)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = b"".join(
        a.tobytes() for a in (arrays[0], np.full_like(arrays[1], 900), arrays[2])
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    posted = service.post(buffer.getvalue())
    assert posted.status_code == 201, posted.text
    key = posted.json()["frame_result"]["key_frame"]
    login(ui, service.api_key or "")
    page = ui.get(f"/ui/predictions/{posted.json()['id']}")
    assert page.status_code == 200, page.text
    text = re.sub(r"\s+", " ", page.text)
    assert "2 of 3 frames aggregated by max (the others blank or" in text
    assert f"key frame {key} (0-based; the one explained); blank frames left out: 1" in text

"""QA round 38: a series' aggregated result on the /ui pages (GET /ui/series/{series_uid}).

A clinician reading a CT in the browser saw only one prediction per slice; the series result
(``GET /v1/series/{uid}``: per model the aggregate, the threshold and where it came from, the
key instances, multi-label findings) was in the API only. The page shows it, per model, with
the instances in Instance Number order, the key instances' Grad-CAM overlays, the series SR
and a link to each instance's page; the prediction page and the list link to it. Through the
real app (tiny model, API keys on) on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.app.conftest import (
    Databases,
    Service,
    TestClient,
    create_api_key,
    dicom_bytes,
    make_settings,
    new_uid,
    png_bytes,
    save_tiny_model,
)
from tests.app.test_docs_browser import CHROMIUM, CHROMIUM_ARGS, _Server
from tests.app.test_ui import csrf_of, login

PATIENT = {
    "PatientName": "Roe^Richard",
    "PatientID": "PID-QA38-0815",
    "PatientBirthDate": "19611223",
}
LINK = re.compile(r'href="/ui/predictions/([0-9a-f-]{36})"')


@pytest.fixture()
def ui(service: Service) -> Iterator[TestClient]:
    """The service's client with no /ui cookies before and after."""
    service.client.cookies.clear()
    yield service.client
    service.client.cookies.clear()


def flat(page: str) -> str:
    """The page's HTML on one line, its character references read (``&#39;`` is ``'``)."""
    return unescape(re.sub(r"\s+", " ", page))


def instance_table(html: str) -> str:
    """The first model's instance table."""
    match = re.search(r'<table class="list series-instances">.*?</table>', html, re.S)
    assert match, html
    return match.group(0)


def post_series(
    service: Service, numbers: list[int | None], *, explain: bool = True
) -> tuple[str, str, dict[int | None, dict[str, Any]]]:
    """Post one instance per Instance Number (None: without one), in this order; returns the
    study and series UIDs and each posted prediction by its number."""
    study, series = new_uid(), new_uid()
    posted = {}
    for seed, number in enumerate(numbers):
        data = dicom_bytes(
            study=study, series=series, instance=number, patient=PATIENT, seed=3800 + seed
        )
        response = service.post(data, params={"explain": "true"} if explain else None)
        assert response.status_code == 201, response.text
        posted[number] = response.json()
    return study, series, posted


def test_the_page_shows_the_series_aggregate_in_instance_number_order(
    ui: TestClient, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    study, series, posted = post_series(service, [3, None, 1, 2])
    api = service.client.get(f"/v1/series/{series}").json()
    result = api["results"][0]
    key_ids = {i["prediction_id"] for i in result["key_instances"]}
    assert len(key_ids) == api["top_k"] == 3
    login(ui, service.api_key or "")

    with caplog.at_level(logging.DEBUG):
        page = ui.get(f"/ui/series/{series}")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    html = flat(page.text)
    model = f"{result['model']['name']}:{result['model']['version']}"
    for expected in (
        "<h1>Series result: CT series</h1>",
        f'<h2 id="model-1">Model {model}: <span class="label">{result["label"]}</span></h2>',
        f"<strong>{'positive' if result['positive'] else 'negative'}</strong>: {result['label']}",
        f"{result['score']:.4f} for abnormal",
        f"{result['threshold']:.4f}, the model threshold its instances were decided at",
        "max (the highest score), RADLENS_SERIES_AGGREGATION",
        "<dt>Instances</dt><dd>4</dd>",
        "<dt>Instance thresholds</dt><dd>the same for every instance</dd>",
        f"<code>{series}</code>",
        '<th scope="col">Instance number</th>',
        "Not for clinical use",
        f'href="/ui/series/{series}/sr.dcm"',
    ):
        assert expected in html, expected
    assert "Findings (multi-label)" not in html  # a binary model

    table = instance_table(html)
    order = [posted[n]["id"] for n in (1, 2, 3, None)]  # Instance Number; unknown last
    assert LINK.findall(table) == order
    numbers = re.findall(r"<tr(?: class=\"key\")?> <td>([^<]+)</td>", table)
    assert numbers == ["1", "2", "3", "unknown"]
    assert (
        set(re.findall(r'<tr class="key"> .*?href="/ui/predictions/([0-9a-f-]{36})"', table))
        == key_ids
    )
    assert table.count('<strong class="key-mark">key</strong>') == 3
    for number, body in posted.items():  # each instance's score for the class aggregated
        assert f"{body['scores']['abnormal']:.4f}" in table, number

    # every key instance was explained: its overlay is a thumbnail that opens its page
    thumbnails = re.findall(r'<img src="/ui/predictions/([0-9a-f-]{36})/overlay.png"', html)
    assert set(thumbnails) == key_ids and len(thumbnails) == 3
    assert all('alt="Grad-CAM of instance' in html for _ in thumbnails)
    overlay = ui.get(f"/ui/predictions/{thumbnails[0]}/overlay.png")
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")

    # the instances' pages open, and no identifier of the patient is anywhere
    for prediction_id in order:
        assert ui.get(f"/ui/predictions/{prediction_id}").status_code == 200
    for identifier in PATIENT.values():
        assert identifier not in page.text and identifier.split("^")[0] not in page.text
    # nothing logged names the series or study, and the audit row has no target
    for record in caplog.records:
        if record.name.startswith("httpx"):  # the test's own client
            continue
        assert series not in record.getMessage() and study not in record.getMessage()
    audit = [r for r in service.rows() if r["table"] == "audit_events"]
    reads = [r for r in audit if r["action"] == "ui.series.read"]
    assert reads and all(r["target"] is None for r in reads)
    assert not any(series in str(r) for r in audit)


def test_the_series_sr_downloads_from_the_page(ui: TestClient, service: Service) -> None:
    _, series, _ = post_series(service, [2, 1], explain=False)
    keys = [
        i["sop_instance_uid"]
        for i in service.client.get(f"/v1/series/{series}").json()["results"][0]["key_instances"]
    ]
    login(ui, service.api_key or "")
    html = ui.get(f"/ui/series/{series}").text
    assert "No Grad-CAM is stored for the key instances" in html
    response = ui.get(f"/ui/series/{series}/sr.dcm")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["cache-control"] == "no-store"
    sr = pydicom.dcmread(io.BytesIO(response.content))
    api = service.client.get(f"/v1/series/{series}/dicom/sr")
    assert sr.Modality == "SR"
    assert sr.SOPInstanceUID == pydicom.dcmread(io.BytesIO(api.content)).SOPInstanceUID
    evidence = {
        item.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert evidence == set(keys)
    assert b"Roe^Richard" not in response.content and b"PID-QA38-0815" not in response.content


def test_the_prediction_page_and_the_list_link_to_the_series(
    ui: TestClient, service: Service
) -> None:
    _, series, posted = post_series(service, [7], explain=False)
    plain = service.post(png_bytes(seed=3838))
    assert plain.status_code == 201, plain.text
    login(ui, service.api_key or "")
    page = ui.get(f"/ui/predictions/{posted[7]['id']}").text
    assert f'<a href="/ui/series/{series}">Series result</a>' in page
    assert "Series result" not in ui.get(f"/ui/predictions/{plain.json()['id']}").text
    listed = ui.get("/ui/predictions", params={"model": "tiny"}).text
    assert f'href="/ui/series/{series}"' in listed
    followed = ui.get(f"/ui/series/{series}")
    assert followed.status_code == 200 and posted[7]["id"] in followed.text


def test_the_pages_need_a_login(ui: TestClient, service: Service) -> None:
    _, series, _ = post_series(service, [1], explain=False)
    for path in (f"/ui/series/{series}", f"/ui/series/{series}/sr.dcm"):
        response = ui.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/login?reason=login"


def test_unknown_and_malformed_series_are_error_pages(ui: TestClient, service: Service) -> None:
    login(ui, service.api_key or "")
    for path in (f"/ui/series/{new_uid()}", f"/ui/series/{new_uid()}/sr.dcm"):
        page = ui.get(path)
        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html")
        assert "No such resource" in page.text or "not found" in page.text.lower()
    too_long = "1." + "2" * 70
    for uid, shown in (("not-a-uid", True), (too_long, False), ("1.2.%01.3", False)):
        page = ui.get(f"/ui/series/{uid}")
        assert page.status_code == 422, uid
        assert page.headers["content-type"].startswith("text/html")
        assert "Not a DICOM UID" in page.text
        if not shown:
            assert too_long not in page.text


def test_a_multi_frame_instance_shows_its_key_frame(ui: TestClient, service: Service) -> None:
    from tests.app.test_series import multiframe_bytes

    study, series = new_uid(), new_uid()
    single = service.post(dicom_bytes(study=study, series=series, instance=1, seed=3811))
    data, _ = multiframe_bytes(3, series=series, study=study, seed=3812)
    multi = service.post(data)
    assert single.status_code == multi.status_code == 201, multi.text
    key_frame = multi.json()["frame_result"]["key_frame"]
    login(ui, service.api_key or "")
    table = instance_table(flat(ui.get(f"/ui/series/{series}").text))
    assert '<th scope="col">Key frame (0-based)</th>' in table
    cells = re.findall(
        r"<tr(?: class=\"key\")?> <td>([^<]+)</td>(?: <td>[^<]*</td>){2} "
        r"<td>(?:<strong[^>]*>key</strong>)?</td> <td>([^<]+)</td>",
        table,
    )
    assert cells == [("1", "–"), ("unknown", str(key_frame))]


# --- other models: multi-label findings, the series threshold, thresholds that differ -------


@pytest.fixture(scope="module")
def other_models(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TestClient]]:
    """Apps with a multi-label model, with a binary model whose training chose a series
    threshold for max, and with a model validated for clinical use (keys off: the pages open
    without a login)."""
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from radlens.models.registry import ModelRegistry
    from tests.app.test_series_findings import save_model
    from tests.app.test_series_threshold import RECORD

    multi = tmp_path_factory.mktemp("qa38-multi")
    save_model(
        multi, "three", [2.0, -2.0, 0.0], {"Effusion": 0.5, "Infiltration": 0.5, "Nodule": 0.6}
    )
    chosen = tmp_path_factory.mktemp("qa38-series-threshold")
    save_tiny_model(chosen, metrics={"val": {"auc": 0.5}, "series_threshold": RECORD})
    validated = tmp_path_factory.mktemp("qa38-validated")
    save_tiny_model(validated)
    manifest = validated / "tiny" / "1" / "manifest.json"
    manifest.write_text(
        json.dumps({**json.loads(manifest.read_text()), "validated_for_clinical_use": True})
    )
    ModelRegistry(validated).seal("tiny:1")
    clients = {}
    with contextlib.ExitStack() as stack:
        for name, store in (
            ("multi", multi),
            ("series_threshold", chosen),
            ("validated", validated),
        ):
            url = databases.new()
            upgrade(url)
            app = create_app(make_settings(url, store))
            clients[name] = stack.enter_context(TestClient(app))
        yield clients


def _post(client: TestClient, study: str, series: str, number: int, seed: int) -> dict[str, Any]:
    data = dicom_bytes(study=study, series=series, instance=number, seed=seed)
    response = client.post("/v1/predictions", files={"file": ("x.dcm", data, "application/dicom")})
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_multi_label_series_shows_each_finding(other_models: dict[str, TestClient]) -> None:
    client = other_models["multi"]
    study, series = new_uid(), new_uid()
    posted = [_post(client, study, series, n, 3820 + n) for n in (2, 1)]
    api = client.get(f"/v1/series/{series}").json()["results"][0]
    page = client.get(f"/ui/series/{series}")
    assert page.status_code == 200, page.text
    html = flat(page.text)
    assert (
        "<caption>Findings (multi-label): each aggregated over the instances on its own</caption>"
        in html
    )
    assert f"<strong>positive</strong>: {api['label']}" in html
    assert "(the top positive finding)" in html
    for finding in api["findings"]:
        row = (
            f"<td>{finding['name']}</td><td>{finding['score']:.4f}</td>"
            f"<td>{finding['threshold']:.4f}</td><td>{finding['threshold_source']}</td>"
            f"<td>{'positive' if finding['positive'] else 'negative'}</td>"
        )
        assert row in html, row
    assert LINK.findall(instance_table(html)) == [posted[1]["id"], posted[0]["id"]]


def test_the_series_threshold_and_thresholds_that_differ_are_named(
    other_models: dict[str, TestClient],
) -> None:
    from sqlalchemy import update

    from radlens.app.tables import Prediction

    client = other_models["series_threshold"]
    study, series = new_uid(), new_uid()
    first = _post(client, study, series, 1, 3830)
    _post(client, study, series, 2, 3831)
    html = flat(client.get(f"/ui/series/{series}").text)
    assert "0.0100, the series threshold the model's training chose on validation series" in html
    assert "<dt>Instance thresholds</dt><dd>the same for every instance</dd>" in html
    # the older instance decided at another threshold (the setting changed mid-series)
    resources = client.app.state.resources  # type: ignore[attr-defined]
    with resources.sessionmaker() as session:
        session.execute(
            update(Prediction).where(Prediction.id == uuid.UUID(first["id"])).values(threshold=0.4)
        )
        session.commit()
    html = flat(client.get(f"/ui/series/{series}").text)
    assert "<dt>Instance thresholds</dt><dd><strong>differ</strong>: the threshold" in html
    assert "0.0100, the series threshold" in html  # the newest instance's was the model's


def test_the_notice_is_left_out_only_when_every_model_is_the_validated_loaded_one(
    other_models: dict[str, TestClient],
) -> None:
    from radlens.app.schemas import NOT_FOR_CLINICAL_USE
    from tests.app.conftest import prediction_row

    client = other_models["validated"]
    study, series = new_uid(), new_uid()
    _post(client, study, series, 1, 3840)
    page = flat(client.get(f"/ui/series/{series}").text)
    assert "Model tiny:1" in page and NOT_FOR_CLINICAL_USE not in page
    # another model's prediction of the same series: its result is no validated model's
    row = prediction_row(f"sha256:{uuid.uuid4().hex}")
    row.model_name, row.series_instance_uid, row.study_instance_uid = "other", series, study
    row.modality, row.rows, row.columns = "CT", 16, 16
    with client.app.state.resources.sessionmaker() as session:  # type: ignore[attr-defined]
        session.add(row)
        session.commit()
    page = flat(client.get(f"/ui/series/{series}").text)
    assert "Model other:1" in page and "Model tiny:1" in page
    assert f'<p class="notice" role="note"><strong>{NOT_FOR_CLINICAL_USE}</strong></p>' in page


# --- pseudonymised UIDs --------------------------------------------------------------------

PSEUDONYMS = {
    "uid_pseudonym_key": "qa38-pseudonym-key-0123456789",
    "dedupe_key": "qa38-dedupe-key-9876543210xx",
    "series_aggregation": "mean_top_k",
    "series_top_k": 2,
}


@pytest.fixture()
def pseudonymising(databases: Databases, model_store: Path) -> Iterator[TestClient]:
    """An app that stores pseudonyms of the UIDs, logged in (API keys on)."""
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    key = create_api_key(url, scopes="predict,read")
    app = create_app(make_settings(url, model_store, auth="enabled", **PSEUDONYMS))
    with TestClient(app) as client:
        login(client, key)
        yield client


def test_a_pseudonymised_series_is_found_by_its_original_uid(
    pseudonymising: TestClient,
) -> None:
    client = pseudonymising
    study, series = new_uid(), new_uid()
    pages = []
    for seed, number in enumerate((2, 1, 3)):
        token = csrf_of(client.get("/ui/upload"))
        data = dicom_bytes(study=study, series=series, instance=number, seed=3890 + seed)
        response = client.post(
            "/ui/upload",
            data={"csrf_token": token, "explain": "on"},
            files={"file": ("x.dcm", data, "application/dicom")},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        pages.append(response.headers["location"])
    # the prediction page links the series by its pseudonym
    link = re.search(r'<a href="(/ui/series/[^"]+)">Series result</a>', client.get(pages[0]).text)
    assert link, "no series link on the prediction page"
    pseudonym = link.group(1).rsplit("/", 1)[-1]
    assert pseudonym != series

    by_original = client.get(f"/ui/series/{series}")
    assert by_original.status_code == 200, by_original.text
    html = flat(by_original.text)
    assert series not in html and study not in html
    assert f"Series Instance UID (pseudonym)</dt><dd><code>{pseudonym}</code>" in html
    assert "mean_top_k (mean of the k = 2 highest scores)" in html
    assert "<dt>Instances</dt><dd>3</dd>" in html
    numbers = re.findall(r"<tr(?: class=\"key\")?> <td>([^<]+)</td>", instance_table(html))
    assert numbers == ["1", "2", "3"]
    assert len(re.findall(r'<img src="/ui/predictions/[0-9a-f-]{36}/overlay.png"', html)) == 2
    by_pseudonym = client.get(f"/ui/series/{pseudonym}")
    assert by_pseudonym.status_code == 200
    assert flat(by_pseudonym.text) == html
    # no SR that can only fail: the page says why, and the address answers the API's 409
    assert "/sr.dcm" not in html
    assert "stores only as pseudonyms (RADLENS_UID_PSEUDONYM_KEY): it is not offered" in html
    for uid in (series, pseudonym):
        refused = client.get(f"/ui/series/{uid}/sr.dcm")
        assert refused.status_code == 409
        assert refused.headers["content-type"].startswith("text/html")
        assert "pseudonym" in refused.text and series not in refused.text


# --- in a browser --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} absent (Debian: apt-get install chromium)"
)
def test_a_browser_opens_the_series_page_and_follows_an_instance_link(
    tmp_path: Path, model_store: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from tests.app.test_ui_browser import AUDIT_JS, wait_until

    url = f"sqlite:///{tmp_path / 'ui.db'}"
    upgrade(url)
    key = create_api_key(url, "predict,read", name="qa38-browser")
    app = create_app(make_settings(url, model_store, auth="enabled"))
    study, series = new_uid(), new_uid()
    with _Server(app) as base:
        import httpx

        for seed, number in enumerate((2, 1)):
            data = dicom_bytes(study=study, series=series, instance=number, seed=3870 + seed)
            posted = httpx.post(
                f"{base}/v1/predictions?explain=true",
                headers={"Authorization": f"Bearer {key}"},
                files={"file": ("x.dcm", data, "application/dicom")},
                timeout=60,
            )
            assert posted.status_code == 201, posted.text
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"{base}/ui/series/{series}")
                assert page.url.endswith("/ui/login?reason=login")
                page.get_by_label("API key").fill(key)
                page.keyboard.press("Enter")
                page.wait_for_url(f"{base}/ui/predictions")
                page.goto(f"{base}/ui/series/{series}")
                assert (
                    page.get_by_role("heading", level=1).inner_text() == "Series result: CT series"
                )
                assert page.get_by_text("Not for clinical use").first.is_visible()
                wait_until(
                    page,
                    "[...document.querySelectorAll('ul.thumbs img')]"
                    ".every((i) => i.complete && i.naturalWidth > 0)",
                )
                assert page.locator("ul.thumbs img").count() == 2
                assert page.evaluate(AUDIT_JS) == []
                rows = page.locator("table.series-instances tbody tr")
                assert rows.nth(0).locator("td").first.inner_text() == "1"
                rows.nth(0).get_by_role("link").click()
                page.wait_for_url(f"{base}/ui/predictions/*")
                assert "Instance number" in page.content()
                page.get_by_role("link", name="Series result").click()
                page.wait_for_url(f"{base}/ui/series/{series}")
            finally:
                browser.close()

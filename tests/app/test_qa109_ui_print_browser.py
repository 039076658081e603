"""QA 109: a result page printed from a real headless Chromium (print media), and the network
it asks for. A real uvicorn server (tiny chest CR/DX model, RADLENS_GATE=flag, API keys on,
SQLite) and a CT upload with its Grad-CAM: outside the intended use, so "not a valid result".

Browsers print no backgrounds unless told to: the white-on-red "not a valid result" badge came
out as faint grey text on paper, and the dark header as white links on white. Now, printed:
the header, skip link and "Back" link are left out, the badge is dark text in a border, the
notice and warnings keep a border, the overlay's figure is not split across sheets, the first
sheet names the model and time, and every sheet's bottom margin says "Not for clinical use"
(print-notice.css, linked only on pages with the notice). No page asks for anything but the
service itself (an air-gapped hospital's browser would wait on it).
Skipped, with the reason, without chromium or playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import create_api_key, dicom_bytes, make_settings
from tests.app.test_docs_browser import CHROMIUM, CHROMIUM_ARGS, _Server
from tests.app.test_qa78_gate_before_dedupe import chest_store  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} absent (Debian: apt-get install chromium)"
    ),
]

# what prints of the page: each element's display, and the contrast of its text with white
# paper (no background is printed)
PRINTED_JS = """
() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const c = [r, g, b].map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const onPaper = (e) => (1.05) / (lum(rgb(getComputedStyle(e).color)) + 0.05);
  const shown = (sel) => {
    const e = document.querySelector(sel);
    return e ? getComputedStyle(e).display !== "none" && e.getBoundingClientRect().height > 0
             : null;
  };
  const flag = document.querySelector("h1 .flag");
  const figure = document.querySelector("figure");
  const pageRules = [...document.styleSheets].flatMap((s) => {
    try { return [...s.cssRules]; } catch (e) { return []; }
  }).filter((r) => r.constructor.name === "CSSPageRule").map((r) => r.cssText);
  return {
    header: shown("header"), back: shown(".back"), notice: shown(".notice"),
    overlay: shown("#overlay"), printed_model: shown(".print-only"),
    printed_model_text: (document.querySelector(".print-only") || {}).textContent || "",
    flag_text: flag ? flag.textContent : null,
    flag_on_paper: flag ? onPaper(flag) : null,
    flag_border: flag ? getComputedStyle(flag).borderTopStyle : null,
    notice_on_paper: onPaper(document.querySelector(".notice")),
    notice_border: getComputedStyle(document.querySelector(".notice")).borderTopStyle,
    figure_break: figure ? getComputedStyle(figure).breakInside : null,
    page_rules: pageRules,
  };
}
"""


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    chest_store: Path,  # noqa: F811
) -> Iterator[dict[str, str]]:
    import httpx

    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('qa109-print') / 'ui.db'}"
    upgrade(url)
    key = create_api_key(url, "predict,read", name="qa109")
    app = create_app(make_settings(url, chest_store, auth="enabled", gate="flag"))
    with _Server(app) as base:
        response = httpx.post(
            f"{base}/v1/predictions",
            params={"explain": "true"},
            files={"file": ("ct.dcm", dicom_bytes(rows=48, columns=48), "application/dicom")},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        assert response.json()["intended_use_violations"], response.text
        yield {"base": base, "key": key, "id": response.json()["id"]}


@pytest.fixture()
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _logged_in(browser: Any, served: dict[str, str], requested: list[str]) -> Any:
    page = browser.new_context(viewport={"width": 1024, "height": 800}).new_page()
    page.set_default_timeout(30_000)
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{served['base']}/ui/login")
    page.fill("#api_key", served["key"])
    page.press("#api_key", "Enter")
    page.wait_for_url(f"{served['base']}/ui/predictions")
    return page


def test_a_printed_result_keeps_its_verdict_model_notice_and_overlay(
    browser: Any, served: dict[str, str]
) -> None:
    requested: list[str] = []
    page = _logged_in(browser, served, requested)
    page.goto(f"{served['base']}/ui/predictions/{served['id']}")
    page.emulate_media(media="print")
    printed = page.evaluate(PRINTED_JS)
    assert printed["header"] is False and printed["back"] is False, printed
    assert printed["notice"] and printed["overlay"], printed
    # the verdict reads on paper: dark text in a border, not white on an unprinted red
    assert "not a valid result" in printed["flag_text"], printed
    assert printed["flag_on_paper"] >= 4.5, printed
    assert printed["flag_border"] == "solid", printed
    assert printed["notice_on_paper"] >= 4.5 and printed["notice_border"] == "solid", printed
    assert printed["figure_break"] == "avoid", printed
    # the first sheet names the model and the time zone; every sheet carries the notice
    assert printed["printed_model"], printed
    assert "Model chest:1" in printed["printed_model_text"], printed
    assert "UTC" in printed["printed_model_text"], printed
    assert any(
        "bottom-center" in rule and "Not for clinical use" in rule for rule in printed["page_rules"]
    ), printed["page_rules"]
    # on screen the line printed for paper is not shown twice
    page.emulate_media(media="screen")
    assert page.evaluate(PRINTED_JS)["printed_model"] is False
    # and it prints (Chromium lays the @page margin box out; text checked by hand, QA 109)
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF")


def test_no_page_asks_for_anything_but_the_service(browser: Any, served: dict[str, str]) -> None:
    requested: list[str] = []
    page = _logged_in(browser, served, requested)
    for path in (
        f"/ui/predictions/{served['id']}",
        f"/ui/predictions/{served['id']}/overlay.png",
        "/ui/upload",
        "/ui/model",
        "/ui/drift",
    ):
        page.goto(served["base"] + path)
        page.wait_for_load_state("networkidle")
    page.emulate_media(media="print")
    page.goto(f"{served['base']}/ui/predictions/{served['id']}")
    page.wait_for_load_state("networkidle")
    assert requested and all(url.startswith(served["base"] + "/") for url in requested), [
        url for url in requested if not url.startswith(served["base"] + "/")
    ]


def test_the_printed_list_fits_the_sheet_without_its_links(
    browser: Any, served: dict[str, str]
) -> None:
    requested: list[str] = []
    page = _logged_in(browser, served, requested)
    page.goto(f"{served['base']}/ui/predictions")
    page.emulate_media(media="print")
    page.set_viewport_size({"width": 700, "height": 1000})  # about an A4 sheet's text width
    printed = page.evaluate(
        """() => ({
          links: getComputedStyle(document.querySelector("table.list td:last-child")).display,
          right: document.querySelector("table.list").getBoundingClientRect().right,
          width: document.documentElement.clientWidth,
          header: getComputedStyle(document.querySelector("header")).display,
          filters: getComputedStyle(document.querySelector("form.filters")).display,
        })"""
    )
    assert printed["links"] == "none" and printed["header"] == "none", printed
    assert printed["filters"] == "none", printed
    assert printed["right"] <= printed["width"], printed

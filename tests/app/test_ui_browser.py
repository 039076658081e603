"""The /ui pages in a real headless Chromium against a real uvicorn server (tiny model, API
keys on, SQLite): log in, upload a real DICOM from ../shared/data, see the prediction, open
the overlay, filter the list, log out. Each page is screenshotted (test artifacts under the
test's tmp_path, or $RADLENS_TEST_ARTIFACTS when set) and checked for accessibility: labelled
form controls, images with alt text, text contrast of at least WCAG AA, and a keyboard-only
path (Tab to the control, type, Enter). Every request to a host other than the service is
aborted and must not happen. Skipped, with the reason, without chromium, playwright or the
shared data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.app.conftest import create_api_key, make_settings
from tests.app.test_docs_browser import CHROMIUM, CHROMIUM_ARGS, _Server

SHARED_DICOM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
CT = SHARED_DICOM / "ct_image.dcm"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.shared_data,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} absent (Debian: apt-get install chromium)"
    ),
    pytest.mark.skipif(not CT.exists(), reason=f"{CT} absent (../shared/data not here)"),
]

# WCAG 2.1 checks run in the page: unlabelled controls, images without alt text, and text
# whose contrast with its effective background is under 4.5:1 (3:1 for large text).
AUDIT_JS = """
() => {
  const problems = [];
  if (!document.documentElement.lang) problems.push("html has no lang");
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const named = (el.labels && el.labels.length) || el.getAttribute("aria-label");
    if (!named) problems.push("control without a label: " + (el.name || el.id));
  }
  for (const img of document.querySelectorAll("img")) {
    if (!img.getAttribute("alt")) problems.push("image without alt: " + img.src);
  }
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const c = [r, g, b].map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  for (const el of document.querySelectorAll("body *")) {
    const text = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text || el.closest(".visually-hidden, .skip")) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none") continue;
    const fg = lum(rgb(style.color)), bg = lum(background(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < needed) {
      const what = el.tagName + " " + el.textContent.trim().slice(0, 30);
      problems.push(`contrast ${ratio.toFixed(2)} < ${needed}: ${what}`);
    }
  }
  return problems;
}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[dict[str, str]]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('ui-browser') / 'ui.db'}"
    upgrade(url)
    key = create_api_key(url, "predict,read", name="ui-browser")
    app = create_app(make_settings(url, model_store, auth="enabled"))
    with _Server(app) as base:
        yield {"base": base, "key": key}


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RADLENS_TEST_ARTIFACTS", tmp_path)) / "ui-browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check(page: Any, artifacts: Path, name: str) -> None:
    """Screenshot the page and audit it."""
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
    assert (artifacts / f"{name}.png").stat().st_size > 0
    problems = page.evaluate(AUDIT_JS)
    assert problems == [], f"{name}: {problems}"


def wait_until(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Poll ``expression`` in the page until it is true. Not Playwright's wait_for_function:
    when the first check is false it polls through eval, which the pages' Content Security
    Policy (no 'unsafe-eval') refuses, so it failed whenever the page was slow (CI under
    load); page.evaluate goes through the DevTools protocol, which CSP does not restrict."""
    import time

    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s:.0f} s: {expression}")
        time.sleep(0.1)


def _tab_to(page: Any, selector: str, limit: int = 40) -> None:
    """Press Tab until ``selector`` has the focus (keyboard navigation reaches it)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"document.activeElement.matches({selector!r})"):
            return
    raise AssertionError(f"{selector} is not reachable with Tab")


def test_login_upload_detail_filter_logout(served: dict[str, str], artifacts: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    service = urlsplit(served["base"]).netloc
    outside: list[str] = []

    def gate(route: Any) -> None:
        parts = urlsplit(route.request.url)
        if parts.scheme in ("data", "blob") or parts.netloc == service:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    base = served["base"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.route("**/*", gate)
            page = context.new_page()
            page.set_default_timeout(30_000)

            page.goto(f"{base}/ui/predictions")  # no session: the login form
            assert page.url.endswith("/ui/login?reason=login")
            _check(page, artifacts, "01-login")
            _tab_to(page, "#api_key")  # keyboard only
            page.keyboard.type(served["key"])
            page.keyboard.press("Enter")
            page.wait_for_url(f"{base}/ui/predictions")
            _check(page, artifacts, "02-empty-list")

            page.get_by_role("link", name="Upload", exact=True).click()
            page.get_by_label("DICOM, PNG or JPEG file").set_input_files(str(CT))
            assert page.get_by_label("Grad-CAM (store the overlay; slower)").is_checked()
            _check(page, artifacts, "03-upload")
            page.get_by_role("button", name="Predict").click()
            page.wait_for_url(f"{base}/ui/predictions/*")
            overlay = page.locator("img#overlay")
            overlay.wait_for()
            wait_until(page, "document.querySelector('img#overlay').naturalWidth > 0")
            assert "Input sha256" in page.content()
            assert page.get_by_text("Not for clinical use").first.is_visible()
            _check(page, artifacts, "04-detail")
            label = page.locator("h1 .label").inner_text()

            page.goto(f"{base}/ui/predictions/{page.url.rsplit('/', 1)[-1]}/overlay.png")
            page.go_back()

            page.get_by_role("link", name="Predictions", exact=True).click()
            assert page.locator("table.list tbody tr").count() == 1
            page.get_by_label("Label", exact=True).fill("no-such-label")
            page.get_by_role("button", name="Filter").click()
            page.wait_for_url("**label=no-such-label**")
            assert page.locator("table.list tbody tr").count() == 0
            page.get_by_label("Label", exact=True).fill(label)
            page.get_by_role("button", name="Filter").click()
            page.wait_for_url(f"**label={label}**")
            assert page.locator("table.list tbody tr").count() == 1
            page.get_by_label("From date").fill("2026-12-31")
            page.get_by_label("To date").fill("2026-01-01")
            page.get_by_role("button", name="Filter").click()
            assert page.get_by_role("alert").inner_text().count("is after date_to") == 1
            _check(page, artifacts, "05-bad-filter")

            page.get_by_role("link", name="Model", exact=True).click()
            _check(page, artifacts, "06-model")
            page.get_by_role("link", name="Drift", exact=True).click()
            assert "Status: no-reference." in page.content()  # the test model has none
            _check(page, artifacts, "07-drift")

            page.get_by_role("button", name="Log out").click()
            page.wait_for_url(f"{base}/ui/login")
            page.goto(f"{base}/ui/predictions")
            assert page.url.endswith("/ui/login?reason=login")
        finally:
            browser.close()
    assert outside == [], f"the pages tried to reach other hosts: {outside}"


def test_the_accessibility_audit_finds_what_it_looks_for() -> None:
    """The audit above is not vacuous: a page with an unlabelled field, an image without alt
    text and light-gray text on white is reported on each count."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_content(
                '<html><body><input name="q"><img src="data:,">'
                '<p style="color:#bbb">faint</p><p>fine</p></body></html>'
            )
            problems = page.evaluate(AUDIT_JS)
        finally:
            browser.close()
    assert any(p.startswith("html has no lang") for p in problems)
    assert any("control without a label: q" in p for p in problems)
    assert any(p.startswith("image without alt") for p in problems)
    assert [p for p in problems if p.startswith("contrast")] == [
        next(p for p in problems if "faint" in p)
    ]

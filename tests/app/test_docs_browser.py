"""Swagger UI and ReDoc in a real headless Chromium that can reach nothing but the service.

Every request the browser makes to a host other than the service's loopback address is
aborted and recorded; the test asserts none was attempted, that /docs renders the operations,
and that "Try it out" on the upload, with an API key entered through "Authorize", stores a
prediction (201). The service is a real uvicorn server with the tiny test model and API keys
on. Needs Debian's chromium (`apt-get install chromium`; .ci/run installs it) and the
`playwright` package; skipped, with the reason, without them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.app.conftest import create_api_key, make_settings, png_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} absent (Debian: apt-get install chromium)"
    ),
]


class _Server:
    """uvicorn on a free loopback port, serving ``app`` with its lifespan."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[dict[str, str]]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('docs-browser') / 'browser.db'}"
    upgrade(url)
    key = create_api_key(url, "predict,read", name="browser")
    app = create_app(make_settings(url, model_store, auth="enabled"))
    with _Server(app) as base:
        yield {"base": base, "key": key}


@pytest.fixture()
def browser_page(served: dict[str, str]) -> Iterator[tuple[Any, list[str]]]:
    """A page whose requests to anything but the service are aborted and listed."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    service = urlsplit(served["base"]).netloc
    outside: list[str] = []

    def gate(route: Any) -> None:
        request_url = route.request.url
        parts = urlsplit(request_url)
        if parts.scheme in ("data", "blob") or parts.netloc == service:
            route.continue_()
        else:
            outside.append(request_url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.route("**/*", gate)
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page, outside
        finally:
            browser.close()


def test_swagger_ui_renders_and_uploads_without_internet(
    served: dict[str, str], browser_page: tuple[Any, list[str]], tmp_path: Path
) -> None:
    page, outside = browser_page
    page.goto(f"{served['base']}/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/predictions" in [p.replace("\u200b", "") for p in paths]
    assert "/v1/models" in [p.replace("\u200b", "") for p in paths]

    page.get_by_role("button", name="Authorize").first.click()
    page.locator(".modal-ux input[type=text], .modal-ux input[type=password]").first.fill(
        served["key"]
    )
    page.locator(".modal-ux .auth-btn-wrapper button.authorize").click()
    page.locator(".modal-ux button.btn-done, .modal-ux .close-modal").first.click()

    upload = page.locator("#operations-predictions-create_prediction_v1_predictions_post")
    if upload.count() == 0:  # operation id changed: find the POST /v1/predictions block
        upload = page.locator(".opblock-post").filter(
            has=page.locator(".opblock-summary-path[data-path='/v1/predictions']")
        )
    upload.locator(".opblock-summary").first.click()
    upload.get_by_role("button", name="Try it out").click()
    image = tmp_path / "upload.png"
    image.write_bytes(png_bytes(seed=1))
    upload.locator("input[type=file]").set_input_files(str(image))
    upload.get_by_role("button", name="Execute").click()
    status = upload.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip().startswith("201"), upload.locator(
        ".live-responses-table"
    ).inner_text()
    body = upload.locator(".live-responses-table .microlight").first.inner_text()
    assert '"label"' in body and '"model"' in body
    assert outside == [], f"the page tried to reach other hosts: {outside}"


def test_redoc_renders_without_internet(
    served: dict[str, str], browser_page: tuple[Any, list[str]]
) -> None:
    page, outside = browser_page
    page.goto(f"{served['base']}/redoc")
    page.wait_for_selector("[data-section-id^='tag/'], [data-section-id^='operation/']")
    assert "/v1/predictions" in page.content()
    assert outside == [], f"the page tried to reach other hosts: {outside}"

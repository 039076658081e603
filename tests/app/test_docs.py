"""/docs and /redoc load nothing from another host (app/docs.py): no CDN script, stylesheet,
favicon or font, so Swagger UI renders in a network without internet access and no visit is
reported to a third party. The pages run in a real browser in test_docs_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.app.conftest import TestClient, make_settings

ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""", re.IGNORECASE)
REFERENCE = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", re.IGNORECASE)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> TestClient:
    from radlens.app.main import create_app

    url = f"sqlite:///{tmp_path_factory.mktemp('docs') / 'docs.db'}"
    # No lifespan: the documentation pages need neither the database nor the model.
    return TestClient(create_app(make_settings(url, model_store)))


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_reference_no_other_host(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    html = response.text
    assert ABSOLUTE_URL.findall(html) == [], f"{path} names another host"
    references = REFERENCE.findall(html)
    assert any(ref.endswith(".js") for ref in references), references
    assert "/openapi.json" in references
    for ref in references:  # every asset the page loads is served by the app itself
        assert ref.startswith("/"), ref
        assert client.get(ref).status_code == 200, ref


def test_swagger_ui_assets_are_the_packaged_dist(client: TestClient) -> None:
    """The script is Swagger UI 5's bundle (from the pinned package, not a copied file)."""
    from radlens.app.docs import assets_directory

    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert js.content == (assets_directory() / "swagger-ui-bundle.js").read_bytes()
    assert b"SwaggerUIBundle" in js.content
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/docs-assets/favicon.png").content.startswith(b"\x89PNG")


def test_docs_disable_the_online_validator(client: TestClient) -> None:
    """Swagger UI's validator badge would send the spec's address to validator.swagger.io."""
    assert '"validatorUrl": null' in client.get("/docs").text


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_docs_pages_forbid_loading_from_other_hosts(client: TestClient, path: str) -> None:
    """A Content-Security-Policy keeps the browser from asking any other host, even for what
    a bundled script names (ReDoc's Redocly logo)."""
    policy = client.get(path).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    for directive in ("script-src", "style-src", "img-src", "connect-src", "font-src"):
        sources = directives[directive].split()
        assert all(s.startswith("'") or s in ("data:", "blob:") for s in sources), policy

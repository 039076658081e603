"""QA round 28: the /ui pages as a clinician and as an attacker, against a real service.

What the round found, each checked here on generated models and images (SQLite):

- the overlay, SR and SC downloads and the model's plots under /ui had none of the pages'
  headers: a browser could keep a result (an overlay may show burned-in text) in its cache;
- a class name Latin-1 cannot carry (an em dash, Greek, Chinese) made every Grad-CAM overlay of the
  model a 500 (``X-Radlens-Explained-Class``), on the page and at ``GET .../heatmap``;
- with a multi-label model loaded, "flagged" meant "label other than the first finding": a
  prediction with no finding was flagged, one of the first finding alone was not;
- with a validated model loaded, the list showed other models' predictions without the
  not-for-clinical-use notice;
- the list did not mark a prediction the intended-use gate flagged (RADLENS_GATE=flag);
- a page number past the last showed no rows and no way back;
- a long class or finding name widened the page past the window (browser test below).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import (
    dicom_bytes,
    make_settings,
    png_bytes,
    prediction_row,
    save_tiny_model,
)
from tests.app.test_docs_browser import CHROMIUM, CHROMIUM_ARGS, _Server
from tests.app.test_findings_api import constant_findings_model, save_multilabel

# not Latin-1 (an em dash, Greek), but in the fonts the overlay is drawn with
NON_LATIN1 = ["normal — κανονικό", "effusion — πλευριτική συλλογή"]
LONG = "Infiltration" + "X" * 150


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One store per model: class names in another script, a multi-label model (one long
    finding name), and a model whose manifest says validated."""
    from radlens.models.registry import ModelRegistry

    root = tmp_path_factory.mktemp("qa28-stores")
    save_tiny_model(root / "script", class_names=NON_LATIN1)
    save_multilabel(
        root / "multi",
        constant_findings_model([2.0, -2.0, 0.0]),
        "findings",
        {"Effusion": 0.5, "Nodule": 0.5, LONG: 0.6},
    )
    save_tiny_model(root / "validated")
    manifest = root / "validated" / "tiny" / "1" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["validated_for_clinical_use"] = True
    manifest.write_text(json.dumps(record))
    ModelRegistry(root / "validated").seal("tiny:1")
    return {name: root / name for name in ("script", "multi", "validated")}


def _client(tmp_path: Path, store: Path) -> TestClient:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'qa28.db'}"
    upgrade(url)
    return TestClient(create_app(make_settings(url, store)))


def _store_rows(client: TestClient, rows: list[dict[str, Any]]) -> list[str]:
    """Prediction rows with the given fields, stored directly; their ids."""
    ids = []
    with client.app.state.resources.sessionmaker() as session:  # type: ignore[attr-defined]
        for fields in rows:
            row = prediction_row(f"sha256:{uuid.uuid4().hex}")
            for name, value in fields.items():
                setattr(row, name, value)
            session.add(row)
            ids.append(str(row.id))
        session.commit()
    return ids


def _listed(page: Any) -> set[str]:
    assert page.status_code == 200, page.text
    return set(re.findall(r'href="/ui/predictions/([0-9a-f-]{36})"', page.text))


def test_an_overlay_names_a_class_latin1_cannot_carry(
    tmp_path: Path, stores: dict[str, Path]
) -> None:
    """The header names the explained class percent-encoded (UTF-8) instead of a 500."""
    with _client(tmp_path, stores["script"]) as client:
        created = client.post(
            "/v1/predictions?explain=true", files={"file": ("a.png", png_bytes(28))}
        )
        assert created.status_code == 201, created.text
        prediction_id = created.json()["id"]
        heatmap = client.get(f"/v1/predictions/{prediction_id}/heatmap")
        assert heatmap.status_code == 200, heatmap.text
        assert unquote(heatmap.headers["X-Radlens-Explained-Class"]) in NON_LATIN1
        overlay = client.get(f"/ui/predictions/{prediction_id}/overlay.png")
        assert overlay.status_code == 200, overlay.text
        assert overlay.content.startswith(b"\x89PNG")


def test_result_files_under_ui_are_not_cached(tmp_path: Path, stores: dict[str, Path]) -> None:
    """The overlay, SR and SC carry the pages' no-store and nosniff headers."""
    with _client(tmp_path, stores["validated"]) as client:
        created = client.post(
            "/v1/predictions?explain=true", files={"file": ("a.dcm", dicom_bytes(seed=28))}
        )
        assert created.status_code == 201, created.text
        prediction_id = created.json()["id"]
        for name in ("overlay.png", "sr.dcm", "sc.dcm"):
            response = client.get(f"/ui/predictions/{prediction_id}/{name}")
            assert response.status_code == 200, (name, response.text)
            assert response.headers["Cache-Control"] == "no-store", name
            assert response.headers["X-Content-Type-Options"] == "nosniff", name


def test_model_plots_are_not_cached(tmp_path: Path, stores: dict[str, Path]) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(stores["script"], store)
    (store / "tiny" / "1" / "roc_curve.png").write_bytes(png_bytes(seed=1))
    with _client(tmp_path, store) as client:
        plot = client.get("/ui/model/plots/roc.png")
        assert plot.status_code == 200, plot.text
        assert plot.headers["Cache-Control"] == "no-store"


def test_flagged_is_relative_to_no_finding_for_a_multi_label_model(
    tmp_path: Path, stores: dict[str, Path]
) -> None:
    with _client(tmp_path, stores["multi"]) as client:
        none, first, other = _store_rows(
            client,
            [
                {"model_name": "findings", "label": "No Finding"},
                {"model_name": "findings", "label": "Effusion"},  # the first finding alone
                {"model_name": "findings", "label": "Nodule"},
            ],
        )
        assert _listed(client.get("/ui/predictions?flagged=yes")) == {first, other}
        assert _listed(client.get("/ui/predictions?flagged=no")) == {none}
        page = client.get("/ui/predictions")
        assert "Flagged (label other than No Finding)" in page.text
        assert page.text.count('<span class="flag">flagged</span>') == 2


def test_other_models_rows_keep_the_notice_under_a_validated_model(
    tmp_path: Path, stores: dict[str, Path]
) -> None:
    from radlens.app.schemas import NOT_FOR_CLINICAL_USE

    notice = NOT_FOR_CLINICAL_USE.replace("'", "&#39;")
    with _client(tmp_path, stores["validated"]) as client:
        _store_rows(client, [{"model_name": "tiny"}, {"model_name": "other"}])
        assert notice not in client.get("/ui/predictions?model=tiny:1").text
        assert notice in client.get("/ui/predictions").text
        assert notice in client.get("/ui/predictions?model=other").text


def test_the_list_marks_a_prediction_outside_the_intended_use(
    tmp_path: Path, stores: dict[str, Path]
) -> None:
    violation = {"attribute": "Modality", "value": "CT", "accepted": ["CR", "DX"]}
    with _client(tmp_path, stores["script"]) as client:
        _store_rows(client, [{"intended_use_violations": [violation]}, {}])
        page = client.get("/ui/predictions")
        assert page.text.count("outside intended use") == 1


def test_a_page_past_the_last_links_back(tmp_path: Path, stores: dict[str, Path]) -> None:
    with _client(tmp_path, stores["script"]) as client:
        _store_rows(client, [{}, {}])
        page = client.get("/ui/predictions?label=normal&page=4")
        assert page.status_code == 200, page.text
        assert "2 predictions, page 4 of 1" in page.text
        assert 'href="/ui/predictions?label=normal&page=1">last page</a>' in page.text


# --- in the browser --------------------------------------------------------------------

NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"


@pytest.fixture(scope="module")
def served_multi(
    tmp_path_factory: pytest.TempPathFactory, stores: dict[str, Path]
) -> Iterator[str]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('qa28-browser') / 'ui.db'}"
    upgrade(url)
    with _Server(create_app(make_settings(url, stores["multi"]))) as base:
        yield base


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} absent")
@pytest.mark.parametrize("width", [375, 1280])
def test_long_finding_names_do_not_widen_the_page(served_multi: str, width: int) -> None:
    """A 162-character finding name wraps in its cell; a table still wider than a phone
    scrolls in its own box, not the whole page (the header and notice stay in view)."""
    import httpx

    playwright = pytest.importorskip("playwright.sync_api")
    created = httpx.post(
        f"{served_multi}/v1/predictions", files={"file": ("a.png", png_bytes(seed=width))}
    )
    assert created.status_code in (200, 201), created.text
    paths = ["/ui/predictions", f"/ui/predictions/{created.json()['id']}", "/ui/model"]
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            for path in paths:
                page.goto(served_multi + path)
                assert LONG in page.content()
                assert page.evaluate(NO_SIDEWAYS_SCROLL), f"{path} scrolls sideways at {width}px"
        finally:
            browser.close()

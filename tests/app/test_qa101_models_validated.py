"""QA 101: ``GET /v1/models`` and the /ui model page say a model is validated for clinical use
by the rule every result's notice follows (app/clinical.py: the model store's manifest, as
sealed), not by the manifest loaded at start-up.

Before, both read the in-memory manifest: a store manifest edited after start-up (not sealed
again) was still listed as validated, with no notice, while the model's results carried the
notice; and a model validated and sealed while the service ran was listed as not validated
while its results carried none. SQLite, auth disabled (the /ui pages need no login).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import make_settings, png_bytes, save_tiny_model
from tests.app.test_qa87_clinical_notice import NOTICE_JSON, validate

NOTICE_UI = '<p class="notice" role="note">'


def _service(root: Path, *, validated: bool) -> Iterator[tuple[TestClient, Path]]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    store = root / "store"
    save_tiny_model(store)  # tiny:1
    if validated:
        validate(store, "tiny", 1)
    url = f"sqlite:///{root / 'qa101.db'}"
    upgrade(url)
    with TestClient(create_app(make_settings(url, store))) as client:
        yield client, store / "tiny" / "1" / "manifest.json"


@pytest.fixture()
def validated_service(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    yield from _service(tmp_path, validated=True)


@pytest.fixture()
def unvalidated_service(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    yield from _service(tmp_path, validated=False)


def _listed(client: TestClient) -> dict[str, Any]:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    (model,) = response.json()["models"]
    return dict(model)


def _page(client: TestClient) -> str:
    response = client.get("/ui/model")
    assert response.status_code == 200, response.text
    return re.sub(r"\s+", " ", response.text)


def _validated_row(page: str) -> str:
    match = re.search(r"<dt>Clinically validated</dt><dd>(.*?)</dd>", page)
    assert match, page
    return match.group(1)


def _result_notice(client: TestClient) -> str | None:
    response = client.post("/v1/predictions", files={"file": ("a.png", png_bytes())})
    assert response.status_code in (200, 201), response.text
    notice: str | None = response.json()["notice"]
    return notice


def assert_listed_as_results(client: TestClient, validated: bool) -> None:
    """The listing, the model page and a result of the model say the same thing."""
    model = _listed(client)
    assert model["validated_for_clinical_use"] is validated, model
    assert (model["notice"] is None) is validated, model
    assert (_result_notice(client) is None) is validated
    page = _page(client)
    assert (NOTICE_UI not in page) is validated
    assert _validated_row(page).startswith("yes" if validated else "no")


def test_a_store_manifest_edited_after_start_up_is_not_listed_as_validated(
    validated_service: tuple[TestClient, Path],
) -> None:
    client, manifest = validated_service
    assert_listed_as_results(client, True)
    # edited in the store while the service runs, not sealed again: tampered (app/clinical.py)
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**record, "description": "edited after start-up, unsealed"}))
    assert_listed_as_results(client, False)  # was: listed as validated, no notice
    assert _listed(client)["notice"] == NOTICE_JSON
    row = _validated_row(_page(client))
    assert "loaded at start-up says validated" in row and "unsealed" in row, row
    # sealed again by the operator: validated again, everywhere at once
    validate(manifest.parents[2], "tiny", 1)
    assert_listed_as_results(client, True)


def test_a_model_gone_from_the_store_is_not_listed_as_validated(
    validated_service: tuple[TestClient, Path],
) -> None:
    client, manifest = validated_service
    shutil.rmtree(manifest.parent)
    model = _listed(client)
    assert model["validated_for_clinical_use"] is False and model["notice"] == NOTICE_JSON
    page = _page(client)
    assert NOTICE_UI in page and _validated_row(page).startswith("no")


def test_a_model_validated_and_sealed_while_serving_is_listed_so(
    unvalidated_service: tuple[TestClient, Path],
) -> None:
    """The other way: results of the model lose the notice once its store manifest is sealed
    as validated (app/clinical.py reads it again); the listing now says so too."""
    client, manifest = unvalidated_service
    assert_listed_as_results(client, False)
    validate(manifest.parents[2], "tiny", 1)
    assert_listed_as_results(client, True)  # was: listed as not validated, with the notice


def test_the_pages_about_no_result_follow_the_store(
    validated_service: tuple[TestClient, Path],
) -> None:
    """A page that lists no result (the upload form, an empty predictions list) shows the
    serving model's notice: the store's, as for /ui/model."""
    client, manifest = validated_service
    for path in ("/ui/upload", "/ui/predictions?model=nosuch"):
        assert NOTICE_UI not in client.get(path).text, path
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**record, "threshold": 0.25}))  # edited, unsealed
    for path in ("/ui/upload", "/ui/predictions?model=nosuch"):
        assert NOTICE_UI in client.get(path).text, path

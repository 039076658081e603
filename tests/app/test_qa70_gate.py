"""QA round 70: the real chest CR (RSNA) with one tag changed, through the service's ingest
path, to a chest CR/DX model: a wrist (a PS3.16 Annex L region the gate did not know) is
refused as a hip is; a lateral is refused by a model that states frontal views although it
was trained on PNG films (nothing to survey); the unchanged film is accepted by both."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, assert_problem, make_settings, save_tiny_model

RSNA = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "dicom"
    / "rsna_chest_cr_jpeg_baseline.dcm"
)
pytestmark = pytest.mark.skipif(
    not RSNA.is_file(), reason=f"the shared real chest CR {RSNA} is absent"
)


def _png_trained_chest_record(*views: str) -> dict[str, Any]:
    from radlens.models.intended_use import check_stated, intended_use_record, survey

    observed = survey([{"format": "png", "rows": 64, "columns": 64}] * 4)
    stated = check_stated(["CR", "DX"], ["CHEST"], *([views] if views else []))
    return intended_use_record(observed, stated)


@pytest.fixture(scope="module")
def chest_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qa70-chest")
    save_tiny_model(root, name="chest", intended_use=_png_trained_chest_record())
    return root


@pytest.fixture(scope="module")
def frontal_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qa70-frontal")
    save_tiny_model(root, name="frontal", intended_use=_png_trained_chest_record("PA", "AP"))
    return root


def _client(databases: Databases, store: Path, model: str) -> Iterator[TestClient]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    with TestClient(create_app(make_settings(url, store, model=model))) as client:
        yield client


@pytest.fixture(scope="module")
def chest(databases: Databases, chest_store: Path) -> Iterator[TestClient]:
    yield from _client(databases, chest_store, "chest")


@pytest.fixture(scope="module")
def frontal(databases: Databases, frontal_store: Path) -> Iterator[TestClient]:
    yield from _client(databases, frontal_store, "frontal")


def _rsna(**tags: str) -> bytes:
    """The real chest CR with ``tags`` set, under new UIDs (a new instance, not a re-post)."""
    import pydicom
    from pydicom.uid import generate_uid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(RSNA)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _post(client: TestClient, data: bytes) -> Any:
    return client.post("/v1/predictions", files={"file": ("image.dcm", data, "application/dicom")})


def test_a_wrist_cr_is_refused_by_the_chest_model(chest: TestClient) -> None:
    assert _post(chest, _rsna()).status_code == 201
    for part in ("WRIST", "Elbow", "FOREARM"):
        body = assert_problem(
            _post(chest, _rsna(BodyPartExamined=part)), 422, code="outside-intended-use"
        )
        assert f"BodyPartExamined {part!r} (model accepts CHEST)" in body["detail"]
    # a region that takes in the chest is not known: left to the image score
    assert _post(chest, _rsna(BodyPartExamined="RIB")).status_code == 201


def test_a_lateral_is_refused_by_a_png_trained_model_that_states_frontal_views(
    chest: TestClient, frontal: TestClient
) -> None:
    assert _post(frontal, _rsna()).status_code == 201
    assert _post(frontal, _rsna(ViewPosition="AP")).status_code == 201
    for lateral in ("LL", "RL", "LATERAL"):
        body = assert_problem(
            _post(frontal, _rsna(ViewPosition=lateral)), 422, code="outside-intended-use"
        )
        assert f"ViewPosition {lateral!r} (model accepts FRONTAL)" in body["detail"]
    # without a statement of views a PNG-trained model has none to gate on, as before
    assert _post(chest, _rsna(ViewPosition="LL")).status_code == 201

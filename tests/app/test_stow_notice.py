"""STOW-RS results carry the not-for-clinical-use notice (private (0099,1006)) like every
other answer (REST `notice`, SR/SC, /ui), unless the model's manifest says it was validated.
Before: a PACS reading STOW-RS answers got labels with no notice (QA round 31)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from radlens.app.schemas import NOT_FOR_CLINICAL_USE
from tests.app.conftest import Service, TestClient, dicom_bytes, make_settings
from tests.app.test_stowrs import parse, stow


def test_every_stored_result_carries_the_notice(service: Service) -> None:
    response = stow(service, [dicom_bytes(seed=1), dicom_bytes(seed=2), b"not dicom"])
    assert response.status_code == 202, response.text
    body = parse(response)
    for item in body.ReferencedSOPSequence:
        assert item[0x00991006].VR == "LT"
        assert item[0x00991006].value == NOT_FOR_CLINICAL_USE
    assert 0x00991006 not in body.FailedSOPSequence[0]  # no result, no notice


def test_a_validated_model_answers_without_it(model_store: Path, tmp_path: Path) -> None:
    from radlens.app.main import create_app
    from radlens.models.registry import ModelRegistry

    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    path = store / "tiny" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["validated_for_clinical_use"] = True
    path.write_text(json.dumps(manifest))
    ModelRegistry(store).seal("tiny:1")  # the deliberate step an operator takes
    url = f"sqlite:///{tmp_path / 'radlens.db'}"
    with TestClient(create_app(make_settings(url, store))) as client:
        service = Service(client=client, app=client.app, database_url=url, backend="sqlite")
        response = stow(service, [dicom_bytes(seed=3)])
        assert response.status_code == 200, response.text
        (item,) = parse(response).ReferencedSOPSequence
        assert 0x00991006 not in item and item[0x00991002].value

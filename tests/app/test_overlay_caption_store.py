"""The overlay drawn for an upload (``POST /v1/predictions?explain=true``) captions "Not for
clinical use." by the rule every other output follows (app/clinical.py: the model store's
manifest, as sealed), not by the manifest loaded at start-up: a store manifest edited after
start-up, not sealed again, made the JSON, the SR and the model listing carry the notice
while the overlay PNG (and the Secondary Capture drawn from it) left it out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import png_bytes
from tests.app.test_qa87_clinical_notice import _captions, validate
from tests.app.test_qa101_models_validated import validated_service  # noqa: F401


def _caption_of_a_new_overlay(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> str:
    written = _captions(monkeypatch)
    response = client.post("/v1/predictions?explain=true", files={"file": ("a.png", png_bytes())})
    assert response.status_code in (200, 201), response.text
    (caption,) = [t for t in written if t.startswith("Grad-CAM:")]
    monkeypatch.undo()
    return caption.replace("\n", " ")


def test_the_overlay_caption_follows_the_store_manifest(
    validated_service: tuple[TestClient, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, manifest = validated_service
    assert "Not for clinical use." not in _caption_of_a_new_overlay(client, monkeypatch)
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**record, "description": "edited after start-up, unsealed"}))
    # was: no notice (the loaded manifest still says validated)
    assert "Not for clinical use." in _caption_of_a_new_overlay(client, monkeypatch)
    validate(manifest.parents[2], "tiny", 1)  # sealed again by the operator
    assert "Not for clinical use." not in _caption_of_a_new_overlay(client, monkeypatch)

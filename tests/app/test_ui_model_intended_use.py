"""The model page says what the model is for (QA round 28 found it did not): the modalities,
body parts and view positions the intended-use gate accepts, where they were taken from, what
RADLENS_GATE does with an upload outside them, and the out-of-distribution check. A clinician
reading a result can see whether the image was one the model was made for."""

from __future__ import annotations

import html

import pytest

from radlens.models.intended_use import intended_use_record
from tests.app.conftest import Service
from tests.app.test_ui import login


def _model_page(service: Service) -> str:
    """/ui/model as a logged-in user sees it, entities unescaped (the session ends after)."""
    service.client.cookies.clear()
    login(service.client, service.api_key or "")
    page = html.unescape(service.client.get("/ui/model").text)
    service.client.cookies.clear()
    return page


def test_a_stated_intended_use_is_shown_with_the_gate(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = service.app.state.resources.predictor.manifest
    record = intended_use_record(
        {"modalities": {"CR": 3}, "body_parts": {"CHEST": 3}, "view_positions": {"PA": 3}},
        {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]},
    )
    monkeypatch.setattr(manifest, "intended_use", record)
    monkeypatch.setattr(manifest, "ood", {"method": "mahalanobis", "threshold": 123.456})
    page = _model_page(service)
    assert "<h2>Intended use</h2>" in page
    assert "<dt>Modalities</dt><dd>CR, DX</dd>" in page
    assert "<dt>Body parts</dt><dd>CHEST</dd>" in page
    views = ", ".join(record["accepts"]["view_positions"])
    assert views and f"<dt>View positions</dt><dd>{views}</dd>" in page
    assert "<dt>Taken from</dt><dd>stated</dd>" in page
    gate = service.app.state.settings.gate
    assert f"(RADLENS_GATE={gate})</dd>" in page
    assert {"refuse": "refused", "flag": "flagged", "off": "not checked"}[gate] in page
    assert "mahalanobis, threshold 123.5" in page


def test_a_manifest_without_one_says_so(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = service.app.state.resources.predictor.manifest
    monkeypatch.setattr(manifest, "intended_use", None)
    monkeypatch.setattr(manifest, "ood", None)
    page = _model_page(service)
    assert "<dt>Modalities</dt><dd>any (not restricted)</dd>" in page
    assert "not recorded (an older manifest)" in page
    assert "none stored with this model" in page

"""QA 75: the service refuses a Siemens mosaic upload with a 422 problem that says what it is
and what to send (it predicted the tiled slices as one picture and stored the result)."""

from __future__ import annotations

from pathlib import Path

from tests.app.conftest import Databases, Service, assert_problem
from tests.app.test_gate import _app, chest_store  # noqa: F401 (a fixture)
from tests.models.test_qa75_mosaic import mosaic_bytes


def test_a_mosaic_upload_is_refused(service: Service) -> None:
    before = service.count()
    response = service.post(mosaic_bytes(), filename="mosaic.dcm")
    body = assert_problem(response, 422, code="invalid-image")
    assert "Siemens mosaic" in body["detail"] and "separate instances" in body["detail"]
    assert service.count() == before


def test_a_mosaic_outside_the_models_use_is_refused_by_the_gate_first(
    databases: Databases,
    chest_store: Path,  # noqa: F811
) -> None:
    """The gate still answers first (before the mosaic check, as before any decode): an MR
    mosaic sent to a chest CR/DX model is outside its use."""
    for gated in _app(databases, chest_store):  # RADLENS_GATE defaults to refuse
        body = assert_problem(gated.post(mosaic_bytes()), 422, code="outside-intended-use")
        assert "Modality 'MR'" in body["detail"]

"""Numbers in /ui query strings: a page or model version that is not plain ASCII digits of a
sane length is a described filter error on the page (422), never a 500. ``str.isdigit``
accepts "²" and other Unicode digits that ``int()`` refuses, and ``int()`` refuses more than
4300 digits (QA round 49: ``/ui/predictions?page=²`` and ``?model=tiny:²`` were 500s)."""

from __future__ import annotations

import pytest

from tests.app.conftest import TestClient


@pytest.fixture()
def ui(signed_in_ui: TestClient) -> TestClient:
    return signed_in_ui


@pytest.mark.parametrize(
    "query",
    [
        "page=\u00b2",
        "page=" + "1" * 5000,
        "page=\u0661",
        "model=tiny:\u00b2",
        "model=tiny:" + "9" * 5000,
    ],
    ids=["page-sup2", "page-5000-digits", "page-arabic", "model-sup2", "model-5000-digits"],
)
def test_a_number_that_is_none_is_a_filter_error(ui: TestClient, query: str) -> None:
    response = ui.get(f"/ui/predictions?{query}")
    assert response.status_code == 422, response.text[:300]
    assert "received" in response.text  # the filter's error, described on the page


def test_plain_numbers_still_work(ui: TestClient) -> None:
    assert ui.get("/ui/predictions?page=1&model=tiny:1").status_code == 200

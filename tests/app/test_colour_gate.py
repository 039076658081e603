"""The colour gate (app/gate.py): a model whose intended use accepts only gray modalities
(CR, DX, ...) refuses a colour picture -- an overlay, a photograph, a colour figure -- that a
PNG or JPEG upload carries no metadata to refuse by; a gray radiograph stored as RGB, or as
a colour JPEG with chroma noise, passes. QA round 23: the intended-use gate accepted 94% of
other modalities' colour images as chest radiographs on the OOD score alone."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from radlens.app.gate import COLOUR_SHARE, OutsideIntendedUseError, check_colour
from radlens.models.intended_use import IntendedUse
from radlens.models.preprocessing import colour_fraction, preprocess
from tests.app.conftest import Databases, assert_problem
from tests.app.test_gate import Gated, _app, chest_store  # noqa: F401  (fixture)


def _radiograph(size: int = 96) -> np.ndarray:
    """A gray chest-like picture: a bright body, two darker lungs."""
    y, x = np.mgrid[0:size, 0:size] / size
    body = 180 - 120 * ((x - 0.5) ** 2 + (y - 0.55) ** 2)
    lungs = 60 * (np.exp(-((x - 0.32) ** 2 + (y - 0.5) ** 2) / 0.02))
    lungs += 60 * np.exp(-((x - 0.68) ** 2 + (y - 0.5) ** 2) / 0.02)
    return np.clip(body - lungs, 0, 255).astype(np.uint8)


def _encoded(rgb: np.ndarray, kind: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, kind, **options)
    return buffer.getvalue()


def _overlaid(share: float) -> np.ndarray:
    """The radiograph as RGB with a red overlay on the top ``share`` of its rows."""
    gray = _radiograph()
    rgb = np.dstack([gray] * 3)
    rows = round(share * gray.shape[0])
    rgb[:rows, :, 0] = 255
    rgb[:rows, :, 1] //= 3
    return rgb


class TestColourFraction:
    def test_gray_stored_as_rgb_has_none(self) -> None:
        gray = np.dstack([_radiograph()] * 3)
        assert colour_fraction(gray) == 0.0
        assert preprocess(_encoded(gray)).metadata.colour_fraction == 0.0

    def test_a_gray_jpeg_saved_in_colour_stays_under_the_share(self) -> None:
        gray = np.dstack([_radiograph()] * 3)
        meta = preprocess(_encoded(gray, "JPEG", quality=60)).metadata
        assert meta.colour_fraction is not None and meta.colour_fraction < COLOUR_SHARE

    def test_an_overlay_counts_its_coloured_pixels(self) -> None:
        meta = preprocess(_encoded(_overlaid(0.25))).metadata
        assert meta.colour_fraction == pytest.approx(0.25, abs=0.02)

    def test_a_gray_png_has_no_colour_measure(self) -> None:
        assert preprocess(_encoded(_radiograph())).metadata.colour_fraction is None


CHEST = IntendedUse(modalities=("CR", "DX"), body_parts=("CHEST",))


class TestCheckColour:
    def test_refuse_flag_and_off(self) -> None:
        with pytest.raises(OutsideIntendedUseError, match=r"in colour \(30% of the pixels"):
            check_colour(0.3, CHEST, "refuse")
        (found,) = check_colour(0.3, CHEST, "flag")
        assert (found.attribute, found.value, found.accepted) == (
            "colour",
            "30% of the pixels",
            ("CR", "DX"),
        )
        assert check_colour(0.3, CHEST, "off") == []

    def test_at_or_under_the_share_passes(self) -> None:
        assert check_colour(COLOUR_SHARE, CHEST, "refuse") == []
        assert check_colour(None, CHEST, "refuse") == []

    def test_only_a_model_for_gray_modalities_is_gated(self) -> None:
        assert check_colour(0.9, IntendedUse(), "refuse") == []  # nothing stated
        echo = IntendedUse(modalities=("US",))
        assert check_colour(0.9, echo, "refuse") == []
        mixed = IntendedUse(modalities=("DX", "XC"))  # external-camera photographs too
        assert check_colour(0.9, mixed, "refuse") == []


@pytest.fixture(scope="module")
def refusing(databases: Databases, chest_store: Path) -> Iterator[Gated]:  # noqa: F811
    yield from _app(databases, chest_store)


@pytest.fixture(scope="module")
def flagging(databases: Databases, chest_store: Path) -> Iterator[Gated]:  # noqa: F811
    yield from _app(databases, chest_store, gate="flag")


def test_a_colour_overlay_is_refused_and_nothing_is_stored(refusing: Gated) -> None:
    before = len(refusing.rows())
    metric = refusing.metric("outside-intended-use", "refused")
    response = refusing.post(_encoded(_overlaid(0.4)))
    problem = assert_problem(response, 422, code="outside-intended-use")
    assert "in colour (40% of the pixels" in problem["detail"]
    assert "send the image itself" in problem["detail"]
    assert len(refusing.rows()) == before
    assert refusing.metric("outside-intended-use", "refused") == metric + 1
    # a gray radiograph stored as RGB, and one as a colour JPEG, are predicted
    gray = np.dstack([_radiograph()] * 3)
    assert refusing.post(_encoded(gray)).status_code == 201
    assert refusing.post(_encoded(gray, "JPEG", quality=70)).status_code == 201


def test_flag_predicts_and_records_the_colour(flagging: Gated) -> None:
    response = flagging.post(_encoded(_overlaid(0.5), "JPEG", quality=90))
    assert response.status_code == 201, response.text
    (violation,) = response.json()["intended_use_violations"]
    assert violation["attribute"] == "colour" and violation["accepted"] == ["CR", "DX"]
    assert violation["value"].endswith("% of the pixels")

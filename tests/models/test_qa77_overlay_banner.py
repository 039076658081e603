"""QA round 77: models.overlay.add_banner, the warning band a result that is not valid carries
above its overlay (the DICOM Secondary Capture's pixels, app/dicom_outputs.build_sc)."""

from __future__ import annotations

import numpy as np
import pytest

from radlens.models.errors import InvalidImageError
from radlens.models.overlay import BANNER_RGB, add_banner, render_overlay

LINES = [
    "NOT A VALID RESULT: out of distribution; outside intended use (Modality MR)",
    "Do not read the label 'abnormal', its score or this map as a result for this image: the "
    "model gives every image a label, a normal one included.",
    "Research use only, not for clinical use.",
]


def _figure(width: int) -> np.ndarray:
    import io

    from PIL import Image

    rng = np.random.default_rng(7)
    png = render_overlay(
        rng.random((16, 16), dtype=np.float32),
        rng.random((16, 16), dtype=np.float32),
        title="abnormal 0.9300 · Grad-CAM conv4",
        width=width,
    )
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("width", [256, 512, 1024, 2048])
def test_the_band_sits_above_the_figure_and_its_text_stays_inside(width: int) -> None:
    figure = _figure(width)
    out = add_banner(figure, LINES)
    band = out.shape[0] - figure.shape[0]
    assert out.dtype == np.uint8 and out.shape[1:] == figure.shape[1:] and band > 0
    np.testing.assert_array_equal(out[band:], figure)
    red = np.all(out[:band] == np.array(BANNER_RGB, np.uint8), axis=-1)
    assert red.mean() > 0.6  # mostly the band's red ...
    white = np.all(out[:band] == 255, axis=-1)
    assert white.sum() > 100  # ... with white text
    pad = max(6, width // 80)
    # wrapped to the width: nothing drawn in the margins, so no word is cut off at the edge
    assert red[:, : pad - 1].all() and red[:, -(pad - 1) :].all()
    assert red[: pad - 1].all() and red[-(pad - 1) :].all()


def test_a_word_longer_than_the_width_is_broken() -> None:
    figure = _figure(256)
    out = add_banner(figure, ["x" * 200])
    band = out.shape[0] - figure.shape[0]
    red = np.all(out[:band] == np.array(BANNER_RGB, np.uint8), axis=-1)
    assert red[:, -4:].all()


@pytest.mark.parametrize(
    ("image", "lines", "error", "match"),
    [
        ("pixels", LINES, TypeError, "numpy array"),
        (np.zeros((4, 4, 3), np.float32), LINES, InvalidImageError, "uint8 RGB"),
        (np.zeros((4, 4), np.uint8), LINES, InvalidImageError, "uint8 RGB"),
        (np.zeros((4, 4, 3), np.uint8), "one string", TypeError, "sequence of str"),
        (np.zeros((4, 4, 3), np.uint8), ["  "], InvalidImageError, "at least one line"),
    ],
)
def test_bad_arguments_are_refused(image: object, lines: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        add_banner(image, lines)  # type: ignore[arg-type]

"""Every word of an overlay stays inside its PNG, however narrow (256 px is the least
``render_overlay`` accepts): the caption that says "Not for clinical use.", a long title (a
multi-label finding's), the colour bar's "1 high" and the panel labels wrap or move instead
of running off the edge. At the service's default widths nothing wraps."""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from radlens.models import overlay

_LONG_TITLE = (
    "effusion, pleural thickening, pneumothorax 0.9300 (threshold 0.5000) · "
    "Grad-CAM of pleural thickening"
)
_RNG = np.random.default_rng(0)
_INPUT = _RNG.random((64, 64)).astype(np.float32)
_HEAT = _RNG.random((64, 64)).astype(np.float32)
_DISPLAYS = {
    "one panel": None,
    "two panels, landscape": _RNG.random((300, 400)).astype(np.float32),
    "two panels, portrait": _RNG.random((1024, 300)).astype(np.float32),
}


def _drawn(**kwargs: object) -> Figure:
    """The figure ``render_overlay`` saved as its PNG."""
    figures: list[Figure] = []
    save = Figure.savefig

    def spy(self: Figure, *args: object, **kw: object) -> None:
        figures.append(self)
        save(self, *args, **kw)

    with mock.patch.object(Figure, "savefig", spy):
        overlay.render_overlay(_INPUT, _HEAT, **kwargs)  # type: ignore[arg-type]
    assert len(figures) == 1
    return figures[0]


def _shown_texts(fig: Figure) -> Iterator[Text]:
    """The texts a reader sees: figure texts, panel labels, the colour bar's labels."""
    yield from fig.texts
    for ax in fig.axes:
        if ax.title.get_text():
            yield ax.title
        if ax.axison:  # the colour bar (the image panels are drawn without axes)
            yield from (t for t in ax.get_yticklabels() if t.get_text())


@pytest.mark.parametrize("display", list(_DISPLAYS), ids=list(_DISPLAYS))
@pytest.mark.parametrize("width", [256, 300, 400, 512, 1024])
@pytest.mark.parametrize("title", [None, "pneumonia 0.93 (threshold 0.50)", _LONG_TITLE])
def test_no_text_runs_off_the_png(display: str, width: int, title: str | None) -> None:
    fig = _drawn(title=title, width=width, display=_DISPLAYS[display])
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    fig_w, fig_h = fig.bbox.width, fig.bbox.height
    texts = list(_shown_texts(fig))
    assert len(texts) >= 4  # caption, the bar's three labels (+ title, panel labels)
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig_w and box.y0 >= 0 and box.y1 <= fig_h, (
            f"{text.get_text()!r} drawn at x {box.x0:.0f}..{box.x1:.0f}, "
            f"y {box.y0:.0f}..{box.y1:.0f} on a {fig_w:.0f}x{fig_h:.0f} PNG"
        )


@pytest.mark.parametrize("validated", [False, True])
@pytest.mark.parametrize("display", list(_DISPLAYS), ids=list(_DISPLAYS))
def test_a_wrapped_caption_keeps_every_word(display: str, validated: bool) -> None:
    fig = _drawn(width=256, display=_DISPLAYS[display], validated=validated)
    caption = fig.texts[-1].get_text()
    assert "\n" in caption  # it did not fit one line at 256 px
    assert caption.replace("\n", " ") == overlay.caption(validated=validated)
    # the notice is never split over two lines
    assert caption.endswith("\nNot for clinical use.") is not validated


@pytest.mark.parametrize(
    ("width", "display"), [(512, None), (1024, _DISPLAYS["two panels, landscape"])]
)
def test_nothing_wraps_at_the_service_widths(width: int, display: np.ndarray | None) -> None:
    title = "normal: abnormal 0.1000 < threshold 0.4862"  # the service's shortest wording
    fig = _drawn(title=title, width=width, display=display)
    assert all("\n" not in t.get_text() for t in _shown_texts(fig))

"""Draw a heatmap over the image the model saw: a PNG with a colour bar and a caption.

The image is shown in gray exactly as the model received it (``PreprocessedImage.pixels``,
values in [0, 1], no further windowing), pixel for pixel (nearest-neighbour enlargement, so
nothing is smoothed that the model did not see). The heatmap is blended over it in a
perceptually uniform colour map (``inferno`` or ``viridis``) with an opacity proportional to
the heat: ``out = (1 - a * h) * gray + a * h * colour(h)`` with ``a = alpha``. Where the map is
0 the image is untouched, so the overlay never hides anatomy the model ignored; where it is 1
the colour covers ``alpha`` of the pixel. A colour bar from "0 low" to "1 high" and an
optional title (class and score) make the figure readable on its own.

Display resolution. The model sees a small input (64 px, say), but a reader wants to see the
anatomy: given ``display`` (the same image preprocessed the same way at display size,
:func:`display_size`), :func:`render_overlay` draws two panels side by side, the model input
pixel for pixel on the left and, on the right, the display image with the heatmap upsampled
onto it (bilinear, :func:`upsample_heatmap`), so the map reads as a smooth region over sharp
anatomy instead of a few coloured blocks.

A result that is not valid (the image out of distribution or outside the model's intended
use) gets a warning band above the figure, :func:`add_banner`: a red band with white text, so
a viewer that shows only the picture (a PACS showing the DICOM Secondary Capture) shows the
warning with it.

Matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` with the Agg
canvas, never ``pyplot``: no global state, no display, safe in threads and in the service.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from radlens.models.errors import ConfigurationError, InvalidImageError

__all__ = [
    "BANNER_RGB",
    "COLORMAPS",
    "DEFAULT_WIDTH",
    "MAX_DISPLAY_SIDE",
    "add_banner",
    "blend",
    "caption",
    "display_size",
    "render_overlay",
    "upsample_heatmap",
]

COLORMAPS = ("inferno", "viridis")
"""Perceptually uniform colour maps accepted for the heatmap."""

DEFAULT_WIDTH = 512
"""Width of the rendered PNG in pixels."""

MAX_DISPLAY_SIDE = 1024
"""Longest side of the display image an overlay is drawn on (:func:`display_size`)."""

BANNER_RGB = (170, 0, 0)
"""Background of the warning band (:func:`add_banner`); its text is white (contrast 8:1)."""

_DPI = 100
_CAPTION_VALIDATED = (
    "Grad-CAM: what raised the score, relative within this image; not a finding's outline."
)
_NOTICE = "Not for clinical use."
_CAPTION = f"{_CAPTION_VALIDATED} {_NOTICE}"


def caption(*, validated: bool = False) -> str:
    """The one-line caption under every overlay: what the map is, and that it is not for
    clinical use unless the model that made it is ``validated`` (its manifest says
    ``validated_for_clinical_use``)."""
    return _CAPTION_VALIDATED if validated else _CAPTION


_TITLE_POINTS = 11.0
_TEXT_MARGIN = 16  # pixels a title leaves free across the PNG's width (as gradcam's wording)
_CAPTION_POINTS = 6.5
_PANEL_POINTS = 8.0
_LINE_SPACING = 1.2  # matplotlib's default line spacing, in font sizes


def _text_lines(text: str, points: float, room: float, *, keep: str = "") -> list[str]:
    """``text`` as the lines that fit ``room`` pixels at ``points`` (DejaVu Sans, 100 dpi):
    one line when it fits, else wrapped at spaces, never inside the phrase ``keep`` (the
    not-for-clinical-use notice reads whole); a word wider than ``room`` keeps a line of its
    own. Measured with the Agg renderer that draws it (hinted widths: 6% wider than the
    outline widths at 6.5 points), so a line that fits here is not clipped in the PNG."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, _DPI)
    font = FontProperties(size=points)

    def width(line: str) -> float:
        return float(renderer.get_text_width_height_descent(line, font, ismath=False)[0])

    if width(text) <= room:
        return [text]
    glued = text.replace(keep, keep.replace(" ", "\0")) if keep else text
    lines: list[str] = []
    for word in (w.replace("\0", " ") for w in glued.split(" ") if w):
        if lines and width(f"{lines[-1]} {word}") <= room:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _draw_title_and_caption(
    fig: Any,
    fig_h: float,
    titles: Sequence[str],
    notes: Sequence[str],
    *,
    title_top: float,
    left: float,
) -> None:
    """The title's lines centred ``title_top`` inches below the top of a figure ``fig_h``
    inches high (none: no title), and the caption's lines at the bottom left, from ``left``
    (a fraction of the width)."""
    if titles:
        fig.text(
            0.5,
            1.0 - title_top / fig_h,
            "\n".join(titles),
            ha="center",
            va="top",
            fontsize=_TITLE_POINTS,
        )
    fig.text(
        left,
        0.08 / fig_h,
        "\n".join(notes),
        ha="left",
        va="bottom",
        fontsize=_CAPTION_POINTS,
        color="0.3",
    )


def _extra_lines_in(lines: Sequence[str], points: float) -> float:
    """Inches the lines after the first of a wrapped text take."""
    return (len(lines) - 1) * points * _LINE_SPACING / 72.0


def _check_map(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what} must be a numpy array (H, W). Received: {type(value).__name__}")
    if value.dtype.kind not in "biuf":
        raise InvalidImageError(f"{what} must hold real numbers. Received dtype {value.dtype}")
    array = value[..., 0] if value.ndim == 3 and value.shape[-1] == 1 else value
    if array.ndim != 2 or 0 in array.shape:
        raise InvalidImageError(f"{what} must have shape (H, W). Received shape {value.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InvalidImageError(f"{what} contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise InvalidImageError(
            f"{what} must have values in [0, 1]. Received min {low:.4g}, max {high:.4g}"
        )
    return np.clip(array, 0.0, 1.0)


def _check_options(alpha: Any, cmap: Any) -> tuple[float, str]:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating):
        raise TypeError(f"alpha must be a number in [0, 1]. Received: {alpha!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigurationError(f"alpha must be in [0, 1]. Received: alpha={alpha!r}")
    if cmap not in COLORMAPS:
        raise ConfigurationError(f"cmap must be one of {', '.join(COLORMAPS)}. Received: {cmap!r}")
    return float(alpha), str(cmap)


def blend(
    pixels: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4, cmap: str = "inferno"
) -> np.ndarray:
    """The gray image with the heatmap blended over it, without legend, as RGB bytes.

    Useful where a plain image is wanted (TensorBoard image summaries, thumbnails).

    Args:
        pixels: the image as the model saw it, ``(H, W)`` (or ``(H, W, 1)``) in [0, 1].
        heatmap: a Grad-CAM map of the same shape, in [0, 1].
        alpha: opacity of the colour where the heatmap is 1 (opacity is ``alpha * heat``).
        cmap: ``"inferno"`` or ``"viridis"``.

    Returns:
        uint8 ``(H, W, 3)``.

    Raises:
        TypeError: an argument has the wrong type.
        InvalidImageError: shapes differ, are not 2-D, or values are outside [0, 1] / NaN.
        ConfigurationError: alpha outside [0, 1] or an unknown colour map.
    """
    return _to_uint8(_blend(*_check_pair(pixels, heatmap), *_check_options(alpha, cmap)))


def _check_pair(pixels: Any, heatmap: Any) -> tuple[np.ndarray, np.ndarray]:
    gray = _check_map(pixels, "pixels")
    heat = _check_map(heatmap, "heatmap")
    if gray.shape != heat.shape:
        raise InvalidImageError(
            f"heatmap shape {heat.shape} differs from the image shape {gray.shape}; compute "
            "the heatmap at the input resolution"
        )
    return gray, heat


def _blend(gray: np.ndarray, heat: np.ndarray, alpha: float, cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    colour = colormaps[cmap](heat)[..., :3].astype(np.float32)
    weight = (alpha * heat)[..., np.newaxis]
    return (1.0 - weight) * gray[..., np.newaxis] + weight * colour


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def display_size(rows: int, columns: int, *, max_side: int = MAX_DISPLAY_SIDE) -> tuple[int, int]:
    """``(height, width)`` to show a ``rows`` x ``columns`` image at: its own size, or scaled
    down (aspect ratio kept) so its longest side is ``max_side``.

    Raises:
        InvalidImageError: a size below 1.
        ConfigurationError: ``max_side`` below 16.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16:
        raise ConfigurationError(f"max_side must be an int >= 16. Received: {max_side!r}")
    if rows < 1 or columns < 1:
        raise InvalidImageError(f"image size must be at least 1x1. Received: {rows}x{columns}")
    scale = min(1.0, max_side / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def upsample_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The heatmap resized to ``shape`` ``(H, W)`` with bilinear interpolation (pixel
    centres aligned), clipped to [0, 1]: a smooth map to lay over a larger image.

    Raises:
        TypeError / InvalidImageError: as :func:`blend` for the heatmap; a shape below 1x1.
    """
    heat = _check_map(heatmap, "heatmap")
    height, width = (int(v) for v in shape)
    if height < 1 or width < 1:
        raise InvalidImageError(f"shape must be at least (1, 1). Received: {shape!r}")
    if heat.shape == (height, width):
        return heat
    from PIL import Image

    resized = Image.fromarray(heat, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def render_overlay(
    pixels: np.ndarray,
    heatmap: np.ndarray,
    *,
    title: str | None = None,
    alpha: float = 0.4,
    cmap: str = "inferno",
    width: int | None = None,
    display: np.ndarray | None = None,
    validated: bool = False,
) -> bytes:
    """Render the image with its heatmap, a colour bar and a caption as a PNG.

    Layout (``width`` pixels wide, height following the image's aspect ratio): an optional
    title line, the blended image (see :func:`blend`) on the left, a colour bar labelled
    "0 low" .. "1 high" on the right, and a one-line caption saying what the map means.

    Args:
        pixels: the image as the model saw it, ``(H, W)`` (or ``(H, W, 1)``) in [0, 1] —
            ``PreprocessedImage.pixels`` resized to the model input.
        heatmap: the Grad-CAM map for that image, same shape, in [0, 1].
        title: e.g. ``"pneumonia 0.93 (threshold 0.50)"``; None = no title line.
        alpha: opacity of the colour where the heatmap is 1.
        cmap: ``"inferno"`` (default) or ``"viridis"``.
        width: PNG width in pixels, 256..2048; None = 512 (1024 with ``display``).
        display: the same image at display resolution, ``(H2, W2)`` in [0, 1] (preprocessed
            like ``pixels`` but resized to :func:`display_size` of the source). Given, the PNG
            has two panels: ``pixels`` as the model saw it, and ``display`` with the heatmap
            upsampled onto it (:func:`upsample_heatmap`); both shown at ``display``'s aspect
            ratio, the source's.
        validated: the model's manifest says ``validated_for_clinical_use``; only then does
            the caption leave out "Not for clinical use." (:func:`caption`).

    Returns:
        The PNG file as bytes (RGBA, ``width`` pixels wide).

    Raises:
        TypeError: an argument has the wrong type.
        InvalidImageError: shapes differ, are not 2-D, or values are outside [0, 1] / NaN.
        ConfigurationError: alpha outside [0, 1], an unknown colour map or a bad width.
    """
    gray, heat = _check_pair(pixels, heatmap)
    alpha_value, cmap_name = _check_options(alpha, cmap)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None. Received: {type(title).__name__}")
    if width is None:
        width = DEFAULT_WIDTH * (1 if display is None else 2)
    if isinstance(width, bool) or not isinstance(width, int) or not 256 <= width <= 2048:
        raise ConfigurationError(f"width must be an int in 256..2048. Received: {width!r}")
    if display is not None:
        big = _check_map(display, "display")
        return _render_pair(
            gray, big, heat, title, alpha_value, cmap_name, width, validated=validated
        )

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = gray.shape
    # fractions of the figure width: image, gap, colour bar, its labels (the bar moves left on
    # a PNG too narrow for its labels beside it)
    bar_w = 0.035
    bar_x = _bar_x(0.84, bar_w, width)
    image_w = bar_x - 0.04
    # the title and the caption (which says "Not for clinical use.") wrap rather than run off
    # a narrow PNG; each is one line at the default width
    titles = _text_lines(title, _TITLE_POINTS, width - _TEXT_MARGIN) if title else []
    notes = _text_lines(
        caption(validated=validated), _CAPTION_POINTS, 0.98 * width - 4, keep=_NOTICE
    )
    top_pad = (0.45 + _extra_lines_in(titles, _TITLE_POINTS)) if title else 0.12  # inches
    bottom_pad = 0.35 + _extra_lines_in(notes, _CAPTION_POINTS)
    fig_w = width / _DPI
    image_h_in = fig_w * image_w * rows / cols
    fig_h = image_h_in + top_pad + bottom_pad
    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    FigureCanvasAgg(fig)
    bottom = bottom_pad / fig_h
    height = image_h_in / fig_h

    ax = fig.add_axes((0.02, bottom, image_w - 0.02, height))
    ax.imshow(
        _to_uint8(_blend(gray, heat, alpha_value, cmap_name)),
        interpolation="nearest",
        aspect="auto",
    )
    ax.set_axis_off()

    _colorbar(fig, (bar_x, bottom, bar_w, height), cmap_name)

    _draw_title_and_caption(fig, fig_h, titles, notes, title_top=0.08, left=0.02)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


_BAR_LABELS = ("0 low", "0.5", "1 high")
_BAR_LABEL_POINTS = 8.0
_BAR_TICK_POINTS = 7.0  # tick length and label pad, matplotlib's defaults (3.5 points each)


def _bar_x(preferred: float, bar_w: float, width: int) -> float:
    """The colour bar's left edge as a fraction of the figure width: ``preferred``, or further
    left when its labels would not fit between the bar and the PNG's right edge."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, _DPI)
    font = FontProperties(size=_BAR_LABEL_POINTS)
    label = max(
        renderer.get_text_width_height_descent(text, font, ismath=False)[0] for text in _BAR_LABELS
    )
    room = label + _BAR_TICK_POINTS * _DPI / 72.0 + 2.0  # pixels right of the bar
    return min(preferred, 1.0 - bar_w - room / width)


def _colorbar(fig: Any, rect: tuple[float, float, float, float], cmap: str) -> None:
    """The 0-1 heat scale beside the image, in axes at ``rect`` (figure fractions)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = fig.add_axes(rect)
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), cax=cax)
    bar.set_ticks([0.0, 0.5, 1.0], labels=list(_BAR_LABELS))
    bar.ax.tick_params(labelsize=_BAR_LABEL_POINTS)


def _display_overlay(display: np.ndarray, heat: np.ndarray, alpha: float, cmap: str) -> np.ndarray:
    """uint8 (H2, W2, 3): the display image with the heatmap upsampled onto it."""
    return _to_uint8(_blend(display, upsample_heatmap(heat, display.shape), alpha, cmap))


def _resize_gray(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 ``(H, W)`` resized to ``size`` (width, height) with Lanczos, clipped to [0, 1]."""
    if (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    from PIL import Image

    resized = Image.fromarray(pixels, mode="F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _render_pair(
    gray: np.ndarray,
    display: np.ndarray,
    heat: np.ndarray,
    title: str | None,
    alpha: float,
    cmap: str,
    width: int,
    *,
    validated: bool = False,
) -> bytes:
    """Two panels (model input | display-resolution overlay), a colour bar and a caption.

    The display image is brought to the right panel's own pixel size first (Lanczos), the
    heatmap upsampled to that size and blended there, and the result drawn 1:1: what the PNG
    shows, at a fraction of the cost of blending a 1024 px image for matplotlib to shrink."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = display.shape
    # fractions of the figure width: two panels, then the colour bar (moved left, the panels
    # narrower, on a PNG too narrow for the bar's labels)
    bar_w = 0.025
    bar_x = _bar_x(0.88, bar_w, width)
    panel_w = (bar_x - 0.04) / 2
    titles = _text_lines(title, _TITLE_POINTS, width - _TEXT_MARGIN) if title else []
    notes = _text_lines(
        caption(validated=validated), _CAPTION_POINTS, 0.99 * width - 4, keep=_NOTICE
    )
    labels = [
        _text_lines(text, _PANEL_POINTS, panel_w * width)
        for text in (f"model input {gray.shape[1]}x{gray.shape[0]}", "Grad-CAM on the image")
    ]
    label_lines = max(labels, key=len)
    # inches: title line(s) and panel labels; the caption's line(s)
    top_pad = (0.6 + _extra_lines_in(titles, _TITLE_POINTS)) if title else 0.3
    top_pad += _extra_lines_in(label_lines, _PANEL_POINTS)
    bottom_pad = 0.35 + _extra_lines_in(notes, _CAPTION_POINTS)
    fig_w = width / _DPI
    image_h_in = fig_w * panel_w * rows / cols
    fig_h = image_h_in + top_pad + bottom_pad
    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    FigureCanvasAgg(fig)
    bottom = bottom_pad / fig_h
    height = image_h_in / fig_h
    left_ax = fig.add_axes((0.01, bottom, panel_w, height))
    left_ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    left_ax.set_title("\n".join(labels[0]), fontsize=_PANEL_POINTS, pad=3)
    right_ax = fig.add_axes((0.02 + panel_w, bottom, panel_w, height))
    panel = (max(1, round(panel_w * width)), max(1, round(image_h_in * _DPI)))
    shown = _resize_gray(display, panel) if panel[0] < cols else display
    overlay = _display_overlay(shown, heat, alpha, cmap)
    right_ax.imshow(overlay, interpolation="nearest", aspect="auto")
    # no size: ``display`` is the source scaled down to at most 1024 px a side, and the title
    # named that size as the image's (a hip CR of 1760x2140 read "842x1024"; QA round 54)
    right_ax.set_title("\n".join(labels[1]), fontsize=_PANEL_POINTS, pad=3)
    for ax in (left_ax, right_ax):
        ax.set_axis_off()
    _colorbar(fig, (bar_x, bottom, bar_w, height), cmap)
    _draw_title_and_caption(fig, fig_h, titles, notes, title_top=0.06, left=0.01)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def add_banner(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``image`` with a warning band above it: ``lines`` in white on :data:`BANNER_RGB`, the
    first in bold and larger, each wrapped at word boundaries to the image's width.

    For a result that must not be read as one (out of distribution, outside the intended
    use): the band is part of the pixels, so a viewer that shows only the picture shows it.
    The text is drawn with the DejaVu Sans fonts matplotlib ships (no system font needed), at
    a size that follows the width (a 1024 px figure: 26 px for the first line, 20 px below).

    Args:
        image: uint8 RGB ``(H, W, 3)``, e.g. the overlay PNG's pixels.
        lines: one or more lines of text (the first the headline).

    Returns:
        uint8 ``(H + band, W, 3)``: the band, then ``image`` unchanged.

    Raises:
        TypeError: ``image`` not a numpy array, ``lines`` not a sequence of str.
        InvalidImageError: ``image`` not uint8 ``(H, W, 3)``, or ``lines`` empty.
    """
    from PIL import Image, ImageDraw

    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W, 3). Received: {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InvalidImageError(
            f"image must be uint8 RGB (H, W, 3). Received dtype {image.dtype}, shape {image.shape}"
        )
    if isinstance(lines, str) or not all(isinstance(line, str) for line in lines):
        raise TypeError(f"lines must be a sequence of str. Received: {lines!r}")
    if not any(line.strip() for line in lines):
        raise InvalidImageError("a banner needs at least one line of text. Received none")
    width = image.shape[1]
    pad = max(6, width // 80)
    head_px = min(28, max(12, round(width / 40)))
    body_px = max(11, round(head_px * 0.78))
    rows: list[tuple[Any, str]] = []
    for index, line in enumerate(line for line in lines if line.strip()):
        font = _banner_font(head_px if index == 0 else body_px, bold=index == 0)
        rows += [(font, text) for text in _wrap(line, font, width - 2 * pad)]
    heights = [round(font.size * 1.3) for font, _ in rows]
    band = Image.new("RGB", (width, sum(heights) + 2 * pad), BANNER_RGB)
    draw = ImageDraw.Draw(band)
    top = pad
    for (font, text), height in zip(rows, heights, strict=True):
        draw.text((pad, top), text, font=font, fill=(255, 255, 255))
        top += height
    return np.concatenate([np.asarray(band, dtype=np.uint8), image], axis=0)


def _banner_font(size: int, *, bold: bool) -> Any:
    """matplotlib's own DejaVu Sans (regular or bold) at ``size`` pixels."""
    from pathlib import Path

    import matplotlib
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path(), "fonts", "ttf", name)), size)


def _wrap(text: str, font: Any, room: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``room`` pixels in ``font`` (a word
    wider than that alone is broken inside it)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= room:
            current = candidate
            continue
        if current:
            lines.append(current)
        while len(word) > 1 and font.getlength(word) > room:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > room:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines

"""Imaging commands: ``radlens inspect`` (metadata and pixel statistics of one file) and
``radlens filter`` (a classic filter applied to the preprocessed image, written as a PNG).

Only typer, the standard library and ``models.dicomread``'s pixel limit (a standard-library
module) are imported here; ``models.preprocessing`` and ``models.ops`` (numpy, pydicom,
Pillow — never TensorFlow) are imported inside the command bodies, so ``radlens inspect``
stays light.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from radlens.cli.common import fail
from radlens.models.dicomread import DEFAULT_MAX_PIXELS  # standard library only, no numpy

if TYPE_CHECKING:
    import numpy as np

FILTER_KINDS = ("sobel_h", "sobel_v", "blur", "outline")  # for --help; models.ops decides
FILTER_BORDERS = ("reflect", "zero")  # for --help; models.ops.BORDERS decides

_SIDE = math.isqrt(DEFAULT_MAX_PIXELS)
PIXEL_LIMIT = (
    f"{DEFAULT_MAX_PIXELS:,} pixels ({DEFAULT_MAX_PIXELS / 1e6:g} MP, e.g. {_SIDE}x{_SIDE})"
)
"""What preprocessing accepts, for an image's frame and for a resize target alike."""

PathArg = Annotated[
    Path, typer.Argument(help=f"A DICOM, PNG or JPEG file, frames of at most {PIXEL_LIMIT}.")
]
WindowOpt = Annotated[
    str | None,
    typer.Option(
        "--window",
        help="CT window preset (lung, mediastinum, bone, brain, soft_tissue); "
        "default: the file's own window, else min-max.",
    ),
]
SizeOpt = Annotated[
    str | None,
    typer.Option(
        "--size",
        help=f"Resize to HxW (e.g. 224x224) or N (NxN), H x W at most {PIXEL_LIMIT}; "
        "default: native.",
    ),
]


def parse_size(text: str | None) -> tuple[int, int] | None:
    """Parse ``--size``: ``"224"`` -> (224, 224), ``"256x192"`` -> (256, 192) (height x width).

    H x W may be at most ``DEFAULT_MAX_PIXELS``, the limit preprocessing applies to its
    ``size`` (and to an image's frame); no side has a limit of its own."""
    if text is None:
        return None
    shape = f"--size must be N or HxW with positive integers, H x W at most {PIXEL_LIMIT}"
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        fail(f"{shape}; got {text!r}")
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        fail(f"{shape}; got {text!r}")
    if values[0] * values[1] > DEFAULT_MAX_PIXELS:
        fail(f"{shape}; got {text!r} ({values[0] * values[1]:,} pixels)")
    return values[0], values[1]


def _read(path: Path) -> bytes:
    if path.is_dir():
        fail(f"{path} is a folder; give one DICOM, PNG or JPEG file")
    return path.read_bytes()  # a missing file is reported by the CLI boundary (exit 2)


def _stats(pixels: np.ndarray) -> dict[str, Any]:
    return {
        "shape": list(pixels.shape),
        "dtype": str(pixels.dtype),
        "min": float(pixels.min()),
        "max": float(pixels.max()),
        "mean": float(pixels.mean()),
        "std": float(pixels.std()),
    }


def inspect(
    path: PathArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    window: WindowOpt = None,
    size: SizeOpt = None,
) -> None:
    """Show an image's metadata (no patient identifiers) and its preprocessed pixel statistics."""
    from radlens.models.preprocessing import PREPROCESSING_VERSION, preprocess

    target = parse_size(size)
    image = preprocess(_read(path), size=target, window=window)
    meta = image.metadata.to_dict()
    stats = _stats(image.pixels)
    if as_json:
        report = {
            "path": str(path),
            "preprocessing_version": PREPROCESSING_VERSION,
            "metadata": meta,
            "pixels": stats,
        }
        typer.echo(json.dumps(report, indent=2))
        return
    ts = meta["transfer_syntax_uid"]
    ts_text = f"{ts} ({meta['transfer_syntax_name']})" if ts else "-"
    lines = [
        f"file: {path}",
        f"format: {meta['format']}",
        f"modality: {meta['modality'] or '-'}",
        f"body part: {meta['body_part'] or '-'}",
        f"photometric interpretation: {meta['photometric_interpretation'] or '-'}",
        f"transfer syntax: {ts_text}",
        f"rows x columns: {meta['rows']} x {meta['columns']}",
        f"frames: {meta['frames']} (using frame {meta['frame_index']})",
        f"bits stored: {meta['bits_stored'] if meta['bits_stored'] is not None else '-'}",
        f"window: {meta['window']}",
        *(
            [f"EXIF orientation: {meta['exif_orientation']} (turned as a viewer shows it)"]
            if meta["exif_orientation"]
            else []
        ),
        *([_blank_line(meta)] if meta["blank"] else []),
        f"preprocessed: shape {tuple(stats['shape'])} {stats['dtype']}, "
        f"min {stats['min']:.4f}, max {stats['max']:.4f}, "
        f"mean {stats['mean']:.4f}, std {stats['std']:.4f}",
    ]
    typer.echo("\n".join(lines))


def _blank_line(meta: dict[str, Any]) -> str:
    if meta["format"] == "dicom" and meta["frames"] > 1:
        return (
            f"blank: every stored pixel of frame {meta['frame_index']} has one value (the "
            "service leaves blank frames out of an instance's aggregate)"
        )
    return "blank: every stored pixel has one value (the service refuses it: blank-image)"


def to_display(response: np.ndarray, kind: str) -> np.ndarray:
    """Rescale a filter response to uint8 for viewing.

    ``blur`` keeps the [0, 1] scale of the input; ``sobel_h``, ``sobel_v`` and ``outline``
    give signed responses, shown as their magnitude scaled so the 99.5th percentile is white
    (scaling by the maximum would let one burned-in marker make the whole image black).
    """
    import numpy as np

    if kind == "blur":
        scaled = np.clip(response, 0.0, 1.0)
    else:
        magnitude = np.abs(response)
        peak = float(np.percentile(magnitude, 99.5)) or float(magnitude.max())
        scaled = np.clip(magnitude / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(magnitude)
    return np.rint(scaled * 255.0).astype(np.uint8)


def filter_image(
    path: PathArg,
    kind: Annotated[str, typer.Option("--kind", help=f"Filter: {', '.join(FILTER_KINDS)}.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the PNG (e.g. edges.png).")],
    window: WindowOpt = None,
    size: SizeOpt = None,
    border: Annotated[
        str,
        typer.Option(
            "--border",
            help="Outside the image: reflect (mirrored, the default: no false edge at the "
            "frame) or zero (zero padding, exactly the models' filter front-end).",
        ),
    ] = "reflect",
) -> None:
    """Apply a classic filter to the preprocessed image and write it as an 8-bit PNG."""
    from radlens.models.ops import BORDERS, FILTER_NAMES, apply_filter

    if kind not in FILTER_NAMES:
        fail(f"--kind must be one of {', '.join(FILTER_NAMES)}; got {kind!r}")
    if border not in BORDERS:
        fail(f"--border must be one of {', '.join(FILTER_BORDERS)}; got {border!r}")
    if out.suffix.lower() != ".png":
        fail(f"--out must be a file name ending in .png, e.g. edges.png; got {str(out)!r}")
    if not out.parent.is_dir():
        fail(f"the folder for --out does not exist: {out.parent}")
    target = parse_size(size)

    from PIL import Image

    from radlens.models.preprocessing import preprocess

    image = preprocess(_read(path), size=target, window=window)
    response = apply_filter(image.pixels, kind, border=border)
    Image.fromarray(to_display(response, kind)).save(out, format="PNG")
    typer.echo(
        f"wrote {out} ({kind}, {image.pixels.shape[0]}x{image.pixels.shape[1]}, "
        f"window {image.metadata.window}, border {border})"
    )


def register(app: typer.Typer) -> None:
    """Add ``inspect`` and ``filter`` to the ``radlens`` command."""
    app.command("inspect")(inspect)
    app.command("filter")(filter_image)

"""A pydicom decoding plugin for JPEG Baseline and Extended: pydicom's own pick,
pylibjpeg-libjpeg, after a check that the frame's scan is not cut short.

pylibjpeg-libjpeg decodes a JPEG scan that stops early (at an EOI marker appended to a cut
stream, or at the end of the data) without an error, the rest of the image filled in. The
frame goes through :func:`models.codecs.check_scan` first (a 1/8-scale Pillow decode that
refuses such a scan), then to pydicom's pylibjpeg plugin unchanged, so every frame decodes to
exactly the pixels it did before. ``models.codecs.register`` adds it as
``models.codecs.LOSSY_JPEG_PLUGIN``; ``models.preprocessing`` asks for it by name.

**12-bit colour** (JPEG Extended, 3 components, Photometric Interpretation YBR_FULL or
YBR_FULL_422): pylibjpeg-libjpeg returns the samples as stored, YCbCr, and pydicom 3.0's
conversion to RGB takes 8-bit samples only (it raised "Invalid ndarray.dtype 'uint16' for
color space conversion": every such file was refused as undecodable; pydicom converts deeper
samples from 3.1). :func:`ybr_full_to_rgb` converts them here, by the same equations (PS3.3
C.7.6.3.1.2) and rounding as pydicom's 8-bit conversion, centred on 2**(P-1) for the
codestream's precision P, and the frame goes on as RGB. No frame that decoded before takes
this path.

**A sequential scan that says Se=0** (T.81 fixes 63; libjpeg-turbo ignores it, libjpeg
refuses the frame): :func:`models.codecs.full_spectrum_scans` writes 63 there first, so such
a frame decodes (QA round 80: the NEMA WG04 MR1_JPLY head MR was refused as undecodable).
A frame that libjpeg decoded before is passed on unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydicom.pixels.decoders import pylibjpeg

from radlens.models.codecs import LOSSY_JPEG_SYNTAXES, check_scan, full_spectrum_scans

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

DECODER_DEPENDENCIES = {ts: pylibjpeg.DECODER_DEPENDENCIES[ts] for ts in LOSSY_JPEG_SYNTAXES}


def is_available(tsyntax: str) -> bool:
    """True for JPEG Baseline and Extended when pydicom's pylibjpeg plugin is available."""
    return tsyntax in LOSSY_JPEG_SYNTAXES and pylibjpeg.is_available(tsyntax)


# PS3.3 C.7.6.3.1.2, as pydicom.pixels.processing applies it to 8-bit samples: rows Y, Cb, Cr
_YBR_TO_RGB = np.asarray(
    [
        [1.000, 1.000, 1.000],
        [0.000, -0.114 * 1.772 / 0.587, 1.772],
        [1.402, -0.299 * 1.402 / 0.587, 0.000],
    ],
    dtype=np.float32,
)
_YBR_FULL = ("YBR_FULL", "YBR_FULL_422")


def ybr_full_to_rgb(ybr: np.ndarray, precision: int) -> np.ndarray:
    """YBR_FULL samples of ``precision`` bits (..., 3) -> RGB of the same dtype: pydicom's
    YBR_FULL -> RGB conversion (round half up, clip to the sample range) with the chroma
    centred on 2**(precision - 1) instead of 128.

    Example:
        >>> ybr_full_to_rgb(np.array([[2048, 2048, 2048]], np.uint16), 12).tolist()
        [[2048, 2048, 2048]]
    """
    half = float(1 << (precision - 1))
    values = ybr.astype(np.float32)
    values -= [0.0, half, half]
    np.matmul(values, _YBR_TO_RGB, out=values)
    values += 0.5
    np.floor(values, out=values)
    np.clip(values, 0, (1 << precision) - 1, out=values)
    return values.astype(ybr.dtype)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Check the frame's scan, then decode it as pydicom's pylibjpeg plugin does (pydicom
    calls this); a 12-bit YBR_FULL frame comes back as RGB (see the module docstring)."""
    codestream = full_spectrum_scans(bytes(src))
    check_scan(codestream)
    frame = pylibjpeg._decode_frame(codestream, runner)
    if runner.samples_per_pixel != 3 or runner.photometric_interpretation not in _YBR_FULL:
        return frame
    rows, columns = runner.rows, runner.columns
    if len(frame) != rows * columns * 3 * 2:  # 8-bit samples: pydicom converts those
        return frame
    from pydicom.pixels.utils import _get_jpg_parameters

    precision = int(_get_jpg_parameters(bytes(src)).get("precision") or runner.bits_stored)
    ybr = np.frombuffer(frame, dtype="<u2").reshape(rows, columns, 3)
    runner.set_option("photometric_interpretation", "RGB")
    return bytearray(ybr_full_to_rgb(ybr, precision).tobytes())

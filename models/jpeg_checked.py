"""A pydicom decoding plugin for JPEG Baseline and Extended: pydicom's own pick,
pylibjpeg-libjpeg, after a check that the frame's scan is not cut short.

pylibjpeg-libjpeg decodes a JPEG scan that stops early (at an EOI marker appended to a cut
stream, or at the end of the data) without an error, the rest of the image filled in. The
frame goes through :func:`models.codecs.check_scan` first (a 1/8-scale Pillow decode that
refuses such a scan), then to pydicom's pylibjpeg plugin unchanged, so every frame decodes to
exactly the pixels it did before. ``models.codecs.register`` adds it as
``models.codecs.LOSSY_JPEG_PLUGIN``; ``models.preprocessing`` asks for it by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.pixels.decoders import pylibjpeg

from radlens.models.codecs import LOSSY_JPEG_SYNTAXES, check_scan

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

DECODER_DEPENDENCIES = {ts: pylibjpeg.DECODER_DEPENDENCIES[ts] for ts in LOSSY_JPEG_SYNTAXES}


def is_available(tsyntax: str) -> bool:
    """True for JPEG Baseline and Extended when pydicom's pylibjpeg plugin is available."""
    return tsyntax in LOSSY_JPEG_SYNTAXES and pylibjpeg.is_available(tsyntax)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Check the frame's scan, then decode it as pydicom's pylibjpeg plugin does (pydicom
    calls this)."""
    check_scan(bytes(src))
    return pylibjpeg._decode_frame(src, runner)

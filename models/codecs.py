"""A pydicom decoding plugin on imagecodecs: JPEG 2000 (and HTJ2K), JPEG-LS, lossless JPEG.

pydicom's own plugins for these syntaxes (pylibjpeg-openjpeg, pyjpegls, pylibjpeg-libjpeg)
hold Python's GIL for the whole decode, during which no other thread of the service runs
Python, the event loop included (figures: docs/benchmarks/preprocess.md). imagecodecs
wraps the same libraries (OpenJPEG, CharLS) and releases the GIL while they work, so two
uploads decode at once and the server keeps answering meanwhile. Lossless JPEG goes to
libjpeg-turbo instead of libjpeg: the same pixels (the process is exact), faster.
Lossy JPEG stays with pydicom's pick: decoders may round their inverse DCT differently.

The plugin follows pydicom's decoder-plugin contract (``is_available``,
``DECODER_DEPENDENCIES`` and a frame function; see pydicom's "Pixel Data Decoder Plugins"
guide) and returns the frame's bytes exactly as pydicom's pylibjpeg and pyjpegls plugins do,
so pydicom applies the same corrections (J2K sign, JPEG-LS near-lossless signedness) after
it. ``models.preprocessing`` asks for it by name (``PLUGIN``) and falls back to pydicom's
default pick when it refuses a file. tests/models/test_codecs.py checks that every JPEG 2000,
JPEG-LS and lossless JPEG file shipped with pydicom and pydicom-data (and in ../shared/data)
decodes to the same array both ways, and round-trips HTJ2K and lossless JPEG it encodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import imagecodecs
import numpy as np
from pydicom import uid

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

PLUGIN = "imagecodecs"

J2K_SYNTAXES = (
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
)
JPEG_LS_SYNTAXES = (uid.JPEGLSLossless, uid.JPEGLSNearLossless)
# lossless JPEG (process 14) through libjpeg-turbo: exact, so the same pixels as libjpeg's
JPEG_LOSSLESS_SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1)
SYNTAXES = J2K_SYNTAXES + JPEG_LS_SYNTAXES + JPEG_LOSSLESS_SYNTAXES

DECODER_DEPENDENCIES = {ts: ("numpy", "imagecodecs") for ts in SYNTAXES}


def is_available(tsyntax: str) -> bool:
    """True when imagecodecs was built with the codec ``tsyntax`` needs."""
    if tsyntax in J2K_SYNTAXES:
        return bool(imagecodecs.JPEG2K.available)
    if tsyntax in JPEG_LS_SYNTAXES:
        return bool(imagecodecs.JPEGLS.available)
    if tsyntax in JPEG_LOSSLESS_SYNTAXES:
        return bool(imagecodecs.JPEG8.available)
    return False


def _decode_frame(src: bytes, runner: DecodeRunner) -> memoryview:
    """Decode one encapsulated frame to its samples' bytes (pydicom calls this)."""
    tsyntax = runner.transfer_syntax
    if tsyntax in J2K_SYNTAXES:
        # one thread: the service already runs one decode per inference stream
        arr = imagecodecs.jpeg2k_decode(src, numthreads=1)
        # OpenJPEG undoes the multiple-component transform, as pylibjpeg-openjpeg does
        if runner.photometric_interpretation in ("YBR_ICT", "YBR_RCT"):
            runner.set_option("photometric_interpretation", "RGB")
    elif tsyntax in JPEG_LS_SYNTAXES:
        # CharLS spends ~4 s of CPU (whatever the image size) before refusing a codestream
        # cut short; such a stream lacks the closing EOI marker (FF D9; fill bytes FF and a
        # DICOM padding 00 may follow, and bit stuffing keeps FF D9 out of the coded data),
        # so it goes to pydicom's default pick instead, which answers in milliseconds
        if not bytes(src[-8:]).rstrip(b"\x00\xff").endswith(b"\xff\xd9"):
            raise ValueError("the JPEG-LS codestream does not end with an EOI marker")
        arr = imagecodecs.jpegls_decode(src)
        if arr.ndim == 3:  # returned colour-by-pixel, whatever the interleave mode
            runner.set_option("planar_configuration", 0)
    elif tsyntax in JPEG_LOSSLESS_SYNTAXES:
        # libjpeg-turbo in lossless mode neither converts colour nor rounds
        arr = imagecodecs.jpeg8_decode(src)
        if arr.ndim == 3:
            runner.set_option("planar_configuration", 0)
    else:
        raise ValueError(f"the {PLUGIN} plugin does not decode {tsyntax.name}")
    # the container follows the codestream's precision, as with pydicom's own plugins
    runner.set_option("bits_allocated", arr.dtype.itemsize * 8)
    # The decoded array's own bytes, not a tobytes() copy of the whole frame: pydicom reads
    # the frame with np.frombuffer and copies it into its output array, and len() of a
    # byte-cast memoryview counts bytes as it does for bytes.
    return np.ascontiguousarray(arr).data.cast("B")


def register() -> None:
    """Add the plugin to pydicom's decoders for its syntaxes. pydicom's add_plugin is not
    thread-safe: call this once, under a lock, as models.preprocessing does."""
    from pydicom.pixels import get_decoder

    for tsyntax in SYNTAXES:
        decoder = get_decoder(tsyntax)
        if PLUGIN not in decoder.available_plugins and is_available(tsyntax):
            decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))

"""A pydicom decoding plugin on imagecodecs: JPEG 2000 (and HTJ2K), JPEG-LS, lossless JPEG;
and JPEG XL frames for models.preprocessing (``JPEG_XL_SYNTAXES``).

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
default pick when it refuses a file (for JPEG-LS to pyjpegls only, ``FALLBACK_PLUGINS``; never
after a refusal as truncated, nor for a JPEG 2000 frame with bytes after its last tile-part:
:func:`j2k_bytes_after_tile_parts`). tests/models/test_codecs.py checks that every JPEG 2000,
JPEG-LS and lossless JPEG file shipped with pydicom and pydicom-data (and in ../shared/data)
decodes to the same array both ways, and round-trips HTJ2K and lossless JPEG it encodes.

**Codestreams cut short.** Several decoders here decode a codestream that stops early without
an error, filling the rest of the image (pylibjpeg-libjpeg for JPEG and JPEG-LS, libjpeg-turbo
through imagecodecs and Pillow, which log libjpeg's "premature end of data segment" warning
nowhere Python can see it). So what is checked *before* any decoder runs is the codestream's
own structure: :func:`missing_end_marker` (a JPEG, JPEG-LS or JPEG 2000 frame must end with
its EOI/EOC marker ``FF D9``; DICOM's even-length padding byte ``00`` and ``FF`` fill may
follow; entropy-coded data cannot hold ``FF D9``: JPEG stuffs ``FF 00``, JPEG-LS a 0 bit,
JPEG 2000 keeps packet data below ``FF 90``) and :func:`rle_segments_missing` (an RLE header's
segment offsets inside the frame). A stream cut short *and* closed with an EOI marker again
(what "repair" tools do) is caught by the decoder where it can be: CharLS and OpenJPEG refuse
it, and :func:`scan_for_pillow` makes Pillow's libjpeg refuse a sequential JPEG scan that ends
before its last MCU (see there). JPEG Baseline frames that pydicom's pick, pylibjpeg-libjpeg,
decodes in full get that scan checked first by :func:`check_scan`, a 1/8-scale Pillow decode
(~10 % of the libjpeg decode's time). Lossless JPEG (libjpeg-turbo, pylibjpeg-libjpeg), 12-bit
JPEG (pylibjpeg-libjpeg) and progressive JPEG have no decoder here that reports it.
"""

from __future__ import annotations

import itertools
import re
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

# JPEG Baseline and Extended: pydicom's pick, pylibjpeg-libjpeg, after check_scan (in
# models/jpeg_checked.py): the same pixels as before, a scan cut short refused
LOSSY_JPEG_PLUGIN = "pylibjpeg-scan-checked"
LOSSY_JPEG_SYNTAXES = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit)

# When imagecodecs refuses a frame whose structure is whole, the plugin that gets a second go
# ("": pydicom's default pick). JPEG-LS: pyjpegls only, CharLS as here; pylibjpeg-libjpeg
# decodes a corrupt or cut JPEG-LS stream without an error, filling the rest of the image.
FALLBACK_PLUGINS = {uid.JPEGLSLossless: "pyjpegls", uid.JPEGLSNearLossless: "pyjpegls"}

END_MARKER = b"\xff\xd9"  # JPEG and JPEG-LS EOI, JPEG 2000 EOC
_PADDING = b"\x00\xff"  # DICOM's padding to an even length (00) and marker fill bytes (FF)
_TAIL = 64  # bytes looked at for the end marker and its padding
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class TruncatedCodestreamError(ValueError):
    """A frame's codestream is cut short (the message says "truncated")."""


def missing_end_marker(codestream: bytes) -> bool:
    """True when a JPEG, JPEG-LS or JPEG 2000 (HTJ2K) codestream does not end with ``FF D9``.

    The marker may be followed by ``00`` and ``FF`` bytes (DICOM pads a fragment to an even
    length with ``00``; some encoders pad with ``FF``, which JPEG allows before a marker), and
    in a JPEG or JPEG-LS codestream by any bytes once it comes after the first scan's data.
    Every JPEG, JPEG-LS and JPEG 2000 frame in pydicom's test files, pydicom-data and
    ../shared/data ends so (at most one padding byte, 00 or FF). A JPEG 2000 codestream
    wrapped in a JP2 file (GDCM writes some; DICOM does not allow it) must end so inside its
    ``jp2c`` box: boxes after it are allowed. Looks at the last bytes only (plus the JP2
    boxes' headers): no decoding.
    """
    data = memoryview(codestream)
    if bytes(data[:12]) == _JP2_SIGNATURE:
        end = _jp2c_end(data)
        if end is None:
            return True
        data = data[:end]
    tail = bytes(data[-_TAIL:]).rstrip(_PADDING)
    if not tail and len(data) > _TAIL:  # a long run of padding: look further back
        tail = bytes(data).rstrip(_PADDING)[-2:]
    if tail.endswith(END_MARKER):
        return False
    # JPEG and JPEG-LS: an EOI after the first scan's data, then other bytes (a trailer that a
    # wrapper copying a camera's or a PACS's JPEG byte for byte keeps). Entropy-coded data
    # cannot hold FF D9, so that EOI closes the image; headers before the scan (an EXIF
    # thumbnail has its own EOI) are stepped over, not searched.
    scan = _first_scan(data)
    return scan is None or bytes(data).find(END_MARKER, scan[3]) < 0


def _jp2c_end(data: memoryview) -> int | None:
    """End offset of a JP2 file's contiguous-codestream box, ``None`` when it has none or
    a box runs past the data (ISO/IEC 15444-1 I.4: LBox, TBox, optional XLBox)."""
    offset = 0
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = bytes(data[offset + 4 : offset + 8])
        header = 8
        if length == 1:  # XLBox: a 64-bit length follows
            if offset + 16 > len(data):
                return None
            length = int.from_bytes(data[offset + 8 : offset + 16], "big")
            header = 16
        elif length == 0:  # the box runs to the end of the data
            length = len(data) - offset
        if length < header or offset + length > len(data):
            return None
        if kind == b"jp2c":
            return offset + length
        offset += length
    return None


_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"  # every JPEG 2000 codestream starts SOC, then SIZ
_J2K_SOT = b"\xff\x90"
_J2K_COM = b"\xff\x64"


def j2k_without_trailing_comments(codestream: bytes) -> bytes:
    """The JPEG 2000 codestream without the comment (COM) segments that follow its last
    tile-part, before its EOC marker.

    ISO/IEC 15444-1 A.3 allows COM in the main and tile-part headers only; OpenJPEG (both
    imagecodecs' and pylibjpeg-openjpeg's, and Pillow's) refuses the whole frame when one
    follows the tile data ("opj_decode failed"). Kakadu 5.0 wrote one there as padding
    ("PADDING"), as in pylibjpeg-data's 966.dcm, a 2000x2128 CR from pydicom issue 966 that
    was refused as undecodable (QA round 80); its image data is whole. The tile-parts are
    walked by their SOT lengths (Psot), so only segments after the last one are dropped; a
    codestream without such a segment, or whose last tile-part runs to EOC (Psot 0), or that
    this walk does not understand, is returned unchanged (the same object). No decoding.
    """
    walked = _j2k_after_tile_parts(codestream)
    if walked is None:
        return codestream
    last_tile_end, offset = walked
    if offset == last_tile_end or codestream[offset : offset + 2] != END_MARKER:
        return codestream
    return codestream[:last_tile_end] + codestream[offset:]


def j2k_bytes_after_tile_parts(codestream: bytes) -> int:
    """How many bytes of a JPEG 2000 codestream lie between the end of its last tile-part
    (found by the tile-parts' SOT lengths, Psot) and its EOC marker, not counting the
    comment (COM) segments :func:`j2k_without_trailing_comments` drops; 0 when there are none
    or when the walk does not understand the codestream (not SOC then SIZ, a main header or
    a tile-part that runs past the end, a last tile-part running to EOC: Psot 0).

    ISO/IEC 15444-1 A.3 allows only tile-parts between the main header and EOC. OpenJPEG
    decodes every tile-part and then meets such bytes where it expects SOT or EOC: its
    decode fails only then, after all the work, in every binding here (imagecodecs,
    pylibjpeg-openjpeg, Pillow), so models.preprocessing tries no other decoder once
    imagecodecs has refused a frame this counts bytes for (QA round 85). No decoding.
    """
    walked = _j2k_after_tile_parts(codestream)
    if walked is None:
        return 0
    offset = walked[1]
    end = len(codestream.rstrip(_PADDING))
    if offset > end - len(END_MARKER) or codestream[end - len(END_MARKER) : end] != END_MARKER:
        return 0
    return end - len(END_MARKER) - offset


def _j2k_after_tile_parts(codestream: bytes) -> tuple[int, int] | None:
    """``(end of the last tile-part, end of the COM segments after it)`` of a JPEG 2000
    codestream, walking the main header's segments and the tile-parts by Psot; ``None`` when
    the walk does not understand it. No decoding."""
    if codestream[:4] != _J2K_SOC_SIZ:
        return None
    offset = 2
    while codestream[offset : offset + 2] != _J2K_SOT:  # main header segments
        if offset + 4 > len(codestream) or codestream[offset] != 0xFF:
            return None
        offset += 2 + int.from_bytes(codestream[offset + 2 : offset + 4], "big")
    while codestream[offset : offset + 2] == _J2K_SOT:  # SOT: Lsot, Isot, Psot, TPsot, TNsot
        psot = int.from_bytes(codestream[offset + 6 : offset + 10], "big")
        if psot == 0 or offset + 10 > len(codestream):
            return None
        offset += psot
    last_tile_end = offset
    while codestream[offset : offset + 2] == _J2K_COM and offset + 4 <= len(codestream):
        offset += 2 + int.from_bytes(codestream[offset + 2 : offset + 4], "big")
    return last_tile_end, offset


def rle_segments_missing(frame: bytes) -> bool:
    """True when an RLE Lossless frame's header (PS3.5 G.5: the segment count, then 15
    offsets) names a segment that starts beyond the frame's end, or is malformed.

    RLE has no end marker: a frame cut inside its last segment passes this check, and
    pydicom's RLE decoder then refuses the segment for decoding to fewer bytes than
    Rows x Columns.
    """
    if len(frame) < 64:
        return True
    count = int.from_bytes(frame[:4], "little")
    if not 1 <= count <= 15:
        return False  # not a header this check understands: pydicom's decoder judges it
    offsets = [int.from_bytes(frame[4 * i : 4 * i + 4], "little") for i in range(1, count + 1)]
    if offsets[0] != 64:
        return False
    return any(b <= a for a, b in itertools.pairwise(offsets)) or offsets[-1] >= len(frame)


# a JPEG marker inside entropy-coded data: FF followed by neither 00 (a stuffed FF), RSTn
# (D0-D7) nor another FF (fill before a marker)
_JPEG_MARKER = re.compile(b"\xff[^\x00\xd0-\xd7\xff]")
# SOF0 baseline, SOF1 extended sequential: Huffman-coded, one pass over the image per scan
_SEQUENTIAL_SOF = (0xC0, 0xC1)
_SCAN_PAD = bytes(8)  # >= libjpeg's bit-buffer look-ahead (57 bits on 64-bit builds)


def scan_for_pillow(codestream: bytes) -> bytes:
    """The JPEG codestream to give Pillow so that it refuses a scan cut short.

    libjpeg decodes the entropy-coded data of a scan until it meets a marker; a marker met
    before the scan's last MCU (an EOI appended to a cut stream) is a warning to libjpeg,
    which fills the rest of the image grey, and Pillow drops libjpeg's warnings. When the
    data simply runs out instead, Pillow's suspending data source makes libjpeg ask for more,
    and Pillow raises "image file is truncated". So for a single-scan sequential JPEG (SOF0
    or SOF1, the first scan holding every component: every 8-bit DICOM JPEG Baseline frame
    here) the data after the scan's entropy-coded segment (its EOI, any trailer) is replaced
    by 8 zero bytes: enough for libjpeg's bit-buffer look-ahead after the last MCU, so a whole
    scan decodes to exactly the same pixels, while a scan that ends early runs out of data
    within a few MCUs and is refused. (A scan cut by a few bytes and closed with an EOI again
    may be completed from the zeros.) A scan that no marker follows (the stream runs out) is
    returned unchanged, so Pillow refuses it as before: padding it would complete a scan cut
    by a few bytes. Anything else (progressive, several scans, lossless, a header this walk
    does not understand) is returned unchanged too. Walks the marker segments and searches
    the entropy-coded data for the next marker: no decoding.
    """
    end = _sequential_scan_end(codestream)
    if end is None:
        return codestream
    return codestream[:end] + _SCAN_PAD


def check_scan(codestream: bytes) -> None:
    """Raise :class:`TruncatedCodestreamError` when Pillow finds the JPEG scan cut short.

    For a decoder that fills a scan cut short without an error (pylibjpeg-libjpeg): Pillow
    decodes :func:`scan_for_pillow`'s codestream at 1/8 scale (libjpeg's DCT scaling, no
    full inverse DCT or upsampling: ~10 % of pylibjpeg-libjpeg's time for a 1024x1024
    radiograph) and only its verdict is kept. A codestream Pillow cannot decode for another
    reason (12-bit, a colour space it lacks) is left to the decoder, as before.
    """
    import io

    from PIL import Image

    prepared = scan_for_pillow(codestream)
    if prepared is codestream:  # not a single-scan sequential JPEG: nothing to check
        return
    try:
        with Image.open(io.BytesIO(prepared), formats=["JPEG"]) as image:
            width, height = image.size
            image.draft(image.mode, (-(-width // 8), -(-height // 8)))
            image.load()
    except Exception as exc:  # Pillow's verdict on a codestream it may not support
        if "truncated" in str(exc):
            raise TruncatedCodestreamError(
                f"the JPEG scan is truncated: it ends before its last MCU ({exc})"
            ) from exc


def _sequential_scan_end(data: bytes) -> int | None:
    """Where the entropy-coded data of a single-scan sequential JPEG ends (at the marker that
    follows it), else ``None``: not such a JPEG, or no marker after the data (the stream runs
    out: left to the decoder, which refuses it as truncated)."""
    scan = _first_scan(data)
    if scan is None:
        return None
    sof, components, scan_components, start = scan
    if sof not in _SEQUENTIAL_SOF or components != scan_components:
        return None  # progressive, lossless, JPEG-LS, or one scan per component
    found = _JPEG_MARKER.search(data, start)
    return None if found is None else found.start()


def _first_scan(data: bytes | memoryview) -> tuple[int, int, int, int] | None:
    """``(SOFn marker, frame components, scan components, offset of the entropy-coded data)``
    of a JPEG or JPEG-LS codestream's first scan, walking its marker segments from SOI to the
    first SOS; ``None`` when the walk fails or meets no frame header first. No decoding."""
    if bytes(data[:2]) != b"\xff\xd8":
        return None
    sof = components = None
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            offset += 2
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if length < 2 or marker == 0xD9:
            return None
        # SOFn of JPEG (C0-CF but DHT, JPG, DAC) and JPEG-LS (F7): P, Y, X, then Nf
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if offset + 10 > len(data):
                return None
            sof, components = marker, data[offset + 9]
        elif marker == 0xDA:  # SOS: Ns, then the scan's entropy-coded data after the header
            if sof is None or components is None or offset + 5 > len(data):
                return None
            return sof, components, data[offset + 4], offset + 2 + length
        offset += 2 + length
    return None


_FULL_SPECTRUM = 63  # Se of every sequential DCT scan (ITU-T T.81 B.2.3): coefficients 0-63


def full_spectrum_scans(codestream: bytes) -> bytes:
    """The JPEG codestream with Se set to 63 in each scan header of a sequential DCT frame
    (SOF0 baseline, SOF1 extended) whose scan says Ss=0 and another Se.

    T.81 B.2.3 fixes Ss=0 and Se=63 for the sequential processes: the fields have no meaning
    there, and libjpeg-turbo (Pillow, imagecodecs) ignores them, but pylibjpeg-libjpeg, the
    decoder for lossy JPEG DICOM frames here, refuses the whole frame ("scan start must be
    zero and scan stop must be 63 for the sequential operating modes", error -1038). Real
    encoders write Se=0: the NEMA WG04 MR1_JPLY sample, a 12-bit JPEG Extended head MR, was
    refused as undecodable (QA round 80). Only that byte changes, so a frame decodes to the
    pixels the stream codes, and a frame libjpeg read before is returned unchanged (the same
    object). Walks the marker segments and, between scans, the entropy-coded data to the
    next marker; anything this walk does not understand is returned unchanged.
    """
    scan = _first_scan(codestream)
    if scan is None or scan[0] not in _SEQUENTIAL_SOF:
        return codestream
    mended: bytearray | None = None
    offset = _next_scan(codestream, 2)  # the first scan's SOS marker, after SOI
    while offset + 4 <= len(codestream) and codestream[offset : offset + 2] == b"\xff\xda":
        length = int.from_bytes(codestream[offset + 2 : offset + 4], "big")
        data_start = offset + 2 + length
        if length < 6 or data_start > len(codestream):
            return codestream
        # the header ends Ns, Cs/Td/Ta per component, Ss, Se, Ah/Al
        ss, se = codestream[data_start - 3], codestream[data_start - 2]
        if ss == 0 and se != _FULL_SPECTRUM:
            if mended is None:
                mended = bytearray(codestream)
            mended[data_start - 2] = _FULL_SPECTRUM
        found = _JPEG_MARKER.search(codestream, data_start)
        # the next scan may follow after tables (DHT, DQT, DRI...): walk them to its SOS
        offset = _next_scan(codestream, found.start()) if found else len(codestream)
    return codestream if mended is None else bytes(mended)


def _next_scan(data: bytes, offset: int) -> int:
    """Offset of the next SOS marker from the marker at ``offset``, over marker segments with
    a length field; ``len(data)`` at EOI or where the walk fails."""
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0xDA:
            return offset
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD9:  # no length: EOI, RSTn, ...
            return len(data)
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return len(data)


def jpeg_ls_near(data: bytes | memoryview) -> int | None:
    """The NEAR parameter of a JPEG-LS codestream's first scan (0: lossless coding); ``None``
    for another codestream or a header the walk cannot read. The SOS header of JPEG-LS ends
    with NEAR, ILV and the point transform, just before the scan's data (ISO/IEC 14495-1
    C.2.3)."""
    scan = _first_scan(data)
    if scan is None or scan[0] != 0xF7:
        return None
    return int(data[scan[3] - 3])


# JPEG XL (DICOM Supplement 232, in PS3.5 since 2024): newer than the pinned pydicom, which
# knows neither the UIDs nor a decoder for them. Their names join pydicom's UID dictionary
# (:func:`register_jpeg_xl_names`, as pynetdicom does on import) so pydicom reads such a file
# as the encapsulated syntax it is; models.preprocessing splits the frames with pydicom and
# decodes each with imagecodecs' libjxl binding (:func:`decode_jpeg_xl`, the GIL released).
JPEG_XL_SYNTAXES = {
    "1.2.840.10008.1.2.4.110": ("JPEG XL Lossless", "JPEGXLLossless"),
    "1.2.840.10008.1.2.4.111": ("JPEG XL JPEG Recompression", "JPEGXLJPEGRecompression"),
    "1.2.840.10008.1.2.4.112": ("JPEG XL", "JPEGXL"),
}


def register_jpeg_xl_names() -> None:
    """Add the JPEG XL transfer syntaxes to pydicom's UID dictionary (idempotent)."""
    from pydicom._uid_dict import UID_dictionary

    for value, (name, keyword) in JPEG_XL_SYNTAXES.items():
        UID_dictionary.setdefault(value, (name, "Transfer Syntax", "", "", keyword))


def jpeg_xl_available() -> bool:
    return bool(imagecodecs.JPEGXL.available)


def decode_jpeg_xl(codestream: bytes) -> np.ndarray:
    """One JPEG XL frame's samples as stored (a JPEG XL orientation is not applied: the DICOM
    header describes the stored grid); one thread, as for JPEG 2000."""
    return np.asarray(imagecodecs.jpegxl_decode(codestream, keeporientation=True, numthreads=1))


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
    # models.preprocessing refuses such a frame, or closes one whose scan is whole (QA 105),
    # before it gets here; this keeps the plugin
    # safe on its own: no decoder here sees a codestream without its end marker, and the
    # "truncated" error tells preprocessing to try no other plugin (they decode it leniently)
    if tsyntax in SYNTAXES and missing_end_marker(src):
        raise TruncatedCodestreamError(
            f"the {tsyntax.name} codestream is truncated: it does not end with its end marker "
            f"(FF D9); it ends {bytes(src[-8:]).hex(' ')}"
        )
    if tsyntax in J2K_SYNTAXES:
        codestream = j2k_without_trailing_comments(src if isinstance(src, bytes) else bytes(src))
        # one thread: the service already runs one decode per inference stream
        arr = imagecodecs.jpeg2k_decode(codestream, numthreads=1)
        # OpenJPEG undoes the multiple-component transform, as pylibjpeg-openjpeg does
        if runner.photometric_interpretation in ("YBR_ICT", "YBR_RCT"):
            runner.set_option("photometric_interpretation", "RGB")
    elif tsyntax in JPEG_LS_SYNTAXES:
        # (CharLS spends ~4 s of CPU, whatever the image size, before refusing a codestream
        # without its EOI marker: the check above keeps those away from it; one cut short
        # and closed with an EOI again is refused in milliseconds)
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
    from radlens.models import jpeg_checked

    for tsyntax in LOSSY_JPEG_SYNTAXES:
        decoder = get_decoder(tsyntax)
        if LOSSY_JPEG_PLUGIN not in decoder.available_plugins and jpeg_checked.is_available(
            tsyntax
        ):
            decoder.add_plugin(LOSSY_JPEG_PLUGIN, (jpeg_checked.__name__, "_decode_frame"))

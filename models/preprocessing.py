"""Preprocessing: the bytes of a DICOM, PNG or JPEG file -> a model-ready float32 array.

Training and serving both call :func:`preprocess` (or :func:`preprocess_array` for sources
that already hold decoded 8/16-bit gray pixels), so a model sees the same array for the same
file wherever it runs. The steps, in order, and why the order matters:

1. **Sniff and read.** The format is taken from the content, never from a file name: PNG and
   JPEG by their signatures, DICOM by ``DICM`` at offset 128 (or, for files without the
   preamble, a first element in group 0002/0008). DICOM is read with pydicom, and its pixel
   data decoded by (``models/codecs.py`` registers the imagecodecs plugin):

   - JPEG 2000 and HTJ2K: imagecodecs (OpenJPEG, GIL released); pydicom's default pick
     (pylibjpeg-openjpeg, then Pillow) for what it refuses, unless the codestream holds
     bytes after its last tile-part (``codecs.j2k_bytes_after_tile_parts``), where every
     OpenJPEG fails after decoding all the tiles;
   - JPEG-LS: imagecodecs (CharLS); pyjpegls (CharLS) for what it refuses, never
     pylibjpeg-libjpeg, which decodes a corrupt stream without an error;
   - lossless JPEG (processes 14, SV1): imagecodecs (libjpeg-turbo); then pylibjpeg-libjpeg;
   - JPEG Baseline and Extended: pydicom's default pick, pylibjpeg-libjpeg, through
     ``models/jpeg_checked.py`` (which first has Pillow check the scan is whole), then
     pydicom's default pick (pylibjpeg-libjpeg, then Pillow);
   - RLE Lossless: pydicom's own decoder; uncompressed and deflated syntaxes: pydicom.

   A frame cut short is refused (``TruncatedDataError``) before any of them sees it: a JPEG,
   JPEG-LS or JPEG 2000 codestream that does not end with its EOI/EOC marker, an RLE frame
   whose header names segments beyond its end; and no other plugin gets a go at a frame one
   refused as truncated (see ``models/codecs.py``). Two frames without the marker there are
   whole and decoded closed at it (``_check_codestream``): a JPEG Baseline, Extended or
   Lossless frame whose one scan is whole but lacks its EOI, and a JPEG 2000 codestream
   whose EOC other bytes follow; a JPEG upload whose scan is whole but lacks its EOI is
   decoded with it too (``_upload_jpeg_closed``).

   **Decode less** (``PREPROCESSING_VERSION`` "2", when ``size`` is given): a grayscale
   JPEG 2000 frame whose codestream is signed exactly when Pixel Representation says so and
   whose precision fits Bits Stored is decoded at 1/2**r of its size by OpenJPEG's reduce
   factor (through Pillow, whose JPEG 2000 reader exposes it; the discarded wavelet levels
   are never decoded), and a grayscale 8-bit JPEG Baseline frame by libjpeg-turbo's DCT
   scaling (1/2, 1/4 or 1/8, through Pillow's ``draft``).
   :func:`decode_reduction` picks the largest ``r`` that leaves the image at least the model
   size on both axes (at most the codestream's decomposition levels for JPEG 2000); the
   resize below then proceeds as for any image. Pillow returns a p-bit JPEG 2000 component
   scaled to 16 bits (12-bit 4095 -> 65520), a signed one offset by 2**(p-1): both are
   undone, so the modality LUT and VOI see stored values. JPEG-LS and lossless JPEG have
   neither resolution levels nor a DCT and are always decoded in full, as are colour frames
   (from version "6" an 8-bit colour JPEG 2000 frame is reduced too,
   :data:`COLOUR_J2K_REDUCED_VERSIONS`) and JPEG 2000 codestreams pydicom sign-corrects after
   decoding (an unsigned codestream
   holding two's-complement CT values: a wavelet low-pass over those would be meaningless).
   Pillow's JPEG 2000 decoder holds the GIL while it works, but a reduced decode is short
   (figures: docs/benchmarks/preprocess.md, round 5).
   ``version="1"`` reproduces the full decode of earlier models.

   The pixel-count limit is checked from the header *before* any pixels are decoded, and for
   JPEG 2000, JPEG-LS and JPEG the frame's codestream header (SIZ read by OpenJPEG through
   pylibjpeg-openjpeg; SOF read by pydicom) must agree with Rows, Columns and Samples per
   Pixel and fit Bits Allocated (a JPEG height left to a DNL marker is refused too), else
   :class:`~models.errors.CodestreamMismatchError`: a decompression bomb behind a small
   header costs a header parse, not a decode. A Deflated Explicit VR Little Endian dataset
   may inflate to at most 8 bytes per pixel of ``max_pixels`` plus 16 MiB, counted before it
   is inflated (``models/dicomread.py``, :class:`~models.errors.DeflatedDatasetTooLargeError`).
   Encapsulated (compressed) Pixel Data under an uncompressed transfer syntax, or without file
   meta, is :class:`~models.errors.EncapsulatedUnderNativeSyntaxError`.
2. **Pick the frame.** Multi-frame DICOM: only one frame is decoded, the one ``frame=``
   names, by default the middle frame, index ``frames // 2`` (for an even count, the later
   of the two central frames). :func:`frame_indices` lists the frames to use when a whole
   instance is predicted frame by frame. From version "3", an enhanced multi-frame image's
   functional groups decide the next two steps for that frame (:func:`frame_dataset`: the
   Per-Frame Functional Groups item, else the Shared one, else the top-level attributes).
3. **Modality LUT** (:func:`modality_values`): Rescale Slope/Intercept or the Modality LUT
   Sequence, so CT comes out in Hounsfield units. Windows are defined on these values, so
   this must come first. Values that are not finite, or one value for stored values that
   differ, are refused (:class:`~models.errors.InvalidRescaleError`, quoting the tags).
   Not for an X-ray angiography or fluoroscopy image (XA, XRF) from version "5": its table
   maps stored values to beam intensity and its windows are in stored values
   (:func:`displays_stored_values`).
4. **VOI** (:func:`apply_window` for presets): a named preset from :data:`WINDOW_PRESETS`
   when one is given *and* the image is in HU (Modality CT or Rescale Type HU; a preset is
   meaningless for a radiograph and is then not applied); otherwise the file's VOI LUT
   Sequence or Window Center/Width through pydicom's ``apply_voi_lut``; otherwise min-max.
   From version "6" a VOI LUT is applied with numpy, each value's index clipped to the LUT
   (PS3.3 C.11.2.1.1), where pydicom's index wraps (:data:`VOI_LUT_CLIPPED_VERSIONS`).
   The result is scaled to [0, 1] by the output range of that VOI transform. A VOI LUT
   Sequence item pydicom cannot apply (no or too few LUT Data entries) is ignored, as pydicom
   ignores one without LUT Data; a file window or VOI LUT that maps an image with contrast
   to one value is passed over for min-max too (labelled ``minmax(not file:C/W)``): the
   model never sees a blank, and a real file whose window does not suit it is not refused.
   A window pydicom cannot apply (malformed, or a VOI LUT Function it does not know) is
   passed over for min-max, labelled ``minmax(not file:unusable)``; a window applied with a
   VOI LUT Function other than LINEAR says which (``file:600/1600 SIGMOID``). A frame of Float
   or Double Float Pixel Data has no Bits Stored, which pydicom's windowing needs: before
   version "6" its window was passed over that way; from "6" it is applied
   (:func:`_float_window`, PS3.3 A.75.1: the VOI LUT mechanism supports float values).
   Pixel Padding Value (0028,0120) is not excluded from min-max: on the real files measured
   in QA round 55 that would change no image pixel (the one file where min-max meets declared
   padding, a near-lossless JPEG-LS CT, has its padding spread over -2004..-1996 by the
   coding: only its pixels of exactly -2000 would move, by less than 0.001).
5. **MONOCHROME1 inversion** (``1 - x``), after VOI as in the DICOM display pipeline, so
   bone is bright for both photometric interpretations. From version "3", a Presentation
   LUT Shape of INVERSE inverts a MONOCHROME2 frame too, and MONOCHROME1 with INVERSE is
   inverted once, not twice (:func:`display_inverted` has the table).
6. **Colour to gray.** YBR_* is converted to RGB by pydicom's decoders, PALETTE COLOR through
   ``apply_color_lut``; RGB becomes gray by the ITU-R BT.601 luma weights (an RGB image
   whose three channels are equal keeps that channel exactly). Colour images use the full
   range of their bit depth (window ``"full-range"``). A JPEG frame that stores YCbCr
   (chroma subsampled, no JFIF or Adobe marker) under Photometric Interpretation RGB is
   refused (:class:`~models.errors.CodestreamMismatchError`): no decoder converts it. From
   version "6" a JPEG, JPEG-LS or JPEG 2000 colour frame is read colour-by-pixel, as its
   codestream says, even under a stray Planar Configuration 1
   (:data:`CODESTREAM_LAYOUT_VERSIONS`).
7. **float32 in [0, 1]** and **resize** (:func:`resize_image`): bilinear on float data to
   the exact (height, width); the aspect ratio is not preserved. Pillow's bilinear filter
   widens its support when shrinking, so downsampling is antialiased.

PNG and JPEG are already display images: they map by the full range of their bit depth
(``/255`` for 8-bit; a 16-bit gray PNG from version "3" by the depth its sBIT chunk states,
else the depth its data needs, see :func:`scale_16bit`; ``/65535`` before), RGB/RGBA/LA/P/
CMYK become gray as above (from version "6" a 16-bit RGB or RGBA PNG at its full 16 bits, by
luma then by depth as a 16-bit gray PNG, its sBIT's colour depth,
:data:`PNG_DEEP_COLOUR_VERSIONS`); a PNG with transparent pixels (alpha below 255, or a tRNS
chunk its pixels use) is refused (:func:`_check_opaque`), an opaque alpha channel is ignored;
window presets do not apply to them (window ``"full-range"``). Before version "6" a 16-bit
colour PNG, and in every version a 16-bit gray-with-alpha one, is read at 8 bits (Pillow keeps
each sample's high byte) and refused when its data need fewer than 15 bits
(:func:`_check_png_colour_depth`). From version "4" a PNG or JPEG whose EXIF
Orientation turns or mirrors it (a camera's or phone's image, some exports) is turned first,
to the image a viewer shows (:func:`exif_orientation`). A DCT JPEG over ``max_pixels`` (a
phone's 48 MP photo of a film) is decoded at 1/2, 1/4 or 1/8 of its size, the least that fits
(:func:`_jpeg_scaled_within`); any other image over it is refused. Pillow's own
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) applies on top of ``max_pixels``.

Every failure is a :class:`~models.errors.PreprocessingError` subclass that quotes what was
received; exceptions from pydicom, Pillow and numpy are translated where they are called.
Warnings those libraries emit while reading odd but usable files are ignored while
:func:`preprocess` runs. ``warnings.catch_warnings`` changes process-global state before
Python 3.14, so concurrent calls share one suppression (entered by the first running call,
left by the last) instead of nesting and restoring each other's filters out of order;
while any call runs, warnings from other threads are ignored too.

This module must not import TensorFlow: ``radlens inspect`` relies on that.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import math
import re
import struct
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

# the per-frame pixel limit (36 MP) for images and size=; defined where the light CLI reads it
from radlens.models.dicomread import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from radlens.models.errors import (
    BlankImageError,
    CodestreamMismatchError,
    DeepColourPngError,
    EncapsulatedUnderNativeSyntaxError,
    ImageTooLargeError,
    IncompletePixelHeaderError,
    InvalidImageError,
    InvalidRescaleError,
    MalformedDicomError,
    NativeUnderEncapsulatedSyntaxError,
    NoPixelDataError,
    NotAnImageError,
    PreprocessingError,
    TransparentImageError,
    TruncatedDataError,
    UnsupportedJpegError,
    UnsupportedTransferSyntaxError,
)

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)


def _not_a_plugin_traceback(record: logging.LogRecord) -> bool:
    """pydicom logs each decoding plugin that fails with its traceback at ERROR, also when the
    next plugin decodes the frame; whatever fails in the end reaches the caller as a typed
    PreprocessingError quoting the plugins' messages (a 422 in the service), so these records
    only put tracebacks for a refused upload into the service's log. Its other records pass."""
    return record.exc_info is None


logging.getLogger("pydicom.pixels.decoders.base").addFilter(_not_a_plugin_traceback)

# Pillow's DEBUG records dump what it parses, values included: every EXIF tag of a JPEG or PNG
# (Artist, ImageDescription, XPAuthor: where cameras and export tools put a patient's name or
# MRN) and an ICC profile's name. With RADLENS_LOG_LEVEL=debug they reached the service log
# (QA round 23). pydicom keeps its own logger at WARNING for the same reason; Pillow's is kept
# at INFO unless someone set its level explicitly.
if logging.getLogger("PIL").level == logging.NOTSET:
    logging.getLogger("PIL").setLevel(logging.INFO)

PREPROCESSING_VERSION = "6"
"""Bump on any change that alters output arrays; models record it and refuse a mismatch.

"6": a compressed colour frame (JPEG, JPEG-LS, JPEG 2000) is read colour-by-pixel whatever its
Planar Configuration says (:data:`CODESTREAM_LAYOUT_VERSIONS`); an 8-bit colour JPEG 2000 frame
is decoded at a reduced resolution when a ``size`` is given, as grayscale ones are from "2"
(:data:`COLOUR_J2K_REDUCED_VERSIONS`); Float or Double Float Pixel Data with a Window
Center/Width is windowed (:func:`_float_window`; it was min-max scaled, the window passed over
as unusable); a 16-bit RGB or RGBA PNG is read at 16 bits, not at Pillow's 8
(:data:`PNG_DEEP_COLOUR_VERSIONS`); a VOI LUT is applied with each value's index clipped to the
LUT, not wrapped as pydicom's is beyond 256 entries of an 8-bit LUT
(:data:`VOI_LUT_CLIPPED_VERSIONS`). "5": an X-ray angiography or fluoroscopy image (XA, XRF SOP
classes) is windowed on its stored values: its Modality LUT or rescale, which maps them to X-ray
beam intensity, is not applied for display (:func:`displays_stored_values`). "4": a PNG or JPEG
is turned as its EXIF Orientation says (:func:`exif_orientation`), the image a viewer shows; a
JPEG-LS or JPEG 2000 frame stays within its Bits Stored (masked when its header says lossless
coding, :func:`mask_unused_bits`, as the uncompressed file is; clipped when lossy); a file
window that leaves the image within one display gray level gives way to min-max as a blanking
one does; an Image Pixel attribute absent or empty is refused whichever decoder reads the frame.
"3": an enhanced multi-frame image's per-frame functional groups (rescale, window) are applied
to the frame used (see :func:`frame_dataset`); Presentation LUT Shape INVERSE is honoured
(:func:`display_inverted`); a 16-bit PNG is scaled by its actual bit depth
(:func:`scale_16bit`). "2": JPEG 2000 and baseline JPEG DICOM frames are decoded at a reduced
resolution when a ``size`` is given (see :func:`decode_reduction`). "1": every frame decoded in
full. Each version keeps the changes of the ones before it."""

SUPPORTED_PREPROCESSING_VERSIONS: tuple[str, ...] = ("1", "2", "3", "4", "5", "6")
"""Versions :func:`preprocess` can reproduce (``version=``): a model keeps the
preprocessing it was trained with (a "2" model ignores functional groups, a "1" model
decodes in full), so every older model still loads and predicts as it was validated."""

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "soft_tissue": (40.0, 400.0),
}
"""Named CT windows, ``name -> (center, width)`` in Hounsfield units."""

MAX_FRAMES = 10_000
"""Declared frame counts above this are refused (only one frame is ever decoded)."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_DICOM_PREFIX_OFFSET = 128
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
_MAX_MESSAGE = 160

_T = TypeVar("_T")


@dataclass(frozen=True)
class ImageMetadata:
    """What radlens keeps about an image: PHI-free by construction.

    Only technical fields and the DICOM UIDs exist here; patient name, ID, birth date and
    address are never read into it.
    """

    format: str
    rows: int
    columns: int
    frames: int
    bits_stored: int | None
    photometric_interpretation: str | None
    modality: str | None
    body_part: str | None
    transfer_syntax_uid: str | None
    transfer_syntax_name: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    sop_class_uid: str | None
    frame_index: int
    window: str
    # (0008,0070) as the file gives it; only app/metrics.py reads it, mapped to a vendor list
    manufacturer: str | None = None
    # DICOM Burned In Annotation: "YES" (the pixels carry text, possibly a name or a date),
    # "NO", or None (absent, another value, or not DICOM): unknown. Says whether the pixels
    # may identify the patient; identifies no one itself.
    burned_in_annotation: str | None = None
    # a PNG or JPEG's EXIF Orientation (2-8) that preprocessing applied to stand the image
    # as viewers show it (version "4"); rows and columns are then those of the turned image
    exif_orientation: int | None = None
    # every stored pixel of the frame has one value (a blanked or failed export): nothing to
    # see whatever the window; the service refuses such an image (models.errors.BlankImageError)
    blank: bool = False
    # a colour image's share of pixels in colour (:func:`colour_fraction`): an overlay, a
    # photograph or a Doppler frame rather than a gray radiograph stored as RGB (app/gate.py);
    # None for a gray image
    colour_fraction: float | None = None
    # DICOM Instance Number (0020,0013) when it is a whole number from 1 to 2**31 - 1 (a
    # database integer), else None: the outputs of a series' predictions are numbered like
    # their sources (app/dicom_outputs.py), so a viewer orders them as the series
    instance_number: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PreprocessedImage:
    """A model-ready image and the metadata of the file it came from."""

    pixels: np.ndarray
    metadata: ImageMetadata

    def model_input(self) -> np.ndarray:
        """Return the pixels as the model's ``(H, W, 1)`` float32 input."""
        return np.asarray(self.pixels, dtype=np.float32)[..., np.newaxis]


# --- entry points ----------------------------------------------------------------------


def preprocess(
    data: bytes,
    *,
    size: tuple[int, int] | None = None,
    window: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    version: str = PREPROCESSING_VERSION,
    frame: int | None = None,
    dataset: Dataset | None = None,
) -> PreprocessedImage:
    """Turn the bytes of a DICOM, PNG or JPEG file into a float32 gray image in [0, 1].

    The steps and their order are described in the module docstring: read -> frame ->
    modality LUT -> VOI -> MONOCHROME1 inversion -> colour to gray -> [0, 1] -> resize.

    Args:
        data: the complete file content. The format is sniffed from the bytes.
        size: ``(height, width)`` to resize to, or ``None`` to keep the native size.
        window: a :data:`WINDOW_PRESETS` name, applied to CT (HU) images; ``None`` uses the
            file's VOI LUT or Window Center/Width, else min-max.
        max_pixels: refuse frames with more pixels than this, checked before decoding (a DCT
            JPEG over it is decoded at 1/2, 1/4 or 1/8 of its size when that fits).
        version: the :data:`PREPROCESSING_VERSION` to reproduce, one of
            :data:`SUPPORTED_PREPROCESSING_VERSIONS` (a model's manifest says which): "1"
            decodes every frame at full resolution; "2" decodes JPEG 2000 and baseline JPEG
            DICOM frames at the reduced resolution :func:`decode_reduction` picks for
            ``size`` (full resolution when ``size`` is None); "3" also applies an enhanced
            multi-frame file's per-frame functional groups (see :func:`frame_dataset`);
            "4" also turns a PNG or JPEG as its EXIF Orientation says, keeps a JPEG-LS or
            JPEG 2000 frame within Bits Stored, passes over a file window that leaves the
            image within one display gray level, and checks the Image Pixel attributes
            whichever decoder reads the frame; "5" also windows an XA or XRF image on its
            stored values (:func:`displays_stored_values`); "6" also reads a compressed
            colour frame by pixel whatever its Planar Configuration says, decodes an 8-bit
            colour JPEG 2000 frame reduced for ``size``, applies a float frame's Window
            Center/Width, reads a 16-bit RGB/RGBA PNG at 16 bits and clips a VOI LUT's index
            to the LUT.
        frame: the 0-based index of the frame to use; ``None`` picks the middle frame
            (``frames // 2``). A PNG or JPEG has the one frame 0. To predict a whole
            multi-frame instance frame by frame, pass :func:`frame_indices` to
            :func:`preprocess_frames`, which parses the file once for all of them
            (``metadata.frames`` says how many there are).
        dataset: the dataset :func:`parse_dicom` returned for these same bytes (and
            ``max_pixels``), for a caller that read the header first: the file is not parsed
            again (the result is the same). ``None``: the bytes are parsed here.

    Returns:
        The pixels, float32 of shape ``(H, W)`` with values in [0, 1], and the PHI-free
        :class:`ImageMetadata` (``metadata.window`` says which VOI was used).

    Raises:
        NotAnImageError: the bytes are not DICOM, PNG or JPEG (quotes the first bytes).
        NoPixelDataError: a DICOM file without pixel data.
        UnsupportedTransferSyntaxError: DICOM pixel data that cannot be decoded (names the
            transfer syntax UID and name).
        TruncatedDataError: the file ends before its declared content.
        ImageTooLargeError: more than ``max_pixels`` pixels per frame, or a deflated
            dataset that inflates beyond what they allow (DeflatedDatasetTooLargeError).
        EncapsulatedUnderNativeSyntaxError: compressed (encapsulated) pixel data under an
            uncompressed transfer syntax, or without file meta information.
        CodestreamMismatchError: a compressed frame whose codestream declares another size,
            sample count or a bit depth than the DICOM header (a decompression bomb behind a
            small header), or whose reduced-resolution decode fails, or a JPEG frame that
            stores YCbCr under Photometric Interpretation RGB.
        InvalidImageError: zero-size or non-numeric pixels, a malformed header, a Siemens
            mosaic (:func:`check_not_mosaic`: many slices tiled in one frame), or a bad
            option (unknown window preset or version, bad size or max_pixels, a frame
            index the file does not have). InvalidRescaleError (a subclass): a rescale that
            gives non-finite values, or maps an image with contrast to one value.

    Example:
        >>> image = preprocess(Path("chest.dcm").read_bytes(), size=(224, 224))
        >>> image.pixels.shape, image.metadata.window
        ((224, 224), 'file:40/400')
    """
    _check_options(window, max_pixels, version)
    if size is not None:
        size = _check_size(size)
    _check_frame_option(frame)
    data = _check_bytes(data)
    kind = sniff_format(data)
    _check_dataset_option(dataset, kind)
    with _quiet_warnings():
        if kind == "dicom":
            reduce_for = size if version != "1" else None
            pixels, metadata = _preprocess_dicom(
                data,
                window=window,
                max_pixels=max_pixels,
                reduce_for=reduce_for,
                frame=frame,
                version=version,
                dataset=dataset,
            )
        else:
            if frame not in (None, 0):
                raise InvalidImageError(
                    f"a {kind.upper()} file has one frame (index 0). Received frame={frame}"
                )
            pixels, metadata = _preprocess_pillow(
                data, kind, max_pixels=max_pixels, version=version
            )
    if size is not None:
        pixels = resize_image(pixels, size)
    return PreprocessedImage(pixels=pixels, metadata=metadata)


def preprocess_frames(
    data: bytes,
    frames: Sequence[int] | None = None,
    *,
    size: tuple[int, int] | None = None,
    window: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    version: str = PREPROCESSING_VERSION,
    dataset: Dataset | None = None,
) -> Iterator[PreprocessedImage]:
    """Preprocess several frames of one file, parsing the file once.

    Each frame comes out exactly as ``preprocess(data, frame=index, ...)`` returns it (the
    same steps, options and metadata), but :func:`preprocess` takes the file's bytes, so
    calling it once per frame parses, and copies, the whole file (every frame's pixel data)
    again for each frame: for a 64-frame 512x512 CT that is most of the cost of predicting it
    frame by frame. Here the file is parsed and its header checked once, when this function
    is called; each frame is then decoded, transformed and resized as the iterator reaches
    it, so only one frame's arrays are alive at a time besides the parsed file.

    Args:
        data: the complete file content (DICOM, PNG or JPEG, sniffed from the bytes).
        frames: 0-based frame indices in the order wanted, e.g. from :func:`frame_indices`;
            ``None`` for every frame of the file. A PNG or JPEG has the one frame 0.
        size, window, max_pixels, version, dataset: as for :func:`preprocess` (with
            ``dataset``, the file is not parsed here at all: the service passes the dataset
            its first frame was read from).

    Returns:
        An iterator of :class:`PreprocessedImage`, one per index of ``frames``.

    Raises:
        The errors of :func:`preprocess`. What concerns the file (not an image, a malformed
        or truncated header, a Siemens mosaic, too many pixels, a bad option or a frame index
        the file does not have) is raised by this call, before any frame is decoded; what
        concerns one frame's pixels (a corrupt codestream, values that are not finite) is
        raised by ``next()`` on the iterator when that frame is reached.

    Example:
        >>> for image in preprocess_frames(data, frame_indices(64, 16), size=(224, 224)):
        ...     batch.append(image.model_input())
    """
    _check_options(window, max_pixels, version)
    if size is not None:
        size = _check_size(size)
    if frames is not None:
        for frame in frames:
            _check_frame_option(frame)
    data = _check_bytes(data)
    _check_dataset_option(dataset, sniff_format(data))
    if sniff_format(data) != "dicom":
        wanted = [0] if frames is None else [int(f) for f in frames]
        if any(index != 0 for index in wanted):
            bad = next(index for index in wanted if index != 0)
            raise InvalidImageError(
                f"a {sniff_format(data).upper()} file has one frame (index 0). Received frame={bad}"
            )
        image = preprocess(data, size=size, window=window, max_pixels=max_pixels, version=version)
        return iter([image] * len(wanted))
    with _quiet_warnings():
        source = _open_dicom(data, max_pixels, dataset)
    if frames is None:
        indices = list(range(source.frames))
    else:
        indices = [_check_frame_index(frame, source.frames) for frame in frames]
    return _dicom_frames(source, indices, size=size, window=window, version=version)


def _dicom_frames(
    source: _DicomSource,
    indices: list[int],
    *,
    size: tuple[int, int] | None,
    window: str | None,
    version: str,
) -> Iterator[PreprocessedImage]:
    reduce_for = size if version != "1" else None
    if _at_least(version, "4"):  # whichever decoder reads the frames
        _check_pixel_header(source.ds)
    for index in indices:
        with _quiet_warnings():
            pixels, metadata = _dicom_frame(
                source, index, window=window, reduce_for=reduce_for, version=version
            )
        if size is not None:
            pixels = resize_image(pixels, size)
        yield PreprocessedImage(pixels=pixels, metadata=metadata)


def preprocess_array(
    array: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    version: str = PREPROCESSING_VERSION,
) -> np.ndarray:
    """Preprocess already-decoded 8/16-bit pixels exactly as their PNG would be.

    For sources such as MedMNIST ``.npz`` files: the result equals
    ``preprocess(png_bytes_of(array), size=size).pixels``, where the PNG is what Pillow
    writes for ``Image.fromarray(array)``.

    Args:
        array: uint8 ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA,
            alpha ignored: an array in a data set is nobody's display, while its PNG with
            transparent pixels is refused, see :func:`_check_opaque`), or uint16 ``(H, W)``
            / ``(H, W, 1)``.
        size: ``(height, width)`` to resize to, or ``None`` to keep the size.
        version: the :data:`PREPROCESSING_VERSION` to reproduce: from "3", uint16 is scaled
            by the depth of its data (:func:`scale_16bit`, as a 16-bit PNG without sBIT);
            before, by 65535.

    Returns:
        float32 ``(H, W)`` in [0, 1]: ``/255`` for uint8; uint16 as ``version`` says.

    Raises:
        InvalidImageError: another dtype or shape, or an empty array (quotes them).

    Example:
        >>> preprocess_array(np.full((28, 28), 255, np.uint8), size=(64, 64)).max()
        1.0
    """
    if size is not None:
        size = _check_size(size)
    if not isinstance(array, np.ndarray):
        raise InvalidImageError(f"expected a numpy array. Received: {type(array).__name__}")
    if array.size == 0:
        raise InvalidImageError(f"the array is empty. Received shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    pixels: np.ndarray
    gray_or_colour = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype == np.uint8 and gray_or_colour:
        pixels = _to_gray(array)  # a new float32 array: divided and clipped in place
        pixels /= np.float32(255.0)
    elif array.dtype == np.uint16 and array.ndim == 2:
        if version not in SUPPORTED_PREPROCESSING_VERSIONS:
            raise InvalidImageError(
                f"unknown preprocessing version {version!r}; this radlens reproduces "
                f"{', '.join(SUPPORTED_PREPROCESSING_VERSIONS)}"
            )
        if _at_least(version, "3"):
            pixels = scale_16bit(array)[0]
        else:
            pixels = array.astype(np.float32)
            pixels /= np.float32(65535.0)
    else:
        raise InvalidImageError(
            "expected uint8 (H, W[, 1|3|4]) or uint16 (H, W[, 1]) pixels. "
            f"Received dtype {array.dtype}, shape {array.shape}"
        )
    pixels = np.clip(pixels, 0.0, 1.0, out=pixels)  # each branch made a new float32 array
    return resize_image(pixels, size) if size is not None else pixels


def resize_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a gray float image to exactly ``size``, bilinear and antialiased.

    The aspect ratio is not preserved: the image is stretched to ``(height, width)``.
    Pillow's bilinear filter on float (mode ``F``) data widens its support by the scale
    factor when shrinking, which antialiases; enlarging is plain bilinear interpolation.

    Args:
        pixels: float ``(H, W)`` array, normally in [0, 1].
        size: ``(height, width)``, positive integers.

    Returns:
        float32 ``(height, width)``, clipped to [0, 1].

    Raises:
        InvalidImageError: a bad size, or pixels that are not a non-empty 2-D array.

    Example:
        >>> resize_image(np.zeros((512, 512), np.float32), (224, 224)).shape
        (224, 224)
    """
    from PIL import Image

    height, width = _check_size(size)
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        raise InvalidImageError(
            f"resize needs a non-empty 2-D numeric array. Received dtype {arr.dtype}, "
            f"shape {arr.shape}"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape == (height, width):
        return np.clip(arr, 0.0, 1.0)
    image = _float_image(arr)
    resized = image.resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _float_image(arr: np.ndarray) -> PILImage.Image:
    """A Pillow mode ``F`` image of a C-contiguous native float32 ``(H, W)`` array, over the
    array's own memory when Pillow allows it.

    ``Image.fromarray`` copies a float image into memory of Pillow's (zero-filled first): two
    passes over 14 MiB for a 1955x1841 radiograph, a tenth of its preprocessing. Pillow's
    ``frombuffer`` maps a buffer in place, but only for the modes it lists (``L``, ``I;16``,
    ...), not ``F``; the mapping primitive it calls takes ``F`` as well (four bytes a pixel,
    rows ``W * 4`` apart: the array's layout) and checks the buffer's size. The pixels Pillow
    reads are the same either way, so the resize gives the same result. The image keeps the
    array alive; it is only read (resize writes a new image). Should a Pillow lack the
    primitive or refuse the call, the copy is made as before.
    """
    from PIL import Image

    height, width = arr.shape
    try:
        mapped = Image.core.map_buffer(arr, (width, height), "raw", 0, ("F", 0, 1))
    except Exception:  # a Pillow without the primitive, or another signature
        return Image.fromarray(arr)
    image = Image.new("F", (0, 0))._new(mapped)
    image.readonly = 1
    return image


def sniff_format(data: bytes) -> str:
    """Return ``"png"``, ``"jpeg"`` or ``"dicom"`` from the content of a file.

    Args:
        data: the file content; names and extensions play no part.

    Returns:
        The format name.

    Raises:
        NotAnImageError: none of the three (quotes the size and first bytes in hex, and names
            the format when :func:`other_format` knows it).

    Example:
        >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n...")
        'png'
    """
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SIGNATURE):
        return "jpeg"
    if data[_DICOM_PREFIX_OFFSET : _DICOM_PREFIX_OFFSET + 4] == b"DICM":
        return "dicom"
    # A dataset without preamble and file meta starts with its first element's tag; so may a
    # TGA (its ID length, colour map type), which names itself at its end (TGA 2.0)
    if (
        len(data) >= 8
        and data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
        and not _is_tga(data)
    ):
        return "dicom"
    named = other_format_said(data)  # a format's signature then, not a report's first line
    # ... unless it is a text format (an HTML page may be a report that names the patient)
    shown = bool(named) and _text_format(data) is None
    raise NotAnImageError(
        f"received {len(data)} bytes starting {_hex_head(data, text_shown=shown)}{named}"
    )


_TO_PNG = "convert it to PNG (16-bit gray keeps a radiograph's depth) and send that"
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def other_format_said(data: bytes) -> str:
    """``": <what it is>; <what to do>"`` for a file :func:`other_format` knows, to end a
    refusal's message with; ``""`` otherwise."""
    other = other_format(data)
    return "" if other is None else f": {other[0]}; {other[1]}"


def other_format(data: bytes) -> tuple[str, str] | None:
    """``(what it is, what to do)`` for a file of a format people send by mistake (another
    image format, a document, an archive, a NIfTI volume, a web page or base64 text:
    :func:`_text_format`), recognised by its signature; else ``None``. Only for saying what
    was received: such a file is refused all the same.

    Example:
        >>> other_format(b"GIF89a...")
        ('a GIF image', "convert it to PNG (16-bit gray keeps a radiograph's depth) and send that")
    """
    head = bytes(data[:16])
    name: str | None = None
    advice = _TO_PNG
    if head.startswith((b"GIF87a", b"GIF89a")):
        name = "a GIF image"
    elif head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        name = "a TIFF image"
    elif head[:2] == b"BM" and head[6:10] == bytes(4):  # its reserved fields are zero
        name = "a BMP image"
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        name = "a WebP image"
    elif head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        name = "a JPEG 2000 image"
    elif head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        name = "a JPEG XL image"
    elif head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        name = "an AVIF image"
    elif head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        name = "a HEIC/HEIF image"
    elif head.startswith(b"8BPS"):
        name = "a Photoshop (PSD) image"
    elif len(head) >= 3 and head[0:1] == b"P" and head[1] in b"123456" and head[2] in b" \t\r\n":
        name = "a PNM (PBM/PGM/PPM) image"
    elif _is_tga(data):
        name = "a TGA image"
    elif head.startswith(b"%PDF-"):
        name, advice = "a PDF document", "export the image from it as PNG and send that"
    elif head.startswith(b"PK\x03\x04"):
        name, advice = "a ZIP archive", "unpack it and send the images one at a time"
    elif head.startswith(b"\x1f\x8b"):
        name, advice = "a gzip-compressed file", "decompress it and send the image inside"
    elif head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") or (
        head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") and head[4:7] in (b"n+2", b"ni2")
    ):  # sizeof_hdr 348 (NIfTI-1, Analyze 7.5) or 540 and the magic (NIfTI-2)
        name = "a NIfTI or Analyze volume"
        advice = "send its slices as DICOM, or a slice as PNG"
    elif head[:4] == b"\x00\x00\x01\x00" and head[9:10] == b"\x00" and any(head[4:6]):
        name = "an ICO icon"  # reserved 0, type 1, a count, the first entry's reserved byte
    elif head[:3] == b"II\xbc":
        name = "a JPEG XR (HD Photo) image"
    elif head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        name = "a PostScript (EPS) file"
    else:
        name, advice = _more_formats(data) or _text_format(data) or (None, advice)
    return None if name is None else (name, advice)


_UNPACK = "unpack it and send the images one at a time"
_VIDEO_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ", b"qt  "}
    | {b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"dash", b"MSNV"}
)


def _more_formats(data: bytes) -> tuple[str, str] | None:
    """``(what it is, what to do)`` for more formats :func:`other_format` names by their
    signature (QA 105): image formats of games, screenshots and tools (QOI, DDS, PCX, a TGA
    without the TGA 2.0 footer: :func:`_is_tga_header`, OpenEXR), arrays and volumes (NumPy,
    HDF5: MINC 2 and others), archives, old Office documents and videos (an ultrasound clip
    exported as MP4 or AVI); else ``None``."""
    head = bytes(data[:16])
    if head[:4] == b"qoif" and len(head) >= 14 and head[12] in (3, 4) and head[13] in (0, 1):
        return "a QOI image", _TO_PNG  # magic, width, height, channels 3/4, colour space 0/1
    if head[:8] == b"DDS \x7c\x00\x00\x00":  # magic, then the header's size: 124
        return "a DirectDraw Surface (DDS) texture", _TO_PNG
    if _is_pcx(data):
        return "a PCX image", _TO_PNG
    if _is_tga_header(data):
        return "a TGA image", _TO_PNG
    if head[:4] == b"\x76\x2f\x31\x01":
        return "an OpenEXR image", _TO_PNG
    if head[:6] == b"\x93NUMPY":
        return "a NumPy array (.npy)", "save the image as PNG (16-bit gray keeps its depth)"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file (e.g. MINC 2)", "send its slices as DICOM, or a slice as PNG"
    if head[:6] in (b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07"):
        return ("a 7-Zip archive" if head[:2] == b"7z" else "a RAR archive"), _UNPACK
    if (head[:3] == b"BZh" and head[4:10] == b"1AY&SY") or head[:6] == b"\xfd7zXZ\x00":
        kind = "a bzip2" if head[:3] == b"BZh" else "an xz"
        return f"{kind}-compressed file", "decompress it and send the image inside"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "a Zstandard-compressed file", "decompress it and send the image inside"
    if head[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        return (
            "a Microsoft Office (OLE2) document",
            "export the image from it as PNG and send that",
        )
    if (head[4:8] == b"ftyp" and head[8:12] in _VIDEO_BRANDS) or (
        head[:4] == b"RIFF" and head[8:12] == b"AVI "
    ):
        return "a video (MP4, QuickTime or AVI)", "export a frame as PNG, or send the DICOM"
    return None


def _is_pcx(data: bytes) -> bool:
    """A PCX (ZSoft) header: manufacturer 0x0A, version 0-5 (not 1), encoding 0 or 1 (RLE),
    1, 2, 4 or 8 bits a plane, a window whose ends are not before its starts, the reserved
    byte 0 and 1, 3 or 4 planes."""
    if len(data) < 66 or data[0] != 0x0A or data[1] not in (0, 2, 3, 4, 5):
        return False
    x_min, y_min, x_max, y_max = struct.unpack("<4H", bytes(data[4:12]))
    return (
        data[2] in (0, 1)
        and data[3] in (1, 2, 4, 8)
        and x_min <= x_max
        and y_min <= y_max
        and data[64] == 0
        and data[65] in (1, 3, 4)
    )


def _is_tga_header(data: bytes) -> bool:
    """A TGA file's 18-byte header, for a TGA 1.0 file (no footer to tell it by, unlike
    :func:`_is_tga`): a colour map type 0 or 1 that its image type agrees with (colour-mapped
    1 and 9 need one; true-colour 2 and 10, gray 3 and 11 have none: its five bytes are zero),
    a colour map entry of 15, 16, 24 or 32 bits, a non-zero size, a pixel depth the image
    type allows and the descriptor's two top bits clear. Used only to name a refused file."""
    if len(data) < 18:
        return False
    colour_map, image_type, depth, descriptor = data[1], data[2], data[16], data[17]
    width, height = struct.unpack("<2H", bytes(data[12:16]))
    if colour_map == 0:
        mapped = bytes(data[3:8]) == bytes(5) and image_type in (2, 3, 10, 11)
    else:
        entries = struct.unpack("<H", bytes(data[5:7]))[0]
        mapped = colour_map == 1 and image_type in (1, 9) and entries > 0
        mapped = mapped and data[7] in (15, 16, 24, 32)
    depths = {1: (8, 16), 9: (8, 16), 2: (15, 16, 24, 32), 10: (15, 16, 24, 32)}
    return (
        mapped
        and width > 0
        and height > 0
        and depth in depths.get(image_type, (8, 16))
        and descriptor & 0xC0 == 0
    )


def _text_format(data: bytes) -> tuple[str, str] | None:
    """``(what it is, what to do)`` for a text file mistaken for an image: an HTML page (a link
    saved instead of the image it shows) or an SVG drawing, told by their tags within the first
    KiB; a PNG or JPEG as base64 text (a data: URL, or an API client that sent the encoded
    string instead of the bytes); else ``None``. Only names the format: no text is quoted."""
    text = bytes(data[:1024]).lstrip(b"\xef\xbb\xbf \t\r\n")
    markup = text.lower() if text.startswith(b"<") else b""
    if b"<html" in markup or markup.startswith(b"<!doctype html"):
        return "a web page (HTML), not an image", "save the image itself from it and send that"
    if b"<svg" in markup:
        return "an SVG drawing", _TO_PNG
    encoded = text.split(b";base64,", 1)[1] if text[:11].lower() == b"data:image/" else text
    kind = "PNG" if encoded.startswith(b"iVBORw0KGgo") else "JPEG" if encoded[:4] == b"/9j/" else ""
    if kind:
        return (
            f"a {kind} image as base64 text",
            "decode the base64 and send the image's bytes (the file itself)",
        )
    # text headers of volume formats and of DICOMweb's JSON model (whose values may name the
    # patient: none is quoted)
    if text.startswith((b"NRRD000", b"ObjectType = Image")):
        return "a NRRD or MetaImage volume", "send its slices as DICOM, or a slice as PNG"
    if text.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "a Radiance HDR image", _TO_PNG
    if text[:1] in (b"[", b"{") and _DICOM_JSON_TAG.search(text) and b'"vr"' in text:
        return (
            "DICOM JSON metadata (the DICOMweb JSON model), not a DICOM instance",
            "send the instance itself (the Part 10 file, application/dicom)",
        )
    return None


# a DICOM JSON model's attribute: its tag as eight hex digits, then its object (PS3.18 F.2)
_DICOM_JSON_TAG = re.compile(rb'"[0-9A-Fa-f]{8}"\s*:\s*\{')


_TGA_FOOTER = b"TRUEVISION-XFILE.\x00"


def _is_tga(data: bytes) -> bool:
    """A TGA 2.0 file: the last 18 bytes are its signature (TGA 1.0 has none to tell it by)."""
    return len(data) >= 44 and bytes(data[-18:]) == _TGA_FOOTER  # 18-byte header + footer


# --- DICOM pieces (public so they can be tested on their own) ---------------------------


def frame_indices(number_of_frames: int, max_frames: int | None) -> list[int]:
    """The frames to use when a whole multi-frame instance is predicted frame by frame.

    Every frame when there are at most ``max_frames`` of them (or ``max_frames`` is
    ``None``); otherwise every k-th frame, ``k = ceil(number_of_frames / max_frames)``, so
    at most ``max_frames`` are returned, with the unused frames split evenly before the
    first and after the last one so the sample stays centred on the volume. Pass each
    index as ``preprocess(..., frame=index)``, or all of them to :func:`preprocess_frames`.

    Args:
        number_of_frames: the instance's frame count (``ImageMetadata.frames``), >= 1.
        max_frames: the most frames to return, >= 1, or ``None`` for all of them.

    Returns:
        Increasing 0-based frame indices.

    Raises:
        InvalidImageError: a count or limit that is not a positive integer (quotes it).

    Example:
        >>> frame_indices(5, 10)
        [0, 1, 2, 3, 4]
        >>> frame_indices(10, 3)   # every 4th frame
        [0, 4, 8]
        >>> frame_indices(11, 3)   # every 4th, one frame left over on each side
        [1, 5, 9]
    """
    for name, value in (("number_of_frames", number_of_frames), ("max_frames", max_frames)):
        if value is None and name == "max_frames":
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise InvalidImageError(f"{name} must be a positive integer. Received {value!r}")
    total = int(number_of_frames)
    if max_frames is None or total <= int(max_frames):
        return list(range(total))
    step = -(-total // int(max_frames))
    count = -(-total // step)
    offset = (total - 1 - (count - 1) * step) // 2
    return [offset + position * step for position in range(count)]


_MODALITY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence")
_VOI_KEYWORDS = (
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
)
_FRAME_VIEW_KEYWORDS = (
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PresentationLUTShape",
)
_FUNCTIONAL_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PixelValueTransformationSequence", _MODALITY_KEYWORDS),
    ("FrameVOILUTSequence", _VOI_KEYWORDS),
)


def frame_dataset(ds: Dataset, index: int) -> Dataset:
    """The attributes that map frame ``index``'s stored values to display values.

    An enhanced multi-frame image (Enhanced CT/MR/XA/..., PS3.3 C.7.6.16) keeps its
    rescale and window in functional groups instead of the top-level attributes: for each
    of the Pixel Value Transformation macro (Rescale Slope/Intercept/Type, or a Modality
    LUT) and the Frame VOI LUT macro (Window Center/Width, VOI LUT Function, or a VOI LUT
    Sequence), the frame's item of the Per-Frame Functional Groups Sequence is used when it
    holds the macro, else the Shared Functional Groups Sequence's, else the top-level
    attributes. A macro found in a group replaces all of that macro's top-level attributes
    (a per-frame window never mixes with a top-level VOI LUT).

    Args:
        ds: the image's dataset.
        index: the 0-based frame index.

    Returns:
        ``ds`` itself when no functional group holds either macro (every single-frame and
        classic multi-frame file), else a small new dataset with the image pixel
        description, Modality, Presentation LUT Shape and the frame's modality and VOI
        attributes, for :func:`modality_values` and the VOI step. ``ds`` is not changed.

    Example:
        >>> view = frame_dataset(enhanced_ct, 0)
        >>> float(view.RescaleIntercept), float(view.WindowCenter)
        (-1024.0, 49.0)
    """
    per_frame = _group_item(ds, "PerFrameFunctionalGroupsSequence", index)
    shared = _group_item(ds, "SharedFunctionalGroupsSequence", 0)
    found: list[tuple[tuple[str, ...], Dataset]] = []
    for sequence, keywords in _FUNCTIONAL_GROUPS:
        for group in (per_frame, shared):
            macro = _group_item(group, sequence, 0) if group is not None else None
            if macro is not None:
                found.append((keywords, macro))
                break
    if not found:
        return ds
    import copy

    from pydicom.dataset import Dataset as PydicomDataset

    view = PydicomDataset()
    for keyword in _FRAME_VIEW_KEYWORDS + _MODALITY_KEYWORDS + _VOI_KEYWORDS:
        if keyword in ds:
            view[keyword] = copy.deepcopy(ds[keyword])
    for keywords, macro in found:
        for keyword in keywords:
            if keyword in view:
                del view[keyword]
            if keyword in macro:
                view[keyword] = copy.deepcopy(macro[keyword])
    return view


def _group_item(ds: Dataset, keyword: str, index: int) -> Dataset | None:
    """Item ``index`` of sequence ``keyword``, or ``None`` when absent or malformed."""
    try:
        sequence = ds.get(keyword)
        if not sequence or not 0 <= index < len(sequence):
            return None
        item = sequence[index]
    except Exception:  # a malformed sequence: treat as absent, as _int_or does
        return None
    from pydicom.dataset import Dataset as PydicomDataset

    return item if isinstance(item, PydicomDataset) else None


def modality_values(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the modality LUT: stored values -> modality units (HU for CT).

    Uses pydicom's ``apply_modality_lut`` (Rescale Slope/Intercept or the Modality LUT
    Sequence). This comes before any window, because windows are defined in these units.

    Args:
        arr: the decoded stored values of one grayscale frame.
        ds: the dataset the frame came from.

    Returns:
        The values in modality units (float64 when a rescale applies).

    Raises:
        InvalidImageError: a malformed rescale or modality LUT (quotes pydicom's message).

    Example:
        >>> hu = modality_values(stored, ds)   # CT: air about -1000
    """
    from pydicom.pixels import apply_modality_lut

    sequence = ds.get("ModalityLUTSequence")
    if sequence:  # pydicom reads its first item's descriptor and data, or raises
        lacking = [
            f"{name} ({tag})"
            for keyword, name, tag in (
                ("LUTDescriptor", "LUT Descriptor", "0028,3002"),
                ("LUTData", "LUT Data", "0028,3006"),
            )
            if sequence[0].get(keyword) in (None, b"", "", [])
        ]
        if lacking:
            raise InvalidRescaleError(
                f"the Modality LUT Sequence (0028,3000) item lacks {' and '.join(lacking)}, "
                "so the image's values cannot be known"
            )
        wide = _modality_lut_wider_than_declared(arr, ds)
        if wide is not None:
            return wide
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        # pydicom would multiply by None; dcmtk reads an empty slope as 1, but an empty
        # intercept is a CT's offset to HU lost: neither is guessed here
        empty = [
            f"{name} ({tag})"
            for keyword, name, tag in (
                ("RescaleSlope", "Rescale Slope", "0028,1053"),
                ("RescaleIntercept", "Rescale Intercept", "0028,1052"),
            )
            if _text(ds, keyword) is None
        ]
        if empty:
            raise InvalidRescaleError(
                f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} present but "
                "empty, so the image's values (HU for a CT) cannot be known"
            )
        # pydicom keeps a Decimal String it cannot read ("1,0": a decimal comma) as text, and
        # numpy then failed on it with a type error about ufunc loops (QA round 36)
        unreadable = [
            f"{name} ({tag}) {_numeric_text_shown(_text(ds, keyword))}"
            for keyword, name, tag in (
                ("RescaleSlope", "Rescale Slope", "0028,1053"),
                ("RescaleIntercept", "Rescale Intercept", "0028,1052"),
            )
            if not _decimal_or_numbers(ds.get(keyword))
        ]
        if unreadable:
            raise InvalidRescaleError(
                f"{' and '.join(unreadable)} {'is' if len(unreadable) == 1 else 'are'} not a "
                "decimal number (a Decimal String writes '1.0', with a point and no comma), so "
                "the image's values (HU for a CT) cannot be known"
            )
    return _call(
        lambda: np.asarray(apply_modality_lut(arr, ds)),
        InvalidImageError,
        "could not apply the modality LUT / rescale",
    )


# X-Ray Angiographic, X-Ray Radiofluoroscopic and the retired XA Bi-plane Image Storage: their
# Modality LUT is not a display step (see _modality_lut_wider_than_declared)
_XRAY_INTENSITY_LUT_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.12.3"}
)


def displays_stored_values(ds: Dataset, *, version: str = PREPROCESSING_VERSION) -> bool:
    """Whether the window (or min-max) applies to the stored values, the modality transform
    skipped: an X-ray angiography or fluoroscopy image (XA, XRF, the retired XA Bi-plane SOP
    classes), from version "5".

    Their Modality LUT (or rescale) maps stored values to X-ray beam intensity; it is used
    that way round for measurement and is not applied before the VOI for display, so their
    windows are in stored values (David Clunie on comp.protocols.dicom, 2000, quoted where
    dcmtk's ``DiMonoModality`` skips it for these three SOP classes). Applied, a real Philips
    INTEGRIS XA table turned its image white under its own window. Before "5" the transform
    was applied (except a table wider than its descriptor:
    :func:`_modality_lut_wider_than_declared`).

    Args:
        ds: the dataset (its SOP Class UID is read).
        version: the :data:`PREPROCESSING_VERSION` to reproduce.

    Returns:
        True when the modality transform is skipped for display.

    Example:
        >>> displays_stored_values(xa_dataset)
        True
    """
    return _at_least(version, "5") and _sop_class_uid(ds) in _XRAY_INTENSITY_LUT_SOP_CLASSES


_NUMERIC_TEXT = re.compile(r"[0-9+\-.,eE ]{1,16}")


def _numeric_text_shown(text: str | None) -> str:
    """A value that should have been a number, quoted when it is made of digits, signs,
    points, commas and exponents only ('1,0'); anything else may be text a writer put in the
    wrong field (a name, an ID): not quoted (QA round 31)."""
    if text is not None and _NUMERIC_TEXT.fullmatch(text):
        return repr(text)
    return "<value not shown>"


def _decimal_or_numbers(value: Any) -> bool:
    """Whether a Rescale Slope/Intercept value is what pydicom reads a Decimal String as (a
    number, or several); False for text it could not read as one (``"1,0"``, ``"AUTO"``)."""
    if not isinstance(value, str):
        return True  # DSfloat/DSdecimal, or a multi-value: pydicom's own handling as before
    try:
        float(value)
    except ValueError:
        return False
    return True


def _modality_lut_wider_than_declared(arr: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The modality values when the Modality LUT's descriptor declares fewer bits per entry
    than its LUT Data words hold; ``None`` when the descriptor is right (pydicom applies the
    table) or the table cannot be read this way (pydicom then applies it, or says why not).

    The descriptor's third value must be 8 or 16 (PS3.3 C.11.1.1.1), yet real files declare 8
    over 12-bit entries (a Philips INTEGRIS XA: 256 entries from 80 to 4022) or declare 12;
    pydicom then fails (``uint8`` overflow, ``uint12`` not understood) and the image was
    refused as invalid. LUT Data (US, or OW words) holds one entry per 16-bit word whatever
    the declared depth, so the table's values are known and are used as stored. An X-ray
    angiography or fluoroscopy image (XA/XRF SOP class) keeps its stored values instead: its
    Modality LUT maps them to X-ray beam intensity and is not applied for display (dcmtk
    ignores it), so its window is in stored values; applied, the Philips table above turned
    the image white under its own 127/255 window. A table that fits its declared depth is
    left to pydicom, so every image it applied to before is unchanged (preprocessing "4").
    """
    try:
        item = ds.ModalityLUTSequence[0]
        entries = int(item.LUTDescriptor[0]) or 2**16
        first = int(item.LUTDescriptor[1])
        bits = int(item.LUTDescriptor[2])
        if not 1 <= bits < 16:
            return None
        element = item["LUTData"]
        data = element.value
        if isinstance(data, bytes | bytearray):
            little = _little_endian(ds)
            if element.VR != "OW" or little is None or len(data) < 2 * entries:
                return None
            words = np.frombuffer(bytes(data[: 2 * entries]), dtype="<u2" if little else ">u2")
        else:
            words = np.atleast_1d(np.asarray(data, dtype=np.int64))
    except Exception:  # a malformed item: pydicom's own attempt says what is wrong
        return None
    if words.ndim != 1 or words.size < entries:
        return None
    words = words[:entries].astype(np.int64)
    if int(words.min()) < 0 or int(words.max()) > 0xFFFF:
        return None
    if bits == 8 and int(words.max()) <= 0xFF:
        return None  # a true 8-bit table: pydicom applies it as it always has
    if _sop_class_uid(ds) in _XRAY_INTENSITY_LUT_SOP_CLASSES:
        return np.asarray(arr)
    index = np.clip(np.asarray(arr).astype(np.int64) - first, 0, entries - 1)
    return words.astype(np.uint16)[index]


def _little_endian(ds: Dataset) -> bool | None:
    """Whether the dataset's data were read little endian (as pydicom decides it for OW LUT
    Data: the file meta's transfer syntax, else the encoding read); ``None`` when unknown."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is not None:
        try:
            return bool(tsyntax.is_little_endian)
        except Exception:  # an unknown or private transfer syntax: the encoding read
            pass
    little = ds.original_encoding[1]
    return None if little is None else bool(little)


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``[center - width/2, center + width/2]`` linearly onto [0, 1], clipping outside.

    The lung preset (-600/1500) maps -1350 HU to 0 and 150 HU to 1.

    Args:
        values: modality values (HU for CT).
        center: window center, in the same units.
        width: window width, > 0.

    Returns:
        float32 array of the shape of ``values`` in [0, 1].

    Raises:
        InvalidImageError: a width that is not positive and finite.

    Example:
        >>> apply_window(np.array([-1350.0, -600.0, 150.0]), -600, 1500)
        array([0. , 0.5, 1. ], dtype=float32)
    """
    if not (math.isfinite(width) and width > 0 and math.isfinite(center)):
        raise InvalidImageError(
            f"a window needs a finite center and width > 0. Received {center}/{width}"
        )
    lower = center - width / 2.0
    out = (np.asarray(values, dtype=np.float64) - lower) / width
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --- DICOM -----------------------------------------------------------------------------


def _preprocess_dicom(
    data: bytes,
    *,
    window: str | None,
    max_pixels: int,
    reduce_for: tuple[int, int] | None,
    frame: int | None = None,
    version: str = PREPROCESSING_VERSION,
    dataset: Dataset | None = None,
) -> tuple[np.ndarray, ImageMetadata]:
    source = _open_dicom(data, max_pixels, dataset)
    index = source.frames // 2 if frame is None else _check_frame_index(frame, source.frames)
    if _at_least(version, "4"):  # whichever decoder reads the frame
        _check_pixel_header(source.ds)
    return _dicom_frame(source, index, window=window, reduce_for=reduce_for, version=version)


@dataclass(frozen=True)
class _DicomSource:
    """A parsed DICOM file whose header passed the checks, ready to decode frames from."""

    ds: Dataset
    tsyntax: Any
    rows: int
    columns: int
    frames: int


def _open_dicom(data: bytes, max_pixels: int, dataset: Dataset | None = None) -> _DicomSource:
    """Parse the file once (unless ``dataset``, :func:`parse_dicom`'s of ``data``, is given)
    and check what can be checked before any pixel is decoded, a Siemens mosaic refused
    first (:func:`check_not_mosaic`, as :func:`parse_dicom` does). Running it again on the
    same dataset gives the same source (its one change to the dataset, a Photometric
    Interpretation spelled as its defined term, is made once)."""
    ds = _read_dicom(data, max_pixels) if dataset is None else dataset
    check_not_mosaic(ds)  # a file given alone (the CLI, a series' slices) as parse_dicom's
    tsyntax = _transfer_syntax(ds)
    if _ends_mid_element(ds):
        raise TruncatedDataError(
            f"the data ends inside element {_last_tag(ds)}; received {len(data)} bytes"
        )
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        if len(ds) == 0:
            raise TruncatedDataError(
                "no dataset element could be read after the file meta information: the data "
                "ends early (at the meta information, or inside an element such as compressed "
                f"pixel data without its closing delimiter); received {len(data)} bytes"
            )
        # an absent value is said in words, not as Python's None: a hanging protocol or a
        # colour palette (non-patient objects) has no Modality (QA round 20)
        sop_class, modality = _sop_class_name(ds), _text(ds, "Modality")
        raise NoPixelDataError(
            "no (7FE0,0010) Pixel Data element. Received "
            + (f"SOP class {sop_class!r}" if sop_class else "no SOP Class UID")
            + (f", modality {modality!r}" if modality else ", no Modality")
            + f", {len(data)} bytes"
            + (_DICOMDIR_HINT if _sop_class_uid(ds) == _MEDIA_STORAGE_DIRECTORY else "")
        )
    rows, columns, frames = _check_geometry(ds, max_pixels)
    if (
        tsyntax.is_encapsulated
        and "PixelData" in ds
        and not ds["PixelData"].is_undefined_length
        and not bytes(ds.PixelData or b"")[:4] == _ITEM_TAG
    ):
        # samples stored as they are, under a compressed syntax: decoders read them as
        # fragment items and fail on the first ("unexpected tag (F830,F830)"); the header lies.
        # (Encapsulated data written with a defined length still starts with its Basic Offset
        # Table item: pydicom reads that, and so does radlens.)
        raise NativeUnderEncapsulatedSyntaxError(
            f"Pixel Data (7FE0,0010) has a defined length ({len(ds.PixelData or b'')} bytes, "
            "uncompressed samples; compressed data are encapsulated, of undefined length) but "
            f"the transfer syntax in the file meta information is {_ts_label(tsyntax)}"
        )
    _normalise_photometric(ds)
    return _DicomSource(ds, tsyntax, rows, columns, frames)


def _normalise_photometric(ds: Dataset) -> None:
    """Write the Photometric Interpretation as its defined term when the file spells it with
    leading spaces (not significant in a CS value, PS3.5 6.2) or in lower case.

    pydicom's decoders and its windowing compare the value exactly: ``" MONOCHROME1"`` was
    refused as undecodable by the full decode while the reduced-resolution one (which reads
    it stripped and upper-cased) predicted without the file's window; the CLI (native size)
    and the service then disagreed about one file (QA round 36). A value spelled as a defined
    term is left as it is: every file that decoded in full before reads as before. Such a
    JPEG or JPEG 2000 file that the reduced decode predicted now has its file window applied
    (it was passed over for min-max).
    """
    try:
        element = ds.get("PhotometricInterpretation")
    except Exception:  # a malformed element: _check_pixel_header names it
        return
    text = _text(ds, "PhotometricInterpretation")
    if element is None or text is None or str(element) == text.upper():
        return
    ds.PhotometricInterpretation = text.upper()


def _dicom_frame(
    parsed: _DicomSource,
    index: int,
    *,
    window: str | None,
    reduce_for: tuple[int, int] | None,
    version: str,
) -> tuple[np.ndarray, ImageMetadata]:
    """Decode frame ``index`` of a parsed file and map it to display values in [0, 1]."""
    ds, tsyntax = parsed.ds, parsed.tsyntax
    rows, columns, frames = parsed.rows, parsed.columns, parsed.frames
    current = _at_least(version, "4")  # its callers checked the pixel header (once a file)
    codestream = _frame_codestream(ds, tsyntax, index, frames)
    reduced = None
    closed = None
    if codestream is not None:
        # a frame that lacks only its end marker is decoded closed there (_check_codestream)
        closed = _check_codestream(codestream, ds, tsyntax, rows=rows, columns=columns)
        codestream = codestream if closed is None else closed
        if reduce_for is not None:
            try:
                from radlens.models.codecs import j2k_without_trailing_comments

                # a COM segment after the last tile-part stops Pillow's OpenJPEG as it stops
                # the full decode (models/codecs.py drops it there too; QA round 80)
                reduced = _reduced_decode(
                    j2k_without_trailing_comments(codestream),
                    ds,
                    tsyntax,
                    rows,
                    columns,
                    reduce_for,
                    colour=version in COLOUR_J2K_REDUCED_VERSIONS,
                )
            except CodestreamMismatchError as exc:
                # Pillow's OpenJPEG binding refuses some valid codestreams at every reduction
                # (a real 16-bit DX whose pydicom, GDCM and imagecodecs decodes agree): the
                # full decode, pydicom's plugins, is the judge; it refuses a bad one itself
                logger.debug("reduced decode refused (%s); decoding in full", exc)
    if reduced is not None:
        arr, photometric = reduced
    else:
        if not current:  # versions "1"-"3": the full decode only, which needs them all
            _check_pixel_header(ds)
        arr, photometric = _decode_frame(
            ds,
            tsyntax,
            index,
            rows=rows,
            columns=columns,
            codestream=codestream,
            layout_from_codestream=version in CODESTREAM_LAYOUT_VERSIONS,
            closed=closed is not None,
        )
        if current and _keeps_unused_bits(tsyntax) and arr.ndim == 2:
            lossless = _lossless_codestream(codestream, tsyntax)
            arr = _stored_bits_only(arr, lossless, _int_or(ds, "BitsStored", None))
    if arr.size == 0:
        raise InvalidImageError(f"the decoded frame is empty. Received shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InvalidImageError(f"the pixel data is not numeric. Received dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InvalidImageError("the pixel data holds NaN or infinite values")

    # From version "3", the frame's functional groups (enhanced multi-frame) decide the
    # modality LUT and VOI; `ds` keeps describing the image for the metadata.
    pixel_ds = frame_dataset(ds, index) if _at_least(version, "3") else ds
    table = _value_table(arr) if arr.ndim == 2 and photometric != "PALETTE COLOR" else None
    colour = None
    if arr.ndim == 2:
        if photometric == "PALETTE COLOR":
            pixels, label, colour = _palette_to_gray(arr, ds)
        else:
            # With a value table, the per-value steps below run once per distinct stored
            # value (table.domain) instead of once per pixel; see _value_table.
            source = arr if table is None else table.domain
            pixels, label = _grayscale(source, pixel_ds, window, table=table, version=version)
            if display_inverted(photometric, ds, version=version):
                pixels = 1.0 - pixels
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        if photometric.startswith("YBR"):
            arr = _convert_to_rgb(arr, photometric)
        bits = _int_or(ds, "BitsStored", None)
        if bits is None or not 1 <= bits <= 8 * arr.dtype.itemsize or arr.max() >= 2**bits:
            # a missing or impossible Bits Stored, or one the stored values exceed (they would
            # all saturate to white): the container's range
            bits = 8 * arr.dtype.itemsize
        pixels = _to_gray(arr[..., :3]) / np.float32(2**bits - 1)
        label = "full-range"
        colour = colour_fraction(arr, bits)
    else:
        raise InvalidImageError(
            f"unsupported pixel layout. Received shape {arr.shape}, photometric "
            f"interpretation {photometric!r}"
        )
    pixels = np.asarray(pixels, dtype=np.float32)
    # With a value table, only the values present count (an absent one may overflow).
    if not np.isfinite(pixels).all() and (
        table is None or not np.isfinite(pixels[table.present]).all()
    ):
        # e.g. a Rescale Slope that overflows
        raise InvalidImageError(
            "the pixel values are not finite after the modality/VOI transforms. Received "
            f"RescaleSlope={_text(pixel_ds, 'RescaleSlope')!r}, "
            f"RescaleIntercept={_text(pixel_ds, 'RescaleIntercept')!r}"
        )
    pixels = np.clip(pixels, 0.0, 1.0)
    # the stored values (a gray frame's, or its table's domain; a palette's indices), or a
    # colour frame's gray: one colour all over is blank whatever its channels hold
    if arr.ndim == 3:
        blank = _gray_is_constant(pixels)
    else:
        blank = _is_constant(arr if table is None else table.domain)
    if table is not None:
        pixels = table.lookup(pixels)  # look every pixel up: (H, W) float32

    metadata = ImageMetadata(
        format="dicom",
        rows=rows,
        columns=columns,
        frames=frames,
        bits_stored=_int_or(ds, "BitsStored", None),
        photometric_interpretation=_text(ds, "PhotometricInterpretation"),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        transfer_syntax_uid=str(tsyntax),
        transfer_syntax_name=tsyntax.name,
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        frame_index=index,
        window=label,
        manufacturer=_text(ds, "Manufacturer"),
        burned_in_annotation=burned_in_annotation(ds),
        blank=blank,
        colour_fraction=colour,
        instance_number=read_instance_number(ds),
    )
    return pixels, metadata


_PIXEL_HEADER = (
    ("SamplesPerPixel", "Samples per Pixel", "0028,0002"),
    ("PhotometricInterpretation", "Photometric Interpretation", "0028,0004"),
    ("BitsAllocated", "Bits Allocated", "0028,0100"),
    ("BitsStored", "Bits Stored", "0028,0101"),
    ("PixelRepresentation", "Pixel Representation", "0028,0103"),
)


def _check_pixel_header(ds: Dataset) -> None:
    """Refuse, naming them, the Image Pixel attributes pydicom needs to decode a frame that
    are absent or empty (it would fail on the first with an AttributeError or TypeError).
    Version "4": once a file, before any frame; before: in :func:`_dicom_frame`, before a
    full decode.
    Rows and Columns are checked when the file is parsed; Float and Double Float Pixel Data
    have no Bits Stored or Pixel Representation. From version "4" every frame is checked, so
    a file gets the same answer whichever decoder the model size and ``?explain`` pick; a
    model of an older version still has a frame decoded at reduced resolution (whose decoder
    reads the codestream's own header) without it, as it was trained."""
    floats = "PixelData" not in ds
    missing = []
    for keyword, name, tag in _PIXEL_HEADER:
        if floats and keyword in ("BitsStored", "PixelRepresentation"):
            continue
        if keyword == "PhotometricInterpretation":
            value = _text(ds, keyword)
        else:
            value = _int_or(ds, keyword, None)
        if value is None:
            missing.append(f"{name} ({tag})")
    if missing:
        raise IncompletePixelHeaderError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} absent, empty or "
            f"unreadable; SOP class {_text(ds, 'SOPClassUID') or 'not stated'}",
            missing,
        )


def _keeps_unused_bits(tsyntax: Any) -> bool:
    """JPEG-LS and JPEG 2000 (HTJ2K too): pydicom corrects only their sign, never the bits
    above Bits Stored, which it clears or sign-extends for every other syntax."""
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes

    return tsyntax in JPEGLSTransferSyntaxes or tsyntax in JPEG2000TransferSyntaxes


_LOSSY_KEEPING_UNUSED_BITS = frozenset(
    (
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    )
)


def _lossless_codestream(codestream: bytes | None, tsyntax: Any) -> bool:
    """Whether a JPEG-LS or JPEG 2000 frame was coded losslessly, by its own header: NEAR 0
    (JPEG-LS), the reversible 5-3 wavelet (JPEG 2000). A lossless codestream sent under a
    lossy syntax is common (4.91 is often used for reversible ones); the syntax decides only
    when the header cannot be read."""
    from radlens.models.codecs import jpeg_ls_near

    if codestream is not None:
        near = jpeg_ls_near(codestream)
        if near is not None:
            return near == 0
        reversible = _j2k_main_header(codestream).reversible  # None for a JP2 wrapper
        if reversible is not None:
            return reversible
    return str(tsyntax) not in _LOSSY_KEEPING_UNUSED_BITS


def _stored_bits_only(arr: np.ndarray, lossless: bool, bits_stored: int | None) -> np.ndarray:
    """A JPEG-LS or JPEG 2000 frame's values within Bits Stored: masked when it was coded
    losslessly (:func:`mask_unused_bits`: the words are exact, the bits above are not the
    value's); clipped to the range when it was not, since lossy ringing can overshoot the
    range when the codestream's precision exceeds Bits Stored (masking would wrap a
    saturated white to black)."""
    if lossless:
        return mask_unused_bits(arr, bits_stored)
    if not np.issubdtype(arr.dtype, np.integer) or bits_stored is None:
        return arr
    if not 0 < bits_stored < 8 * arr.dtype.itemsize:
        return arr
    signed = np.issubdtype(arr.dtype, np.signedinteger)
    if signed:
        lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    else:
        lo, hi = 0, (1 << bits_stored) - 1
    return np.clip(arr, lo, hi).astype(arr.dtype, copy=False)


def mask_unused_bits(arr: np.ndarray, bits_stored: int | None) -> np.ndarray:
    """Keep only the low ``bits_stored`` bits of integer pixels: the bits above are cleared
    (unsigned) or copies of the sign bit (signed), as PS3.5 8.1.1 defines a stored value.

    A JPEG-LS or JPEG 2000 codestream may carry whole 16-bit words (dcmtk's ``dcmcjpls``
    writes precision 16 for Bits Stored 12 when the bits above are set: old overlay bits,
    signed values not sign-extended); decoded, they must give what the uncompressed file
    gives, which pydicom masks. Version "4" and later (before, such a frame was read whole).
    A missing or impossible Bits Stored leaves the array as decoded.
    """
    if not np.issubdtype(arr.dtype, np.integer) or bits_stored is None:
        return arr
    shift = 8 * arr.dtype.itemsize - bits_stored
    if not 0 < shift < 8 * arr.dtype.itemsize:
        return arr
    arr = arr if arr.flags.writeable else arr.copy()
    np.left_shift(arr, shift, out=arr)
    np.right_shift(arr, shift, out=arr)  # arithmetic for a signed dtype: sign-extends
    return arr


def blank_image_error(metadata: ImageMetadata) -> BlankImageError:
    """The error for an image whose ``metadata.blank`` is true (the service refuses it with
    it, training skips the file with it)."""
    where = (
        f"frame {metadata.frame_index} of {metadata.frames} (the one read) of the "
        if metadata.frames > 1
        else "the "
    )
    return BlankImageError(
        f"every stored pixel of {where}{metadata.rows}x{metadata.columns} "
        f"{metadata.format.upper()} image has the same value"
    )


def _is_constant(arr: np.ndarray) -> bool:
    """Whether every value of ``arr`` (stored pixels, every sample) is the same one."""
    lo, hi = _value_range(arr)
    return lo == hi


GRAY_LEVEL_TOLERANCE = 1e-6  # far below one level of a 16-bit image (1.5e-5 of [0, 1])


def _gray_is_constant(gray: np.ndarray) -> bool:
    """Whether a gray image in [0, 1] made from an upload's pixels holds one gray level: the
    float32 gray of one colour all over is not one value (the colour-to-gray product rounds
    some rows otherwise: RGB 255,165,0 gives 173.09999 and 173.1, QA round 46), so levels
    closer than :data:`GRAY_LEVEL_TOLERANCE` are one. Only the blank flag reads it."""
    lo, hi = _value_range(gray)
    return bool(hi - lo <= GRAY_LEVEL_TOLERANCE)


def burned_in_annotation(ds: Dataset) -> str | None:
    """The dataset's Burned In Annotation (0028,0301) as "YES" or "NO"; None when it is
    absent or holds anything else (unknown: the pixels may carry text)."""
    value = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    return value if value in ("YES", "NO") else None


def display_inverted(
    photometric: str, ds: Dataset, *, version: str = PREPROCESSING_VERSION
) -> bool:
    """Whether a grayscale frame is inverted (``1 - x``) after VOI, so bone is bright.

    MONOCHROME1 (minimum is white) is always inverted. From version "3", a Presentation LUT
    Shape of INVERSE inverts too (PS3.3 C.11.6: its P-values run the other way), and the
    two never add up to a double inversion: radiography IODs require INVERSE exactly with
    MONOCHROME1 (e.g. DX, C.8.11.1.1.1), which describes one inversion. So:

    ====================  ========  ========  ===========
    Photometric           absent    IDENTITY  INVERSE
    ====================  ========  ========  ===========
    MONOCHROME2           as is     as is     inverted
    MONOCHROME1           inverted  inverted  inverted
    ====================  ========  ========  ===========

    MONOCHROME1 with IDENTITY contradicts the standard; the photometric interpretation,
    which describes the stored pixels, wins (highdicom lets IDENTITY win there). A
    Presentation LUT Sequence (a table rather than a shape) is not applied.

    Args:
        photometric: the frame's photometric interpretation after decoding.
        ds: the dataset (its Presentation LUT Shape is read).
        version: the :data:`PREPROCESSING_VERSION` to reproduce; before "3", only
            MONOCHROME1 inverts.

    Returns:
        True when the frame is to be inverted.

    Example:
        >>> display_inverted("MONOCHROME2", ds_with_inverse_shape)
        True
    """
    if photometric == "MONOCHROME1":
        return True
    if not _at_least(version, "3") or photometric != "MONOCHROME2":
        return False
    return (_text(ds, "PresentationLUTShape") or "").upper() == "INVERSE"


def parse_dicom(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Parse a DICOM file's bytes as :func:`preprocess` does, decoding nothing, for a caller
    that reads the header before preprocessing (the service's intended-use gate) and then
    passes the dataset to :func:`preprocess` / :func:`preprocess_frames` (``dataset=``)
    instead of having the file parsed again. The deflate limit of ``max_pixels`` applies.
    The entry of what predicts or trains (the service's uploads, training's files): it
    refuses a Siemens mosaic (:func:`check_not_mosaic`), one picture of many slices tiled,
    with the reason :func:`preprocess` and :func:`preprocess_frames` give for one (the CLI's
    ``inspect`` and ``filter`` read files through them alone).

    Raises:
        The parse errors of :func:`preprocess`: NotAnImageError, TruncatedDataError,
        MalformedDicomError, DeflatedDatasetTooLargeError; InvalidImageError for a mosaic,
        for data that is not bytes or a bad ``max_pixels``.
    """
    _check_max_pixels(max_pixels)
    data = _check_bytes(data)
    with _quiet_warnings():
        ds = _read_dicom(data, max_pixels)
        check_not_mosaic(ds)
    return ds


# Siemens' private (0019,100A) NumberOfImagesInMosaic (its CSA header group)
_IMAGES_IN_MOSAIC = (0x0019, 0x100A)


def check_not_mosaic(ds: Dataset) -> None:
    """Refuse a Siemens MR mosaic (Image Type containing ``MOSAIC``): its one frame is a grid
    of many slices (NumberOfImagesInMosaic, (0019,100A), says how many), which a model made
    for one picture would read as one. Nothing is decoded.

    Raises:
        InvalidImageError: the file is a mosaic; the message says what to send instead.
    """
    try:
        image_type = ds.get("ImageType")
        if image_type is None:
            return
        many = isinstance(image_type, Sequence) and not isinstance(image_type, str | bytes)
        values = [str(v).strip() for v in (image_type if many else [image_type])]
    except Exception:  # a malformed element: not known to be a mosaic
        return
    words = {v.upper() for v in values}
    if "MOSAIC" not in words:
        return
    count = None
    try:
        element = ds.get(_IMAGES_IN_MOSAIC)
        value = element.value if element is not None else None
        if isinstance(value, bytes) and len(value) in (2, 4):  # read as UN (implicit VR)
            value = int.from_bytes(value, "little")
        if isinstance(value, int) and value > 0:
            count = value
    except Exception:  # the private element is only for the message
        count = None
    slices = f"{count} slices" if count is not None else "many slices"
    shown = "\\".join(values)
    raise InvalidImageError(
        f"the image is a Siemens mosaic (Image Type {shown}): its one frame "
        f"holds {slices} tiled in a grid, which the model would read as one picture. Send "
        "the slices as separate instances (a mosaic converted to single slices, e.g. by the "
        "scanner's or PACS's un-mosaic export) or as an enhanced MR (multi-frame) instance"
    )


def _check_dataset_option(dataset: Any, kind: str) -> None:
    if dataset is None:
        return
    from pydicom.dataset import Dataset as PydicomDataset

    if not isinstance(dataset, PydicomDataset):
        raise InvalidImageError(
            f"dataset= takes the pydicom Dataset parse_dicom returned. Received: "
            f"{type(dataset).__name__}"
        )
    if kind != "dicom":
        raise InvalidImageError(f"dataset= is for DICOM bytes; these are {kind.upper()}")


def _read_dicom(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Parse the file; a deflated dataset may inflate to at most what ``max_pixels`` allows
    (models/dicomread.py: DeflatedDatasetTooLargeError, before it is inflated)."""
    from pydicom.errors import InvalidDicomError

    from radlens.models.dicomread import read_dicom_bytes

    try:
        return read_dicom_bytes(data, max_pixels=max_pixels, force=True)
    except PreprocessingError:
        raise
    except InvalidDicomError as exc:
        raise NotAnImageError(
            f"not a readable DICOM file ({error_text(exc)}); received {len(data)} bytes "
            f"starting {_hex_head(data)}"
        ) from exc
    except EOFError as exc:
        raise TruncatedDataError(
            f"the DICOM data ends early ({error_text(exc)}); received {len(data)} bytes"
        ) from exc
    except BaseException as exc:  # third-party boundary: pydicom raises many kinds
        _reraise_fatal(exc)
        if _looks_truncated(exc):
            raise TruncatedDataError(
                f"the DICOM data ends early ({error_text(exc)}); received {len(data)} bytes"
            ) from exc
        raise MalformedDicomError(
            f"the DICOM data could not be parsed ({error_text(exc)}); received {len(data)} bytes"
        ) from exc


def _transfer_syntax(ds: Dataset) -> Any:
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    from radlens.models.codecs import register_jpeg_xl_names

    register_jpeg_xl_names()  # the JPEG XL syntaxes are newer than the pinned pydicom
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if value:
        tsyntax = UID(str(value).strip().rstrip("\x00"))
    else:  # no file meta: the encoding pydicom found while reading
        implicit, little = ds.original_encoding
        if implicit:
            tsyntax = ImplicitVRLittleEndian
        else:
            tsyntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = tsyntax
    if not tsyntax.is_transfer_syntax:
        newer = _NEWER_TRANSFER_SYNTAXES.get(str(tsyntax))
        raise UnsupportedTransferSyntaxError(
            f"transfer syntax {str(tsyntax)!r} ({newer}) has no decoder here"
            if newer
            else f"transfer syntax {str(tsyntax)!r} is not a DICOM transfer syntax pydicom "
            "knows (a private one, or a typing error in the file meta)",
            transfer_syntax=_ts_label(tsyntax),
        )
    return tsyntax


# DICOM transfer syntaxes newer than the pydicom pinned here (PS3.6 2024+): named in the
# refusal instead of being called unknown
_NEWER_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}


def _ends_mid_element(ds: Dataset) -> bool:
    """True when the last element read is shorter than its declared length.

    pydicom stops quietly at the end of the data, so a file cut inside an element shows up
    only as a raw element whose value is shorter than its length field.
    """
    for dataset in (ds, getattr(ds, "file_meta", None)):
        if dataset is None or len(dataset) == 0:
            continue
        try:
            elem = dataset.get_item(list(dataset.keys())[-1])
        except BaseException as exc:  # third-party boundary
            _reraise_fatal(exc)
            return False
        length = getattr(elem, "length", None)
        value = getattr(elem, "value", None)
        if (
            isinstance(value, bytes | bytearray)
            and isinstance(length, int)
            and length != 0xFFFFFFFF
            and len(value) < length
        ):
            return True
        if len(dataset) > 0:
            return False
    return False


def _last_tag(ds: Dataset) -> str:
    for dataset in (ds, getattr(ds, "file_meta", None)):
        if dataset is not None and len(dataset) > 0:
            return str(list(dataset.keys())[-1])
    return "(none)"


def _check_geometry(ds: Dataset, max_pixels: int) -> tuple[int, int, int]:
    rows = _int_or(ds, "Rows", None)
    columns = _int_or(ds, "Columns", None)
    if rows is None or columns is None:
        raise IncompletePixelHeaderError(
            f"the DICOM header lacks Rows/Columns. Received Rows={rows}, Columns={columns}",
            ["Rows (0028,0010)" if rows is None else "Columns (0028,0011)"],
        )
    if rows <= 0 or columns <= 0:
        raise InvalidImageError(f"zero-size image. Received Rows={rows}, Columns={columns}")
    raw_frames = _int_or(ds, "NumberOfFrames", 1)
    frames = raw_frames if raw_frames is not None and raw_frames > 0 else 1
    if rows * columns > max_pixels:
        raise ImageTooLargeError(
            f"{rows}x{columns} = {rows * columns} pixels per frame ({frames} frame(s)) "
            f"exceeds the limit of {max_pixels}"
        )
    if frames > MAX_FRAMES:
        raise ImageTooLargeError(f"{frames} frames declared; the limit is {MAX_FRAMES}")
    return rows, columns, frames


def decode_reduction(rows: int, columns: int, size: tuple[int, int], *, limit: int) -> int:
    """The largest reduction ``r`` (decode at 1/2**r) that keeps the image at least ``size``.

    The rule both codecs share: the largest ``r`` in ``0..limit`` with
    ``rows >= height * 2**r`` and ``columns >= width * 2**r``, so the reduced image (whose
    sides are ``ceil(rows / 2**r)`` and ``ceil(columns / 2**r)``) is at least as large as the
    model input on both axes and the resize that follows still shrinks (antialiased). It is
    libjpeg-turbo's DCT-scaling rule as Pillow's ``draft`` applies it (``limit`` 3: 1/8) and
    the JPEG 2000 reduce factor (``limit``: the codestream's decomposition levels).

    Args:
        rows: the image's height.
        columns: the image's width.
        size: ``(height, width)`` of the model input.
        limit: the largest reduction the codestream offers.

    Returns:
        ``r`` in ``0..limit`` (0: decode in full).

    Example:
        >>> decode_reduction(1955, 1841, (224, 224), limit=5)   # 245 x 231 at 1/8
        3
    """
    height, width = size
    reduction = 0
    while (
        reduction < limit
        and rows >= height << (reduction + 1)
        and columns >= width << (reduction + 1)
    ):
        reduction += 1
    return reduction


def _frame_codestream(ds: Dataset, tsyntax: Any, index: int, frames: int) -> bytes | None:
    """The codestream of frame ``index`` for the JPEG family of syntaxes, else ``None``.

    ``None`` too when pydicom cannot split the encapsulated data into frames: the decoder
    then reports what is wrong with it, as before.
    """
    from pydicom.encaps import get_frame

    if tsyntax not in _codestream_syntaxes() or "PixelData" not in ds:
        return None
    try:
        return bytes(get_frame(ds.PixelData, index, number_of_frames=frames))
    except BaseException as exc:  # third-party boundary: malformed encapsulation
        _reraise_fatal(exc)
        return None


@functools.cache
def _codestream_syntaxes() -> frozenset[str]:
    """JPEG 2000 (and HTJ2K), JPEG-LS and the JPEG processes: one codestream per frame; and
    RLE Lossless, one RLE-coded frame (header and segments) per frame."""
    from pydicom import uid

    from radlens.models.codecs import J2K_SYNTAXES, JPEG_LS_SYNTAXES

    jpeg = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
    return frozenset(
        (*map(str, (*J2K_SYNTAXES, *JPEG_LS_SYNTAXES, *jpeg, uid.RLELossless)), *_RETIRED_DCT)
    )


# The retired non-hierarchical DCT syntaxes (pydicom has no decoder for them). A frame coded
# sequentially or progressively with Huffman tables (SOF0, SOF1, SOF2: processes 6 and 8 under
# .53, 10 and 12 under .55, some exporters' progressive frames) is decoded as JPEG Extended
# is: pylibjpeg-libjpeg reads all three, and the codestream says which it is. The arithmetic
# processes (.52, .54, .56: SOF9, SOF10) and any other frame are refused by name, as are the
# hierarchical syntaxes (:func:`_retired_jpeg_frame`).
_RETIRED_DCT = frozenset(
    {
        "1.2.840.10008.1.2.4.52",  # Extended (Process 3 and 5)
        "1.2.840.10008.1.2.4.53",  # Spectral Selection (Process 6 and 8)
        "1.2.840.10008.1.2.4.54",  # Spectral Selection (Process 7 and 9)
        "1.2.840.10008.1.2.4.55",  # Full Progression (Process 10 and 12)
        "1.2.840.10008.1.2.4.56",  # Full Progression (Process 11 and 13)
    }
)
_HUFFMAN_DCT_SOF = frozenset({0xC0, 0xC1, 0xC2})
_RE_EXPORT = (
    "re-export the image as JPEG Baseline (1.2.840.10008.1.2.4.50), JPEG Lossless "
    "(1.2.840.10008.1.2.4.70), JPEG 2000 (1.2.840.10008.1.2.4.90) or uncompressed"
)


def _retired_jpeg_frame(codestream: bytes | None, tsyntax: Any) -> None:
    """Refuse, naming the process, a frame of a retired JPEG transfer syntax that no decoder
    here reads: a hierarchical process (1.2.840.10008.1.2.4.59 to .66), retired lossless
    (.58), or a retired non-hierarchical DCT syntax (:data:`_RETIRED_DCT`) whose frame is not
    Huffman-coded sequential or progressive DCT (an arithmetic-coded or hierarchical frame).
    """
    uid = str(tsyntax)
    if not uid.startswith("1.2.840.10008.1.2.4.") or not tsyntax.is_retired:
        return
    label = _ts_label(tsyntax)
    if uid not in _RETIRED_DCT:
        hierarchical = "Hierarchical" in tsyntax.name and "Non-Hierarchical" not in tsyntax.name
        kind = "hierarchical JPEG" if hierarchical else "retired JPEG"
        raise UnsupportedTransferSyntaxError(
            f"transfer syntax {label} is a {kind} process no decoder here reads; {_RE_EXPORT}",
            transfer_syntax=label,
        )
    marker = next((m for m, _ in _jpeg_segments(codestream or b"") if _is_frame_header(m)), None)
    if marker not in _HUFFMAN_DCT_SOF:
        found = "no frame header" if marker is None else f"a SOF{marker - 0xC0} frame"
        raise UnsupportedTransferSyntaxError(
            f"transfer syntax {label} holds {found}, not the Huffman-coded sequential or "
            f"progressive DCT (SOF0, SOF1, SOF2) decoded here; {_RE_EXPORT}",
            transfer_syntax=label,
        )


@dataclass(frozen=True)
class _Codestream:
    """What a codestream's own main header declares."""

    kind: str
    rows: int
    columns: int
    components: int
    precision: int
    signed: bool


def _codestream_header(codestream: bytes, tsyntax: Any) -> _Codestream | None:
    """SIZ (JPEG 2000, read by OpenJPEG through pylibjpeg-openjpeg) or SOF (JPEG, JPEG-LS,
    read by pydicom); ``None`` when the header cannot be read (the decoder then fails)."""
    from radlens.models.codecs import J2K_SYNTAXES, JPEG_LS_SYNTAXES

    try:
        if tsyntax in J2K_SYNTAXES:
            import openjpeg

            params = openjpeg.get_parameters(codestream)
            return _Codestream(
                kind="JPEG 2000",
                rows=int(params["rows"]),
                columns=int(params["columns"]),
                components=int(params["samples_per_pixel"]),
                precision=int(params["precision"]),
                signed=bool(params["is_signed"]),
            )
        from pydicom.pixels.utils import _get_jpg_parameters

        info = _get_jpg_parameters(codestream)
        if not info:
            return None
        return _Codestream(
            kind="JPEG-LS" if tsyntax in JPEG_LS_SYNTAXES else "JPEG",
            rows=int(info["height"]),
            columns=int(info["width"]),
            components=int(info["components"]),
            precision=int(info["precision"]),
            signed=False,
        )
    except BaseException as exc:  # third-party boundary: an unreadable header
        _reraise_fatal(exc)
        return None


def _check_codestream(
    codestream: bytes, ds: Dataset, tsyntax: Any, *, rows: int, columns: int
) -> bytes | None:
    """Refuse a codestream that declares another size, sample count or a bit depth beyond
    Bits Allocated than the DICOM header, before decoding it.

    The pixel limit was checked against the header's Rows x Columns; decoders follow the
    codestream, so a small header in front of a huge codestream (a decompression bomb) is
    refused here in microseconds instead of decoded in full. A codestream that agrees is
    bounded by the limit already checked.

    A frame cut short is refused too (:class:`~models.errors.TruncatedDataError`), before any
    decoder sees it, whichever decodes it after (full or reduced, imagecodecs or a fallback):
    several decode a partial JPEG or JPEG-LS stream without an error. A JPEG, JPEG-LS or JPEG
    2000 codestream must end with its EOI/EOC marker (padding may follow), an RLE frame's
    header must name segments inside the frame (``models/codecs.py`` says why and how).
    Two frames without their marker there are whole all the same (:func:`_closed_frame`): a
    JPEG Baseline, Extended or Lossless frame whose one scan is whole but that lacks its EOI
    (some modalities and export tools write them), and a JPEG 2000 codestream whose EOC other
    bytes follow.

    Returns the codestream to decode instead of the stored frame (such a frame closed at its
    end marker), else ``None``: the stored frame is decoded as it is.
    """
    from pydicom.uid import RLELossless

    from radlens.models.codecs import missing_end_marker, rle_segments_missing

    if tsyntax == RLELossless:
        if rle_segments_missing(codestream):
            raise TruncatedDataError(
                f"the RLE Lossless frame is cut short: its header names segments beyond its "
                f"{len(codestream)} bytes"
            )
        return None
    closed = None
    if missing_end_marker(codestream):
        closed = _closed_frame(codestream, tsyntax)
        if closed is None:
            raise _missing_end_marker_error(codestream, tsyntax)
    checked = codestream if closed is None else closed
    _check_jpeg_colour_space(checked, ds, tsyntax)
    header = _codestream_header(checked, tsyntax)
    samples = _int_or(ds, "SamplesPerPixel", 1)
    allocated = _int_or(ds, "BitsAllocated", None)
    # a JPEG height of 0 ("defined later by a DNL marker") is refused too: the size the
    # decoder would produce is then unknown until it has decoded the image
    if header is not None and not (
        (header.rows, header.columns) == (rows, columns)
        and header.components == samples
        and (allocated is None or header.precision <= allocated)
    ):
        raise CodestreamMismatchError(
            f"the {header.kind} codestream declares {header.columns}x{header.rows} = "
            f"{header.columns * header.rows} pixels, {header.components} component(s) of "
            f"{header.precision} bits; the DICOM header declares Columns={columns}, Rows={rows}, "
            f"SamplesPerPixel={samples}, BitsAllocated={allocated}; received "
            f"{len(codestream)} codestream bytes"
        )
    if closed is None:
        return None
    # a JPEG frame without its EOI: its size agrees with the header (checked above, so the
    # decodes below are bounded by the pixel limit); is its scan whole?
    if _codestream_kind(tsyntax) == "JPEG" and (
        header is None or not _scan_whole(closed, _jpeg8_pixels)
    ):
        raise _missing_end_marker_error(codestream, tsyntax)
    return closed


def _missing_end_marker_error(codestream: bytes, tsyntax: Any) -> TruncatedDataError:
    kind = _codestream_kind(tsyntax)
    return TruncatedDataError(
        f"the {kind} codestream is cut short: it does not end with its "
        f"{'EOC' if kind == 'JPEG 2000' else 'EOI'} marker (FF D9); received "
        f"{len(codestream)} codestream bytes ending {codestream[-8:].hex(' ')}"
    )


def _closed_frame(codestream: bytes, tsyntax: Any) -> bytes | None:
    """A DICOM frame that does not end with its end marker, closed there when its structure
    allows, else ``None`` (refused as cut short):

    - JPEG Baseline, Extended or Lossless: the frame with an EOI marker appended, when it
      ends inside the entropy-coded data of a scan that is its only one
      (:func:`_jpeg_closed`); whether that data is whole, :func:`_scan_whole` says, after the
      header checks.
    - JPEG 2000 (HTJ2K): the codestream up to its EOC marker, when other bytes than padding
      follow the EOC (:func:`_j2k_eoc_end`). OpenJPEG stops reading at EOC: imagecodecs',
      pylibjpeg-openjpeg's and Pillow's bindings decode such a codestream to the very
      pixels of the codestream without those bytes (tests/models/test_qa105_frame_ends.py);
      the image is whole, and radlens refused it as "cut short". The decoders get the
      codestream without them, so that none of them ever reads past its EOC.
    """
    from radlens.models.codecs import (
        J2K_SYNTAXES,
        JPEG_LOSSLESS_SYNTAXES,
        LOSSY_JPEG_SYNTAXES,
    )

    if tsyntax in J2K_SYNTAXES:
        end = _j2k_eoc_end(codestream)
        if end is None:
            return None
        logger.debug(
            "JPEG 2000 frame: %d bytes after its EOC marker not decoded", len(codestream) - end
        )
        return codestream[:end]
    if tsyntax in LOSSY_JPEG_SYNTAXES or tsyntax in JPEG_LOSSLESS_SYNTAXES:
        return _jpeg_closed(codestream)
    return None


_J2K_SOT = b"\xff\x90"
_J2K_COM = b"\xff\x64"


def _j2k_eoc_end(codestream: bytes) -> int | None:
    """The offset just past a JPEG 2000 codestream's EOC marker (ISO/IEC 15444-1 A.3), found
    by walking its main header's marker segments and its tile-parts by their lengths (Psot),
    the comment segments after the last one passed over (``models/codecs.py`` drops them
    before decoding); a last tile-part of Psot 0 runs to EOC, the first ``FF D9`` after its
    SOT (packet data holds no ``FF`` followed by a byte above ``8F``). ``None`` when the walk
    does not end at an EOC within the data (a codestream cut short). No decoding."""
    if codestream[:4] != b"\xff\x4f\xff\x51":  # SOC, SIZ
        return None
    offset = 2
    while codestream[offset : offset + 2] != _J2K_SOT:  # the main header's segments
        if offset + 4 > len(codestream) or codestream[offset] != 0xFF:
            return None
        offset += 2 + int.from_bytes(codestream[offset + 2 : offset + 4], "big")
    while codestream[offset : offset + 2] == _J2K_SOT:  # SOT: Lsot, Isot, Psot, TPsot, TNsot
        if offset + 12 > len(codestream):
            return None
        psot = int.from_bytes(codestream[offset + 6 : offset + 10], "big")
        if psot == 0:
            found = codestream.find(_JPEG_EOI, offset + 12)
            return None if found < 0 else found + 2
        offset += psot
    while codestream[offset : offset + 2] == _J2K_COM and offset + 4 <= len(codestream):
        offset += 2 + int.from_bytes(codestream[offset + 2 : offset + 4], "big")
    return offset + 2 if codestream[offset : offset + 2] == _JPEG_EOI else None


# --- a JPEG without its EOI marker ---------------------------------------------------------

_JPEG_EOI = b"\xff\xd9"
# Huffman-coded sequential DCT (baseline, extended) and lossless frames: one scan that codes
# every component is the whole image (a progressive or component-by-component JPEG cut
# between two scans lacks scans, which no decode of the scans it has could tell)
_ONE_SCAN_SOF = frozenset({0xC0, 0xC1, 0xC3})
# a marker inside entropy-coded data: FF followed by neither 00 (a stuffed FF), RSTn nor FF
_MARKER_IN_SCAN = re.compile(b"\xff[^\x00\xd0-\xd7\xff]")


# what follows the scan in :func:`_scan_whole`'s decodes: 512 bytes each, none FF (no marker),
# whose first three bits are each of the eight 3-bit patterns, then pseudo-random bits (not
# periodic, so that decoders taking bits from two fills do not fall into step)
def _scan_fill(prefix: int) -> bytes:
    """512 fill bytes whose first 3 bits are ``prefix``; the rest SHA-256 blocks, FF made FE."""
    blocks = b"".join(
        hashlib.sha256(b"radlens scan fill %d %d" % (prefix, i)).digest() for i in range(16)
    )
    first = (prefix << 5) | (blocks[0] & 0x1E)
    return (bytes([first]) + blocks[1:]).replace(b"\xff", b"\xfe")


_SCAN_FILLS = tuple(_scan_fill(prefix) for prefix in range(8))
_RST = re.compile(b"\xff[\xd0-\xd7]")  # a restart marker (RST0-RST7) in entropy-coded data


def _jpeg_closed(codestream: bytes) -> bytes | None:
    """The JPEG codestream with an EOI marker appended, when it lacks its EOI and ends inside
    the entropy-coded data of its first scan, and that scan is a whole image's: a Huffman-coded
    sequential or lossless frame (SOF0, SOF1, SOF3) whose first scan codes every component;
    ``FF`` fill bytes at the end (an EOI cut after its first byte) are dropped. ``None`` for
    anything else: a codestream that has its EOI, one cut in its headers, a progressive or
    multi-scan JPEG, one whose scan a marker other than RSTn follows. Whether the scan's data
    is whole is :func:`_scan_whole`'s to say. Walks the marker segments; no decoding."""
    from radlens.models.codecs import _first_scan, missing_end_marker

    if not missing_end_marker(codestream):
        return None
    scan = _first_scan(codestream)
    if scan is None:
        return None
    sof, components, scan_components, start = scan
    if sof not in _ONE_SCAN_SOF or components != scan_components:
        return None
    body = codestream.rstrip(b"\xff")
    if len(body) <= start or _MARKER_IN_SCAN.search(body, start) is not None:
        return None
    return body + _JPEG_EOI


def _scan_whole(closed: bytes, decode: Callable[[bytes], np.ndarray]) -> bool:
    """Whether the scan of a JPEG closed by :func:`_jpeg_closed` is whole: its last MCU ends
    within the data received.

    Every decoder here reads a scan that ends early without an error (libjpeg-turbo and
    libjpeg take zero bits from the marker on and fill the image; Pillow drops the warning),
    so appending an EOI to a cut scan would decode it with its last blocks wrong. A Huffman
    scan is self-delimiting: a whole one decodes from its own bits (its last byte is padded
    with 1 bits), whatever follows it; a cut one takes the bits it lacks from what follows.
    So the scan is decoded once followed by each of :data:`_SCAN_FILLS` before the EOI:
    equal arrays, whole; different ones, or a decode that fails, cut (refused as truncated).
    The fills start with each of the eight 3-bit patterns: two fills that start alike up to
    the bits a cut scan lacks, or that a decoder reads to the same result (a code of zeros
    and an invalid code of ones both read as symbol 0), would decode alike. With restart
    intervals (a DRI segment), a scan cut at the end of an interval lacks the next RSTn
    marker, and the decoders pass over whatever is not a marker there: two more decodes
    have that RSTn before a fill, so that the missing interval is decoded from them. On
    every JPEG Baseline, Extended and Lossless frame of pydicom's test files, pydicom-data,
    ../shared/data and other packages' test files, and generated ones with restart markers,
    cut by 1-40 bytes or by half, no cut scan passes unless its decode is the whole one's;
    with fewer fills some did (0x55 and 0xAA: 30 of 1722 cuts; zeros, ones and two
    pseudo-random runs: image6.dcm short of 2 bytes; tests/models/test_qa105_frame_ends.py).
    No hand-made decoding: ``decode`` is a library's (Pillow for uploads, libjpeg-turbo
    through imagecodecs for DICOM frames).
    """
    body = closed[: -len(_JPEG_EOI)]
    scan = _first_scan_of(body)
    if scan is None:
        return False
    fills = list(_SCAN_FILLS)
    if _restart_interval(body, scan):
        marker = bytes([0xFF, 0xD0 + len(_RST.findall(body, scan)) % 8])
        fills += [marker + fill for fill in _SCAN_FILLS[:2]]
    try:
        arrays = (np.asarray(decode(body + fill + _JPEG_EOI)) for fill in fills)
        first = next(arrays)
        # all() stops at the first decode that differs: the ones after it are not made
        return all(a.shape == first.shape and np.array_equal(a, first) for a in arrays)
    except BaseException as exc:  # third-party boundary: any failure leaves it refused
        _reraise_fatal(exc)
        return False


def _first_scan_of(codestream: bytes) -> int | None:
    """Where the first scan's entropy-coded data starts (``models.codecs`` walks to it)."""
    from radlens.models.codecs import _first_scan

    scan = _first_scan(codestream)
    return None if scan is None else scan[3]


def _restart_interval(codestream: bytes, scan: int) -> int:
    """The restart interval (DRI's Ri) in force for the scan whose data starts at ``scan``:
    the last DRI segment among the marker segments before it; 0 without one."""
    interval = 0
    offset = 2
    while offset + 4 <= scan and codestream[offset] == 0xFF:
        marker = codestream[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            offset += 2
            continue
        length = int.from_bytes(codestream[offset + 2 : offset + 4], "big")
        if marker == 0xDD and length == 4 and offset + 6 <= scan:
            interval = int.from_bytes(codestream[offset + 4 : offset + 6], "big")
        offset += 2 + max(length, 2)
    return interval


def _jpeg8_pixels(codestream: bytes) -> np.ndarray:
    """A DICOM JPEG frame's samples by libjpeg-turbo (imagecodecs: 8- and 12-bit DCT and
    lossless, the GIL released), for :func:`_scan_whole`."""
    import imagecodecs

    return np.asarray(imagecodecs.jpeg8_decode(codestream))


def _check_jpeg_colour_space(codestream: bytes, ds: Dataset, tsyntax: Any) -> None:
    """Refuse a JPEG Baseline or Extended frame whose codestream stores YCbCr under a header
    that says RGB.

    Photometric Interpretation RGB tells the decoder that the three components are R, G and
    B, so it applies no colour transform (PS3.5 8.2.1). A codestream whose second and third
    components are subsampled against the first (4:2:0, 4:2:2) holds luma and chroma, which
    is what JPEG subsamples, never three colour channels; without a JFIF or Adobe marker no
    decoder here is told otherwise, and the YCbCr values are read as RGB: a white pixel
    (Y 255, Cb 128, Cr 128) comes out as the gray 0.65 and a gray radiograph with a third of
    its contrast. Older GDCM wrote such files (pydicom's SC_rgb_jpeg_lossy_gdcm.dcm up to
    pydicom 2.4, whose header pydicom 3 corrected to YBR_FULL; QA round 69). A JFIF or Adobe
    marker says the colour space, and decoders follow it: those files are read correctly.
    """
    from radlens.models.codecs import LOSSY_JPEG_SYNTAXES

    lossy = tsyntax in LOSSY_JPEG_SYNTAXES or tsyntax in _RETIRED_DCT
    if not lossy or _int_or(ds, "SamplesPerPixel", 1) != 3:
        return
    if (_text(ds, "PhotometricInterpretation") or "").strip().upper() != "RGB":
        return
    sampling = _jpeg_unmarked_sampling(codestream)
    if sampling is None or len(sampling) != 3:
        return
    if sampling[1] == sampling[2] and sampling[0] != sampling[1]:
        factors = ", ".join(f"{h}x{v}" for h, v in sampling)
        raise CodestreamMismatchError(
            "the JPEG codestream stores YCbCr (its 2nd and 3rd components are subsampled: "
            f"sampling factors {factors}; no JFIF or Adobe marker) but the DICOM header's "
            "PhotometricInterpretation is RGB, so its colours and gray levels would be read "
            "wrong; set PhotometricInterpretation to YBR_FULL_422, what the codestream holds"
        )


def _jpeg_unmarked_sampling(codestream: bytes) -> list[tuple[int, int]] | None:
    """The (H, V) sampling factors of a JPEG frame's components, from its frame header, when
    the codestream has no JFIF (APP0) or Adobe (APP14) marker saying its colour space; None
    when it has one, or no frame header is found (walked as :func:`_unsupported_jpeg_coding`
    walks it, no decoding)."""
    for marker, segment in _jpeg_segments(codestream):
        if (marker == 0xE0 and segment.startswith(b"JFIF\x00")) or (
            marker == 0xEE and segment.startswith(b"Adobe")
        ):
            return None
        if _is_frame_header(marker):
            count = segment[5] if len(segment) > 5 and marker != 0xF7 else 0
            specs = segment[6 : 6 + 3 * count]
            if not count or len(specs) < 3 * count:
                return None
            return [(specs[3 * k + 1] >> 4, specs[3 * k + 1] & 0x0F) for k in range(count)]
    return None


def _codestream_kind(tsyntax: Any) -> str:
    from radlens.models.codecs import J2K_SYNTAXES, JPEG_LS_SYNTAXES

    if tsyntax in J2K_SYNTAXES:
        return "JPEG 2000"
    return "JPEG-LS" if tsyntax in JPEG_LS_SYNTAXES else "JPEG"


class _J2kMainHeader(NamedTuple):
    x_offset: int  # SIZ XOsiz
    y_offset: int  # SIZ YOsiz
    levels: int  # the fewest decomposition levels of COD and any COC (0: unknown)
    reversible: bool | None  # COD's (and every COC's) 5-3 reversible wavelet; None: unknown


def _j2k_main_header(codestream: bytes) -> _J2kMainHeader:
    """From a raw JPEG 2000 main header: the image offsets, decomposition levels and whether
    its wavelet is the reversible 5-3 one (lossless coding).

    No library exposes the decomposition levels or the transform (OpenJPEG's read_header
    does not report them through pylibjpeg-openjpeg or Pillow), so this walks the main
    header's marker segments (ISO/IEC 15444-1 A.5.1 SIZ, A.6.1 COD, A.6.2 COC) up to the first
    tile. Returns levels 0 (no reduction) and reversible None for what it does not recognise.
    """
    if codestream[:4] != b"\xff\x4f\xff\x51" or len(codestream) < 42:
        return _J2kMainHeader(0, 0, 0, None)
    x_offset, y_offset = struct.unpack(">II", codestream[16:24])
    components = struct.unpack(">H", codestream[40:42])[0]
    levels: int | None = None
    transforms: list[int] = []
    offset = 2  # SIZ, then the other main-header segments
    while offset + 4 <= len(codestream):
        marker = codestream[offset : offset + 2]
        length = struct.unpack(">H", codestream[offset + 2 : offset + 4])[0]
        if marker[0] != 0xFF or marker == b"\xff\x90" or length < 2:  # SOT: tiles begin
            break
        # SPcod / SPcoc: levels, code-block width, height, style, transformation (1: 5-3)
        if marker == b"\xff\x52" and offset + 9 < len(codestream):  # COD
            found = codestream[offset + 9]
            levels = found if levels is None else min(levels, found)
            if offset + 13 < len(codestream):
                transforms.append(codestream[offset + 13])
        elif marker == b"\xff\x53":  # COC: Ccoc is 1 byte below 257 components, else 2
            position = offset + 5 + (1 if components < 257 else 2) + 1
            if position < len(codestream):
                found = codestream[position - 1]
                levels = found if levels is None else min(levels, found)
            if position + 3 < len(codestream):  # levels at position - 1, transform 4 on
                transforms.append(codestream[position + 3])
        offset += 2 + length
    reversible = all(t == 1 for t in transforms) if transforms else None
    return _J2kMainHeader(x_offset, y_offset, levels or 0, reversible)


_MAX_REDUCTION = 5  # 1/32: beyond it a radiograph is smaller than any model input here


def _reduced_decode(
    codestream: bytes,
    ds: Dataset,
    tsyntax: Any,
    rows: int,
    columns: int,
    size: tuple[int, int],
    *,
    colour: bool = False,
) -> tuple[np.ndarray, str] | None:
    """Decode a grayscale JPEG 2000 or baseline JPEG frame, or (``colour``) an 8-bit colour
    JPEG 2000 one (:func:`_reduced_colour_j2k`), at a reduced resolution.

    Returns the stored values at ``1/2**r`` (``r`` from :func:`decode_reduction`) and the
    photometric interpretation, or ``None`` when the full decode applies: no reduction
    helps, another syntax (JPEG-LS and lossless JPEG have no resolution levels or DCT),
    colour JPEG, or a JPEG 2000 codestream whose signedness differs from Pixel Representation or
    whose precision exceeds Bits Stored. pydicom corrects those after a full decode (e.g. an
    unsigned codestream holding two's-complement CT values), and a wavelet low-pass over such
    values would average numbers that are not the pixels', so they keep its path.
    """
    from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit

    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    if (
        colour
        and tsyntax in (JPEG2000Lossless, JPEG2000)
        and _int_or(ds, "SamplesPerPixel", 1) == 3
    ):
        return _reduced_colour_j2k(codestream, ds, photometric, rows, columns, size)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or _int_or(ds, "SamplesPerPixel", 1) != 1:
        return None
    bits_stored = _int_or(ds, "BitsStored", None)
    if tsyntax in (JPEG2000Lossless, JPEG2000):
        header = _codestream_header(codestream, tsyntax)
        if (
            header is None
            or header.signed != (_int_or(ds, "PixelRepresentation", 0) == 1)
            or bits_stored is None
            or not 1 <= header.precision <= min(bits_stored, 16)
        ):
            return None
        reduction = _j2k_reduction(codestream, rows, columns, size)
        if reduction == 0:
            return None
        arr = _decode_j2k_reduced(
            codestream, reduction, rows, columns, header.precision, signed=header.signed
        )
        return arr, photometric
    if tsyntax == JPEGBaseline8Bit:
        header = _codestream_header(codestream, tsyntax)
        if header is None or header.precision != 8 or header.components != 1:
            return None
        reduction = decode_reduction(rows, columns, size, limit=3)
        if reduction == 0:
            return None
        return _decode_jpeg_reduced(codestream, reduction, rows, columns, size), photometric
    return None


def _j2k_reduction(codestream: bytes, rows: int, columns: int, size: tuple[int, int]) -> int:
    """The resolution reduction a raw JPEG 2000 codestream is decoded at (0: the full decode):
    none for an image offset on the reference grid, else :func:`decode_reduction` within the
    codestream's decomposition levels."""
    x_offset, y_offset, levels, _ = _j2k_main_header(codestream)
    if x_offset or y_offset:
        return 0
    return decode_reduction(rows, columns, size, limit=min(levels, _MAX_REDUCTION))


COLOUR_J2K_REDUCED_VERSIONS: frozenset[str] = frozenset({"6"})
"""The preprocessing versions in which an 8-bit colour JPEG 2000 frame is decoded at a reduced
resolution (:func:`_reduced_colour_j2k`): from "6". It changes those files' arrays (as much as
the grayscale reduced decode changes grayscale ones, for 2.5-15x less CPU:
docs/benchmarks/preprocess.md, rounds 12 and 14), so versions "1"-"5" decode such frames in
full, as they always did. Add each later version here."""

# Photometric Interpretation: the JPEG 2000 multiple component transform (COD's SGcod) it
# goes with. Decoders apply the inverse transform the codestream declares and hand back RGB.
_J2K_COLOUR_MCT = {"RGB": 0, "YBR_RCT": 1, "YBR_ICT": 1}


def _j2k_colour_transform(codestream: bytes) -> int | None:
    """A raw JPEG 2000 codestream's multiple component transform (0 none, 1 RCT/ICT) when it
    holds three 8-bit unsigned components sampled alike (XRsiz = YRsiz = 1) and one COD
    segment in its main header; ``None`` for anything else (a JP2 wrapper, subsampled chroma,
    deeper or signed samples, tile-specific coding styles are left to the full decode)."""
    if codestream[:4] != b"\xff\x4f\xff\x51" or len(codestream) < 51:
        return None
    if struct.unpack(">H", codestream[40:42])[0] != 3:
        return None
    if codestream[42:51] != b"\x07\x01\x01" * 3:  # Ssiz 7: 8 bits, unsigned
        return None
    transform: int | None = None
    offset = 2
    while offset + 4 <= len(codestream):
        marker = codestream[offset : offset + 2]
        length = struct.unpack(">H", codestream[offset + 2 : offset + 4])[0]
        if marker[0] != 0xFF or marker == b"\xff\x90" or length < 2:  # SOT: tiles begin
            break
        if marker == b"\xff\x52":  # COD: Scod, progression order, layers (2), MCT
            if transform is not None or offset + 8 >= len(codestream):
                return None
            transform = codestream[offset + 8]
        offset += 2 + length
    return transform if transform in (0, 1) else None


def _reduced_colour_j2k(
    codestream: bytes,
    ds: Dataset,
    photometric: str,
    rows: int,
    columns: int,
    size: tuple[int, int],
) -> tuple[np.ndarray, str] | None:
    """A three-sample 8-bit JPEG 2000 frame (RGB, YBR_RCT or YBR_ICT: a colour secondary
    capture, photo or ultrasound) decoded at a reduced resolution, as RGB; ``None`` when the
    full decode applies.

    Only the layout whose full decode is RGB of the same samples is taken: 8 bits stored and
    allocated, unsigned, chroma not subsampled, and a multiple component transform that
    matches the header (RCT/ICT for YBR_RCT/YBR_ICT, none for RGB). The decoders apply that
    transform and return RGB either way (at reduction 0 the arrays are equal on the real
    ultrasound: tests/models/test_qa89_hospital_dicom.py); a header that disagrees with its
    codestream keeps the full decode's handling.
    """
    expected = _J2K_COLOUR_MCT.get(photometric)
    if expected is None or _j2k_colour_transform(codestream) != expected:
        return None
    if (
        _int_or(ds, "BitsStored", None) != 8
        or _int_or(ds, "BitsAllocated", None) != 8
        or _int_or(ds, "PixelRepresentation", 0) != 0
    ):
        return None
    reduction = _j2k_reduction(codestream, rows, columns, size)
    if reduction == 0:
        return None
    arr = _decode_j2k_reduced(codestream, reduction, rows, columns, 8)
    return arr, "RGB"


def _decode_j2k_reduced(
    codestream: bytes,
    reduction: int,
    rows: int,
    columns: int,
    precision: int,
    *,
    signed: bool = False,
) -> np.ndarray:
    """OpenJPEG's reduce factor through Pillow: the stored values at 1/2**reduction; an 8-bit
    three-component codestream (:func:`_reduced_colour_j2k`) as RGB, (H, W, 3)."""
    from PIL import Image, ImageFile

    factor = 1 << reduction
    height, width = -(-rows // factor), -(-columns // factor)
    try:
        image = Image.open(io.BytesIO(codestream), formats=["JPEG2000"])
        with image:
            # Pillow's own `reduce` property rounds the reduced size to the nearest integer;
            # OpenJPEG's reduced image is the ceiling (ISO/IEC 15444-1 B.5), so the two
            # disagree for e.g. 1841 px at 1/4 and Pillow reports a "broken data stream".
            # Set the exact size and the reduce factor on the tile instead.
            tile = image.tile[0]
            args = tile.args
            if not isinstance(args, tuple) or len(args) != 5:
                raise ValueError(f"unexpected Pillow JPEG 2000 tile arguments {args!r}")
            image._size = (width, height)
            image.tile = [
                ImageFile._Tile(
                    tile.codec_name,
                    (0, 0, width, height),
                    tile.offset,
                    (args[0], reduction, args[2], args[3], args[4]),
                )
            ]
            ImageFile.ImageFile.load(image)
            mode = image.mode
            arr = np.asarray(image)
    except BaseException as exc:  # third-party boundary
        _reraise_fatal(exc)
        raise _reduced_error(exc, "JPEG 2000", factor, codestream) from exc
    if mode == "RGB":
        if arr.shape != (height, width, 3) or precision != 8 or signed:
            raise CodestreamMismatchError(
                f"the JPEG 2000 codestream decoded at 1/{factor} to mode {mode}, shape "
                f"{arr.shape}; expected {height}x{width}x3 of 8 bits from Rows={rows}, "
                f"Columns={columns}"
            )
        return arr
    # Pillow scales a p-bit component to the full 8 or 16 bits of its mode (a 12-bit stored
    # 4095 comes back as 65520) and offsets a signed one by 2**(p-1) (-2000 at 14 bits comes
    # back as 24768): undo both, the modality LUT and VOI need stored values.
    depth = 16 if mode.startswith("I;16") else 8
    if arr.shape != (height, width) or precision > depth or mode not in ("L", "I;16"):
        raise CodestreamMismatchError(
            f"the JPEG 2000 codestream decoded at 1/{factor} to mode {mode}, shape "
            f"{arr.shape}; expected {height}x{width} of {precision} bits from Rows={rows}, "
            f"Columns={columns}"
        )
    dtype = np.uint16 if depth == 16 else np.uint8
    stored = np.right_shift(arr.astype(dtype, copy=False), depth - precision)
    if not signed:
        return stored
    offset = np.int32(1 << (precision - 1))
    return (stored.astype(np.int32) - offset).astype(np.int16 if depth == 16 else np.int8)


def _decode_jpeg_reduced(
    codestream: bytes, reduction: int, rows: int, columns: int, size: tuple[int, int]
) -> np.ndarray:
    """libjpeg-turbo's DCT scaling through Pillow's ``draft``: 8-bit gray at 1/2**reduction.

    The scan is given as :func:`models.codecs.scan_for_pillow` prepares it, so a scan that
    ends early is refused ("image file is truncated") instead of decoded with a grey rest.
    """
    from PIL import Image

    from radlens.models.codecs import scan_for_pillow

    factor = 1 << reduction
    height, width = -(-rows // factor), -(-columns // factor)
    try:
        image = Image.open(io.BytesIO(scan_for_pillow(codestream)), formats=["JPEG"])
        with image:
            # draft picks the largest of 1/8, 1/4, 1/2 keeping the image >= the size asked
            # for: decode_reduction's rule, so this is the same reduction
            image.draft("L", (size[1], size[0]))
            image.load()
            mode = image.mode
            arr = np.asarray(image)
    except BaseException as exc:  # third-party boundary
        _reraise_fatal(exc)
        raise _reduced_error(exc, "JPEG", factor, codestream) from exc
    if arr.shape != (height, width) or mode != "L":
        raise CodestreamMismatchError(
            f"the JPEG codestream decoded at 1/{factor} to mode {mode}, shape {arr.shape}; "
            f"expected {height}x{width} from Rows={rows}, Columns={columns}"
        )
    return arr


def _reduced_error(
    exc: BaseException, kind: str, factor: int, codestream: bytes
) -> PreprocessingError:
    if _looks_truncated(exc):
        return TruncatedDataError(
            f"the {kind} codestream ends early ({error_text(exc)}); "
            f"received {len(codestream)} bytes"
        )
    return CodestreamMismatchError(
        f"the {kind} codestream could not be decoded at 1/{factor} resolution "
        f"({error_text(exc)}): its resolution levels, tiles or scans disagree with its main "
        f"header; received {len(codestream)} bytes"
    )


_CODECS_LOCK = threading.Lock()


@functools.cache
def _codec_plugin_registered() -> bool:
    """Add models/codecs.py's imagecodecs plugin to pydicom's decoders, once (pydicom's
    add_plugin is not thread-safe; callers of preprocess() may be several threads)."""
    from radlens.models import codecs

    with _CODECS_LOCK:
        codecs.register()
    return True


CODESTREAM_LAYOUT_VERSIONS: frozenset[str] = frozenset({"6"})
"""The preprocessing versions in which a compressed colour frame (JPEG, JPEG-LS, JPEG 2000, HTJ2K;
not RLE, whose segments are planes) is read colour-by-pixel even when its header says Planar
Configuration 1: from "6" (add each later version here). PS3.5 8.2 makes the attribute
irrelevant to these codestreams (hence 0), and every decoder here returns their samples by
pixel, but pydicom lays a JPEG Baseline or JPEG 2000 frame out as the header says: a real
vendor's stray 1 scrambled the image into three interleaved planes (its gray image too), by
pydicom as by radlens (QA round 99: pydicom's SC_rgb_jpeg_dcmtk, SC_rgb_gdcm_KY, US1_J2KR,
color3d_jpeg_baseline with the attribute set to 1). It changes those files' arrays, and an array
of a file that decodes may change only with a new :data:`PREPROCESSING_VERSION`, so versions
"1"-"5" keep the header's layout. A frame without the attribute is read by pixel in every
version (it was refused)."""


def _decode_frame(
    ds: Dataset,
    tsyntax: Any,
    index: int,
    *,
    rows: int,
    columns: int,
    codestream: bytes | None = None,
    layout_from_codestream: bool = False,
    closed: bool = False,
) -> tuple[np.ndarray, str]:
    """Decode one frame; return it and the photometric interpretation it now has.
    ``codestream``: the frame's codestream when the caller has it (``_frame_codestream``),
    for the check that spares a JPEG 2000 frame imagecodecs refused the other decoders.
    ``layout_from_codestream``: a compressed colour frame (RLE aside) is read colour-by-pixel
    whatever its Planar Configuration says (:data:`CODESTREAM_LAYOUT_VERSIONS`).
    ``closed``: ``codestream`` is the frame closed at its end marker (:func:`_check_codestream`),
    decoded instead of the stored frame."""
    from pydicom.pixels import as_pixel_options, get_decoder
    from pydicom.pixels.utils import get_expected_length
    from pydicom.uid import RLELossless

    from radlens.models.codecs import (
        FALLBACK_PLUGINS,
        J2K_SYNTAXES,
        JPEG_XL_SYNTAXES,
        LOSSY_JPEG_PLUGIN,
        LOSSY_JPEG_SYNTAXES,
    )
    from radlens.models.codecs import PLUGIN as CODECS_PLUGIN
    from radlens.models.codecs import SYNTAXES as CODECS_SYNTAXES

    _codec_plugin_registered()

    label = _ts_label(tsyntax)
    if str(tsyntax) in JPEG_XL_SYNTAXES:
        return _decode_jpeg_xl(ds, tsyntax, index, rows=rows, columns=columns)
    if codestream is None and str(tsyntax) in _RETIRED_DCT:
        frames = _int_or(ds, "NumberOfFrames", 1) or 1
        codestream = _frame_codestream(ds, tsyntax, index, frames)
    _retired_jpeg_frame(codestream, tsyntax)
    source: Any = ds
    retired: dict[str, Any] = {}
    closed_frame: dict[str, Any] = {}
    if closed and codestream is not None:
        # the decoders get the closed frame, as the one frame of an encapsulated buffer, never
        # the stored one (models/codecs.py's plugin refuses a frame without its end marker)
        from pydicom.encaps import encapsulate

        source = encapsulate([codestream + b"\x00" * (len(codestream) % 2)])
        index = 0
        closed_frame = {"number_of_frames": 1, "extended_offsets": None}
    if str(tsyntax) in _RETIRED_DCT:  # checked above: a Huffman DCT frame, read as Extended
        from pydicom.uid import JPEGExtended12Bit

        tsyntax = JPEGExtended12Bit
        source = ds.PixelData
        retired = {"transfer_syntax_uid": JPEGExtended12Bit}
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            f"no decoder for transfer syntax {label}", transfer_syntax=label
        ) from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"no installed plugin can decode transfer syntax {label}", transfer_syntax=label
        )
    if not tsyntax.is_encapsulated and "PixelData" in ds:
        if ds["PixelData"].is_undefined_length:
            # fragments of a compressed codestream: the file is complete, its header is wrong
            meta = getattr(ds, "file_meta", None)
            # _transfer_syntax adds the one element to a file that had no file meta
            stated = meta is not None and bool(set(meta.keys()) - {0x00020010})
            raise EncapsulatedUnderNativeSyntaxError(
                "Pixel Data (7FE0,0010) has undefined length (encapsulated fragments of "
                f"compressed data, {len(ds.PixelData or b'')} bytes) but the transfer syntax "
                + (
                    f"in the file meta information is {label}"
                    if stated
                    else f"is missing (no file meta information; read as {label})"
                )
            )
        expected = _call(
            lambda: int(get_expected_length(ds, "bytes")),
            InvalidImageError,
            "the DICOM pixel header is inconsistent",
        )
        received = len(ds.PixelData or b"")
        samples = _int_or(ds, "SamplesPerPixel", 1) or 1
        if samples > 1 and received < expected and received in _one_sample_lengths(ds):
            # complete data for one sample per pixel: a gray image under a colour header (real
            # TCGA secondary captures: RGB, 3 samples, 1 byte per pixel), not a cut file
            raise InvalidImageError(
                f"the pixel data has {received} bytes, what one sample per pixel needs, but "
                f"SamplesPerPixel={samples} (PhotometricInterpretation "
                f"{_text(ds, 'PhotometricInterpretation')!r}) needs {expected}: the header "
                "describes another image than the data; correct SamplesPerPixel and "
                "PhotometricInterpretation (1, MONOCHROME2) or re-export the file"
            )
        if received < expected:
            raise TruncatedDataError(
                f"the pixel data has {received} bytes but Rows={rows}, Columns={columns}, "
                f"frames={_int_or(ds, 'NumberOfFrames', 1)}, "
                f"BitsAllocated={_int_or(ds, 'BitsAllocated', None)}, "
                f"SamplesPerPixel={_int_or(ds, 'SamplesPerPixel', None)} need {expected}"
            )
        if samples > 1 and _int_or(ds, "PlanarConfiguration", None) is None:
            # uncompressed colour samples are laid out as it says (by pixel or by plane):
            # without it neither pydicom nor DCMTK reads them; name it, as a missing Image
            # Pixel attribute is named (it was "could not read ... AttributeError"; QA round 99)
            raise IncompletePixelHeaderError(
                "Planar Configuration (0028,0006) is absent, empty or unreadable; it says "
                f"whether the {samples} samples of an uncompressed colour image are stored "
                "pixel by pixel (0) or plane by plane (1); SOP class "
                f"{_text(ds, 'SOPClassUID') or 'not stated'}",
                ["Planar Configuration (0028,0006)"],
            )
    # RLE: pydicom's own decoder. pylibjpeg-rle is ~3x faster but panics in Rust on
    # malformed data, which prints a backtrace to stderr before Python sees an error.
    # JPEG 2000, HTJ2K, JPEG-LS and lossless JPEG: imagecodecs first (models/codecs.py:
    # OpenJPEG, CharLS and libjpeg-turbo with the GIL released, the same pixels); pydicom's
    # default pick (pylibjpeg: OpenJPEG, or libjpeg, 3.5-5x slower; for JPEG-LS only
    # pyjpegls, codecs.FALLBACK_PLUGINS says why) still gets a go at whatever it refuses,
    # unless it refused the data as truncated: the others decode a partial stream.
    # JPEG Baseline and Extended: pydicom's pick, pylibjpeg-libjpeg (the same pixels), after
    # a check that refuses a scan cut short (models/jpeg_checked.py); pydicom's default pick
    # for what it refuses otherwise.
    # A JPEG 2000 frame imagecodecs refused that holds other bytes than its EOC marker after
    # its last tile-part gets no second go: every OpenJPEG binding here decodes all its tiles
    # before failing there (pylibjpeg-openjpeg and Pillow holding the GIL): 0.5 s of CPU each
    # for a 1955x1841 chest CR, 2 s for the chain (QA round 85, docs/benchmarks/preprocess.md).
    plugin = ""
    after_tile_parts = 0
    if tsyntax == RLELossless and "pydicom" in decoder.available_plugins:
        plugin = "pydicom"
    elif tsyntax in CODECS_SYNTAXES and CODECS_PLUGIN in decoder.available_plugins:
        plugin = CODECS_PLUGIN
    elif tsyntax in LOSSY_JPEG_SYNTAXES and LOSSY_JPEG_PLUGIN in decoder.available_plugins:
        plugin = LOSSY_JPEG_PLUGIN
    try:
        options = {**as_pixel_options(ds), **retired, **closed_frame}
        if (
            tsyntax.is_encapsulated
            and (_int_or(ds, "SamplesPerPixel", 1) or 1) > 1
            and (
                options.get("planar_configuration") is None
                or (layout_from_codestream and tsyntax != RLELossless)
            )
        ):
            # Planar Configuration absent or empty on a compressed colour frame (real
            # ultrasound and secondary captures): the codestream, not the header, says how its
            # samples are laid out, and every decoder here returns them colour-by-pixel (0) or
            # says so itself (RLE: 1). pydicom refused such a frame as undecodable, and radlens
            # told the sender to re-encode a file that was fine (QA round 99). With
            # ``layout_from_codestream`` a stated 1 is overridden too (PS3.5 8.2: irrelevant to,
            # hence 0 for, the JPEG family): see CODESTREAM_LAYOUT_VERSIONS.
            options["planar_configuration"] = 0
        try:
            arr, props = decoder.as_array(
                source, index=index, validate=True, raw=False, decoding_plugin=plugin, **options
            )
        except Exception as exc:
            if plugin not in (CODECS_PLUGIN, LOSSY_JPEG_PLUGIN) or _looks_truncated(exc):
                raise
            if plugin == CODECS_PLUGIN and tsyntax in J2K_SYNTAXES and codestream is not None:
                from radlens.models.codecs import j2k_bytes_after_tile_parts

                after_tile_parts = j2k_bytes_after_tile_parts(codestream)
                if after_tile_parts:
                    raise
            fallback = FALLBACK_PLUGINS.get(tsyntax, "")
            if fallback and fallback not in decoder.available_plugins:
                raise
            arr, props = decoder.as_array(
                source, index=index, validate=True, raw=False, decoding_plugin=fallback, **options
            )
    except BaseException as exc:  # third-party boundary: decoders raise many kinds
        _reraise_fatal(exc)
        # pydicom's RLE decoder refuses a segment that decodes to fewer bytes than the frame
        # needs: the segment is cut short (codecs.rle_segments_missing sees only the header)
        if _looks_truncated(exc) or (
            tsyntax == RLELossless and "RLE segment data doesn't match" in str(exc)
        ):
            raise TruncatedDataError(
                f"the {label} pixel data ends early ({error_text(exc)})"
            ) from exc
        if tsyntax.is_encapsulated:
            structure = (
                f"; the codestream holds {after_tile_parts} bytes after its last tile-part, "
                "where only its EOC marker may be"
                if after_tile_parts
                else ""
            )
            raise UnsupportedTransferSyntaxError(
                f"could not decode the {label} pixel data ({error_text(exc)}){structure}",
                transfer_syntax=label,
            ) from exc
        raise InvalidImageError(
            f"could not read the {label} pixel data ({error_text(exc)}); "
            f"Rows={rows}, Columns={columns}"
        ) from exc
    photometric = str(props.get("photometric_interpretation") or "")
    if not photometric:
        photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    return np.asarray(arr), photometric.strip().upper()


_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000), little endian: an encapsulated fragment's item


def _one_sample_lengths(ds: Dataset) -> tuple[int, ...]:
    """The Pixel Data lengths (unpadded and padded to even) of the image the header
    describes, were it one sample per pixel instead of its Samples per Pixel."""
    bits = _int_or(ds, "BitsAllocated", 0) or 0
    if bits not in (8, 16, 32):
        return ()
    frames = _int_or(ds, "NumberOfFrames", 1) or 1
    length = _int_or(ds, "Rows", 0) * _int_or(ds, "Columns", 0) * frames * bits // 8
    return (length, length + length % 2) if length else ()


def _decode_jpeg_xl(
    ds: Dataset, tsyntax: Any, index: int, *, rows: int, columns: int
) -> tuple[np.ndarray, str]:
    """Decode one JPEG XL frame (pydicom splits the frames; models.codecs decodes them) and
    check it against the DICOM header; a lossy frame's values are kept within Bits Stored."""
    from pydicom.encaps import get_frame

    from radlens.models.codecs import decode_jpeg_xl, jpeg_xl_available

    label = _ts_label(tsyntax)
    if not jpeg_xl_available():
        raise UnsupportedTransferSyntaxError(
            f"no installed plugin can decode transfer syntax {label}", transfer_syntax=label
        )
    if _int_or(ds, "PixelRepresentation", 0) == 1:
        raise UnsupportedTransferSyntaxError(
            f"signed pixel data (Pixel Representation 1) under {label}: a JPEG XL codestream "
            "holds unsigned samples; send the image uncompressed or JPEG 2000 lossless",
            transfer_syntax=label,
        )
    frames = _int_or(ds, "NumberOfFrames", 1) or 1
    try:
        codestream = bytes(get_frame(ds.PixelData, index, number_of_frames=frames))
    except BaseException as exc:  # third-party boundary: malformed encapsulation
        _reraise_fatal(exc)
        raise InvalidImageError(
            f"the {label} pixel data could not be split into {frames} frame(s) ({error_text(exc)})"
        ) from exc
    try:
        arr = decode_jpeg_xl(codestream)
    except BaseException as exc:  # third-party boundary
        _reraise_fatal(exc)
        if "NEED_MORE_INPUT" in str(exc) or _looks_truncated(exc):
            raise TruncatedDataError(
                f"the {label} pixel data ends early ({error_text(exc)})"
            ) from exc
        raise UnsupportedTransferSyntaxError(
            f"could not decode the {label} pixel data ({error_text(exc)})", transfer_syntax=label
        ) from exc
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    samples = _int_or(ds, "SamplesPerPixel", 1) or 1
    expected = (rows, columns) if samples == 1 else (rows, columns, samples)
    if arr.shape != expected or not np.issubdtype(arr.dtype, np.unsignedinteger):
        raise CodestreamMismatchError(
            f"the {label} codestream holds {'x'.join(map(str, arr.shape))} {arr.dtype} "
            f"samples; the DICOM header says Rows={rows}, Columns={columns}, "
            f"SamplesPerPixel={samples} (integer samples)"
        )
    if arr.ndim == 2:
        arr = _stored_bits_only(arr, False, _int_or(ds, "BitsStored", None))
        return arr, (_text(ds, "PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    return arr, "RGB"  # libjxl returns RGB, whatever colour space the frame was coded in


def _grayscale(
    arr: np.ndarray,
    ds: Dataset,
    window: str | None,
    *,
    table: _ValueTable | None = None,
    version: str = PREPROCESSING_VERSION,
) -> tuple[np.ndarray, str]:
    """Modality LUT then VOI, to [0, 1] (before any MONOCHROME1 inversion).

    ``table`` (with its domain as ``arr``): min-max then takes its range from the entries
    present in the image only, as it would from the pixels.
    """
    if displays_stored_values(ds, version=version):
        values = np.asarray(arr)
    else:
        values = modality_values(arr, ds)
        _check_modality_output(arr, values, ds, table)
    if window is not None and _is_hounsfield(ds):
        center, width = WINDOW_PRESETS[window]
        # the model's own window: an image it saturates is the image's matter, not the header's
        return apply_window(values, center, width), f"preset:{window}({center:g}/{width:g})"
    # min-max is computed only when it is the answer: a file window makes it unneeded
    float_frame = _at_least(version, "6") and np.issubdtype(arr.dtype, np.floating)
    file_window = _file_voi(
        values, ds, float_frame=float_frame, lut_clipped=version in VOI_LUT_CLIPPED_VERSIONS
    )
    if file_window is None:
        return _min_max(values, table), "minmax"
    voi, label = file_window
    if voi is None:  # the file has a window or VOI LUT that cannot be applied: the label says
        return _min_max(values, table), f"minmax(not {label})"  # not a file without one
    # from version "4", a window that leaves the whole image within one gray level of an
    # 8-bit display blanks it too (a width of 1e7 on 12-bit values, a window in stored units
    # over a rescale to optical density); before, only one that maps it to one value
    within = _NEARLY_BLANK if _at_least(version, "4") else 0.0
    if _blanks(arr, voi, within=within):  # the model would be shown a blank
        return _min_max(values, table), f"minmax(not {label})"
    return voi, label


_NEARLY_BLANK = 1.0 / 255.0
"""A file window or VOI LUT whose output over the whole image spans less than this (one gray
level of an 8-bit display) shows a blank (version "4"; :func:`_blanks`)."""


def _check_modality_output(
    arr: np.ndarray, values: np.ndarray, ds: Dataset, table: _ValueTable | None
) -> None:
    """Refuse a modality LUT / rescale whose values are not finite (Rescale Slope ``inf``,
    Intercept ``1e308`` times a slope), or that maps stored values with contrast onto one
    value (Slope ``0`` or ``1e-308``, Intercept ``1e308``): either would reach the model as a
    blank image. A stored image that is constant itself passes, as before.

    With a value table, ``arr`` and ``values`` are per distinct stored value from the frame's
    minimum to its maximum (both occur): the extremes decide for the monotonic rescale; a
    value that does not occur may be non-finite only if those that occur are finite.
    """
    if values is arr:  # no rescale: the stored values themselves (finite: checked on decode)
        return
    lo, hi = _value_range(values)  # NaN propagates: non-finite when either is
    if not (math.isfinite(lo) and math.isfinite(hi)) and table is not None:
        lo, hi = _value_range(values[table.present])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        stored_lo, stored_hi = _value_range(arr)
        raise InvalidRescaleError(
            f"{_modality_source(ds)} give values that are not finite (from {lo:g} to {hi:g}) "
            f"for the stored values {stored_lo:g} to {stored_hi:g}"
        )
    if lo == hi:
        stored_lo, stored_hi = _value_range(arr)
        if stored_lo != stored_hi:
            raise InvalidRescaleError(
                f"{_modality_source(ds)} map every stored value ({stored_lo:g} to "
                f"{stored_hi:g}) to {lo:g}: the image would be blank"
            )


def _blanks(arr: np.ndarray, pixels: np.ndarray, *, within: float = 0.0) -> bool:
    """Whether the file's window or VOI LUT maps every pixel of an image whose stored values
    have contrast to one value, or (``within`` > 0) to values spanning less than ``within``
    (a 30/100 brain window on a crop of bone, Window Center/Width 40/1 on an MR, a width of
    1e308). The file's VOI is then passed over for min-max (the label says so:
    ``minmax(not file:30/100)``): the model sees the image, not a blank, and a real file whose
    window does not suit the crop is not refused. ``arr`` is the stored frame or its value
    table's domain; a constant stored image stays as its window maps it."""
    lo, hi = _value_range(pixels)
    spread = hi - lo
    if not (spread == 0.0 or spread < within):  # NaN: not judged blank here
        return False
    stored_lo, stored_hi = _value_range(arr)
    return stored_lo != stored_hi


def _modality_source(ds: Dataset) -> str:
    """The modality attributes pydicom applied, quoted for an error message."""
    if ds.get("ModalityLUTSequence"):
        return "the Modality LUT Sequence (0028,3000) item"
    return (
        f"Rescale Slope (0028,1053) {_text(ds, 'RescaleSlope')!r} and Rescale Intercept "
        f"(0028,1052) {_text(ds, 'RescaleIntercept')!r}"
    )


def _value_range(values: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` as floats; NaN when any value is NaN."""
    return float(np.min(values)), float(np.max(values))


def _voi_lut_entries(ds: Dataset) -> tuple[int, int] | None:
    """``(entries, first value mapped)`` of the first VOI LUT Sequence item when pydicom can
    apply it to any value, else ``None``.

    Usable means what pydicom's ``apply_voi`` needs: a LUT Descriptor of three values with 8
    or 10-16 bits per entry, and LUT Data with at least as many entries as the descriptor
    declares (US values, or OW words; entries beyond are ignored, as pydicom ignores them).
    pydicom's ``apply_voi_lut`` already passes over an item without LUT Descriptor or LUT
    Data; an item whose data is empty or shorter than its descriptor, or whose bit depth
    pydicom does not support, is passed over the same way, so the window (or min-max) applies.
    """
    try:
        sequence = ds.get("VOILUTSequence")
        if not sequence:
            return None
        item = sequence[0]
        descriptor = item.get("LUTDescriptor")
        if descriptor is None or isinstance(descriptor, int | str | bytes) or len(descriptor) != 3:
            return None
        entries = int(descriptor[0]) or 2**16
        first = int(descriptor[1])
        bits = int(descriptor[2])
        if bits != 8 and not 10 <= bits <= 16:
            return None
        if "LUTData" not in item:
            return None
        element = item["LUTData"]
        data = element.value
        if data is None:
            count = 0
        elif isinstance(data, bytes | bytearray):
            count = len(data) // 2 if element.VR == "OW" else 0
        elif isinstance(data, int):
            count = 1
        else:
            count = len(data)
    except Exception:  # a malformed VOI LUT module: not usable
        return None
    return (entries, first) if count >= entries else None


_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
"""The VOI LUT Functions (0028,1056) a file window's label may name (PS3.3 C.11.2.1.3)."""


VOI_LUT_CLIPPED_VERSIONS: frozenset[str] = frozenset({"6"})
"""The preprocessing versions in which a VOI LUT Sequence item is applied by
:func:`_voi_lut_clipped` (from "6"; add each later version here): each value's index into the
LUT is clipped to the LUT's range, as PS3.3 C.11.2.1.1 says (a value below the first value
mapped gets the first entry, one above the last mapped gets the last). pydicom's ``apply_voi``
(3.0) builds that index in the LUT entries' own type, so it wraps: with an 8-bit LUT of more
than 256 entries (a 12-bit image's 4096-entry LUT with 8-bit output) the value ``first + 256``
gets entry 0, with a 16-bit LUT ``first + 65536`` does (a LUT whose first value mapped is
negative, over unsigned stored values); and the output range probed over the LUT wraps the
same way. It changes those files' arrays, so versions "1"-"5" apply the LUT by pydicom as they
did."""


def _voi_lut_clipped(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The first VOI LUT Sequence item (usable: :func:`_voi_lut_entries`) applied to integer
    ``values`` with numpy, each index clipped to the LUT's range (:data:`VOI_LUT_CLIPPED_VERSIONS`),
    as float64, and the LUT's entries (its output range). The LUT Data is the element's value
    as pydicom read it: US values, or OW words in the dataset's byte order, which pydicom's
    ``apply_voi`` reads the same way (and refuses, as here, when that order is unknown)."""
    item = ds.VOILUTSequence[0]
    entries = int(item.LUTDescriptor[0]) or 2**16
    first = int(item.LUTDescriptor[1])
    element = item["LUTData"]
    if element.VR == "OW":
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        little = syntax.is_little_endian if syntax is not None else ds.original_encoding[1]
        if little is None:
            raise AttributeError("the byte order of the VOI LUT Data is unknown")
        table = np.frombuffer(element.value, dtype="<u2" if little else ">u2", count=entries)
    else:
        table = np.asarray(element.value, dtype=np.int64).reshape(-1)[:entries]
    if int(item.LUTDescriptor[2]) == 8 and table.size and int(table.max()) > 255:
        raise ValueError("an 8-bit VOI LUT holds an entry above 255")  # pydicom refuses it too
    table = table.astype(np.float64)
    index = np.clip(np.asarray(values, dtype=np.int64) - first, 0, entries - 1)
    return table[index], table


def _file_voi(
    values: np.ndarray, ds: Dataset, *, float_frame: bool = False, lut_clipped: bool = False
) -> tuple[np.ndarray | None, str] | None:
    """The file's VOI LUT or Window Center/Width via pydicom, scaled to [0, 1], and its label.

    ``lut_clipped`` (:data:`VOI_LUT_CLIPPED_VERSIONS`): a VOI LUT is applied by
    :func:`_voi_lut_clipped`, each value's index clipped to the LUT, instead of by pydicom's
    ``apply_voi_lut``, whose index wraps beyond 256 (8-bit LUT) or 65536 (16-bit) entries.

    ``float_frame`` (version "6", a frame of Float or Double Float Pixel Data): a Window
    Center/Width is applied by :func:`_float_window`; pydicom's ``apply_windowing`` needs Bits
    Stored, which such a frame does not have, so before "6" its window was passed over for
    min-max as unusable.

    A VOI LUT Sequence item is used only when pydicom can apply it (:func:`_voi_lut_entries`);
    otherwise it is ignored and the window, when the file has one, is used. Returns ``None``
    when the file has no VOI (no usable VOI LUT item, and Window Center or Width absent or
    empty): min-max is used, labelled ``minmax``. A VOI the file has but that cannot be
    applied (a Window Width pydicom refuses, text where a number belongs, an unknown or empty
    VOI LUT Function, a window or LUT whose output range is not finite or empty) gives
    ``(None, label)``: min-max is used and labelled ``minmax(not file:unusable)`` (or
    ``minmax(not voi-lut)``, ``minmax(not file:nan/1600)``), so such a file does not pass for
    one without a window (QA round 55). A window's label names a VOI LUT Function other than
    LINEAR, which pydicom applies: ``file:600/1600 SIGMOID``.
    """
    from pydicom.pixels import apply_voi_lut, apply_windowing

    lut = _voi_lut_entries(ds)
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if lut is None and not has_window:
        return None
    label = "voi-lut" if lut is not None else "file:unusable"
    try:
        if lut is not None:
            entries, first = lut
            if np.issubdtype(values.dtype, np.floating):
                values = np.rint(values).astype(np.int64)
            if lut_clipped:
                out, probe = _voi_lut_clipped(values, ds)
            else:
                out = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
                probe = np.asarray(
                    apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds),
                    dtype=np.float64,
                )
        elif float_frame:
            center = _first_number(ds.WindowCenter)
            width = _first_number(ds.WindowWidth)
            function = str(getattr(ds, "VOILUTFunction", "LINEAR")).upper()
            if function not in _VOI_FUNCTIONS:
                raise ValueError("unknown VOI LUT Function")
            out = _float_window(values, center, width, function)
            probe = np.array([0.0, 1.0])  # its output range
            label = f"file:{center:g}/{width:g}" + ("" if function == "LINEAR" else f" {function}")
        else:
            # apply_voi_lut's own choice for a window without a (usable) VOI LUT
            out = np.asarray(apply_windowing(values, ds), dtype=np.float64)
            probe = np.asarray(apply_windowing(np.array([-np.inf, np.inf]), ds), dtype=np.float64)
            center = _first_number(ds.WindowCenter)
            width = _first_number(ds.WindowWidth)
            # the function as pydicom read it to apply it: LINEAR, LINEAR_EXACT or SIGMOID;
            # any other text is no function (the label is stored with the prediction: numbers
            # and these names only, never text from the file)
            function = str(getattr(ds, "VOILUTFunction", "LINEAR")).upper()
            if function not in _VOI_FUNCTIONS:
                raise ValueError("unknown VOI LUT Function")
            label = f"file:{center:g}/{width:g}" + ("" if function == "LINEAR" else f" {function}")
    except Exception as exc:  # a malformed VOI module: min-max, and the label says so
        logger.debug("file VOI not usable (%s); using min-max", type(exc).__name__)
        return None, label
    lo, hi = float(np.nanmin(probe)), float(np.nanmax(probe))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return None, label
    scaled = out - lo  # a new array (``out`` may be the caller's values): divided in place
    scaled /= hi - lo
    return scaled.astype(np.float32), label


def _float_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """A Window Center/Width applied to float values (Float or Double Float Pixel Data), as
    float64 in [0, 1]: PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT) and
    C.11.2.1.3.1 (SIGMOID) with an output range of 0 to 1, the same formulas as pydicom's
    ``apply_windowing``, which reads its output range from Bits Stored (absent for float
    pixels: PS3.3 C.7.6.3 has no Bits Stored, High Bit or Pixel Representation for them). The
    window applies to float pixels as to integers: the Parametric Map IOD, whose pixels are
    often float, requires one "with the intent that at a minimum the image be renderable",
    and "the VOI LUT mechanism specifically supports floating point values" (PS3.3 A.75.1).

    Raises ValueError for a window the standard does not define (a width below 1 for
    LINEAR, not above 0 otherwise; a center or width that is not finite): the caller passes
    it over for min-max, as it does an integer frame's.
    """
    if not (math.isfinite(center) and math.isfinite(width)):
        raise ValueError("Window Center and Width must be finite")
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError("a SIGMOID Window Width must be greater than 0")
        with np.errstate(over="ignore"):  # exp overflows to inf far below the window: 0
            return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR":
        if width < 1:
            raise ValueError("a LINEAR Window Width must be at least 1")
        center, width = center - 0.5, width - 1.0
    elif width <= 0:
        raise ValueError("a LINEAR_EXACT Window Width must be greater than 0")
    out = np.empty_like(x)
    below = x <= center - width / 2
    above = x > center + width / 2
    between = ~(below | above)
    out[below] = 0.0
    out[above] = 1.0
    if between.any():  # never for a LINEAR width of 1 (a threshold): no division by 0
        out[between] = (x[between] - center) / width + 0.5
    return out


def _palette_to_gray(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str, float]:
    from pydicom.pixels import apply_color_lut

    rgb = _call(
        lambda: np.asarray(apply_color_lut(arr, ds)),
        InvalidImageError,
        "could not apply the PALETTE COLOR lookup table",
    )
    # The LUT descriptor often says 16 bits for tables that hold 8-bit entries (a known
    # ambiguity, e.g. pydicom's OBXXXX1A_expb.dcm): judge the depth by the values instead.
    bits = 16 if int(rgb.max()) > 255 else 8
    return (
        _to_gray(rgb[..., :3]) / np.float32(2**bits - 1),
        "full-range",
        colour_fraction(rgb, bits),
    )


def _convert_to_rgb(arr: np.ndarray, photometric: str) -> np.ndarray:
    from pydicom.pixels import convert_color_space

    return _call(
        lambda: np.asarray(convert_color_space(arr, photometric, "RGB")),
        InvalidImageError,
        f"could not convert {photometric} to RGB",
    )


@dataclass(frozen=True)
class _ValueTable:
    """A grayscale frame as offsets into the range of its stored values."""

    domain: np.ndarray  # every value from the frame's min to its max, in the frame's dtype
    offsets: np.ndarray  # (H, W) native unsigned of the frame's width: frame - min

    @functools.cached_property
    def present(self) -> np.ndarray:
        """Bool per domain entry: the value occurs in the frame. Counted only when asked for
        (min-max, or a non-finite value somewhere in the domain): a window preset or the
        file's VOI never needs it."""
        return np.bincount(self.offsets.ravel(), minlength=self.domain.size).astype(bool)

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per domain entry) at every pixel: an ``(H, W)`` array of their dtype.

        The same elements as ``values[offsets]``. ``np.take`` wants ``intp`` indices and
        would otherwise convert the whole frame into a new array of them (8 bytes per pixel:
        2 MiB for a 512x512 CT, 30 MiB for a 2140x1760 radiograph): a pass over memory, and
        the largest block of a CT slice's call, which a process that only ever sees such
        slices gives back to the system and faults in afresh on every call
        (docs/benchmarks/preprocess.md, round 6). So the offsets are converted a chunk at a
        time into a per-thread buffer of :data:`_LOOKUP_CHUNK` indices. ``mode="clip"`` lets
        ``np.take`` write straight into ``out`` (``"raise"`` buffers it); every offset is
        within the domain by construction.
        """
        flat = self.offsets.reshape(-1)
        out = np.empty(flat.size, dtype=values.dtype)
        scratch: np.ndarray | None = getattr(_lookup_scratch, "index", None)
        if scratch is None:
            scratch = _lookup_scratch.index = np.empty(_LOOKUP_CHUNK, dtype=np.intp)
        for start in range(0, flat.size, _LOOKUP_CHUNK):
            stop = min(start + _LOOKUP_CHUNK, flat.size)
            index = scratch[: stop - start]
            np.copyto(index, flat[start:stop], casting="safe")
            np.take(values, index, out=out[start:stop], mode="clip")
        return out.reshape(self.offsets.shape)


_LOOKUP_CHUNK = 1 << 15
"""Offsets converted to ``intp`` at a time by :meth:`_ValueTable.lookup` (256 KiB per thread)."""
_lookup_scratch = threading.local()


def _value_table(arr: np.ndarray) -> _ValueTable | None:
    """The frame's value table when it is worth it, else ``None``.

    Every step from the modality LUT to the clip to [0, 1] works value by value (pydicom's
    rescale, LUTs and windowing; the window presets; MONOCHROME1 inversion; float32), except
    min-max, which needs the range of the values present. So those steps can run once per
    distinct stored value and the frame is then one table lookup: the same float operations
    on the same inputs, so bit for bit the same result, in a fraction of the full-resolution
    float64 passes (a 12-bit CT has at most 4,096 values against 262,144 pixels). Used for
    integer frames of at least :data:`_TABLE_MIN_PIXELS` pixels whose value range is at most
    a quarter of their pixel count: the table's steps then cost at most a quarter of the
    per-pixel ones, and a 16-bit frame's table stays within 64 Ki entries (256 KiB of
    float32, in cache for the lookup). Wider ranges (32-bit values, sparse float-like data)
    and float pixels take the per-pixel path, which gives the same result.

    The offsets are ``frame - min`` in the unsigned integer of the frame's width, computed
    modulo ``2**bits``: exact, because ``max - min < 2**bits``, and signed frames need no
    wider type (``-1024 - -2048`` is 1024 in uint16 too).
    """
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 4 or arr.size < _TABLE_MIN_PIXELS:
        return None
    lo, hi = int(arr.min()), int(arr.max())
    entries = hi - lo + 1
    if entries > arr.size // 4:
        return None
    bits = 8 * arr.dtype.itemsize
    unsigned = np.dtype(f"u{arr.dtype.itemsize}")
    stored = arr.view(unsigned.newbyteorder(arr.dtype.byteorder))  # same bytes, unsigned
    if lo == 0 and stored.dtype.isnative:
        offsets = stored
    else:
        offsets = np.subtract(stored, unsigned.type(lo % (1 << bits)), dtype=unsigned)
    domain = np.arange(lo, hi + 1, dtype=np.int64).astype(arr.dtype)
    return _ValueTable(domain=domain, offsets=offsets)


_TABLE_MIN_PIXELS = 4096


def _is_hounsfield(ds: Dataset) -> bool:
    return _text(ds, "Modality") == "CT" or (_text(ds, "RescaleType") or "").upper() == "HU"


def _min_max(values: np.ndarray, table: _ValueTable | None = None) -> np.ndarray:
    """``values`` scaled to [0, 1] by the range of those that occur in the image.

    With a value table (``values`` one per entry of its domain), only the entries present in
    the frame count; finding which are present takes a pass over every pixel (a third of a
    1955x1841 radiograph's preprocessing), so it is skipped when the values are monotonic
    over the domain (a rescale, no modality transform, most Modality LUTs): the domain's
    first and last entries are the frame's minimum and maximum, both present, so the
    present entries' extremes are then the extremes of all, the same numbers.
    """
    values = np.asarray(values, dtype=np.float64)
    occurring = values if table is None or _monotonic(values) else values[table.present]
    lo, hi = float(occurring.min()), float(occurring.max())
    if hi <= lo:  # a constant image carries no contrast: all zeros
        return np.zeros(values.shape, dtype=np.float32)
    scaled = values - lo  # a new array: divided in place
    scaled /= hi - lo
    return scaled.astype(np.float32)


def _monotonic(values: np.ndarray) -> bool:
    """Whether ``values`` never decrease or never increase along their one axis (False
    when any is NaN: every comparison with NaN fails)."""
    steps = np.diff(values)
    return bool((steps >= 0).all() or (steps <= 0).all())


# --- PNG and JPEG ----------------------------------------------------------------------


def _preprocess_pillow(
    data: bytes, kind: str, *, max_pixels: int, version: str = PREPROCESSING_VERSION
) -> tuple[np.ndarray, ImageMetadata]:
    from PIL import Image, UnidentifiedImageError

    from radlens.models.codecs import scan_for_pillow

    # a JPEG's scan as scan_for_pillow prepares it: Pillow then refuses a scan that ends
    # early at an EOI marker ("image file is truncated") instead of filling the rest grey;
    # a JPEG whose whole scan lacks only its EOI is decoded with it (_upload_jpeg_closed)
    source = scan_for_pillow(_upload_jpeg_closed(data, max_pixels)) if kind == "jpeg" else data
    if kind == "png":
        _check_png_chunks(data)
    try:
        image = Image.open(io.BytesIO(source), formats=[kind.upper()])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"{error_text(exc)} (Pillow's limit; radlens limit {max_pixels}); "
            f"received {len(data)} bytes"
        ) from exc
    except UnidentifiedImageError as exc:
        coding = _unsupported_jpeg_coding(data) if kind == "jpeg" else None
        if coding is not None:
            raise UnsupportedJpegError(f"received {coding}, {len(data)} bytes") from exc
        raise InvalidImageError(
            f"the {kind.upper()} header could not be parsed; received {len(data)} bytes "
            f"starting {_hex_head(data)}"
        ) from exc
    except BaseException as exc:  # third-party boundary
        _reraise_fatal(exc)
        raise _pillow_error(exc, kind, data) from exc
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"zero-size {kind.upper()} image. Received {width}x{height}")
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is not None and width * height > pillow_limit:
            # Pillow only warns between its limit and twice it; radlens refuses.
            raise ImageTooLargeError(
                f"{kind.upper()} declares {width}x{height} = {width * height} pixels, "
                f"exceeding Pillow's limit of {pillow_limit} (radlens limit {max_pixels})"
            )
        if width * height > max_pixels and not (
            kind == "jpeg" and _jpeg_scaled_within(image, data, max_pixels)
        ):
            raise ImageTooLargeError(
                f"{kind.upper()} declares {width}x{height} = {width * height} pixels, "
                f"exceeding the limit of {max_pixels}"
            )
        try:
            # before load: a PNG's eXIf chunk after the image data, which viewers pass over,
            # only joins image.info when the data is read
            orientation = exif_orientation(image) if _at_least(version, "4") else None
            image.load()
            deep = (
                _png_deep_colour_samples(data, image)
                if kind == "png" and version in PNG_DEEP_COLOUR_VERSIONS
                else None
            )
            if kind == "png":
                if deep is None:  # read at 8 bits: refused when that would posterise it
                    _check_png_colour_depth(data, image)
                _check_opaque(data, image)
            colour: float | None
            if deep is not None:
                pixels, bits, colour = _deep_colour_to_float(deep, _png_colour_sbit(data))
                shown = _upright(_float_image(np.ascontiguousarray(pixels)), orientation)
                try:
                    height, width = shown.height, shown.width
                    pixels = np.asarray(shown, dtype=np.float32)
                finally:
                    shown.close()
            else:
                significant = _png_significant_bits(data) if kind == "png" else None
                shown = _upright(image, orientation)
                try:
                    height, width = shown.height, shown.width
                    pixels, bits, colour = _pillow_to_float(
                        shown, significant_bits=significant, by_depth=_at_least(version, "3")
                    )
                finally:
                    if shown is not image:
                        shown.close()
        except PreprocessingError:
            raise
        except BaseException as exc:  # third-party boundary
            _reraise_fatal(exc)
            raise _pillow_error(exc, kind, data) from exc
        metadata = ImageMetadata(
            format=kind,
            rows=height,
            columns=width,
            frames=int(getattr(image, "n_frames", 1) or 1),
            bits_stored=bits,
            photometric_interpretation=None,
            modality=None,
            body_part=None,
            transfer_syntax_uid=None,
            transfer_syntax_name=None,
            study_instance_uid=None,
            series_instance_uid=None,
            sop_instance_uid=None,
            sop_class_uid=None,
            frame_index=0,
            window="full-range",
            exif_orientation=orientation,
            blank=_gray_is_constant(pixels),
            colour_fraction=colour,
        )
    return pixels, metadata


PNG_DEEP_COLOUR_VERSIONS: frozenset[str] = frozenset({"6"})
"""The preprocessing versions in which a 16-bit RGB or RGBA PNG is read at its full 16 bits
(:func:`_png_deep_colour_samples`), from "6" (add each later version here). Pillow reads such
a PNG at 8 bits, each sample's high byte (Pillow issues #1888, #7723), so before "6" it was,
and one whose samples need fewer than 15 bits was refused
(:func:`_check_png_colour_depth`). From "6" its exact samples (imagecodecs' PNG decoder) go
to gray by BT.601 luma and are scaled by the depth they have, as a 16-bit gray PNG's are
(:func:`_deep_colour_to_float`); the EXIF orientation is applied after, as to any PNG. It
changes those files' arrays (within 1/255 for one whose data use the full 16 bits), so
versions "1"-"5" read them at 8 bits as they did. A 16-bit gray-with-alpha PNG is still read
at 8 bits (Pillow's "LA")."""


def _png_deep_colour_samples(data: bytes, image: PILImage.Image) -> np.ndarray | None:
    """A 16-bit RGB or RGBA PNG's R, G and B samples at 16 bits (uint16, (H, W, 3)), as
    imagecodecs decodes them; ``None`` for any other PNG, or when that decoder cannot read it
    or gives another shape than Pillow's (the file is then read at 8 bits as before). The IHDR
    chunk comes first (PNG 5.2): bit depth at byte 24, colour type at byte 25."""
    if len(data) <= 25 or data[24] != 16 or data[25] not in (2, 6):
        return None
    exact = _png_samples(data)
    if (
        exact is None
        or exact.dtype != np.uint16
        or exact.ndim != 3
        or exact.shape[:2] != (image.height, image.width)
        or exact.shape[2] not in (3, 4)
    ):
        return None
    return exact[..., :3]


def _png_colour_sbit(data: bytes) -> int | None:
    """The depth a 16-bit colour PNG's sBIT chunk states for its colour samples: the largest of
    its red, green and blue values (PNG 11.3.2.4: one per channel, 1..16; an RGBA file's fourth
    value, alpha's, is not the image's), so no channel's samples are taken as exceeding their
    depth; ``None`` without a chunk or with a value outside 1..16 (malformed: ignored, as
    :func:`scale_16bit` ignores one). The image is scaled by one depth, as a gray PNG is: for
    an RGB copy of a gray radiograph the three values are that image's one depth (the test
    ``tests/models/test_qa111_deep_colour_png.py`` checks the array equals the gray PNG's)."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, chunk = struct.unpack_from(">I4s", data, offset)
        if chunk == b"sBIT":
            values = data[offset + 8 : offset + 8 + min(length, 3)]
            if len(values) < 3 or not all(1 <= v <= 16 for v in values):
                return None
            return max(values)
        if chunk in (b"IDAT", b"IEND"):
            return None
        offset += 12 + length
    return None


def _deep_colour_to_float(
    rgb: np.ndarray, significant_bits: int | None
) -> tuple[np.ndarray, int, float]:
    """16-bit R, G, B samples to float32 gray in [0, 1], its depth and its
    :func:`colour_fraction`: each sample scaled by :func:`scale_16bit` over the three channels
    together (sBIT, else the depth the data need; one depth for the image, as a 16-bit gray
    PNG's), then BT.601 luma (:func:`_to_gray`: a channel exactly when R == G == B, so an RGB
    copy of a 16-bit gray PNG gives that PNG's array)."""
    scaled, bits = scale_16bit(rgb, significant_bits)
    gray = np.clip(_to_gray(scaled), 0.0, 1.0)
    # the colour spread is measured against the range the samples fill: their depth, or 16
    # bits when they are scaled up to it
    fill = 16 if rgb.size and int(rgb.max()) >= 1 << bits else bits
    return gray.astype(np.float32, copy=False), bits, colour_fraction(rgb, fill)


def _upload_jpeg_closed(data: bytes, max_pixels: int) -> bytes:
    """An uploaded JPEG closed with its EOI marker when it lacks only that, else ``data``.

    Some phones, modalities' exports and tools write a JPEG whose scan is whole but that ends
    without its EOI (FF D9); Pillow refused it as truncated (it waits for more data to fill
    libjpeg's look-ahead after the last MCU). When its structure allows (:func:`_jpeg_closed`:
    one sequential scan) and :func:`_scan_whole` finds the scan whole, decoded by Pillow at the
    size the upload is decoded at, the JPEG is decoded with the EOI appended, to the pixels
    the same file with its EOI gives. A scan cut short stays refused as truncated, as does
    anything else without its EOI; a JPEG that has its EOI is returned unchanged (the same
    object), so every JPEG that decoded before decodes as it did.
    """
    closed = _jpeg_closed(data)
    if closed is None or not _scan_whole(closed, lambda d: _pillow_jpeg_pixels(d, max_pixels)):
        return data
    return closed


def _pillow_jpeg_pixels(data: bytes, max_pixels: int) -> np.ndarray:
    """A JPEG upload's pixels as Pillow decodes them, at the reduced size a JPEG beyond
    ``max_pixels`` is decoded at (:func:`_jpeg_scaled_within`); raises
    :class:`~models.errors.ImageTooLargeError` beyond Pillow's or that limit, before decoding
    (the caller then refuses it as it did)."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
        width, height = image.size
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if (pillow_limit is not None and width * height > pillow_limit) or (
            width * height > max_pixels and not _jpeg_scaled_within(image, data, max_pixels)
        ):
            raise ImageTooLargeError(f"JPEG declares {width}x{height} pixels")
        image.load()
        return np.asarray(image)


_DCT_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})  # Huffman or arithmetic, sequential or
# progressive: the DCT codings whose decode libjpeg can scale (not lossless, not hierarchical)


def _jpeg_scaled_within(image: PILImage.Image, data: bytes, max_pixels: int) -> bool:
    """Have a DCT JPEG larger than ``max_pixels`` decoded at 1/2, 1/4 or 1/8 of its size, the
    least reduction that fits (libjpeg's DCT scaling, through Pillow's ``draft`` on the opened,
    not yet loaded image); ``True`` when one fits, ``False`` (nothing changed) otherwise.

    A phone's photo of a film is 48 or 50 MP in its full-resolution mode (8064x6048,
    8160x6120), above the default 36 MP limit, and a viewer shows it; the model sees it at a
    few hundred pixels a side, so decoding a quarter of its pixels loses nothing it would see,
    and the decoded size, which bounds memory and time, stays within the limit. Only a file
    over the limit is decoded reduced: one within it decodes in full as before. Pillow's own
    limit (``PIL.Image.MAX_IMAGE_PIXELS``, checked before) still bounds the declared size.
    """
    frame = next((marker for marker, _ in _jpeg_segments(data) if _is_frame_header(marker)), None)
    if frame not in _DCT_SOF:
        return False
    width, height = image.size
    for scale in (2, 4, 8):
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            break
    else:
        return False
    # Pillow picks the largest of 8, 4, 2 that the asked size divides the image by, and
    # rounds the scaled size up, as libjpeg does
    image.draft(None, (max(1, width // scale), max(1, height // scale)))
    return image.width * image.height <= max_pixels


def exif_orientation(image: PILImage.Image) -> int | None:
    """The EXIF Orientation (274) of a PNG or JPEG opened and not yet loaded, when it turns or
    mirrors the image (2-8) and a viewer would follow it; else ``None``.

    Cameras, phones and some export tools store the pixels as the sensor read them and say
    in this tag how to turn them; browsers and viewers show the turned image, which is what a
    reader of the upload saw. From preprocessing version "4" the model gets that image too
    (:func:`preprocess`), and so do the overlay and the reported rows/columns.

    What counts is what Chromium follows (tests/models/test_exif_browser.py): the EXIF block
    of a JPEG's APP1 segment or of a PNG's eXIf chunk before the image data (what
    ``image.info["exif"]`` holds before ``load``), and in its first IFD the first Orientation
    entry of type SHORT, count 1 and a value 1-8 (an entry of another form or value is passed
    over for a later one, as Chromium's decoder, Skia, does). Only a LONG, a count of 2 or a
    value of 9, an eXIf chunk after the image data, an ImageMagick "Raw profile type exif"
    text chunk or EXIF that cannot be read: ``None``, the pixels as stored, as the viewer
    shows them. Pillow reads the block but gives the value of an entry without its type and
    count, so the entries are read here (TIFF 6.0 section 2: byte order, 42, the IFD's
    offset; 12-byte entries of tag, type, count, value).
    """
    block = image.info.get("exif")
    if not isinstance(block, bytes):
        return None
    tiff = block[6:] if block.startswith(b"Exif\x00\x00") else block
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or struct.unpack(order + "H", tiff[2:4])[0] != 42:
        return None
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return None
    (entries,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for at in range(ifd + 2, min(ifd + 2 + 12 * entries, len(tiff) - 11), 12):
        tag, kind, count = struct.unpack(order + "HHI", tiff[at : at + 8])
        if tag == 0x0112 and kind == 3 and count == 1:  # another form: the next entry
            (value,) = struct.unpack(order + "H", tiff[at + 8 : at + 10])
            if 1 <= value <= 8:  # the first valid one counts, as in Chromium (Skia)
                return value if value > 1 else None
    return None


def _upright(image: PILImage.Image, orientation: int | None) -> PILImage.Image:
    """The image turned as ``orientation`` (:func:`exif_orientation`) says, or the image
    itself when there is nothing to turn. By the value read there, not by Pillow's
    ``exif_transpose``, which reads the EXIF again after the load (a PNG's eXIf chunk after
    the image data too) and could turn by another one."""
    if orientation is None:
        return image
    from PIL import Image

    turn = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }[orientation]
    return image.transpose(turn)


def _pillow_to_float(
    image: PILImage.Image, *, significant_bits: int | None = None, by_depth: bool = True
) -> tuple[np.ndarray, int, float | None]:
    """Map a Pillow image to float32 gray in [0, 1] by the full range of its bit depth, with
    its :func:`colour_fraction` (None for a gray mode).

    16-bit gray: by :func:`scale_16bit` (``by_depth``, version "3"), else by 65535.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # "I": as some Pillows read it
        arr16 = np.asarray(image)
        if by_depth:
            return (*scale_16bit(arr16, significant_bits), None)
        return np.clip(arr16.astype(np.float32) / np.float32(65535.0), 0.0, 1.0), 16, None
    if mode in ("1", "L"):
        arr8 = np.asarray(image.convert("L"))
    elif mode in ("LA", "La"):
        arr8 = np.asarray(image)[..., 0]
    elif mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        arr8 = np.asarray(image)[..., :3]
    elif mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        arr8 = np.asarray(image.convert("RGB"))
    else:
        raise InvalidImageError(f"unsupported image mode. Received mode {mode!r}")
    colour = colour_fraction(arr8) if arr8.ndim == 3 else None
    return np.clip(_to_gray(arr8) / np.float32(255.0), 0.0, 1.0), 8, colour


_CONTAINER_DEPTHS = (8, 10, 12, 14, 16)


def scale_16bit(values: np.ndarray, significant_bits: int | None = None) -> tuple[np.ndarray, int]:
    """Scale 16-bit gray samples to [0, 1] by the bit depth they actually have.

    A 16-bit PNG often holds 10-, 12- or 14-bit detector values; dividing those by 65535
    would leave a 12-bit radiograph in [0, 0.0625]. The depth ``b`` is:

    - the PNG's sBIT chunk (``significant_bits``, 1..16) when present. The PNG
      specification (11.3.2.4) has the encoder scale such samples up to 16 bits; many
      medical exporters store them unscaled instead. Both are read right: samples that
      all fit in ``b`` bits are divided by ``2**b - 1``; samples beyond are taken as
      scaled up and shifted right by ``16 - b`` first.
    - else the smallest of 8, 10, 12, 14 and 16 bits that holds the largest sample (the
      data's range, rounded up to a common detector depth, so images of one source map
      alike even when one of them is darker).

    Args:
        values: unsigned integer samples (a 16-bit PNG's, or a uint16 array).
        significant_bits: the sBIT gray value, or ``None`` when the file has none. A value
            outside 1..16 is ignored as malformed.

    Returns:
        float32 in [0, 1] of the shape of ``values``, and ``b``.

    Example:
        >>> scale_16bit(np.array([0, 2048, 4095], np.uint16))   # no sBIT: 12-bit data
        (array([0.        , 0.50012213, 1.        ], dtype=float32), 12)
    """
    arr = np.asarray(values)
    peak = int(arr.max()) if arr.size else 0
    if significant_bits is not None and 1 <= significant_bits <= 16:
        bits = int(significant_bits)
        if peak >= 1 << bits:
            arr = np.right_shift(arr.astype(np.uint32), 16 - bits)
    else:
        bits = next((b for b in _CONTAINER_DEPTHS if peak < 1 << b), 16)
    scaled = arr.astype(np.float32)  # a new array: divided and clipped in place
    scaled /= np.float32((1 << bits) - 1)
    return np.clip(scaled, 0.0, 1.0, out=scaled), bits


# At most this many chunks that are not image data (IDAT, an APNG's fdAT) in one PNG: libpng's
# default ``user_chunk_cache_max`` (1000), which it applies to the ancillary chunks it keeps.
# Pillow reads each chunk in Python: 63 MiB of empty chunks took 17 s to open and load (AMD EPYC).
PNG_MAX_OTHER_CHUNKS = 1000
# At most this many image-data chunks: encoders write 8 KiB or more per IDAT (libpng's default
# is 8 KiB: a 64 MiB PNG then has 8192), while 13 MiB of 1-byte IDATs took Pillow 2.3 s to
# read (a 1024x1024 image; 1.0 MiB in 8 KiB IDATs reads in a small fraction of that).
PNG_MAX_DATA_CHUNKS = 65536


def _check_png_chunks(data: bytes) -> None:
    """Refuse a PNG of more chunks than any encoder writes (PNG_MAX_OTHER_CHUNKS besides its
    image data, PNG_MAX_DATA_CHUNKS of image data) before Pillow reads them one by one; the
    walk stops at IEND, at a chunk running past the end (Pillow's error then says so) or at the
    first limit passed, so it costs at most ~66,000 steps."""
    other = image_data = 0
    offset, end = len(_PNG_SIGNATURE), len(data)
    while offset + 8 <= end:
        length, chunk = struct.unpack_from(">I4s", data, offset)
        if chunk == b"IEND":
            return
        if chunk in (b"IDAT", b"fdAT"):
            image_data += 1
            if image_data > PNG_MAX_DATA_CHUNKS:
                raise InvalidImageError(
                    f"the PNG's image data is split into more than {PNG_MAX_DATA_CHUNKS} "
                    f"chunks (received {end} bytes); encoders write 8 KiB or more per chunk: "
                    "re-save the image with an ordinary encoder (e.g. optipng or Pillow)"
                )
        else:
            other += 1
            if other > PNG_MAX_OTHER_CHUNKS:
                raise InvalidImageError(
                    f"the PNG holds more than {PNG_MAX_OTHER_CHUNKS} chunks besides its image "
                    f"data (received {end} bytes; libpng's default limit is 1000 too): remove "
                    "the text and private chunks (e.g. optipng -strip all) and send it again"
                )
        offset += 12 + length


def _png_significant_bits(data: bytes) -> int | None:
    """The gray (first) value of a PNG's sBIT chunk, or ``None`` when it has none.

    Pillow reads PNG without exposing sBIT, so the chunks before the image data are walked
    here (PNG 5.3: 4-byte length, 4-byte type, data, 4-byte CRC; sBIT must precede IDAT).
    """
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length = struct.unpack(">I", data[offset : offset + 4])[0]
        chunk = data[offset + 4 : offset + 8]
        if chunk == b"sBIT":
            return data[offset + 8] if length >= 1 and offset + 8 < len(data) else None
        if chunk in (b"IDAT", b"IEND"):
            return None
        offset += 12 + length
    return None


_PNG_DEEP_COLOUR = {2: "RGB", 4: "gray-with-alpha", 6: "RGBA"}  # IHDR colour type: name


def _check_png_colour_depth(data: bytes, image: PILImage.Image) -> None:
    """Refuse a 16-bit colour or gray-with-alpha PNG whose samples need fewer than 15 bits.

    Pillow reads a PNG of colour type 2, 4 or 6 and bit depth 16 at 8 bits, each sample's
    high byte (what a browser shows too); a 16-bit gray PNG is read whole and scaled by the
    depth of its data (:func:`scale_16bit`), because medical exporters store 10- to 14-bit
    detector values unscaled. Such values in a colour or alpha container (a converter that
    writes RGB, an alpha channel added on the way) would keep at most 64 gray levels, all in
    the bottom quarter of the range: a near-black, posterised image the model would score.
    So when no colour sample's high byte reaches 64 (no sample reaches 2**14) the file is
    refused (:class:`~models.errors.DeepColourPngError`), unless its exact samples
    (:func:`_png_samples`) are 8-bit values widened to 16 (v * 257: each low byte equals its
    high byte), which 8 bits read whole; one whose data use the high bytes (full-range
    16-bit) is read at 8 bits as before. The IHDR chunk comes first in every PNG (PNG 5.2;
    Pillow has parsed it): bit depth at byte 24, colour type at 25.
    """
    colour = _PNG_DEEP_COLOUR.get(data[25]) if len(data) > 25 and data[24] == 16 else None
    if colour is None:
        return
    extrema = image.getextrema()  # per band, (min, max) of the 8-bit samples read
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    alpha = "A" in image.mode  # Pillow's mode for these: "RGB" or "RGBA"
    highest = max(int(high) for _low, high in bands[: len(bands) - 1 if alpha else None])
    if highest >= 64:
        return
    exact = _png_samples(data)
    if exact is not None and exact.ndim == 3:
        samples = exact[..., : 1 if colour == "gray-with-alpha" else 3]
        if np.array_equal(samples >> 8, samples & 0xFF):
            return  # 8-bit data stored at 16 bits: nothing is lost at 8
    raise DeepColourPngError(
        f"received a 16-bit {colour} PNG of {image.width}x{image.height} whose samples "
        f"all lie below 16384 (high bytes up to {highest}): read at 8 bits it would keep "
        f"at most {highest + 1} gray levels"
    )


def _png_samples(data: bytes) -> np.ndarray | None:
    """A PNG's samples at their stored depth (imagecodecs' PNG decoder: uint16 for a 16-bit
    PNG, with an alpha band as stored, or made from a tRNS chunk), for the checks Pillow's 8-bit
    reading of 16-bit colour cannot answer; ``None`` when that decoder cannot read it (the
    checks then do not refuse on a guess). Its size is bounded by the pixel limit Pillow's
    open already checked."""
    import imagecodecs

    try:
        return np.asarray(imagecodecs.png_decode(data))
    except Exception:  # third-party decoder boundary: no exact samples, no refusal from them
        return None


def _check_opaque(data: bytes, image: PILImage.Image) -> None:
    """Refuse a PNG that a viewer shows with transparent pixels (:func:`_transparent_pixels`).

    A viewer shows such a pixel as its background (a white page, a dark viewer) and the
    colour stored under it is never seen; reading that colour would score what nobody saw
    (a burned-in name hidden by a transparent box, which the stored Grad-CAM overlay would
    then show), and which background the sender meant is not in the file. An alpha channel
    that is opaque everywhere changes nothing.
    """
    count, lowest = _transparent_pixels(data, image)
    if count:
        raise TransparentImageError(
            f"received a {image.width}x{image.height} PNG ({image.mode}) with {count} of its "
            f"{image.width * image.height} pixels transparent (alpha down to {lowest} of 255)"
        )


def _transparent_pixels(data: bytes, image: PILImage.Image) -> tuple[int, int]:
    """(how many pixels are partly or wholly transparent, the lowest alpha) of a loaded PNG:
    an alpha band's values below 255, or the pixels a tRNS chunk makes transparent (palette
    entries with alpha below 255; the one gray or RGB sample value that is transparent).

    An alpha band is counted only when its minimum is below 255, a palette image's by its
    histogram (no RGBA copy). Pillow scales a 2- or 4-bit gray PNG's samples to 0-255 but
    keeps its tRNS value at the PNG's bit depth (IHDR byte 24), so the value is scaled here
    too (a 1-bit one, read as mode "1", it stores as 0 or 255 already); a 16-bit RGB PNG is
    read at its samples' high bytes, so its tRNS colour is compared with the exact samples
    (:func:`_png_samples`), and not at all when they cannot be had.
    """
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        band = image.getchannel("A")
        extrema = band.getextrema()  # one band: (min, max)
        first = extrema[0] if isinstance(extrema, tuple) else 255
        low = int(first) if isinstance(first, (int, float)) else 255
        if low >= 255:
            return 0, 255
        alpha = np.asarray(band)
        return int(np.count_nonzero(alpha < 255)), low
    if "transparency" not in image.info:
        return 0, 255
    key = image.info["transparency"]
    if image.mode == "P":
        if isinstance(key, int):
            entries = {key: 0}
        elif isinstance(key, bytes):
            entries = {index: value for index, value in enumerate(key) if value < 255}
        else:
            return 0, 255
        counts = image.histogram()  # one count per palette index
        used = {i: a for i, a in entries.items() if i < len(counts) and counts[i]}
        if not used:
            return 0, 255
        return sum(counts[i] for i in used), min(used.values())
    depth = data[24] if len(data) > 24 else 8
    if isinstance(key, int) and image.mode in ("1", "L", "I;16", "I;16B", "I"):
        if image.mode == "L" and depth < 8:
            key *= 255 // ((1 << depth) - 1)
        samples = np.asarray(image.convert("L") if image.mode == "1" else image)
        clear = samples == key
    elif isinstance(key, tuple) and image.mode == "RGB" and len(key) == 3:
        rgb = _png_samples(data) if depth == 16 else np.asarray(image)
        if rgb is None or rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
            return 0, 255
        if rgb.shape[2] == 4:  # imagecodecs applied the tRNS chunk: its alpha band says
            clear = rgb[..., 3] < np.iinfo(rgb.dtype).max
        else:
            clear = np.all(rgb == np.asarray(key, dtype=rgb.dtype), axis=-1)
    else:
        return 0, 255
    return int(np.count_nonzero(clear)), 0 if clear.any() else 255


def _pillow_error(exc: BaseException, kind: str, data: bytes) -> PreprocessingError:
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        return ImageTooLargeError(error_text(exc))
    if _looks_truncated(exc):
        return TruncatedDataError(
            f"the {kind.upper()} data ends early ({error_text(exc)}); received {len(data)} bytes"
        )
    coding = _unsupported_jpeg_coding(data) if kind == "jpeg" else None
    if coding is not None:
        return UnsupportedJpegError(f"received {coding}, {len(data)} bytes ({error_text(exc)})")
    return InvalidImageError(
        f"the {kind.upper()} data could not be decoded ({error_text(exc)}); "
        f"received {len(data)} bytes"
    )


_JPEG_HEADER_STEPS = 4096  # markers walked looking for the frame header
_JPEG_HEADER_BYTES = 4 * 1024 * 1024  # ... within this many bytes (APPn segments are < 64 KiB each)
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_HIERARCHICAL_SOF = frozenset({0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF})


def _unsupported_jpeg_coding(data: bytes) -> str | None:
    """What makes a JPEG that Pillow could not read one of a coding it does not decode, from
    its first frame header (SOFn: marker, then length, precision P): "a JPEG-LS image", "a
    16-bit lossless JPEG (SOF3)", "a 12-bit JPEG (SOF1)", "a hierarchical JPEG (SOF5)"; else
    ``None`` (an 8-bit baseline, extended or progressive frame, or no frame header found).
    Walks the marker segments from SOI (T.81 B.1.1.4); no decoding. The frame header comes
    before the first scan, after a few tables and application segments: the walk stops after
    :data:`_JPEG_HEADER_STEPS` markers or :data:`_JPEG_HEADER_BYTES` (a file of fill bytes or
    empty markers is not walked to its end)."""
    for marker, segment in _jpeg_segments(data):
        if not _is_frame_header(marker):
            continue
        if not segment:
            return None
        precision = segment[0]
        sof = f"SOF{marker - 0xC0}" if marker != 0xF7 else "SOF55"
        bits = f"{'an' if precision in (8, 11, 18) else 'a'} {precision}-bit"
        if marker == 0xF7:
            return f"{bits} JPEG-LS image ({sof})"
        if marker in _LOSSLESS_SOF:
            return f"{bits} lossless JPEG ({sof})"
        if marker in _HIERARCHICAL_SOF:
            return f"{bits} hierarchical JPEG ({sof})"
        return f"{bits} JPEG ({sof})" if precision != 8 else None
    return None


def _is_frame_header(marker: int) -> bool:
    """A JPEG frame header marker: SOF0-SOF15 (not DHT, JPG, DAC) or JPEG-LS's SOF55."""
    return (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(marker, segment)`` of a JPEG's marker segments from SOI up to its first frame header
    (:func:`_is_frame_header`, yielded last); none after EOI or a scan (SOS). Walks the markers
    (T.81 B.1.1.4), no decoding; fill bytes and markers without a length are passed over.
    Stops after :data:`_JPEG_HEADER_STEPS` markers or :data:`_JPEG_HEADER_BYTES`, so a file of
    fill bytes or empty markers is not walked to its end."""
    offset = 2
    for _step in range(_JPEG_HEADER_STEPS):
        if offset + 4 > min(len(data), _JPEG_HEADER_BYTES) or data[offset] != 0xFF:
            return
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            offset += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or a scan before any frame header
            return
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        yield marker, data[offset + 4 : offset + 2 + length]
        if _is_frame_header(marker):
            return
        offset += 2 + length


# --- helpers ---------------------------------------------------------------------------


COLOUR_SPREAD = 32 / 255
"""A pixel is in colour when its channels differ by more than this share of the range: well
above what JPEG's chroma quantisation leaves on a gray picture saved in colour."""


def colour_fraction(rgb: np.ndarray, bits: int = 8) -> float:
    """The share of pixels of an (H, W, 3+) image whose R, G and B differ by more than
    :data:`COLOUR_SPREAD` of the ``bits``-bit range (0.0 for a gray picture stored as RGB).

    Example:
        >>> colour_fraction(np.dstack([np.full((2, 2), 200, np.uint8)] * 3))
        0.0
    """
    channels = np.asarray(rgb)[..., :3]
    if channels.ndim != 3 or channels.size == 0:
        return 0.0
    if not np.issubdtype(channels.dtype, np.unsignedinteger):
        channels = channels.astype(np.int64)
    # max >= min, so unsigned samples subtract in their own type: no widened copy of a
    # large colour image on the upload path
    spread = channels.max(axis=2) - channels.min(axis=2)
    limit = COLOUR_SPREAD * ((1 << bits) - 1)
    return float(np.count_nonzero(spread > limit)) / float(spread.size)


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """(H, W) -> float32 copy; (H, W, 3+) -> BT.601 luma (exact when R == G == B)."""
    if arr.ndim == 2:
        return arr.astype(np.float32)
    rgb = arr[..., :3]
    red = rgb[..., 0]
    if np.array_equal(red, rgb[..., 1]) and np.array_equal(red, rgb[..., 2]):
        return red.astype(np.float32)
    weights = np.asarray(_LUMA, dtype=np.float32)
    return (rgb.astype(np.float32) @ weights).astype(np.float32, copy=False)


_warnings_lock = threading.Lock()
_warnings_depth = 0
_warnings_context: warnings.catch_warnings[None] | None = None


@contextmanager
def _quiet_warnings() -> Iterator[None]:
    """Ignore warnings while any preprocessing call runs (see the module docstring)."""
    global _warnings_depth, _warnings_context
    with _warnings_lock:
        if _warnings_depth == 0:
            context = warnings.catch_warnings()
            context.__enter__()
            warnings.simplefilter("ignore")
            _warnings_context = context
        _warnings_depth += 1
    try:
        yield
    finally:
        with _warnings_lock:
            _warnings_depth -= 1
            if _warnings_depth == 0 and _warnings_context is not None:
                _warnings_context.__exit__(None, None, None)
                _warnings_context = None


def _call(func: Callable[[], _T], error: type[PreprocessingError], what: str) -> _T:
    try:
        return func()
    except PreprocessingError:
        raise
    except BaseException as exc:  # third-party boundary
        _reraise_fatal(exc)
        raise error(f"{what} ({error_text(exc)})") from exc


def _reraise_fatal(exc: BaseException) -> None:
    """Let interpreter exits through; everything else at a boundary gets translated.

    Rust-based decoders (pylibjpeg-rle, via pyo3) raise ``PanicException``, a
    ``BaseException``, on malformed data, so the boundaries catch ``BaseException``.
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise exc


def _looks_truncated(exc: BaseException) -> bool:
    if isinstance(exc, EOFError):
        return True
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("truncated", "end of file", "unexpected eof", "not enough data", "premature")
    )


def _check_window(window: str | None) -> None:
    if window is not None and window not in WINDOW_PRESETS:
        raise InvalidImageError(
            f"unknown window preset {window!r}; valid presets: {', '.join(WINDOW_PRESETS)}"
        )


def _check_options(window: str | None, max_pixels: int, version: str) -> None:
    _check_window(window)
    _check_max_pixels(max_pixels)
    if version not in SUPPORTED_PREPROCESSING_VERSIONS:
        raise InvalidImageError(
            f"unknown preprocessing version {version!r}; this radlens reproduces "
            f"{', '.join(SUPPORTED_PREPROCESSING_VERSIONS)}"
        )


def _check_bytes(data: Any) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidImageError(
            f"expected the file content as bytes. Received: {type(data).__name__}"
        )
    return bytes(data)


def _check_frame_option(frame: Any) -> None:
    if frame is None:
        return
    if isinstance(frame, bool) or not isinstance(frame, int | np.integer) or frame < 0:
        raise InvalidImageError(
            f"frame must be None or a non-negative integer index. Received {frame!r}"
        )


def _check_frame_index(frame: int, frames: int) -> int:
    if not 0 <= int(frame) < frames:
        raise InvalidImageError(
            f"frame index {frame} is out of range: the file has {frames} frame(s), "
            f"indices 0 to {frames - 1}"
        )
    return int(frame)


def _at_least(version: str, oldest: str) -> bool:
    """True when ``version`` is ``oldest`` or later (versions are whole numbers)."""
    return int(version) >= int(oldest)


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise InvalidImageError(f"max_pixels must be a positive integer. Received {max_pixels!r}")


def _check_size(size: Any) -> tuple[int, int]:
    try:
        height, width = size
    except (TypeError, ValueError):
        raise InvalidImageError(f"size must be (height, width). Received {size!r}") from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise InvalidImageError(
                f"size must be two positive integers (height, width). Received {size!r}"
            )
    if int(height) * int(width) > DEFAULT_MAX_PIXELS:
        raise InvalidImageError(
            f"size {size!r} exceeds {DEFAULT_MAX_PIXELS} pixels; choose a smaller model input"
        )
    return int(height), int(width)


def _int_or(ds: Dataset, keyword: str, default: Any) -> Any:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        return int(value)
    except Exception:  # a malformed element: treat as absent
        return default


def read_instance_number(ds: Dataset) -> int | None:
    """The Instance Number as :attr:`ImageMetadata.instance_number` keeps it."""
    number = _int_or(ds, "InstanceNumber", None)
    return number if isinstance(number, int) and 1 <= number < 2**31 else None


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element: treat as absent
        return None
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00").strip()
    return text or None


def _first_number(value: Any) -> float:
    try:
        return float(value[0]) if not isinstance(value, str | bytes) else float(value)
    except TypeError:
        return float(value)


# A DICOMDIR (the index of a DICOM media export: CD, DVD, USB) has no SOP Class UID in its
# data set, only the Media Storage SOP Class UID of its file meta information
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_DICOMDIR_HINT = (
    "; this is a DICOMDIR, the index of a DICOM media export: send the image files it lists"
)


def _sop_class_uid(ds: Dataset) -> str | None:
    """The data set's SOP Class UID, else its file meta's Media Storage SOP Class UID."""
    meta = getattr(ds, "file_meta", None)
    return _text(ds, "SOPClassUID") or (
        _text(meta, "MediaStorageSOPClassUID") if meta is not None else None
    )


def _sop_class_name(ds: Dataset) -> str | None:
    from pydicom.uid import UID

    uid = _sop_class_uid(ds)
    return UID(uid).name if uid else None


def _ts_label(tsyntax: Any) -> str:
    name = _NEWER_TRANSFER_SYNTAXES.get(str(tsyntax), tsyntax.name)
    return f"{tsyntax} ({name})" if name != str(tsyntax) else str(tsyntax)


def _hex_head(data: bytes, count: int = 16, *, text_shown: bool = False) -> str:
    """A file's first bytes in hex for a refusal, when they are binary (a format's signature
    tells what was sent); a file that starts with text is not quoted: it may be a report or an
    export whose first line names the patient (QA round 31: "5a 5a 50 48 49 4e 41 4d ...")."""
    if not data:
        return "(empty)"
    head = data[:count]
    if not text_shown and all(byte >= 0x20 or byte in b"\t\r\n\x1b" for byte in head):
        return "with text (not shown)"
    return head.hex(" ")


# a bytes literal in an exception's text: pydicom quotes up to 256 bytes of an element whose
# length breaks its VR, which may run on over the next elements (a patient's name: QA round 25)
_BYTES_LITERAL = re.compile(r"(?<![\w])b'(?:[^'\\]|\\.)*'" + "|" + r'(?<![\w])b"(?:[^"\\]|\\.)*"')
# Python's own conversion errors quote the text they could not convert, a header value that
# may be anything (a NumberOfFrames holding an MRN: QA round 31)
_CONVERSION_VALUE = re.compile(
    r"(invalid literal for int\(\) with base \d+|could not convert string to float"
    r"|invalid literal for float\(\)): .*"
)


def error_text(exc: BaseException) -> str:
    """A third-party exception as one short line for a message or a log: its type, its text
    on one line, cut to 160 characters, and any bytes of the file it quotes, or a value a
    number conversion quotes, left out."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = _BYTES_LITERAL.sub("<bytes not shown>", text)
    text = _CONVERSION_VALUE.sub(r"\1: <value not shown>", text)
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {text}"

"""Every expected failure in radlens, typed.

Library code raises these; the CLI turns them into one line and exit status 2, the service
into an RFC 9457 problem document. ``str(error)`` is the one-line message
``"<title>: <detail>"``, where the title says what went wrong and what to do and the detail
quotes what was received.
"""

from __future__ import annotations


class RadlensError(Exception):
    """Base of every expected failure. Subclasses set ``code`` and ``title``."""

    code: str = "radlens-error"
    title: str = "radlens could not complete the request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}"


# --- preprocessing ---------------------------------------------------------------------


class PreprocessingError(RadlensError, ValueError):
    """The bytes could not be turned into a model-ready image."""

    code = "preprocessing-error"
    title = "The image could not be preprocessed"


class NotAnImageError(PreprocessingError):
    code = "not-an-image"
    title = "Not a DICOM, PNG or JPEG file; send one of those"


class UnsupportedJpegError(NotAnImageError):
    """A JPEG of a coding Pillow could not decode (JPEG-LS, 12- or 16-bit, hierarchical, a
    lossless one Pillow's libjpeg refused): as far as the service goes not one of the images
    it reads, so the code, status and DICOM failure reason of :class:`NotAnImageError`; the
    title says what to send."""

    title = (
        "The JPEG's coding cannot be read (JPEG-LS, 12/16-bit or hierarchical JPEG); convert "
        "it to PNG (16-bit gray keeps the depth) or send the DICOM"
    )
    comment = "JPEG coding cannot be read: send a PNG or the DICOM"  # DICOM: 64 chars


class NoPixelDataError(PreprocessingError):
    code = "no-pixel-data"
    title = "The DICOM file has no pixel data; send an image instance, not a report or series"
    comment = "No pixel data: send an image instance"  # a DICOM Error Comment (64 chars)


class UnsupportedTransferSyntaxError(PreprocessingError):
    code = "unsupported-transfer-syntax"
    title = "The DICOM pixel data cannot be decoded; re-encode it (e.g. Explicit VR Little Endian)"
    comment = "Pixel data cannot be decoded: re-encode as Explicit VR LE"

    def __init__(self, detail: str, transfer_syntax: str | None = None) -> None:
        super().__init__(detail)
        self.transfer_syntax = transfer_syntax


class TruncatedDataError(PreprocessingError):
    code = "truncated"
    title = "The file is truncated; send the complete file"


class ImageTooLargeError(PreprocessingError):
    code = "image-too-large"
    title = "The image has too many pixels; send a smaller image or raise the pixel limit"
    comment = "Too many pixels: send a smaller image or raise the limit"


class DeflatedDatasetTooLargeError(ImageTooLargeError):
    """A Deflated Explicit VR Little Endian dataset that inflates beyond the size the pixel
    limit allows (a deflate bomb): refused while counting, before it is inflated in memory."""

    title = (
        "The deflated DICOM dataset inflates to more than the size limit allows; send it "
        "uncompressed or with compressed pixel data, or raise the pixel limit"
    )
    comment = "Deflated data set too large: send it uncompressed"


class EncapsulatedUnderNativeSyntaxError(PreprocessingError):
    """Pixel Data of undefined length (compressed fragments) in a file whose transfer syntax
    is an uncompressed one, or that has no file meta information to name one."""

    code = "transfer-syntax-mismatch"
    title = (
        "The DICOM pixel data is compressed (encapsulated) but the transfer syntax says "
        "uncompressed or is missing; the file's header is wrong: re-export it from the source"
    )
    comment = "Compressed pixel data under an uncompressed syntax: re-export"


class NativeUnderEncapsulatedSyntaxError(PreprocessingError):
    """The reverse: Pixel Data of defined length (uncompressed samples) in a file whose
    transfer syntax is a compressed (encapsulated) one. Decoders then misread the samples as
    fragment items, and dcmtk refuses to read the file (QA round 25: a real CT from Orthanc)."""

    code = "transfer-syntax-mismatch"
    title = (
        "The DICOM pixel data is uncompressed (not encapsulated) but the transfer syntax says "
        "compressed; the file's header is wrong: re-export it from the source"
    )
    comment = "Uncompressed pixel data under a compressed syntax: re-export"


class CodestreamMismatchError(PreprocessingError):
    """The compressed codestream's own header disagrees with the DICOM header (size,
    components, bit depth or resolution levels): refused before its pixels are decoded."""

    code = "codestream-mismatch"
    title = (
        "The compressed pixel data disagrees with the DICOM header (size, samples, bit depth "
        "or resolution levels); re-encode the image or correct its header"
    )
    comment = "Compressed pixels disagree with the header: re-encode the image"


class InvalidImageError(PreprocessingError):
    code = "invalid-image"
    title = "The image is invalid; check its size, pixel values and the options given"
    comment = "Invalid image: check its size, pixel values and header"


class TransparentImageError(InvalidImageError):
    """A PNG with transparent pixels (an alpha channel below 255, or a tRNS chunk that pixels
    use): a viewer shows them as its background, radlens would read the colour stored under
    them, and which background the sender meant is not in the file (models.preprocessing)."""

    title = (
        "The PNG has transparent pixels, which viewers show as their background while the "
        "model would see the colour stored under them; flatten it onto the background you "
        "mean (remove the alpha channel) and send it again"
    )


class DeepColourPngError(InvalidImageError):
    """A 16-bit colour or gray-with-alpha PNG whose samples need fewer than 15 bits: read at
    8 bits (each sample's high byte), as Pillow reads such a PNG, it would keep at most 64
    gray levels in the bottom quarter of the range (models.preprocessing)."""

    title = (
        "The 16-bit colour or gray-with-alpha PNG holds data that reading it at 8 bits would "
        "lose (radlens reads a gray PNG at 16 bits, and a colour one too for a model of "
        "preprocessing version 6 on); save it as a 16-bit gray PNG without alpha and send that"
    )


class MalformedDicomError(InvalidImageError):
    """pydicom could not read the data set: an element's length or value breaks the encoding
    (a length past the end of a sequence, nesting deeper than any real file ...)."""

    code = "malformed-dicom"
    title = (
        "The DICOM data set could not be read (an element's length or encoding is broken); "
        "re-export the file from its source"
    )
    comment = "DICOM data set cannot be read: re-export it"


class InvalidRescaleError(InvalidImageError):
    """The header's Rescale Slope or Intercept is present but empty or not a number ("1,0"),
    so the values (HU for a CT) cannot be known, or its modality rescale (or Modality LUT)
    turns an image into values that are not finite, or flattens one whose stored pixels have
    contrast into a single value: a blank image the model must not be shown. (A file window
    that does so is passed over for min-max instead: the pixels themselves are sound.)"""

    code = "invalid-rescale"
    title = (
        "The DICOM header's Rescale Slope/Intercept (or Modality LUT) is empty, not a number, "
        "or makes the image blank or not finite; correct them in the header, or send the "
        "original image"
    )
    comment = "Rescale/Modality LUT empty, not a number or blanks image: fix it"


class IncompletePixelHeaderError(InvalidImageError):
    """An Image Pixel attribute that decoding needs (Photometric Interpretation, Bits Stored,
    Rows ...) is absent or empty: the pixels cannot be read as the file describes them."""

    code = "incomplete-pixel-header"
    title = (
        "The DICOM header lacks an attribute needed to read the pixels; re-export the image "
        "with its Image Pixel attributes, or add the one named"
    )

    def __init__(self, detail: str, missing: list[str] | None = None) -> None:
        super().__init__(detail)
        self.missing = list(missing or [])
        # a short reason for a DICOM Error Comment (64 characters): the first attribute
        self.comment = f"Pixel header lacks {self.missing[0] if self.missing else 'an attribute'}"


class BlankImageError(InvalidImageError):
    """Every stored pixel of the image (every frame read of a multi-frame instance) has one
    value: there is nothing to read, and a score on it would mean nothing. Raised by the
    service and by training's loader, not by preprocessing (``ImageMetadata.blank``): a blank
    frame among others is left out of its instance's aggregate, and training skips the file
    (or the npz array)."""

    code = "blank-image"
    title = (
        "The image is blank (every pixel has the same value), so there is nothing to read; "
        "send the image with its pixels (an export or an anonymiser may have blanked them)"
    )
    comment = "Blank image: every pixel has the same value"  # a DICOM Error Comment


# --- model store -----------------------------------------------------------------------


class ModelStoreError(RadlensError):
    code = "model-store-error"
    title = "The model store could not provide the model"


class ModelStoreWriteError(ModelStoreError, OSError):
    """Writing to the store failed (disk full, read-only, permission denied); whatever the
    write had begun was removed, so the store holds what it held before. Still an OSError,
    as the failure it reports."""

    title = (
        "The model store could not be written, and is as it was; free space on its file "
        "system or fix its permissions, then run the command again"
    )


class ModelNotFoundError(ModelStoreError):
    code = "model-not-found"
    title = "No such model in the store; train one or check RADLENS_MODEL / the store path"


class ModelUnfinishedError(ModelStoreError):
    """The version's training run has not finished attaching its parts (OOD detector,
    converted runtime), or stopped before it did (``models.registry``, ``.unfinished``)."""

    code = "model-unfinished"
    title = (
        "The model version is unfinished: serve another version, wait for its training run, "
        "or finish it by hand (radlens models finish)"
    )


class ModelCorruptError(ModelStoreError):
    code = "model-corrupt"
    title = "The stored model is corrupt; re-export it from training"


class ModelIncompatibleError(ModelStoreError):
    code = "model-incompatible"
    title = "The stored model was built for another preprocessing version; retrain or re-export it"


class ModelTamperedError(ModelCorruptError):
    """The manifest differs from its seal (an edited field, or a signature that fails)."""

    code = "model-tampered"
    title = (
        "The stored model's manifest was changed after it was sealed; restore it, or seal a "
        "deliberate edit with `radlens models seal NAME:VERSION`"
    )


class ModelUnsignedError(ModelTamperedError):
    """A signing key is set, and the manifest's seal carries no signature."""

    code = "model-unsigned"
    title = (
        "The stored model's manifest is not signed, and RADLENS_MODEL_SIGNING_KEY is set: it "
        "was saved or re-sealed without the key; check its fields, then sign it with "
        "`radlens models seal NAME:VERSION` run with the key set"
    )


class ModelUnsealedError(ModelCorruptError):
    """The manifest has no integrity seal (written by a radlens older than the seal)."""

    code = "model-unsealed"
    title = (
        "The stored model's manifest has no integrity seal (saved by an older radlens); check "
        "its fields, then run `radlens models seal NAME:VERSION`"
    )


class RuntimeUnavailableError(RadlensError):
    """The configured inference runtime or precision cannot serve this model here."""

    code = "runtime-unavailable"
    title = (
        "The configured inference runtime cannot be used; install it, convert the model "
        "(`radlens models convert`), or set RADLENS_RUNTIME=auto / RADLENS_PRECISION=auto"
    )


class ConfigurationError(RadlensError, ValueError):
    """A bad option, config file value or data set layout, found before work starts."""

    code = "bad-configuration"
    title = "Invalid configuration"

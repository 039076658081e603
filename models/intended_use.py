"""What a model was trained on, and whether an upload's DICOM metadata contradicts it.

Pure: no I/O, no Keras. Body-part, modality and view-position values in the wild are messy
(free text, lower case, vendor junk such as ``"JPEG 2000 Compressed Image"``), so each value is
normalised through a synonym table; anything unrecognised or empty is "not known" (``None``)
and never causes a refusal on its own.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

_BODY_PART_SYNONYMS: dict[str, str] = {
    "CHEST": "CHEST",
    "THORAX": "CHEST",
    "LUNG": "CHEST",
    "LUNGS": "CHEST",
    "TORAX": "CHEST",
    "THORAX PA": "CHEST",
    "CHEST PA": "CHEST",
    "CHEST AP": "CHEST",
    "CXR": "CHEST",
    "HIP": "HIP",
    "HIPS": "HIP",
    "PELVIS": "PELVIS",
    "BECKEN": "PELVIS",
    "HEAD": "HEAD",
    "BRAIN": "HEAD",
    "SKULL": "HEAD",
    "ABDOMEN": "ABDOMEN",
    "ABD": "ABDOMEN",
    "KNEE": "KNEE",
    "HAND": "HAND",
    "FOOT": "FOOT",
    "SPINE": "SPINE",
    "CSPINE": "SPINE",
    "LSPINE": "SPINE",
    "TSPINE": "SPINE",
    "BREAST": "BREAST",
    "SHOULDER": "SHOULDER",
    "EXTREMITY": "EXTREMITY",
}

_ANNEX_L_REGIONS: dict[str, str] = {
    # PS3.16 Annex L's Body Part Examined defined terms for regions that hold none of the
    # chest, each its own canonical value (or the one above it names): a wrist or elbow CR is
    # refused by a chest model as a hip CR is, where it used to be "not known" and was left
    # to the image score (QA round 70). Terms whose region takes in the chest or part of it
    # (CHESTABDOMEN, NECKCHEST, WHOLEBODY, RIB, STERNUM, CLAVICLE, SCAPULA, HEART,
    # MEDIASTINUM, TRACHEA, ...) stay not known: a chest film may well carry them.
    **{
        term: term
        for term in (
            "WRIST",
            "ELBOW",
            "ANKLE",
            "ARM",
            "FOREARM",
            "UPPERARM",
            "HUMERUS",
            "ULNA",
            "LEG",
            "LOWERLEG",
            "THIGH",
            "FEMUR",
            "TIBIA",
            "FIBULA",
            "PATELLA",
            "CALCANEUS",
            "FINGER",
            "THUMB",
            "TOE",
            "NECK",
            "ABDOMENPELVIS",
            "SACRUM",
            "COCCYX",
            "KIDNEY",
            "LIVER",
            "PANCREAS",
            "SPLEEN",
            "STOMACH",
            "COLON",
            "BLADDER",
            "PROSTATE",
            "UTERUS",
            "OVARY",
            "TESTIS",
        )
    },
    "HANDWRIST": "WRIST",
    "FACE": "HEAD",
    "JAW": "HEAD",
    "MANDIBLE": "HEAD",
    "MAXILLA": "HEAD",
    "ORBIT": "HEAD",
    "SINUS": "HEAD",
    "TMJ": "HEAD",
    "IAC": "HEAD",
    "HEADNECK": "HEAD",
    "LSSPINE": "SPINE",
    "SSPINE": "SPINE",
}
_BODY_PART_SYNONYMS.update(_ANNEX_L_REGIONS)

BODY_PART_TERMS = 2
"""The body-part vocabulary a manifest's intended use was surveyed with (its
``body_part_terms``; absent: 1, before :data:`_ANNEX_L_REGIONS` was known). A model that
states no body part and whose training headers held values the old vocabulary did not know
does not refuse the Annex L terms: they may be what its training images said
(:func:`from_record`)."""

# Modality (0008,0060) values: the defined terms of DICOM's CID 33 (as pydicom ships them),
# each its own canonical value, plus spellings seen in the wild. A term the standard defines
# says what the instance is, so a model stating CR/DX refuses a slide-microscopy (SM) or
# segmentation (SEG) instance as it refuses CT. Not known (never refused on their own): "OT"
# (other: secondary captures of any picture carry it) and "PA" (photoacoustic in CID 33, but
# in the wild far more likely a view position written into the wrong tag), retired and vendor
# terms.
_MODALITY_SPELLINGS = {"DR": "DX", "MRI": "MR", "PET": "PT"}
_MODALITY_NOT_KNOWN = frozenset({"OT", "PA"})


@cache
def _modality_synonyms() -> dict[str, str]:
    from pydicom.sr.codedict import codes

    terms = {getattr(codes.CID33, name).value for name in codes.CID33.dir()}
    return {
        **{term: term for term in sorted(terms - _MODALITY_NOT_KNOWN)},
        **_MODALITY_SPELLINGS,
    }


# ViewPosition (0018,5101) -> projection family. The gate compares families: a lateral is a
# different picture of the chest than a frontal one, whereas PA vs AP is a difference of
# degree (magnification, patient position) that the image-level OOD score covers; a model
# trained on PA films only therefore accepts AP ones but refuses a lateral. DICOM's defined
# terms (AP, PA, LL, RL, RLD, LLD, RLO, LLO) plus free-text spellings seen in the wild.
_VIEW_POSITION_SYNONYMS: dict[str, str] = {
    "PA": "FRONTAL",
    "AP": "FRONTAL",
    "POSTERO ANTERIOR": "FRONTAL",
    "POSTEROANTERIOR": "FRONTAL",
    "ANTERO POSTERIOR": "FRONTAL",
    "ANTEROPOSTERIOR": "FRONTAL",
    "AP SUPINE": "FRONTAL",
    "AP ERECT": "FRONTAL",
    "PA ERECT": "FRONTAL",
    "FRONTAL": "FRONTAL",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
    "LEFT LATERAL": "LATERAL",
    "RIGHT LATERAL": "LATERAL",
    "L LAT": "LATERAL",
    "R LAT": "LATERAL",
    "LLD": "DECUBITUS",
    "RLD": "DECUBITUS",
    "DECUBITUS": "DECUBITUS",
    "LLO": "OBLIQUE",
    "RLO": "OBLIQUE",
    "OBLIQUE": "OBLIQUE",
    "OBL": "OBLIQUE",
    "CC": "CC",
    "MLO": "MLO",
}


# Storage SOP classes that hold no image a classifier could read; any of these contradicts
# every image intended use. By prefix (a class and its dotted sub-classes): PS3.4 Annex B.5.
_NON_IMAGE_SOP_CLASSES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.9", "a waveform"),
    ("1.2.840.10008.5.1.4.1.1.11", "a presentation state"),
    ("1.2.840.10008.5.1.4.1.1.66", "a segmentation, registration, fiducials or raw data"),
    ("1.2.840.10008.5.1.4.1.1.67", "a real world value mapping"),
    ("1.2.840.10008.5.1.4.1.1.68", "a surface scan"),
    ("1.2.840.10008.5.1.4.1.1.88", "a structured report"),
    ("1.2.840.10008.5.1.4.1.1.104", "an encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.481", "an RT dose, structure set, plan or record"),
    ("1.2.840.10008.5.1.4.34", "an RT (second generation) object"),
)
# ... except the RT images (portal or simulator radiographs): RT Image (481.1), Enhanced RT
# Image (481.23) and Enhanced Continuous RT Image (481.24)
_IMAGE_SOP_CLASSES_UNDER_THOSE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.481.1",
        "1.2.840.10008.5.1.4.1.1.481.23",
        "1.2.840.10008.5.1.4.1.1.481.24",
    }
)


def non_image_kind(sop_class_uid: object) -> str | None:
    """What a storage SOP class that holds no image a classifier could read holds (an RT
    dose, a segmentation, a structured report, ...; see the table above), or None for an
    image storage class or an unknown one. The gate refuses such an instance for every model
    that states its intended use, and training leaves it out."""
    uid = str(sop_class_uid or "").strip()
    if uid in _IMAGE_SOP_CLASSES_UNDER_THOSE:
        return None
    for prefix, kind in _NON_IMAGE_SOP_CLASSES:
        if uid == prefix or uid.startswith(prefix + "."):
            return kind
    return None


def holds_no_image(sop_class_uid: object) -> bool:
    """Whether a storage SOP class holds no image a classifier could read
    (:func:`non_image_kind` names what it holds)."""
    return non_image_kind(sop_class_uid) is not None


# Image storage SOP classes -> the Modality (0008,0060) their IOD defines (PS3.3 Annex A), by
# pydicom's keyword (the UIDs come from pydicom's UID dictionary, not typed here). When an
# instance's Modality says nothing the gate knows (absent, empty, "OT", junk), the modality its
# SOP class implies stands in for it, so a CT with Modality deleted is refused by a chest CR/DX
# model as a CT is (QA round 14). A Modality the gate knows decides, even against the SOP class:
# it is the acquiring device's word, and converters re-wrap images in another IOD (a DX stored
# as CR, a radiograph as CT for a PACS that takes nothing else). Secondary captures (a capture
# of any picture), parametric maps and other classes not listed imply nothing.
_SOP_CLASS_MODALITIES: dict[str, tuple[str, ...]] = {
    "CR": ("ComputedRadiographyImageStorage",),
    "DX": ("DigitalXRayImageStorageForPresentation", "DigitalXRayImageStorageForProcessing"),
    "MG": (
        "DigitalMammographyXRayImageStorageForPresentation",
        "DigitalMammographyXRayImageStorageForProcessing",
        "BreastTomosynthesisImageStorage",
        "BreastProjectionXRayImageStorageForPresentation",
        "BreastProjectionXRayImageStorageForProcessing",
    ),
    "IO": (
        "DigitalIntraOralXRayImageStorageForPresentation",
        "DigitalIntraOralXRayImageStorageForProcessing",
    ),
    "CT": (
        "CTImageStorage",
        "EnhancedCTImageStorage",
        "LegacyConvertedEnhancedCTImageStorage",
    ),
    "MR": (
        "MRImageStorage",
        "EnhancedMRImageStorage",
        "EnhancedMRColorImageStorage",
        "LegacyConvertedEnhancedMRImageStorage",
        "MRSpectroscopyStorage",
    ),
    "US": (
        "UltrasoundImageStorage",
        "UltrasoundImageStorageRetired",
        "UltrasoundMultiFrameImageStorage",
        "UltrasoundMultiFrameImageStorageRetired",
        "EnhancedUSVolumeStorage",
    ),
    "XA": (
        "XRayAngiographicImageStorage",
        "XRayAngiographicBiPlaneImageStorage",
        "EnhancedXAImageStorage",
        "XRay3DAngiographicImageStorage",
    ),
    "RF": ("XRayRadiofluoroscopicImageStorage", "EnhancedXRFImageStorage"),
    "NM": ("NuclearMedicineImageStorage", "NuclearMedicineImageStorageRetired"),
    "PT": (
        "PositronEmissionTomographyImageStorage",
        "EnhancedPETImageStorage",
        "LegacyConvertedEnhancedPETImageStorage",
    ),
    "RTIMAGE": (
        "RTImageStorage",
        "EnhancedRTImageStorage",
        "EnhancedContinuousRTImageStorage",
    ),
    "SM": ("VLWholeSlideMicroscopyImageStorage", "VLSlideCoordinatesMicroscopicImageStorage"),
    "GM": ("VLMicroscopicImageStorage", "VideoMicroscopicImageStorage"),
    "ES": ("VLEndoscopicImageStorage", "VideoEndoscopicImageStorage"),
    "XC": ("VLPhotographicImageStorage", "VideoPhotographicImageStorage"),
    "DMS": ("DermoscopicPhotographyImageStorage",),
    "CFM": ("ConfocalMicroscopyImageStorage", "ConfocalMicroscopyTiledPyramidalImageStorage"),
    "OP": (
        "OphthalmicPhotography8BitImageStorage",
        "OphthalmicPhotography16BitImageStorage",
        "WideFieldOphthalmicPhotographyStereographicProjectionImageStorage",
        "WideFieldOphthalmicPhotography3DCoordinatesImageStorage",
    ),
    "OPT": ("OphthalmicTomographyImageStorage",),
    "OPTENF": ("OphthalmicOpticalCoherenceTomographyEnFaceImageStorage",),
    "OPTBSV": ("OphthalmicOpticalCoherenceTomographyBscanVolumeAnalysisStorage",),
    "IVOCT": (
        "IntravascularOpticalCoherenceTomographyImageStorageForPresentation",
        "IntravascularOpticalCoherenceTomographyImageStorageForProcessing",
    ),
}


@cache
def sop_class_modalities() -> dict[str, str]:
    """SOP Class UID -> the modality an image storage class implies (the table above).

    Raises:
        KeyError: a keyword pydicom's UID dictionary does not hold (a typo in the table).
    """
    from pydicom._uid_dict import UID_dictionary  # retired classes are not in pydicom.uid

    by_keyword = {entry[4]: uid for uid, entry in UID_dictionary.items()}
    return {
        by_keyword[keyword]: modality
        for modality, keywords in _SOP_CLASS_MODALITIES.items()
        for keyword in keywords
    }


def implied_modality(sop_class_uid: object) -> str | None:
    """The modality an image storage SOP class implies (CT Image Storage -> ``"CT"``), or None
    for a class that implies none (secondary capture, non-image and unknown classes)."""
    return sop_class_modalities().get(str(sop_class_uid or "").strip())


def sop_class_label(sop_class_uid: object) -> str:
    """``SOP Class 'CT Image Storage' (1.2.840.10008.5.1.4.1.1.2)``, as messages name it."""
    from pydicom.uid import UID

    uid = str(sop_class_uid or "").strip()
    name = UID(uid).name
    return f"SOP Class {name!r} ({uid})" if name and name != uid else f"SOP Class {uid}"


def dataset_metadata(ds: Any, keywords: Iterable[str]) -> dict[str, str | None]:
    """``{keyword: value}`` of a pydicom dataset as the gate and training's survey read it:
    text, ``""`` for an empty attribute, None for an absent one (a refusal says which); an
    absent ``SOPClassUID`` is taken from the file meta's MediaStorageSOPClassUID."""
    found: dict[str, str | None] = {
        keyword: str(ds[keyword].value or "") if keyword in ds else None for keyword in keywords
    }
    if "SOPClassUID" in found and not found["SOPClassUID"]:
        meta = getattr(ds, "file_meta", None)
        found["SOPClassUID"] = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta else ""
    return found


def modality_of(metadata: Mapping[str, object]) -> tuple[str | None, str | None]:
    """(canonical modality, the SOP class it was taken from or None) of one instance's
    metadata: the Modality when the gate knows its value, else the modality the SOP class
    implies (:func:`implied_modality`), else ``(None, None)`` ("not known")."""
    written = normalise_modality(metadata.get("Modality"))
    if written is not None:
        return written, None
    sop_class = metadata.get("SOPClassUID")
    implied = implied_modality(sop_class)
    return (implied, sop_class_label(sop_class)) if implied is not None else (None, None)


def _clean(value: object) -> str:
    text = "" if value is None else str(value)
    return re.sub(r"[\s_\-]+", " ", text).strip().upper()


def normalise_body_part(value: object) -> str | None:
    """Canonical body part for a BodyPartExamined value, or None when not known."""
    text = _clean(value)
    if not text:
        return None
    if text in _BODY_PART_SYNONYMS:
        return _BODY_PART_SYNONYMS[text]
    squashed = text.replace(" ", "")
    if squashed in _BODY_PART_SYNONYMS:
        return _BODY_PART_SYNONYMS[squashed]
    return None


def _is_annex_l_region(value: object) -> bool:
    text = _clean(value)
    return text in _ANNEX_L_REGIONS or text.replace(" ", "") in _ANNEX_L_REGIONS


def normalise_view_position(value: object) -> str | None:
    """Projection family (FRONTAL, LATERAL, DECUBITUS, OBLIQUE, CC, MLO) of a ViewPosition
    value, or None when not known (empty, junk, vendor free text)."""
    text = _clean(value)
    if not text:
        return None
    return _VIEW_POSITION_SYNONYMS.get(text) or _VIEW_POSITION_SYNONYMS.get(text.replace(" ", ""))


def normalise_modality(value: object) -> str | None:
    """Canonical modality for a Modality value, or None when not known."""
    text = _clean(value).replace(" ", "")
    return _modality_synonyms().get(text)


@dataclass(frozen=True)
class IntendedUse:
    """Accepted values per attribute; an empty tuple means "no constraint"."""

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    view_positions: tuple[str, ...] = ()  # projection families (normalise_view_position)
    # surveyed before the Annex L terms were known, with unknown body parts in training: those
    # terms are not refused (from_record)
    annex_l_not_known: bool = False

    @property
    def empty(self) -> bool:
        """True when nothing is stated, so no metadata gate applies."""
        return not (self.modalities or self.body_parts or self.view_positions)


@dataclass(frozen=True)
class Violation:
    """One attribute whose known value the model does not accept.

    ``implied_by`` names the SOP class a Modality value was taken from when the instance's
    own Modality said nothing (``written``: what it held, None when absent).
    """

    attribute: str
    value: str
    accepted: tuple[str, ...]
    implied_by: str | None = None
    written: str | None = None
    said: str | None = None  # the whole sentence, when the attribute is not a DICOM one

    def __str__(self) -> str:
        if self.said is not None:
            return self.said
        accepts = f"(model accepts {', '.join(self.accepted)})"
        if self.implied_by is None:
            return f"{self.attribute} {self.value!r} {accepts}"
        if self.written is None:
            said = f"{self.attribute} is absent"
        elif not self.written.strip():
            said = f"{self.attribute} is empty"
        else:
            said = f"{self.attribute} {self.written!r} is not a known modality"
        return (
            f"{said}; {self.implied_by} implies {self.value!r}, which this model is not for "
            f"{accepts}"
        )


def violations(metadata: Mapping[str, object], intended_use: IntendedUse) -> list[Violation]:
    """Attributes of ``metadata`` whose normalised, known value contradicts ``intended_use``.

    Unknown or junk values are not violations. A Modality that says nothing known (absent,
    empty, ``OT``, junk) gives way to the modality the ``SOPClassUID`` implies
    (:func:`modality_of`); the violation then names the SOP class.
    """
    found: list[Violation] = []
    sop_class = str(metadata.get("SOPClassUID") or "")
    if not intended_use.empty and holds_no_image(sop_class):
        found.append(Violation("SOPClassUID", sop_class, ("image storage SOP classes",)))
    modality, implied_by = modality_of(metadata)
    if intended_use.modalities and modality is not None and modality not in intended_use.modalities:
        accepted = tuple(intended_use.modalities)
        raw = metadata.get("Modality")
        if implied_by is None:
            found.append(Violation("Modality", str(raw), accepted))
        else:  # the Modality said nothing: the SOP class's modality stands in
            written = None if raw is None else str(raw)
            found.append(Violation("Modality", modality, accepted, implied_by, written))
    checks = (
        ("BodyPartExamined", normalise_body_part, intended_use.body_parts),
        ("ViewPosition", normalise_view_position, intended_use.view_positions),
    )
    for attribute, normalise, accepted_values in checks:
        if not accepted_values:
            continue
        value = normalise(metadata.get(attribute))
        if (
            attribute == "BodyPartExamined"
            and intended_use.annex_l_not_known
            and _is_annex_l_region(metadata.get(attribute))
        ):
            continue
        if value is not None and value not in accepted_values:
            found.append(Violation(attribute, str(metadata.get(attribute)), accepted_values))
    return found


# --- colour ----------------------------------------------------------------------------------

# Modalities whose images are gray (their Pixel Data is MONOCHROME; a colour map is a display
# choice): radiography, mammography, fluoroscopy, angiography, intra-oral and panoramic X-ray,
# bone densitometry, CT, MR, PET and nuclear medicine
GRAY_MODALITIES = frozenset(
    {"CR", "DX", "MG", "RF", "XA", "IO", "PX", "RG", "BMD", "CT", "MR", "PT", "NM"}
)
COLOUR_SHARE = 0.05
"""More than this share of an image's pixels in colour makes it a colour picture."""


def colour_violation(colour: float | None, intended_use: IntendedUse) -> Violation | None:
    """The ``colour`` violation of a decoded image, or None: an image with more than
    :data:`COLOUR_SHARE` of its pixels in colour (``ImageMetadata.colour_fraction``: channels
    more than 32/255 apart -- an overlay, a photograph, a Doppler frame, a coloured figure)
    contradicts an intended use whose modalities are all gray (:data:`GRAY_MODALITIES`).

    The service's gate refuses (or flags) such an upload (app/gate.py ``check_colour``) and
    training leaves such an image out (training/data/intended.py ``drop_colour``): one rule,
    so a model is never trained on what it will refuse.

    Args:
        colour: the image's colour fraction; None for a gray image (no colour channels).
        intended_use: the model's; one that states no modality, or any modality whose
            images may be in colour (US, XC, ...), accepts colour.

    Example:
        >>> colour_violation(0.4, IntendedUse(modalities=("CR",))).attribute
        'colour'
        >>> colour_violation(0.4, IntendedUse(modalities=("CR", "US"))) is None
        True
    """
    accepted = intended_use.modalities
    if colour is None or colour <= COLOUR_SHARE:
        return None
    if not accepted or not set(accepted) <= GRAY_MODALITIES:
        return None
    share = f"{colour:.0%} of the pixels"
    return Violation(
        "colour",
        share,
        tuple(accepted),
        said=(
            f"the image is in colour ({share} have channels more than 32/255 apart: an "
            f"overlay, photograph or colour figure); this model is for {', '.join(accepted)}"
            " images, which are gray: send the image itself (DICOM, or a gray export)"
        ),
    )


# --- the manifest's record --------------------------------------------------------------------

NOT_STATED = "not stated"
"""What a manifest without an ``intended_use`` field (saved before it existed) states."""

SURVEYED_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("modalities", "Modality"),
    ("body_parts", "BodyPartExamined"),
    ("view_positions", "ViewPosition"),
    ("photometric_interpretations", "PhotometricInterpretation"),
)
"""Record key -> the DICOM keyword whose values training counts."""


def check_stated(
    modalities: Sequence[str], body_parts: Sequence[str], view_positions: Sequence[str] = ()
) -> dict[str, list[str]]:
    """Validate and normalise an explicit intended-use statement (training config).

    Args:
        modalities: e.g. ``["CR", "DX"]`` (synonyms such as ``"DR"`` are accepted).
        body_parts: e.g. ``["CHEST"]`` (synonyms such as ``"thorax"`` are accepted).
        view_positions: e.g. ``["PA", "AP"]`` or ``["FRONTAL"]``: the projection families
            (:func:`normalise_view_position`) the model is for. A model trained on PNG or
            JPEG films has no ViewPosition to survey, so only a statement lets its gate
            refuse a lateral.

    Returns:
        ``{"modalities": [...], "body_parts": [...]}`` in canonical, sorted, unique form,
        with ``"view_positions"`` (families) when some were given.

    Raises:
        ValueError: a value the normaliser does not know (the message quotes it and lists
            the known ones), since a statement that cannot be checked would gate nothing.
    """
    stated: dict[str, list[str]] = {}
    for key, what, values, normalise, known in (
        ("modalities", "modality", modalities, normalise_modality, _modality_synonyms()),
        ("body_parts", "body part", body_parts, normalise_body_part, _BODY_PART_SYNONYMS),
        (
            "view_positions",
            "view position",
            view_positions,
            normalise_view_position,
            _VIEW_POSITION_SYNONYMS,
        ),
    ):
        if key == "view_positions" and not values:
            continue
        canonical = []
        for value in values:
            found = normalise(value)
            if found is None:
                raise ValueError(
                    f"intended use: {value!r} is not a known {what} "
                    f"(known: {', '.join(sorted(set(known.values())))}). Received: {list(values)!r}"
                )
            canonical.append(found)
        stated[key] = sorted(set(canonical))
    return stated


def survey(headers: Iterable[Mapping[str, object]]) -> dict[str, Any]:
    """Count what a training set holds, from each image's metadata.

    Args:
        headers: one mapping per training image with ``format`` (``"dicom"``, ``"png"``,
            ``"jpeg"``, ``"npz"``), ``rows``, ``columns`` and, for DICOM, the keywords of
            :data:`SURVEYED_ATTRIBUTES` and ``SOPClassUID``.

    Returns:
        ``{"images", "formats": {format: n}, "modalities": {value: n}, "body_parts": ...,
        "view_positions": ..., "photometric_interpretations": ..., "rows": [min, max],
        "columns": [min, max]}``. Modality and body part are counted by their normalised
        value, anything unrecognised or empty as ``"unknown"`` (a Modality that says nothing
        is counted as the modality its ``SOPClassUID`` implies, as the gate reads it:
        :func:`modality_of`); view position and
        photometric interpretation as written (upper case), empty as ``"unknown"``.
    """
    counters: dict[str, Counter[str]] = {key: Counter() for key, _ in SURVEYED_ATTRIBUTES}
    formats: Counter[str] = Counter()
    rows: list[int] = []
    columns: list[int] = []
    for header in headers:
        formats[str(header.get("format") or "unknown")] += 1
        for dimension, sink in (("rows", rows), ("columns", columns)):
            value = header.get(dimension)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                sink.append(value)
        if header.get("format") != "dicom":
            continue
        for key, keyword in SURVEYED_ATTRIBUTES:
            raw = header.get(keyword)
            if key == "modalities":  # as the gate reads it: the SOP class stands in
                value = modality_of(header)[0]
            elif key == "body_parts":
                value = normalise_body_part(raw)
            else:
                value = _clean(raw) or None
            counters[key][value or "unknown"] += 1
    record: dict[str, Any] = {
        "images": sum(formats.values()),
        "formats": dict(sorted(formats.items())),
    }
    for key, counter in counters.items():
        record[key] = dict(sorted(counter.items()))
    record["rows"] = [min(rows), max(rows)] if rows else None
    record["columns"] = [min(columns), max(columns)] if columns else None
    return record


def intended_use_record(
    observed: Mapping[str, Any], stated: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """The manifest's ``intended_use`` field: what was stated, what training saw, what the
    metadata gate accepts.

    Per attribute (modality, body part) the gate accepts the stated values when some were
    stated, else the known values seen in training DICOM headers, else anything (an
    empty list: PNG/JPEG/npz training data states nothing about modality or body part).
    View positions: the stated projection families (``stated["view_positions"]``,
    :func:`check_stated`) when some were stated, else the families
    (:func:`normalise_view_position`) of the values training saw, else anything (a training
    set without ViewPosition -- PNG/JPEG films -- or with junk in it gates no view unless
    the statement names one).
    """
    accepts: dict[str, list[str]] = {}
    for key in ("modalities", "body_parts"):
        given = list((stated or {}).get(key) or [])
        seen = sorted(v for v in (observed.get(key) or {}) if v != "unknown")
        accepts[key] = sorted(set(given)) if given else seen
    families = (normalise_view_position(v) for v in (observed.get("view_positions") or {}))
    given_views = list((stated or {}).get("view_positions") or [])
    accepts["view_positions"] = (
        sorted(set(given_views)) if given_views else sorted({f for f in families if f})
    )
    return {
        "stated": {k: sorted(set(v)) for k, v in stated.items()} if stated else None,
        "observed": dict(observed),
        "accepts": accepts,
        "source": "stated" if stated and any(stated.values()) else "training data",
        "body_part_terms": BODY_PART_TERMS,
    }


def from_record(record: Mapping[str, Any] | None) -> IntendedUse:
    """The :class:`IntendedUse` a manifest's ``intended_use`` field gates on.

    ``None`` (a manifest saved before the field existed: "not stated") gives an empty
    intended use, which gates nothing. A record surveyed before :data:`BODY_PART_TERMS` 2,
    stating no body part, whose training headers held body parts then not known, does not
    refuse the Annex L regions known since (a hand model trained on ``HAND`` and ``WRIST``
    films accepted ``HAND`` only, and the wrists it was trained on were "not known").
    """
    if not record:
        return IntendedUse()
    accepts = record.get("accepts") or {}
    observed = record.get("observed") or {}
    surveyed_parts = observed.get("body_parts") or {}
    return IntendedUse(
        modalities=tuple(accepts.get("modalities") or ()),
        body_parts=tuple(accepts.get("body_parts") or ()),
        counts={k: dict(v) for k, v in observed.items() if isinstance(v, dict)},
        view_positions=tuple(accepts.get("view_positions") or ()),
        annex_l_not_known=(
            record.get("body_part_terms") is None
            and not (record.get("stated") or {}).get("body_parts")
            and isinstance(surveyed_parts, dict)
            and bool(surveyed_parts.get("unknown"))
        ),
    )

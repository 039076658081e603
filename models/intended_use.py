"""What a model was trained on, and whether an upload's DICOM metadata contradicts it.

Pure: no I/O, no Keras. Body-part and modality values in the wild are messy (free text,
lower case, vendor junk such as ``"JPEG 2000 Compressed Image"``), so each value is
normalised through a synonym table; anything unrecognised or empty is "not known" (``None``)
and never causes a refusal on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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

_MODALITY_SYNONYMS: dict[str, str] = {
    "CR": "CR",
    "DX": "DX",
    "DR": "DX",
    "RG": "RG",
    "CT": "CT",
    "MR": "MR",
    "MRI": "MR",
    "US": "US",
    "NM": "NM",
    "PT": "PT",
    "PET": "PT",
    "MG": "MG",
    "XA": "XA",
    "RTPLAN": "RTPLAN",
    "RTSTRUCT": "RTSTRUCT",
    "RTDOSE": "RTDOSE",
    "SR": "SR",
}


# Storage SOP classes that hold no image a classifier could read (RT plan/structure set/dose,
# structured reports); any of these contradicts every image intended use.
_NON_IMAGE_SOP_PREFIXES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.88.",  # Structured reports
)


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


def normalise_modality(value: object) -> str | None:
    """Canonical modality for a Modality value, or None when not known."""
    text = _clean(value).replace(" ", "")
    return _MODALITY_SYNONYMS.get(text)


@dataclass(frozen=True)
class IntendedUse:
    """Accepted values per attribute; an empty tuple means "no constraint"."""

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when nothing is stated, so no metadata gate applies."""
        return not (self.modalities or self.body_parts)


@dataclass(frozen=True)
class Violation:
    """One attribute whose known value the model does not accept."""

    attribute: str
    value: str
    accepted: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.attribute} {self.value!r} (model accepts {', '.join(self.accepted)})"


def violations(metadata: dict[str, object], intended_use: IntendedUse) -> list[Violation]:
    """Attributes of ``metadata`` whose normalised, known value contradicts ``intended_use``.

    Unknown or junk values are not violations.
    """
    found: list[Violation] = []
    sop_class = str(metadata.get("SOPClassUID") or "")
    if not intended_use.empty and sop_class.startswith(_NON_IMAGE_SOP_PREFIXES):
        found.append(Violation("SOPClassUID", sop_class, ("image storage SOP classes",)))
    checks = (
        ("Modality", normalise_modality, intended_use.modalities),
        ("BodyPartExamined", normalise_body_part, intended_use.body_parts),
    )
    for attribute, normalise, accepted in checks:
        if not accepted:
            continue
        raw = metadata.get(attribute)
        value = normalise(raw)
        if value is not None and value not in accepted:
            found.append(Violation(attribute, str(raw), tuple(accepted)))
    return found

"""Intended-use gating (issue #17): the metadata gate and the out-of-distribution policy.

Both run in the one ingest path (app/ingest.py ``Ingestor.prepare``), so the HTTP upload,
dicom-sr, STOW-RS and the DIMSE SCP all apply them.

- **Metadata gate** (``RADLENS_GATE``, default ``refuse``): a DICOM upload whose Modality,
  BodyPartExamined or SOP Class contradicts the model's intended use (its manifest's
  ``intended_use.accepts``, models/intended_use.py) is refused with 422
  ``outside-intended-use`` before its pixels are decoded (ViewPosition is gated by
  projection family: a lateral to a model trained on frontal films); ``flag`` predicts and
  records the violations; ``off`` checks nothing. Unknown, empty or junk values are never a
  violation on their own, and a model whose manifest states nothing ("not stated") gates
  nothing. A Modality that says nothing (absent, empty, ``OT``, junk) gives way to the
  modality the SOP class implies (CT Image Storage -> CT; a secondary capture implies none),
  and the refusal says so; a Modality the gate knows decides, even against the SOP class.
- **OOD policy** (``RADLENS_OOD``, default ``flag``): the predictor scores every image with the
  model's stored detector (models/ood.py); above the threshold the image is out of
  distribution: ``refuse`` answers 422 ``out-of-distribution``, ``flag`` stores the
  prediction with ``in_distribution = false``; ``off`` does not score. The default is
  ``flag`` because the threshold is a quantile of the model's own validation scores: about
  1% of in-distribution images lie above it by construction.
- **Colour** (under ``RADLENS_GATE``, after decoding): a model whose intended use accepts only
  modalities whose images are gray (CR, DX, MG, CT, MR, ...: :data:`GRAY_MODALITIES`) refuses
  an image with more than :data:`COLOUR_SHARE` of its pixels in colour
  (``ImageMetadata.colour_fraction``: channels more than 32/255 apart) -- an overlay, a
  photograph, a Doppler or dermatology picture, a coloured figure -- which PNG and JPEG
  uploads carry no metadata to refuse by. A gray radiograph stored as RGB, or as a JPEG with
  chroma noise, has none. Measured on 1,547 real PNG/JPEG files (QA round 23, 6 December
  2026): 27 of 32 other modalities' colour images and all 45 colour overlays above the share,
  and 1 of 215 real chest radiographs (a blue-tinted journal figure).
- **Multi-frame instances**: every predicted frame is scored; the instance is out of
  distribution when its key frame is (the frame its result shows) or when more than
  :data:`OOD_FRAME_FRACTION` of the frames are (:func:`frames_ood`). The frame result keeps
  each frame's score; the prediction's ``ood_score`` is the key frame's.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from radlens.app.errors import AppError
from radlens.models.errors import DeflatedDatasetTooLargeError

# the colour rule (its constants re-exported) lives in models/: training applies it too
from radlens.models.intended_use import COLOUR_SHARE as COLOUR_SHARE
from radlens.models.intended_use import GRAY_MODALITIES as GRAY_MODALITIES
from radlens.models.intended_use import (
    IntendedUse,
    Violation,
    colour_violation,
    dataset_metadata,
    violations,
)
from radlens.models.preprocessing import DEFAULT_MAX_PIXELS

GatePolicy = Literal["refuse", "flag", "off"]

GATED_KEYWORDS = ("Modality", "BodyPartExamined", "SOPClassUID", "ViewPosition")


class OutsideIntendedUseError(AppError):
    """A DICOM upload whose metadata contradicts the model's intended use."""

    code = "outside-intended-use"
    title = (
        "The image is outside the model's intended use (see GET /v1/models); send an image "
        "of what the model was made for"
    )
    status_code = 422

    def __init__(self, found: list[Violation]) -> None:
        self.violations = found
        super().__init__("; ".join(str(v) for v in found))

    @property
    def comment(self) -> str:
        """A short reason for a DICOM Error Comment: names the attribute and value only."""
        first = self.violations[0]
        implied = " (from SOP class)" if first.implied_by else ""
        return f"Outside intended use: {first.attribute} {first.value}{implied}"


class OutOfDistributionError(AppError):
    """An image whose OOD score is above the model's threshold (RADLENS_OOD=refuse)."""

    code = "out-of-distribution"
    title = (
        "The image does not look like the images the model was trained on; send an image of "
        "what the model was made for"
    )
    status_code = 422

    @property
    def comment(self) -> str:
        return "Out of distribution for this model"


def dicom_gate_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any] | None:
    """The gated attributes of a DICOM upload, read up to the pixel data; None when the
    bytes are not a readable DICOM header (preprocessing then says what is wrong).

    Raises:
        DeflatedDatasetTooLargeError: a deflated dataset that inflates beyond what
            ``max_pixels`` allows (models/dicomread.py), refused as preprocessing would.
    """
    from radlens.models.dicomread import read_dicom_bytes

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dicom_bytes(
                data,
                max_pixels=max_pixels,
                stop_before_pixels=True,
                force=True,
                specific_tags=list(GATED_KEYWORDS),
            )
    except DeflatedDatasetTooLargeError:
        raise
    except Exception:  # third-party parser boundary: any failure means "no header to gate"
        return None
    return dataset_gate_header(ds)


def dataset_gate_header(ds: Any) -> dict[str, Any] | None:
    """The gated attributes of a parsed DICOM dataset (as :func:`dicom_gate_header` reads
    them from the bytes): for an upload already parsed for preprocessing
    (models.preprocessing.parse_dicom), so the file is parsed once. None when it states none
    of them."""
    # absent: None, empty: "" (a refusal says which); read as training's survey reads it
    header: dict[str, Any] = dataset_metadata(ds, GATED_KEYWORDS)
    return header if any(header.values()) else None


def check_metadata(
    header: dict[str, Any] | None, intended_use: IntendedUse, policy: GatePolicy
) -> list[Violation]:
    """The violations of ``header`` (refused with ``refuse``, returned with ``flag``)."""
    if policy == "off" or header is None or intended_use.empty:
        return []
    found = violations(header, intended_use)
    if found and policy == "refuse":
        raise OutsideIntendedUseError(found)
    return found


def check_colour(
    colour: float | None, intended_use: IntendedUse, policy: GatePolicy
) -> list[Violation]:
    """A colour picture sent to a model for gray modalities only (see the module's
    docstring; the rule is models.intended_use.colour_violation, which training applies too):
    refused with ``refuse``, returned with ``flag``; [] otherwise."""
    if policy == "off":
        return []
    found = colour_violation(colour, intended_use)
    if found is None:
        return []
    if policy == "refuse":
        raise OutsideIntendedUseError([found])
    return [found]


def violation_records(found: list[Violation]) -> list[dict[str, Any]] | None:
    """JSON for the prediction row (None when nothing was flagged)."""
    if not found:
        return None
    return [
        {
            "attribute": v.attribute,
            "value": v.value,
            "accepted": list(v.accepted),
            **({"implied_by": v.implied_by} if v.implied_by else {}),
        }
        for v in found
    ]


OOD_FRAME_FRACTION = 0.25
"""A multi-frame instance is out of distribution when more than this share of its predicted
frames is, even if its key frame is not. A quarter, not a majority: a frame's false-alarm rate
is about 1% (the detector's threshold), so an in-distribution instance of n >= 4 frames
almost never has a quarter flagged, while an instance where one frame in three is a CT slice or
a blank is not what the model was made for, even when its highest-scoring frame looks fine."""


def frames_ood(scores: list[float | None], key: int, detector: Any) -> dict[str, Any] | None:
    """The OOD part of a multi-frame instance's frame result (None when not scored).

    Args:
        scores: each predicted frame's OOD score, in the frame result's order.
        key: the key frame's position in ``scores``.
        detector: the model's ``models.ood.OodDetector``.

    Returns:
        ``{"ood_scores", "ood_frames": frames above the threshold, "in_distribution"}``.
    """
    if detector is None or any(s is None for s in scores) or not scores:
        return None
    known = [float(s) for s in scores if s is not None]
    flagged = [not detector.in_distribution(s) for s in known]
    out = flagged[key] or sum(flagged) > OOD_FRAME_FRACTION * len(flagged)
    return {"ood_scores": known, "ood_frames": sum(flagged), "in_distribution": not out}

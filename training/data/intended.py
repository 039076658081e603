"""What a training set holds, for the manifest's intended use (models/intended_use.py).

Reads headers only: DICOM up to the pixel data (Modality, BodyPartExamined, ViewPosition,
PhotometricInterpretation, SOPClassUID, Rows, Columns), PNG/JPEG through Pillow's lazy open
(size, turned as the EXIF Orientation says), npz arrays by shape. Nothing patient-identifying
is read into the result. Modality is read as the service's gate reads it: when it says nothing
(absent, empty, ``OT``), the modality the SOP class implies stands in (CT Image Storage -> CT;
``models.intended_use.modality_of``), so a CT without Modality is surveyed as CT.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from radlens.models.intended_use import (
    check_stated,
    colour_violation,
    dataset_metadata,
    from_record,
    intended_use_record,
    survey,
    violations,
)
from radlens.training.data.sources import DataSource, Example, SkippedFile, sniff_format

log = logging.getLogger(__name__)

_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PhotometricInterpretation",
    "SOPClassUID",
)
_NAMED = 5  # training images outside the stated intended use named in the warning


def image_header(source: DataSource, example: Example) -> dict[str, Any]:
    """The surveyed header of one example (``format``, ``rows``, ``columns``, DICOM keywords);
    an unreadable file gives ``{"format": "unreadable"}``."""
    if source.kind == "npz":
        shape = source.raw_array(example).shape
        return {"format": "npz", "rows": int(shape[0]), "columns": int(shape[1])}
    from radlens.training.data.series import split_frame_key

    path = Path(split_frame_key(example.key)[0])  # a frame of a multi-frame file: the file
    try:
        with path.open("rb") as handle:
            kind = sniff_format(handle.read(132))
    except OSError:
        return {"format": "unreadable"}
    if kind in ("png", "jpeg"):
        return _raster_header(path, kind)
    return _dicom_header(path)


def _raster_header(path: Path, kind: str) -> dict[str, Any]:
    from PIL import Image

    from radlens.models.preprocessing import exif_orientation

    try:
        with Image.open(path) as image:
            width, height = image.size
            # as preprocessing turns it (a quarter turn swaps the sides)
            if (exif_orientation(image) or 0) >= 5:
                width, height = height, width
    except Exception:  # Pillow raises many types for a bad file; it is skipped at decode
        return {"format": "unreadable"}
    return {"format": kind, "rows": height, "columns": width}


def _dicom_header(path: Path) -> dict[str, Any]:
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # third-party parser boundary: skipped at decode time anyway
        return {"format": "unreadable"}
    header: dict[str, Any] = {"format": "dicom", **dataset_metadata(ds, _KEYWORDS)}
    for keyword, key in (("Rows", "rows"), ("Columns", "columns")):
        value = ds.get(keyword)
        header[key] = int(value) if isinstance(value, int) else None
    return header


def _headers(source: DataSource, examples: Sequence[Example]) -> Iterator[dict[str, Any]]:
    for example in examples:
        yield image_header(source, example)


def drop_colour(
    source: DataSource,
    *,
    modalities: Sequence[str] = (),
    body_parts: Sequence[str] = (),
) -> tuple[DataSource, list[dict[str, Any]]]:
    """The decoded ``source`` without the colour images the service's gate refuses, each moved
    to ``skipped`` with why, and the surveyed headers of the images kept (in their order, for
    :func:`intended_use_for`).

    The rule is the gate's (models.intended_use.colour_violation): an image with more than 5%
    of its pixels in colour is refused by a model whose intended use accepts only gray
    modalities (CR, DX, CT, MR, ...). The intended use is the one the model will record: the
    statement (``modalities``/``body_parts``) when there is one, else what the headers of the
    whole data set show (every split: :func:`intended_use_for`). A data set of PNG/JPEG only,
    or one holding a colour modality (US, XC, ...), states no gray-only use: nothing is dropped.
    The colour fractions are those :func:`training.data.sources.drop_undecodable` saw (a
    source not decode-checked has none: nothing is dropped).
    """
    headers = list(_headers(source, source.examples))
    if source.colour_checked or not source.colours:
        return replace(source, colour_checked=True), headers
    stated = check_stated(modalities, body_parts) if (modalities or body_parts) else None
    gate = from_record(intended_use_record(survey(headers), stated))
    kept: list[Example] = []
    kept_headers: list[dict[str, Any]] = []
    skipped = list(source.skipped)
    for example, header in zip(source.examples, headers, strict=True):
        found = colour_violation(source.colours.get(example.key), gate)
        if found is None:
            kept.append(example)
            kept_headers.append(header)
            continue
        skipped.append(
            SkippedFile(
                example.key,
                f"in colour ({found.value} have channels more than 32/255 apart), and the "
                f"service refuses a colour image for a model of {', '.join(found.accepted)} "
                "images, which are gray (RADLENS_GATE): if it is a radiograph, convert it to "
                "gray (a MONOCHROME2 DICOM or a gray PNG export); if it is an overlay, a "
                "photograph, a Doppler frame or a colour figure, leave it out",
            )
        )
    return replace(source, examples=kept, skipped=skipped, colour_checked=True), kept_headers


def outside_stated_use(
    examples: Sequence[Example], headers: Sequence[dict[str, Any]], record: dict[str, Any]
) -> list[tuple[str, str]]:
    """(example key, why) of each training image the service's gate would refuse under the
    stated intended use (the gate's own words, e.g. ``Modality is absent; SOP Class 'CT Image
    Storage' (...) implies 'CT', which this model is not for (model accepts CR, DX)``); empty
    when nothing was stated (the survey then is the intended use)."""
    if record.get("stated") is None:
        return []
    gate = from_record(record)
    found = []
    for example, header in zip(examples, headers, strict=True):
        if header.get("format") == "dicom" and (why := violations(header, gate)):
            found.append((example.key, "; ".join(str(v) for v in why)))
    return found


def check_stated_use_is_trained(
    source: DataSource,
    examples: Sequence[Example],
    *,
    modalities: Sequence[str] = (),
    body_parts: Sequence[str] = (),
    view_positions: Sequence[str] = (),
    headers: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]] | None:
    """Refuse, before training, a stated intended use that every training image is outside;
    return the headers read for it (``None`` when nothing was stated; ``headers``: the
    examples' headers when read already, in their order).

    Such a model would be refused by the service's gate for every image like the ones it
    learnt from (--intended-modalities CR,DX on a folder of MR, a typo in a body part): hours
    of training for a model nothing can be sent to. Some images outside it train all the
    same, with the warning :func:`intended_use_for` logs. PNG/JPEG carry no header to judge,
    so one of them among the training images is never "outside".

    Raises:
        ConfigurationError: every training image is outside the statement (names the first
            few, in the gate's words, and what to do).
    """
    if not (modalities or body_parts or view_positions) or not examples:
        return None
    from radlens.models.errors import ConfigurationError

    if headers is None or len(headers) != len(examples):  # not read, or for other examples
        headers = list(_headers(source, examples))
    headers = list(headers)
    record = intended_use_record(
        survey(headers), check_stated(modalities, body_parts, view_positions)
    )
    outside = outside_stated_use(examples, headers, record)
    if len(outside) < len(examples):
        return headers
    stated = ", ".join(
        f"{name} {'/'.join(values)}"
        for name, values in (
            ("modalities", modalities),
            ("body parts", body_parts),
            ("view positions", view_positions),
        )
        if values
    )
    shown = "; ".join(f"{key}: {why}" for key, why in outside[:2])
    raise ConfigurationError(
        f"the stated intended use ({stated}) excludes all {len(examples)} training images "
        f"(e.g. {shown}): the service would refuse every image like them. State what this "
        "data is (--intended-modalities / --intended-body-parts / --intended-view-positions, "
        "or intended_modalities / intended_body_parts / intended_view_positions in the "
        "config), or leave it unstated: what the headers show is then the intended use"
    )


def intended_use_for(
    source: DataSource,
    examples: Sequence[Example],
    *,
    modalities: Sequence[str] = (),
    body_parts: Sequence[str] = (),
    view_positions: Sequence[str] = (),
    headers: Sequence[dict[str, Any]] | None = None,
    held_out: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The manifest's ``intended_use`` for a model trained on ``examples``: the statement
    (``modalities``/``body_parts`` from the config; none: not stated) and the survey
    (``headers``: the examples' headers when read already, in their order).

    ``held_out``: the headers of the validation and test images. What the gate accepts when
    nothing was stated is then read from every split, so no image the run scores is one the
    served model refuses for its modality, body part or view, and the intended use does not
    depend on which split a rare modality's image fell in; ``observed`` still counts the
    training images."""
    if headers is None or len(headers) != len(examples):  # not read, or for other examples
        headers = list(_headers(source, examples))
    headers = list(headers)
    observed = survey(headers)
    stated = (
        check_stated(modalities, body_parts, view_positions)
        if (modalities or body_parts or view_positions)
        else None
    )
    record = intended_use_record(survey([*headers, *held_out]) if held_out else observed, stated)
    record["observed"] = dict(observed)
    outside = outside_stated_use(examples, headers, record)
    if outside:  # trained on all the same; the service would refuse these
        log.warning(
            "%d training image(s) are outside the stated intended use, which the service "
            "refuses: %s",
            len(outside),
            "; ".join(f"{key}: {why}" for key, why in outside[:_NAMED])
            + (f"; ... and {len(outside) - _NAMED} more" if len(outside) > _NAMED else ""),
        )
    log.info(
        "intended use (%s): modalities %s, body parts %s, views %s; training images %s",
        record["source"],
        record["accepts"]["modalities"] or "any",
        record["accepts"]["body_parts"] or "any",
        record["accepts"]["view_positions"] or "any",
        observed["formats"],
    )
    return record

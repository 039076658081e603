"""DICOM outputs for a PACS, built with highdicom: a Structured Report and a Secondary Capture.

Both go into the *source study* (same Study Instance UID), in a derived series per source
series, kind and model version (:func:`output_series_uid`: every SR of a CT's slices in one
series, every SC in another), numbered with the source's Instance Number, and reference the
source instance by SOP Class UID + SOP Instance UID (and, of a multi-frame source, the frames
analysed: :func:`analysed_frames` for the SR, :func:`explained_frame` for the SC). highdicom
checks the IODs while it constructs them; a failure there is a bug in radlens, not a bad
request.

Patient and study identification. The service stores no patient identifiers, so an output
built later from the database (``GET /v1/predictions/{id}/dicom/...``) carries the Type 2
patient and study attributes (Patient's Name, Patient ID, Birth Date, Sex, Accession
Number, Study ID, Study Date/Time, Referring Physician) *empty*: a PACS files it by Study
Instance UID. When a site wants the outputs filed under the patient, it sets
``RADLENS_DICOM_COPY_PATIENT=true`` and asks for the output in the same request that
carries the source (``POST /v1/predictions/dicom-sr``): those attributes are then copied
from the source dataset in memory, never stored. Without that setting they are empty on
every path.

SOP Instance UIDs are derived from the prediction id (``2.25.<uuid5>``, :func:`output_sop_uid`),
so fetching an output twice gives the same SOP Instance UID (a PACS treats a re-send as the
same object); the patient-bearing variant gets a different one from the patient-free one,
since their contents differ. Series Instance UIDs derive from the source's Series Instance
UID, the model version and the kind, whoever builds the object.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

import numpy as np

from radlens.app.errors import AppError
from radlens.models.preprocessing import read_instance_number

# highdicom logs at INFO each module it copies "from dataset <SOP Instance UID>": the source's
# real UIDs, in the log of a site that pseudonymises them before storing (QA round 14). Its
# warnings and errors still reach the log (those that quote a value are handled where the
# output is built: _identified).
logging.getLogger("highdicom").setLevel(logging.WARNING)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from radlens.app.series import ModelResult
    from radlens.app.tables import Prediction

CODING_SCHEME = "99RADLENS"  # private (local) coding scheme for radlens class labels and scores
MANUFACTURER = "radlens"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "radlens AI result (research use, not for clinical use)"
SC_SERIES_DESCRIPTION = "radlens Grad-CAM overlay (research use, not for clinical use)"
# the series descriptions of a model whose manifest says validated_for_clinical_use (the
# builders' ``validated``, app/clinical.py: the model that made the prediction decides)
SR_SERIES_DESCRIPTION_VALIDATED = "radlens AI result"
SC_SERIES_DESCRIPTION_VALIDATED = "radlens Grad-CAM overlay"
DICOM_MEDIA_TYPE = "application/dicom"
# said in every output's own content too (SR Algorithm Parameters, SC Image Comments): a series
# description is what a PACS lists, not what a reader of one object necessarily sees
NOT_FOR_CLINICAL_USE = "Research use only, not for clinical use."
NOT_VALID = "NOT A VALID RESULT"

# Copied from the source only when the site allows it (RADLENS_DICOM_COPY_PATIENT=true).
PATIENT_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
)
STUDY_ATTRIBUTES = (
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# Type 2 attributes written empty when nothing is copied.
_EMPTY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    *STUDY_ATTRIBUTES,
)
# https://dicom.nema.org/medical/dicom/current/output/chtml/part16/chapter_D.html: SNOMED CT
_IMAGING_PROCEDURE = ("363679005", "SCT", "Imaging")
_UID_NAMESPACE = uuid.UUID("5b0e6f5e-3c1c-4a9a-9d55-7a6c0d6c2a11")
_OFFSET = re.compile(r"[+-]\d{4}")


class DicomSourceRequiredError(AppError):
    code = "dicom-source-required"
    title = "DICOM outputs need a DICOM source; post the DICOM instance instead of a PNG/JPEG"
    status_code = 409


class DicomSourceIncompleteError(AppError):
    code = "dicom-source-incomplete"
    title = (
        "The DICOM instance lacks a UID its outputs must reference; send the instance as the "
        "modality or PACS exported it, with Study, Series, SOP Instance and SOP Class UIDs"
    )
    status_code = 422


class StoredSourceIncompleteError(DicomSourceIncompleteError):
    """A stored prediction whose instance lacked a UID (or predates migration 0002, which
    began recording the SOP Class UID): 409, the prediction's state, not the request."""

    title = (
        "The prediction's DICOM source lacks a UID its outputs must reference; post the "
        "instance with Study, Series, SOP Instance and SOP Class UIDs"
    )
    status_code = 409


class DicomOutputError(AppError):
    code = "dicom-output-failed"
    title = "The DICOM output could not be built; please report this with the prediction id"
    status_code = 500


@dataclass(frozen=True)
class SourceRef:
    """What an output needs from its source: UIDs, modality and (only if allowed) patient data."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    # patient + study attributes: keyword -> the source's data element, copied as it is
    identification: dict[str, Any] = field(default_factory=dict)
    # The source's Burned In Annotation ("YES"/"NO"); None = unknown (not stored with a
    # prediction), which a Secondary Capture of its pixels must declare as YES.
    burned_in_annotation: str | None = None
    # the source's Specific Character Set, copied with the identification it encodes
    character_set: Any = None
    # the source's Instance Number (ImageMetadata.instance_number; None: unknown): the
    # outputs' own, so a series' SRs and SCs sort as their sources
    instance_number: int | None = None
    # the source's Timezone Offset From UTC ("+0100"), read with its identification: the zone
    # of the study date and time copied from it, so the output's own times are given in it
    timezone_offset: str | None = None

    @property
    def with_patient(self) -> bool:
        return bool(self.identification)


SOURCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
"""What an output references its source by, in this order."""


def missing_uids(uids: Sequence[object]) -> str:
    """The names of the empty ones among ``uids`` (:data:`SOURCE_UIDS` order), comma-joined."""
    return ", ".join(name for name, uid in zip(SOURCE_UIDS, uids, strict=True) if not uid)


def source_from_prediction(prediction: Prediction) -> SourceRef:
    """The stored source reference of a prediction; no patient data (none is stored)."""
    uids = (
        prediction.study_instance_uid,
        prediction.series_instance_uid,
        prediction.sop_instance_uid,
        prediction.sop_class_uid,
    )
    if prediction.input_format != "dicom":
        raise DicomSourceRequiredError(
            f"prediction {prediction.id} was made on a {prediction.input_format.upper()} upload"
        )
    if not all(uids):
        lacking = missing_uids(uids)
        raise StoredSourceIncompleteError(
            f"prediction {prediction.id}'s source instance had no {lacking}"
            + (
                " (or the prediction was stored before radlens recorded SOP Class UIDs)"
                if lacking == "SOPClassUID"
                else ""
            )
        )
    study, series, sop, sop_class = (str(u) for u in uids)
    return SourceRef(
        study,
        series,
        sop,
        sop_class,
        prediction.modality,
        burned_in_annotation=prediction.burned_in_annotation,  # stored since 0013
        instance_number=prediction.instance_number,  # stored since 0015
    )


def source_from_dataset(ds: Dataset, *, copy_patient: bool) -> SourceRef:
    """The source reference of a dataset in memory; patient/study identification only when
    ``copy_patient`` (the site setting) allows it."""
    values = {}
    for keyword in SOURCE_UIDS:
        value = ds.get(keyword)
        if not value:
            raise DicomSourceIncompleteError(f"the uploaded DICOM instance has no {keyword}")
        values[keyword] = str(value)
    identification: dict[str, Any] = {}
    timezone_offset = None
    if copy_patient:
        for keyword in (*PATIENT_ATTRIBUTES, *STUDY_ATTRIBUTES):
            if keyword in ds:
                identification[keyword] = copy.deepcopy(ds[keyword])
        timezone_offset = _offset_text(ds.get("TimezoneOffsetFromUTC"))
    return SourceRef(
        values["StudyInstanceUID"],
        values["SeriesInstanceUID"],
        values["SOPInstanceUID"],
        values["SOPClassUID"],
        str(ds.get("Modality")) if ds.get("Modality") else None,
        identification,
        _burned_in_annotation(ds),
        ds.get("SpecificCharacterSet") if identification else None,
        read_instance_number(ds),
        timezone_offset if identification else None,
    )


def source_dataset(source: SourceRef) -> Dataset:
    """The dataset :func:`source_from_dataset` reads ``source`` back from (with
    ``copy_patient=True``): its UIDs, Modality, Instance Number, Burned In Annotation and,
    when it holds them, its patient and study identification with their character set and
    timezone (app/outbox.py keeps a deferred SR's source so)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.StudyInstanceUID = source.study_instance_uid
    ds.SeriesInstanceUID = source.series_instance_uid
    ds.SOPInstanceUID = source.sop_instance_uid
    ds.SOPClassUID = source.sop_class_uid
    if source.modality:
        ds.Modality = source.modality
    if source.burned_in_annotation:
        ds.BurnedInAnnotation = source.burned_in_annotation
    if source.instance_number is not None:
        ds.InstanceNumber = source.instance_number
    if source.identification:
        if source.character_set:
            ds.SpecificCharacterSet = source.character_set
        if source.timezone_offset:
            ds.TimezoneOffsetFromUTC = source.timezone_offset
        for element in source.identification.values():
            ds[element.tag] = element
    return ds


OUTPUT_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage (build_sr, build_series_sr)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage (build_sc)
)
"""The SOP classes of the objects this module builds."""


def is_radlens_output(ds: Dataset) -> bool:
    """Whether ``ds`` is an SR or Secondary Capture this module built: manufacturer
    ``radlens`` and the series description or number of an output.

    Once the outbox has put them into the source study, a PACS that forwards the study (a
    routing rule, "Send to") sends them back: predicting on a Grad-CAM overlay made a new
    overlay of it, sent back in turn, one more generation each time (QA round 30)."""
    if str(ds.get("Manufacturer", "") or "").strip() != MANUFACTURER:
        return False
    description = str(ds.get("SeriesDescription", "") or "").strip()
    number = str(ds.get("SeriesNumber", "") or "").strip()
    return description in (
        SR_SERIES_DESCRIPTION,
        SC_SERIES_DESCRIPTION,
        SR_SERIES_DESCRIPTION_VALIDATED,
        SC_SERIES_DESCRIPTION_VALIDATED,
    ) or number in (
        str(SR_SERIES_NUMBER),
        str(SC_SERIES_NUMBER),
    )


def series_description(kind: str, *, validated: bool) -> str:
    """The Series Description of an output of ``kind`` ("sr" or "sc"): it says research use,
    not for clinical use, unless the model that made the prediction is ``validated``."""
    if kind == "sr":
        return SR_SERIES_DESCRIPTION_VALIDATED if validated else SR_SERIES_DESCRIPTION
    return SC_SERIES_DESCRIPTION_VALIDATED if validated else SC_SERIES_DESCRIPTION


def _burned_in_annotation(ds: Dataset) -> str | None:
    value = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    return value if value in ("YES", "NO") else None


def output_uid(prediction_id: uuid.UUID, kind: str, *, with_patient: bool) -> str:
    """A stable UID for one output of one prediction (``2.25.<decimal uuid5>``, <= 64 chars)."""
    name = f"{prediction_id}:{kind}:{'patient' if with_patient else 'anonymous'}"
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


# An output's series has been its source series' (output_series_uid) since migration 0015;
# before, each output had a series of its own. A SOP Instance UID names one object, so a
# regrouped output has a new one: a PACS that holds an output sent before the upgrade receives
# the regrouped one as another object, rather than a known UID in another series.
OUTPUT_GROUPING = "grouped"


def output_sop_uid(prediction_id: uuid.UUID, kind: str, *, with_patient: bool) -> str:
    """The SOP Instance UID of a prediction's SR (``kind`` "sr") or Secondary Capture ("sc")."""
    return output_uid(prediction_id, f"{kind}:{OUTPUT_GROUPING}", with_patient=with_patient)


def output_series_uid(
    source_series_uid: str, model_name: str, model_version: int, kind: str
) -> str:
    """The Series Instance UID of one kind of output (``"sr"``, ``"sc"``) of one model version
    about one source series (``2.25.<decimal uuid5>``): every prediction of that series by that
    model version puts its SR (and the series' own SR, app/routes/series.py) in one series and
    its Secondary Capture in another, as a PACS expects of a derived series, where one series
    per prediction made a 300-slice CT 600 new series. The same whichever way the output is
    made (send-back, WADO, the prediction's own routes), as it derives from the source's UID."""
    name = f"output-series:{source_series_uid}:{model_name}:{model_version}:{kind}"
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _placement(prediction: Prediction, source: SourceRef, kind: str) -> dict[str, Any]:
    """Where a prediction's SR (``kind`` "sr") or SC ("sc") goes, as highdicom's arguments: the
    output series of its source series and model version, its own SOP Instance UID, and its
    source's Instance Number (1 when unknown), so the outputs sort as the source series."""
    return {
        "series_instance_uid": output_series_uid(
            source.series_instance_uid, prediction.model_name, prediction.model_version, kind
        ),
        "series_number": SR_SERIES_NUMBER if kind == "sr" else SC_SERIES_NUMBER,
        "sop_instance_uid": output_sop_uid(prediction.id, kind, with_patient=source.with_patient),
        "instance_number": source.instance_number or 1,
    }


def _reference_dataset(source: SourceRef) -> Dataset:
    """The evidence dataset highdicom copies the patient and study modules from: UIDs and
    modality, every Type 2 patient and study attribute empty. The patient's own values go in
    after highdicom has built the output (:func:`_identified`)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.StudyInstanceUID = source.study_instance_uid
    ds.SeriesInstanceUID = source.series_instance_uid
    ds.SOPInstanceUID = source.sop_instance_uid
    ds.SOPClassUID = source.sop_class_uid
    ds.Modality = source.modality or "OT"
    for keyword in _EMPTY_TYPE2:
        setattr(ds, keyword, None)
    return ds


# highdicom copies the patient and study modules of an evidence dataset by the IOD of its SOP
# class, and maps only the classes of the current standard: a retired one (Ultrasound Image
# Storage 1.2.840.10008.5.1.4.1.1.6, still sent by old modalities) raised KeyError, a 500 after
# the prediction was committed. The reference dataset holds the same attributes whatever its
# class, so such an output is built with a stand-in class and then references the real one.
_STAND_IN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


def _with_evidence(sources: Sequence[SourceRef], build: Any) -> Any:
    """``build(evidence datasets)``; on highdicom's KeyError for a SOP class it does not map,
    built again from stand-in classes, whose references are then given back their class."""
    try:
        return build([_reference_dataset(s) for s in sources])
    except KeyError:
        pass
    stand_ins = [
        _reference_dataset(dataclasses.replace(s, sop_class_uid=_STAND_IN_SOP_CLASS))
        for s in sources
    ]
    output = build(stand_ins)
    real = {s.sop_instance_uid: s.sop_class_uid for s in sources}
    _restore_classes(output, real)
    return output


def _restore_classes(ds: Any, real: dict[str, str]) -> None:
    """Each reference to one of ``real``'s instances (in any nested sequence) that names the
    stand-in class names the instance's own class again."""
    for element in ds:
        if element.VR != "SQ":
            continue
        for item in element.value:
            instance = str(item.get("ReferencedSOPInstanceUID", ""))
            if instance in real and item.get("ReferencedSOPClassUID") == _STAND_IN_SOP_CLASS:
                item.ReferencedSOPClassUID = real[instance]
            _restore_classes(item, real)


def _identified(output: Any, source: SourceRef) -> Any:
    """``output`` with the source's patient and study attributes, when the site copies them,
    and the source's Specific Character Set, so that a name in Japanese or Greek reaches the
    PACS as it left the modality (written without it, each such character became '?').

    Set after highdicom has built the output, not handed to it, and as the source's own data
    elements rather than values: highdicom checks a person name, and pydicom a value set by
    keyword, by issuing a warning that quotes the value (a one-component name, a birth date
    not written as YYYYMMDD), and a warning goes to the server's log.
    """
    if source.identification:
        if source.character_set:
            output.SpecificCharacterSet = source.character_set
        for element in source.identification.values():
            output[element.tag] = element
    return output


def _offset_text(value: object) -> str | None:
    """A Timezone Offset From UTC as DICOM writes it (``+0100``, ``-0500``), else None."""
    text = str(value or "").strip()
    if _OFFSET.fullmatch(text) and int(text[1:3]) <= 14 and int(text[3:]) < 60:
        return text
    return None


def _zone(offset: str) -> tzinfo:
    minutes = int(offset[1:3]) * 60 + int(offset[3:])
    return timezone(timedelta(minutes=-minutes if offset[0] == "-" else minutes))


def _stamp(output: Any, when: datetime | None, source: SourceRef | None = None) -> Any:
    """Content Date/Time, Instance Creation Date/Time (an SC's Date/Time of Secondary Capture,
    the contributing equipment's Contribution DateTime too): ``when`` (the prediction's stored
    time), and the zone they are in named by Timezone Offset From UTC (PS3.3 C.12.1.1.8: it
    applies to every DA and TM of the instance).

    highdicom writes the wall clock of the building process, in its TZ and with no offset, so
    a Berlin replica and a UTC one gave the same SOP Instance UID two different times, each
    download another, and a PACS could not tell the zone. Now it is UTC ("+0000") and the
    same on every replica and download; when the source's study date and time were copied
    (RADLENS_DICOM_COPY_PATIENT), they are in the source's zone, so the output's times are
    given in the source's offset, or, when the source named none, as the local time of this
    host without an offset (the convention of the copied study time: the site's own clock).
    """
    when = when or datetime.now(UTC)  # an unsaved prediction: now
    copied_time = source is not None and any(
        source.identification.get(k) is not None and source.identification[k].value
        for k in ("StudyDate", "StudyTime")
    )
    offset: str | None = "+0000"
    if source is not None and source.timezone_offset is not None:
        offset = source.timezone_offset
        moment = when.astimezone(_zone(offset))
    elif copied_time:
        offset = None
        moment = when.astimezone()  # this host's zone, DST as it was at that instant
    else:
        moment = when.astimezone(UTC)
    day, clock = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")
    output.InstanceCreationDate = output.ContentDate = day
    output.InstanceCreationTime = output.ContentTime = clock
    if "DateOfSecondaryCapture" in output:  # an SC's (highdicom: now, local)
        output.DateOfSecondaryCapture, output.TimeOfSecondaryCapture = day, clock
    for item in output.get("ContributingEquipmentSequence", []):  # highdicom's: now, local
        if "ContributionDateTime" in item:
            item.ContributionDateTime = day + clock + (offset or "")
    if offset is not None:
        output.TimezoneOffsetFromUTC = offset
    elif "TimezoneOffsetFromUTC" in output:
        del output.TimezoneOffsetFromUTC
    return output


def _to_bytes(ds: Any) -> bytes:
    if "SpecificCharacterSet" not in ds and _holds_non_ascii(ds):
        # a class or finding name in another script (or an accent, a dash) written under the
        # default repertoire became '?' (pydicom: "Failed to encode value"); UTF-8 carries it
        ds.SpecificCharacterSet = "ISO_IR 192"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _holds_non_ascii(ds: Any) -> bool:
    """Whether any text value of ``ds`` (nested sequences included) is not ASCII."""
    for element in ds:
        if element.VR == "SQ":
            if any(_holds_non_ascii(item) for item in element.value):
                return True
            continue
        values = element.value if element.VM > 1 else [element.value]
        for value in values:
            if isinstance(value, str) and not value.isascii():
                return True
    return False


def _source_image(source: SourceRef, frames: list[int] | None) -> Any:
    """A measurement group's source image (TID 1500 "Source of Measurement"): the source
    instance, and the frames analysed when they are not all of a multi-frame source's
    (:func:`analysed_frames`), as Referenced Frame Number of its Referenced SOP Sequence."""
    import highdicom as hd

    return hd.sr.SourceImageForMeasurementGroup(
        source.sop_class_uid, source.sop_instance_uid, referenced_frame_numbers=frames
    )


def _code(value: str, meaning: str) -> Any:
    import highdicom as hd

    # Code Value is SH (16 chars) for short codes; longer labels use the UC Long Code Value
    return hd.sr.CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=meaning[:64])


def _gate_evaluations(prediction: Prediction) -> list[Any]:
    """The intended-use gate's flags (app/gate.py) as qualitative evaluations: the image's
    distribution verdict when scored, and "outside intended use" when the gate flagged it."""
    import highdicom as hd

    found = []
    if prediction.in_distribution is not None:
        value = (
            _code("in-distribution", "Like the model's training images")
            if prediction.in_distribution
            else _code("out-of-distrib", "Out of distribution for this model")
        )
        found.append(
            hd.sr.QualitativeEvaluation(name=_code("ood", "Distribution check"), value=value)
        )
    for violation in prediction.intended_use_violations or []:
        found.append(
            hd.sr.QualitativeEvaluation(
                name=_code("intended-use", "Intended use check"),
                value=_code(
                    "outside-use",
                    f"Outside intended use: {violation['attribute']} {violation['value']}",
                ),
            )
        )
    return found


def invalid_reasons(prediction: Any) -> list[str]:
    """Why a prediction's label is not a valid result for its image, as /ui marks it (QA round
    73): "out of distribution" (the OOD check flagged it) and "outside intended use (<attribute>
    <value>, ...)" (the intended-use gate flagged it). Empty when neither did: an image the
    check did not score is not called invalid here (nor valid)."""
    reasons = []
    if getattr(prediction, "in_distribution", None) is False:
        reasons.append("out of distribution")
    violations = getattr(prediction, "intended_use_violations", None) or []
    if violations:
        named = ", ".join(
            f"{v.get('attribute', '?')} {v.get('value', '?')}".strip() for v in violations
        )
        reasons.append(f"outside intended use ({named})")
    return reasons


def _not_valid_text(label: str, reasons: Sequence[str], what: str) -> str:
    """The sentence an invalid result's SR and SC tags carry (``what``: what else of it not to
    read, e.g. ``" or its scores"``)."""
    return (
        f"{NOT_VALID} ({'; '.join(reasons)}): do not read the label '{label}'{what} as a "
        "result for this image; the model gives every image a label, a normal one included."
    )


def _not_valid_evaluation(meaning: str) -> Any:
    """The SR's qualitative evaluation "Result validity" = not valid (``meaning``: why)."""
    import highdicom as hd

    return hd.sr.QualitativeEvaluation(
        name=_code("validity", "Result validity"), value=_code("not-valid", meaning)
    )


def _printed(score: float, threshold: float) -> tuple[str, str]:
    """A score and its threshold with 4 to 8 decimals, as many as tell them apart (QA 73)."""
    for digits in range(4, 9):
        shown, at = f"{score:.{digits}f}", f"{threshold:.{digits}f}"
        if shown != at:
            break
    return shown, at


def _binary_classes(prediction: Any) -> tuple[str, str] | None:
    """(negative, positive) class of a binary single-label prediction, else None.

    Two scores alone do not tell: a multi-label model with two findings has two as well, each
    with its own threshold, and its label ("Effusion", "No Finding") is not decided by one
    class's score. A single-label model ends in a softmax (its two scores sum to 1) and labels
    an image with its positive class exactly when that score >= the threshold."""
    scores = prediction.scores or {}
    if prediction.threshold is None or len(scores) != 2:
        return None
    negative, positive = list(scores)  # stored in class order; class_names[1] decides
    values = [float(v) for v in scores.values()]
    decided = positive if values[1] >= float(prediction.threshold) else negative
    if abs(sum(values) - 1.0) > 1e-3 or prediction.label != decided:
        return None
    return negative, positive


def _decision_parameters(prediction: Prediction) -> list[str]:
    """A binary prediction's decision rule as Algorithm Parameters text, so a reader of the SR
    sees which class's score was compared with which threshold (the scores alone, "normal
    0.5001, abnormal 0.4999" with Finding abnormal, read as a contradiction; QA round 73).
    Describes the stored decision; decides nothing."""
    classes = _binary_classes(prediction)
    if classes is None or prediction.threshold is None:
        return []
    positive = classes[1]
    point = getattr(prediction, "operating_point", None)
    return [
        f"Decision: {positive} when its score >= {float(prediction.threshold):.8g}"
        + (f" (operating point {point})" if point else "")
    ]


def build_sr(
    prediction: Prediction,
    source: SourceRef,
    findings: Sequence[Any] = (),
    *,
    validated: bool = False,
) -> bytes:
    """A Comprehensive 3D SR (TID 1500 Measurement Report) stating the prediction.

    Content: the finding (the predicted label as a ``99RADLENS`` code) as a qualitative
    evaluation, one numeric measurement per class score (UCUM unit "1", no unit), the
    algorithm (model name and version; the group's also its parameter ``VOI: <voi>``, how the
    image's window was chosen, when stored: migration 0018) and the source image (SOP Class +
    Instance UID, and for a multi-frame source the frames the scores come from,
    :func:`analysed_frames`).
    A multi-label prediction (``findings``: its stored prediction_findings rows or decided
    values, each with name/finding, score, threshold, positive) adds one measurement group
    per finding (:func:`_finding_groups`).

    ``validated``: the manifest of the model that made the prediction says
    ``validated_for_clinical_use`` (app/clinical.py). Unless it does, the group's Algorithm
    Parameters end with "Research use only, not for clinical use." and the Series Description
    says so (:func:`series_description`).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    try:
        algorithm = hd.sr.AlgorithmIdentification(
            name=prediction.model_name, version=str(prediction.model_version)
        )
        voi = getattr(prediction, "voi", None)  # numbers and fixed words (app/ingest.py)
        parameters = [f"VOI: {voi}"] if voi else []
        parameters += _decision_parameters(prediction)
        reasons = invalid_reasons(prediction)
        if reasons:
            parameters.append(_not_valid_text(prediction.label, reasons, " or its scores"))
        if not validated:
            parameters.append(NOT_FOR_CLINICAL_USE)
        group_algorithm = (
            hd.sr.AlgorithmIdentification(
                name=prediction.model_name,
                version=str(prediction.model_version),
                parameters=parameters,
            )
            if parameters
            else algorithm
        )
        measurements = [
            hd.sr.Measurement(
                name=_code(f"score:{name}"[:16], f"Model score for {name}"),
                value=float(score),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            )
            for name, score in prediction.scores.items()
        ]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=output_uid(prediction.id, "tracking", with_patient=False),
                identifier=f"radlens prediction {prediction.id}",
            ),
            algorithm_id=group_algorithm,
            source_images=[_source_image(source, analysed_frames(prediction))],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=codes.DCM.Finding,
                    value=_code(prediction.label[:16], prediction.label),
                ),
                # next to the Finding, so it is not read without it (the gate's reasons follow)
                *(
                    [_not_valid_evaluation("Not a valid result: the Finding is not a result")]
                    if reasons
                    else []
                ),
                *_gate_evaluations(prediction),
            ],
            measurements=measurements,
        )
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=output_uid(prediction.id, "device", with_patient=False),
                name=f"radlens {prediction.model_name}",
                manufacturer_name=MANUFACTURER,
                model_name=f"{prediction.model_name}:{prediction.model_version}",
            ),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=hd.sr.CodedConcept(*_IMAGING_PROCEDURE),
            imaging_measurements=[
                group,
                *_finding_groups(prediction, source, algorithm, findings),
            ],
        )
        sr = _with_evidence(
            [source],
            lambda evidence: hd.sr.Comprehensive3DSR(
                evidence=evidence,
                content=report[0],
                **_placement(prediction, source, "sr"),
                manufacturer=MANUFACTURER,
                manufacturer_model_name=f"{prediction.model_name}:{prediction.model_version}",
                series_description=series_description("sr", validated=validated),
                is_complete=True,
            ),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomOutputError(
            f"highdicom refused the SR for prediction {prediction.id}: {exc}"
        ) from exc
    return _to_bytes(_stamp(_identified(sr, source), prediction.created_at, source))


def _finding_group(
    finding: Any,
    *,
    tracking: tuple[str, str],
    sources: Sequence[SourceRef],
    algorithm: Any,
    score_code: tuple[str, str],
    frames: Sequence[list[int] | None] | None = None,
) -> Any:
    """One TID 1501 group for one finding: Finding = the finding (a ``99RADLENS`` code), its
    presence (SCT Present/Absent: score >= its threshold), its score (``score_code``: value
    and meaning) and threshold as measurements, ``sources`` as its source images (``frames``:
    each one's analysed frames, :func:`analysed_frames`); ``tracking``: the group's tracking
    UID and identifier."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    name = str(getattr(finding, "finding", None) or finding.name)
    code = _code(name[:16], name)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking[0], identifier=tracking[1][:64]),
        finding_type=code,
        algorithm_id=algorithm,
        source_images=[
            _source_image(s, f)
            for s, f in zip(sources, frames or [None] * len(sources), strict=True)
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=code, value=codes.SCT.Present if finding.positive else codes.SCT.Absent
            )
        ],
        measurements=[
            hd.sr.Measurement(
                name=_code(*score_code),
                value=float(finding.score),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(
                name=codes.DCM.ThresholdValue,
                value=float(finding.threshold),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            ),
        ],
    )


def _finding_groups(
    prediction: Prediction, source: SourceRef, algorithm: Any, findings: Sequence[Any]
) -> list[Any]:
    """One group per finding of a multi-label prediction (:func:`_finding_group`), each
    referencing the prediction's source image."""
    groups = []
    for finding in findings:
        name = str(getattr(finding, "finding", None) or finding.name)
        tracking = (
            output_uid(prediction.id, f"finding:{name}", with_patient=False),
            f"radlens prediction {prediction.id} finding {name}",
        )
        score_code = (f"score:{name}"[:16], f"Model score for {name}")
        groups.append(
            _finding_group(
                finding,
                tracking=tracking,
                sources=[source],
                algorithm=algorithm,
                score_code=score_code,
                frames=[analysed_frames(prediction)],
            )
        )
    return groups


def _series_finding_groups(
    result: ModelResult,
    sources: list[SourceRef],
    aggregation: str,
    sop_uid: str,
    frames: list[list[int] | None],
) -> list[Any]:
    """A multi-label series result: one group per finding as an instance SR has
    (:func:`_finding_group`), with the finding's aggregated score, referencing the series' key
    instances, with its aggregation and decision rule as Algorithm Parameters; none for a
    single-label model."""
    import highdicom as hd

    groups = []
    for finding in result.findings or ():
        tracking = (
            output_uid(
                uuid.uuid5(_UID_NAMESPACE, f"{sop_uid}:{finding.name}"),
                "finding",
                with_patient=False,
            ),
            f"radlens series finding {finding.name}",
        )
        score_code = (
            f"series:{finding.name}"[:16],
            f"Series {aggregation} score for {finding.name}",
        )
        source = _THRESHOLD_SOURCES.get(finding.threshold_source, "")
        decided = hd.sr.AlgorithmIdentification(
            name=result.model_name,
            version=str(result.model_version),
            parameters=[
                _series_score_text(result, aggregation, finding.name),
                f"Decision: {finding.name} present when its series score >= "
                f"{float(finding.threshold):.8g}" + (f" ({source})" if source else ""),
            ],
        )
        groups.append(
            _finding_group(
                finding,
                tracking=tracking,
                sources=sources,
                algorithm=decided,
                score_code=score_code,
                frames=frames,
            )
        )
    return groups


_THRESHOLD_SOURCES = {
    "series": "the series threshold the model's training chose on validation series for this "
    "aggregation",
    "model": "the threshold its instances were decided at",
}


def _series_score_text(result: ModelResult, aggregation: str, name: str) -> str:
    """How the series score for ``name`` came from its instances' scores."""
    count = result.instance_count
    of = f"the {count} instance score{'s' if count != 1 else ''} for {name}"
    if aggregation == "max":
        how = f"the highest of {of}"
    elif aggregation == "mean_top_k":
        # key_instances are the k highest (all of them when there are fewer)
        how = f"the mean of the {len(result.key_instances)} highest of {of}"
    elif aggregation == "noisy_or":
        how = f"noisy-OR, 1 - product of (1 - score), over {of}"
    else:
        how = f"{aggregation} of {of}"
    return f"Series score: {how} (RADLENS_SERIES_AGGREGATION {aggregation})"


def _series_parameters(result: ModelResult, aggregation: str) -> list[str]:
    """A series SR's Algorithm Parameters: how the instances' scores were aggregated, the rule
    and threshold that decided the series' label, and whether the instances were decided at
    different thresholds, as an instance SR states its decision rule (QA rounds 73, 77)."""
    lines = [_series_score_text(result, aggregation, result.class_name)]
    source = _THRESHOLD_SOURCES.get(str(result.threshold_source), "")
    if result.findings:
        lines.append(
            "Decision: each finding is positive when its series score >= its own threshold "
            "(its group's Threshold Value and Algorithm Parameters); the label is the positive "
            "findings joined by '|', or the model's no-finding label when none is"
        )
    elif result.threshold is not None:
        names = list(result.instances[0].prediction.scores)
        negative = names[0] if len(names) == 2 and names[0] != result.class_name else None
        lines.append(
            f"Decision: {result.class_name} when the series score >= "
            f"{float(result.threshold):.8g}"
            + (f" ({source})" if source else "")
            + (f", else {negative}" if negative else "")
        )
    else:
        lines.append("Decision: the class with the highest series score; no threshold")
    if result.instance_thresholds_differ:
        lines.append(
            "The instances were decided at different thresholds (the threshold or operating "
            "point changed while the series arrived): the series at its newest instance's"
        )
    return lines


def _flagged_instances(result: ModelResult) -> int:
    """How many of the aggregated instances the gate flagged (:func:`invalid_reasons`)."""
    return sum(1 for i in result.instances if invalid_reasons(i.prediction))


def build_series_sr(
    result: ModelResult,
    sources: list[SourceRef],
    *,
    aggregation: str,
    series_uid: str,
    sop_uid: str,
    validated: bool = False,
) -> bytes:
    """A Comprehensive 3D SR (TID 1500) stating a series' aggregated result (app/series.py).

    Content: the series' finding (the aggregated label, a ``99RADLENS`` code), the aggregated
    score and the number of instances as numeric measurements, the algorithm, and the key
    instances (``sources``, highest score first) as the group's source images and the SR's
    evidence. Patient attributes are empty (the service stores none). The group's Algorithm
    Parameters say how the series score was aggregated from the instances' scores and the rule
    and threshold that decided the label (:func:`_series_parameters`), how many instances were
    out of distribution or outside the intended use when any was (then also a "Result validity"
    = not valid evaluation), and that it is not for clinical use unless the model is
    ``validated`` (as :func:`build_sr`).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not sources:
        raise DicomOutputError("a series SR needs at least one key instance")
    # a multi-frame key instance's scores come from some of its frames: named as in build_sr
    analysed = {str(i.prediction.sop_instance_uid): i.prediction for i in result.instances}
    frames = [
        analysed_frames(analysed[s.sop_instance_uid]) if s.sop_instance_uid in analysed else None
        for s in sources
    ]
    model_ref = f"{result.model_name}:{result.model_version}"
    flagged = _flagged_instances(result)
    try:
        algorithm = hd.sr.AlgorithmIdentification(
            name=result.model_name, version=str(result.model_version)
        )
        parameters = _series_parameters(result, aggregation)
        if flagged:
            count = result.instance_count
            parameters.append(
                f"{NOT_VALID}: {flagged} of {count} instance{'s' if count != 1 else ''} out of "
                f"distribution or outside the intended use; do not read the label "
                f"'{result.label}' or the series score as a result for this series"
            )
        if not validated:
            parameters.append(NOT_FOR_CLINICAL_USE)
        group_algorithm = hd.sr.AlgorithmIdentification(
            name=result.model_name, version=str(result.model_version), parameters=parameters
        )
        measurements = [
            hd.sr.Measurement(
                name=_code(
                    f"series:{result.class_name}"[:16],
                    f"Series {aggregation} score for {result.class_name}",
                ),
                value=float(result.score),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(
                name=_code("instances", "Instances aggregated"),
                value=float(result.instance_count),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            ),
        ]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=sop_uid + ".1" if len(sop_uid) <= 62 else sop_uid[:62],
                identifier=f"radlens series result ({model_ref})",
            ),
            algorithm_id=group_algorithm,
            source_images=[_source_image(s, f) for s, f in zip(sources, frames, strict=True)],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=codes.DCM.Finding, value=_code(result.label[:16], result.label)
                ),
                *(
                    [
                        _not_valid_evaluation(
                            f"Not a valid result: {flagged} of {result.instance_count} "
                            "instances flagged"
                        )
                    ]
                    if flagged
                    else []
                ),
            ],
            measurements=measurements,
        )
        groups = [
            group,
            *_series_finding_groups(result, sources, aggregation, sop_uid, frames),
        ]
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=output_uid(uuid.uuid5(_UID_NAMESPACE, model_ref), "device", with_patient=False),
                name=f"radlens {result.model_name}",
                manufacturer_name=MANUFACTURER,
                model_name=model_ref,
            ),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=hd.sr.CodedConcept(*_IMAGING_PROCEDURE),
            imaging_measurements=groups,
        )
        sr = _with_evidence(
            sources,
            lambda evidence: hd.sr.Comprehensive3DSR(
                evidence=evidence,
                content=report[0],
                series_instance_uid=series_uid,
                series_number=SR_SERIES_NUMBER,
                sop_instance_uid=sop_uid,
                instance_number=1,
                manufacturer=MANUFACTURER,
                manufacturer_model_name=model_ref,
                series_description=series_description("sr", validated=validated),
                is_complete=True,
            ),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomOutputError(f"highdicom refused the series SR ({model_ref}): {exc}") from exc
    # the series' result as of its newest instance's prediction: the same on every download
    # until another instance arrives (which also changes sop_uid)
    newest = max(i.prediction.created_at for i in result.instances)
    return _to_bytes(_stamp(sr, newest))


def overlay_rgb(png: bytes) -> np.ndarray:
    """The stored overlay PNG as uint8 RGB pixels (H, W, 3): what the Secondary Capture shows."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def explained_frame(prediction: Prediction) -> int | None:
    """The 1-based number of the source frame a multi-frame prediction's overlay explains,
    as DICOM's Referenced Frame Number counts: the key frame (``frame_result["key_frame"]``,
    the frame with the highest score for the decided class, app/ingest.py), else, for a row
    without one, the frame preprocessing picks by default (the middle one, ``frames // 2``).
    None for a single-frame source."""
    frames = prediction.frames or 1
    if frames <= 1:
        return None
    key = (prediction.frame_result or {}).get("key_frame")
    index = key if isinstance(key, int) and 0 <= key < frames else frames // 2
    return index + 1


def analysed_frames(prediction: Prediction) -> list[int] | None:
    """The 1-based numbers of the source frames a multi-frame prediction's scores come from,
    for the SR's image references (Referenced Frame Number): the frames predicted and
    aggregated (``frame_result["frames"]``, app/ingest.py: every frame up to
    RADLENS_MAX_FRAMES, every k-th above it, blank frames left out), or, for a row without a
    frame result (stored before instances were predicted frame by frame), the one frame
    preprocessing picked, the middle one. None for a single-frame source and when every
    frame was analysed: PS3.3 C.18.4 (Table 10-3) leaves the frame numbers out of a reference that
    applies to all of them. (Before QA round 54 the SR referenced the whole instance: a
    viewer took a result from 4 of 300 frames, or from the middle one, for all 300.)"""
    frames = prediction.frames or 1
    if frames <= 1:
        return None
    result = prediction.frame_result or {}
    used = result.get("frames") if "frames" in result else [frames // 2]
    if not isinstance(used, list) or not used:
        return None
    numbers = sorted({int(i) + 1 for i in used if isinstance(i, int) and 0 <= i < frames})
    if len(numbers) != len(used) or len(numbers) == frames:
        return None  # every frame, or a record not understood: the whole instance
    return numbers


def _sc_comments(prediction: Prediction, reasons: Sequence[str], *, validated: bool) -> str:
    """The SC's Image Comments, which viewers show beside the picture: an invalid result's
    warning, else how the label was decided (a binary model's map explains its positive class
    whatever the label; the overlay's title says so since QA round 83, "normal (abnormal score
    0.1200 < threshold 0.4862) · Grad-CAM of abnormal", but one stored before read "abnormal
    0.1200"); what the map is; and that it is not for clinical use (unless ``validated``)."""
    notice = "" if validated else f" {NOT_FOR_CLINICAL_USE}"
    if reasons:
        return f"{_not_valid_text(prediction.label, reasons, ', its score or the map')}{notice}"
    decided = f"Label {prediction.label}."
    classes = _binary_classes(prediction)
    if classes is not None and prediction.threshold is not None:
        positive = classes[1]
        score = float(prediction.scores[positive])
        shown, at = _printed(score, float(prediction.threshold))
        relation = "at or above" if score >= float(prediction.threshold) else "below"
        decided = (
            f"Label {prediction.label}: the {positive} score {shown} is {relation} the "
            f"threshold {at}."
        )
    return (
        f"{decided} The map shows which parts of the image raised the score of the class named "
        "in its title, relative within this image; it is not a finding's position or outline."
        f"{notice}"
    )


def build_sc(
    prediction: Prediction, source: SourceRef, png: bytes, *, validated: bool = False
) -> bytes:
    """A Secondary Capture of the Grad-CAM overlay in the source study, referencing the source.

    The SC series of its source series and model version (:func:`output_series_uid`), same
    Study Instance UID; Source Image Sequence names the source instance (and, for a
    multi-frame source, the frame the overlay explains: Referenced Frame Number,
    :func:`explained_frame`); Image Type DERIVED\\SECONDARY. The overlay's own caption has no
    patient text (class, score and layer), but its pixels are the source's, which may carry
    burned-in text (name, ID, dates on a scanned film or an ultrasound frame): Burned In
    Annotation copies the source's value when it is known and is YES otherwise (the service
    does not store it, so an SC built from a stored prediction says YES).

    A result that is not valid (:func:`invalid_reasons`: out of distribution, outside the
    intended use) gets a red "NOT A VALID RESULT" band above the overlay, in the pixels
    (:func:`models.overlay.add_banner`), and says so first in its Derivation Description and
    Image Comments: a PACS viewer shows the picture alone, whose title names a class and a
    score as a valid result's does. Image Comments otherwise say how the label was decided
    and what the map is. Every SC says it is not for clinical use (Series Description, Image
    Comments, the band's last line) unless the model that made the prediction is
    ``validated`` (as :func:`build_sr`); the band itself stays either way. The overlay's own
    caption (its pixels) was written when it was rendered, by the same rule
    (:func:`models.overlay.render_overlay`'s ``validated``).
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from radlens.models.overlay import add_banner

    pixels = overlay_rgb(png)
    reasons = invalid_reasons(prediction)
    if reasons:
        # a PACS shows the picture, not the tags: the warning goes into the pixels, above the
        # overlay's title (which names a class and a score like any result's; QA round 77)
        pixels = add_banner(
            pixels,
            [
                f"{NOT_VALID}: {'; '.join(reasons)}",
                f"Do not read the label '{prediction.label}', its score or this map as a result "
                "for this image: the model gives every image a label, a normal one included.",
                *([] if validated else [NOT_FOR_CLINICAL_USE]),
            ],
        )
    try:
        sc = _with_evidence(
            [source],
            lambda evidence: hd.sc.SCImage.from_ref_dataset(
                evidence[0],
                pixel_array=pixels,
                photometric_interpretation="RGB",
                bits_allocated=8,
                coordinate_system="PATIENT",
                **_placement(prediction, source, "sc"),
                manufacturer=MANUFACTURER,
                # highdicom wants an orientation for PATIENT; the service does not keep the
                # source's, so it is emptied below (Type 2: present, empty = unknown)
                patient_orientation=("L", "F"),
                series_description=series_description("sc", validated=validated),
            ),
        )
        sc.PatientOrientation = None
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomOutputError(
            f"highdicom refused the Secondary Capture for prediction {prediction.id}: {exc}"
        ) from exc
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.sop_class_uid
    reference.ReferencedSOPInstanceUID = source.sop_instance_uid
    frame = explained_frame(prediction)
    if frame is not None:
        # the overlay shows one frame of a multi-frame source: name it, so a viewer shows
        # the SC beside that frame, not the first (QA round 43)
        reference.ReferencedFrameNumber = frame
    sc.SourceImageSequence = Sequence([reference])
    sc.ImageType = ["DERIVED", "SECONDARY"]
    of_frame = "" if frame is None else f" of frame {frame} of {prediction.frames}"
    # the analysed image's own size: the overlay's pixels (and the panel it is drawn on, at
    # most 1024 px a side, models.overlay.display_size) are smaller than a large source
    if prediction.rows and prediction.columns:
        of_frame += f" ({prediction.columns} columns x {prediction.rows} rows)"
    # the warning first: a viewer that shows the start of a long text shows it
    warning = f"{NOT_VALID} ({'; '.join(reasons)}): " if reasons else ""
    sc.DerivationDescription = (
        f"{warning}Grad-CAM overlay{of_frame} of radlens model "
        f"{prediction.model_name}:{prediction.model_version}"
        f" (prediction {prediction.id}, label {prediction.label})"
    )[:1024]
    sc.ImageComments = _sc_comments(prediction, reasons, validated=validated)
    sc.BurnedInAnnotation = source.burned_in_annotation or "YES"
    return _to_bytes(_stamp(_identified(sc, source), prediction.created_at, source))

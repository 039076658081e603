"""The DICOM objects radlens has produced, as QIDO-RS/WADO-RS see them (app/routes/wado.py).

radlens keeps no DICOM files: each prediction on a DICOM source *has* a Structured Report,
and a Secondary Capture once its Grad-CAM overlay is stored, built on request from the row
by app/dicom_outputs.py with a SOP Instance UID derived from the prediction id
(``output_sop_uid``), in the SR or SC series of its source series and model version
(``output_series_uid``), numbered with the source's Instance Number. So the catalogue is
computed: the predictions of the asked study (or the newest
``SCAN_LIMIT`` predictions for a search across studies), expanded into their outputs, then
matched against the query's keys.

Only predictions that store the source's own UIDs are listed: a row whose UIDs are
pseudonyms (RADLENS_UID_PSEUDONYM_KEY) cannot give an output that files into the source
study (as ``GET /v1/predictions/{id}/dicom/sr`` refuses it with 409); those results reach a
PACS through the send-back outbox (app/outbox.py), which has the real UIDs in memory.

Matching (PS3.18 §8.3.4, PS3.4 C.2.2.2): single value, UID list (comma- or backslash-
separated), ``*``/``?`` wildcards on strings. The patient and study identification of the
outputs is empty (radlens stores none), so a non-wildcard value for one of those keys
matches nothing; a key radlens does not know is ignored and named in a Warning header.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.orm import Session

from radlens.app.dicom_outputs import (
    SC_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    output_series_uid,
    output_sop_uid,
    series_description,
)
from radlens.app.services import findings_of
from radlens.app.tables import Explanation, Prediction, PredictionFinding

SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
SCAN_LIMIT = 10_000  # predictions looked at by a search that names no study
FINDINGS_CHUNK = 500  # prediction ids per findings query (SQLite's bound-parameter limit)

# Keys whose value is empty in every output: a non-wildcard value matches nothing.
EMPTY_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
    }
)
MATCH_KEYS = {
    "study": ("StudyInstanceUID", "ModalitiesInStudy"),
    "series": ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber"),
    "instance": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ),
}
# QIDO-RS parameters that are not match keys.
CONTROL_PARAMETERS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
# Tags by group-element, as a query may name a key either way.
TAG_KEYWORDS = {
    "0020000D": "StudyInstanceUID",
    "0020000E": "SeriesInstanceUID",
    "00080018": "SOPInstanceUID",
    "00080016": "SOPClassUID",
    "00080060": "Modality",
    "00080061": "ModalitiesInStudy",
    "00200011": "SeriesNumber",
    "00200013": "InstanceNumber",
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100030": "PatientBirthDate",
    "00100040": "PatientSex",
    "00080050": "AccessionNumber",
    "00200010": "StudyID",
    "00080020": "StudyDate",
    "00080030": "StudyTime",
    "00080090": "ReferringPhysicianName",
}


@dataclass(frozen=True)
class OutputInstance:
    """One SR or SC radlens can build, with the attributes QIDO-RS returns."""

    prediction_id: uuid.UUID
    kind: str  # "sr" | "sc"
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    series_number: int
    series_description: str
    created_at: datetime
    instance_number: int = 1
    validated: bool = False  # its model is validated for clinical use: built without the notice

    def value(self, keyword: str) -> str:
        return str(
            {
                "StudyInstanceUID": self.study_instance_uid,
                "SeriesInstanceUID": self.series_instance_uid,
                "SOPInstanceUID": self.sop_instance_uid,
                "SOPClassUID": self.sop_class_uid,
                "Modality": self.modality,
                "SeriesNumber": self.series_number,
                "InstanceNumber": self.instance_number,
            }[keyword]
        )


def outputs_of(
    prediction: Prediction, *, explained: bool, validated: bool = False
) -> list[OutputInstance]:
    """The SR of a prediction, and its SC when it has an explanation; ``validated``: the model
    that made it is validated for clinical use (their series descriptions then do not say
    research use, as the objects' own do not: dicom_outputs.series_description)."""
    assert prediction.study_instance_uid is not None
    kinds = [("sr", SR_SOP_CLASS, "SR", SR_SERIES_NUMBER)]
    if explained:
        kinds.append(("sc", SC_SOP_CLASS, "OT", SC_SERIES_NUMBER))
    return [
        OutputInstance(
            prediction_id=prediction.id,
            kind=kind,
            study_instance_uid=prediction.study_instance_uid,
            series_instance_uid=output_series_uid(
                str(prediction.series_instance_uid),
                prediction.model_name,
                prediction.model_version,
                kind,
            ),
            sop_instance_uid=output_sop_uid(prediction.id, kind, with_patient=False),
            sop_class_uid=sop_class,
            modality=modality,
            series_number=number,
            series_description=series_description(kind, validated=validated),
            created_at=prediction.created_at,
            instance_number=prediction.instance_number or 1,
            validated=validated,
        )
        for kind, sop_class, modality, number in kinds
    ]


def in_model_order(prediction: Prediction, findings: Iterable[Any]) -> list[Any]:
    """A prediction's findings (stored rows or decided values) in the order of its scores, the
    model's finding order (as the API lists them; a name outside them last, by name): the order
    of an SR's finding groups however it is built."""
    order = {name: i for i, name in enumerate(prediction.scores or {})}

    def position(finding: Any) -> tuple[int, str]:
        name = str(getattr(finding, "finding", None) or finding.name)
        return order.get(name, len(order)), name

    return sorted(findings, key=position)


def sr_findings(
    session: Session, predictions: Iterable[Prediction]
) -> dict[uuid.UUID, list[PredictionFinding]]:
    """The stored findings each of these predictions' SR is built with (a query per
    FINDINGS_CHUNK predictions), :func:`in_model_order`; a single-label prediction has none
    (absent). Every way an SR
    leaves radlens (``GET .../dicom/sr``, WADO-RS, the send-back outbox) builds it with these,
    so it has the same content whichever way it is fetched (QA 86: WADO-RS and the outbox
    left a multi-label prediction's per-finding groups out)."""
    by_id = {p.id: p for p in predictions}
    ids = list(by_id)
    found: dict[uuid.UUID, list[PredictionFinding]] = {}
    for start in range(0, len(ids), FINDINGS_CHUNK):  # a study's WADO-RS: up to SCAN_LIMIT
        found.update(findings_of(session, ids[start : start + FINDINGS_CHUNK]))
    return {pid: in_model_order(by_id[pid], rows) for pid, rows in found.items()}


def find_outputs(
    session: Session,
    *,
    study: str | None,
    pseudonym_key_set: bool,
    validated: Callable[[str, int], bool] | None = None,
) -> list[OutputInstance]:
    """Every output of the predictions of ``study`` (all studies: the newest SCAN_LIMIT
    predictions), oldest first; ``validated(model_name, model_version)`` (app/clinical.py)
    tells which models are validated for clinical use (None: none)."""
    own_uids = Prediction.uids_pseudonymised == false()
    if not pseudonym_key_set:  # rows from before 0004 recorded nothing: the setting decides
        own_uids = or_(own_uids, Prediction.uids_pseudonymised.is_(None))
    conditions = [
        Prediction.input_format == "dicom",
        Prediction.study_instance_uid.is_not(None),
        Prediction.series_instance_uid.is_not(None),
        Prediction.sop_instance_uid.is_not(None),
        Prediction.sop_class_uid.is_not(None),
        own_uids,
    ]
    if study is not None:
        conditions.append(Prediction.study_instance_uid == study)
    stmt = (
        select(Prediction, Explanation.id)
        .outerjoin(Explanation, Explanation.prediction_id == Prediction.id)
        .where(and_(*conditions))
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .limit(SCAN_LIMIT)
    )
    rows = list(session.execute(stmt))
    found: list[OutputInstance] = []
    for prediction, explanation_id in reversed(rows):
        found.extend(
            outputs_of(
                prediction,
                explained=explanation_id is not None,
                validated=validated is not None
                and validated(prediction.model_name, prediction.model_version),
            )
        )
    return found


def split_values(raw: str) -> list[str]:
    return [v.strip() for v in raw.replace("\\", ",").split(",") if v.strip()]


def _matches(value: str, wanted: str) -> bool:
    if any(c in wanted for c in "*?"):
        return fnmatch.fnmatchcase(value, wanted)
    return value == wanted


@dataclass(frozen=True)
class Query:
    """The match keys of a QIDO-RS request, split from its controls."""

    keys: dict[str, str]
    unsupported: tuple[str, ...]

    @classmethod
    def parse(cls, params: Iterable[tuple[str, str]], level: str) -> Query:
        keys: dict[str, str] = {}
        unsupported: list[str] = []
        for name, value in params:
            if name in CONTROL_PARAMETERS:
                continue
            keyword = TAG_KEYWORDS.get(name.upper(), name)
            if keyword in MATCH_KEYS[level] or keyword in EMPTY_KEYS:
                keys[keyword] = value
            else:
                unsupported.append(name)
        return cls(keys, tuple(unsupported))

    def _empty_key_excludes(self) -> bool:
        return any(self.keys[k].strip() not in ("", "*") for k in self.keys.keys() & EMPTY_KEYS)

    def match(self, outputs: list[OutputInstance]) -> list[OutputInstance]:
        """The outputs every instance- and series-level key matches."""
        if self._empty_key_excludes():
            return []
        result = []
        for output in outputs:
            ok = True
            for keyword, raw in self.keys.items():
                if keyword in EMPTY_KEYS or keyword == "ModalitiesInStudy":
                    continue
                wanted = split_values(raw)
                if wanted and not any(_matches(output.value(keyword), w) for w in wanted):
                    ok = False
                    break
            if ok:
                result.append(output)
        return result

    def match_studies(self, outputs: list[OutputInstance]) -> dict[str, list[OutputInstance]]:
        """Study UID -> its outputs, for the studies every key matches (ModalitiesInStudy: the
        study has a series of one of those modalities)."""
        studies: dict[str, list[OutputInstance]] = {}
        for output in self.match(outputs):
            studies.setdefault(output.study_instance_uid, []).append(output)
        modalities = split_values(self.keys.get("ModalitiesInStudy", ""))
        if modalities:
            studies = {
                uid: members
                for uid, members in studies.items()
                if any(_matches(m.modality, w) for m in members for w in modalities)
            }
        return studies

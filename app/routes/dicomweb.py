"""DICOMweb STOW-RS input (PS3.18 §10.5): an archive (e.g. Orthanc) POSTs studies, radlens
answers with a prediction per instance.

Request: ``POST /dicomweb/studies`` (or ``/dicomweb/studies/{study}``) with
``Content-Type: multipart/related; type="application/dicom"; boundary=...``, one DICOM
instance per part. Each instance goes through the same path as ``POST /v1/predictions``
(preprocess -> predictor -> store, dedupe per model); their model calls share micro-batches.

Response: DICOM JSON (``application/dicom+json``, PS3.18 F.2) with
- ``00081199`` ReferencedSOPSequence: per predicted instance its SOP Class/Instance UID and a
  ``00081190`` RetrieveURL pointing to the *prediction* (radlens stores no instances); plus the
  private block ``(0099,00xx)`` creator "RADLENS 1" with ``(0099,1001)`` the prediction id,
  ``(0099,1002)`` the label, ``(0099,1003)`` "created" or "existing", and ``(0099,1006)``
  the not-for-clinical-use notice unless the model's manifest says it was validated,
  ``(0099,1007)`` the intended-use violations of the header this instance was sent with (one
  value per attribute, e.g. ``BodyPartExamined WRIST``; absent when there is none or the gate
  did not judge it) and, on a re-post whose verdict differs from the stored prediction's,
  ``(0099,1008)`` the stored one's (empty: the stored prediction was not flagged); an SR or
  Secondary Capture radlens made (app/dicom_outputs.py), which a PACS forwarding the study
  sends back, is listed with ``(0099,1003)`` "radlens-output" only: it is not predicted on;
  an instance of a class that holds no image (a report, a presentation state, a PDF, an RT
  plan ...: models/intended_use.non_image_kind), which a PACS sends with its study, and the
  DICOMDIR of a media export (Media Storage Directory Storage, the export's index, which a
  client uploading the export's folder sends with its images; it belongs to no study), are
  listed with ``(0099,1003)`` "non-image" only, not predicted, under
  ``RADLENS_NON_IMAGE_INSTANCES=acknowledge`` (the default; ``refuse``: a failure, 0x0122 or
  the gate's 0xC000, as before QA round 35);
- ``00081198`` FailedSOPSequence: per failed instance its UIDs when they could be read and
  ``00081197`` FailureReason (see :data:`FAILURE_REASONS`), plus ``(0099,1004)`` the radlens
  problem code and ``(0099,1005)`` the one-line reason.
Status 200 when every instance was predicted or acknowledged, 202 when some failed, 409 when
all failed; a request that is not multipart/related with DICOM parts is a 400/415 problem.
Bad parts are per-instance failures, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from radlens.app import clinical
from radlens.app.auth import Principal, PrincipalDep, record_outcome
from radlens.app.deps import IngestorDep, SettingsDep
from radlens.app.dicom_outputs import OUTPUT_SOP_CLASSES
from radlens.app.errors import AppError, UnsupportedMediaTypeError
from radlens.app.ingest import Candidate, Ingestor
from radlens.app.schemas import NOT_FOR_CLINICAL_USE, problem_responses
from radlens.app.settings import Settings
from radlens.models.errors import DeflatedDatasetTooLargeError, RadlensError
from radlens.models.intended_use import holds_no_image

logger = logging.getLogger(__name__)

# A DICOMDIR: the index of a media export (CD, DVD, USB; PS3.10), no image and no instance of
# a study. Its SOP Class and Instance UID are in its file meta information only.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

DICOM_JSON = "application/dicom+json"
PRIVATE_CREATOR = "RADLENS 1"

# FailureReason (0008,1197) values, PS3.18 §10.5.3 / PS3.4 Annex B storage statuses.
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
FAILURE_REASONS: dict[str, int] = {
    "not-an-image": CANNOT_UNDERSTAND,
    "truncated": CANNOT_UNDERSTAND,
    "not-dicom-part": CANNOT_UNDERSTAND,
    "unsupported-transfer-syntax": TRANSFER_SYNTAX_NOT_SUPPORTED,
    "transfer-syntax-mismatch": CANNOT_UNDERSTAND,  # pixel data and syntax disagree
    "no-pixel-data": SOP_CLASS_NOT_SUPPORTED,
    "invalid-image": DATA_SET_DOES_NOT_MATCH,
    "malformed-dicom": CANNOT_UNDERSTAND,
    "invalid-rescale": DATA_SET_DOES_NOT_MATCH,
    "codestream-mismatch": DATA_SET_DOES_NOT_MATCH,  # the codestream disagrees with the header
    "blank-image": DATA_SET_DOES_NOT_MATCH,
    "incomplete-pixel-header": DATA_SET_DOES_NOT_MATCH,
    "invalid-dicom-attribute": DATA_SET_DOES_NOT_MATCH,
    "preprocessing-error": DATA_SET_DOES_NOT_MATCH,
    "study-mismatch": DATA_SET_DOES_NOT_MATCH,
    "series-mismatch": DATA_SET_DOES_NOT_MATCH,
    "image-too-large": OUT_OF_RESOURCES,
    "too-many-instances": OUT_OF_RESOURCES,
    "service-busy": OUT_OF_RESOURCES,
    "inference-failed": PROCESSING_FAILURE,
    "predictor-unavailable": PROCESSING_FAILURE,
    "outside-intended-use": CANNOT_UNDERSTAND,  # app/gate.py: not what the model is for
    "out-of-distribution": CANNOT_UNDERSTAND,
}

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])


class DicomJSONResponse(JSONResponse):
    media_type = DICOM_JSON


class StowMediaTypeError(UnsupportedMediaTypeError):
    """415 for STOW-RS: its title names the body STOW-RS takes (the upload routes' title names
    multipart/form-data)."""

    title = (
        'Send the DICOM instances as multipart/related; type="application/dicom" with a '
        "boundary, one Part 10 instance per part"
    )


class BadMultipartError(AppError):
    code = "bad-multipart"
    title = (
        'Send multipart/related; type="application/dicom" with a boundary and at least one '
        "DICOM part"
    )
    status_code = 400


class TruncatedMultipartError(BadMultipartError):
    """The body ended before its closing delimiter (``--boundary--``): the upload was cut short
    (a proxy's or client's time-out, a crash), so its last part may be half an instance. Nothing
    of such a request is predicted or stored (QA round 45: the parts were predicted, and the
    half part failed as a "no pixel data" instance or was stored when it happened to read)."""

    code = "truncated-multipart"
    title = (
        "The multipart body ended before its closing boundary (--boundary--): the upload was "
        "cut short, and nothing of it was stored; send the whole request again"
    )


@dataclass
class Part:
    index: int
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


MAX_PREAMBLE_BYTES = 64 * 1024  # text a body may carry before its first boundary


async def read_parts(request: Request, max_parts: int) -> tuple[list[Part], int]:
    """Split a multipart/related body into its parts (python-multipart's parser, streamed;
    the body size limit of the service applies while streaming): the first ``max_parts``
    parts, and how many more the body had. Those are counted, never kept: a body of many
    tiny parts costs memory in proportion to ``max_parts``, not to the number of parts (200,000
    parts of a 2 MiB body took 500 MiB and 17 s when each was kept and answered)."""
    raw_type = request.headers.get("content-type", "")
    media_type, params = parse_options_header(raw_type)
    shown = raw_type[:120] or "none"
    if media_type.decode("latin-1").lower() != "multipart/related":
        raise StowMediaTypeError(
            f"the request's Content-Type is {shown!r}; STOW-RS expects multipart/related; "
            'type="application/dicom"'
        )
    part_type = params.get(b"type", b"application/dicom").decode("latin-1").lower()
    if part_type != "application/dicom":
        raise StowMediaTypeError(
            f"the multipart type parameter is {part_type!r}; radlens accepts "
            "application/dicom instances (not metadata+bulkdata)"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadMultipartError(f"the Content-Type has no boundary parameter: {shown!r}")

    parts: list[Part] = []
    header_name: list[bytes] = []
    header_value: list[bytes] = []
    extra = 0  # non-empty parts after the first max_parts
    current: Part | None = None
    extra_data = False  # the current part is one too many and has data

    def close_part() -> None:  # an empty part (no headers, no data) is no part
        nonlocal current, extra, extra_data
        if current is not None and (current.chunks or current.headers or extra_data):
            if len(parts) < max_parts:
                parts.append(current)
            else:
                extra += 1
        current, extra_data = None, False

    def on_part_begin() -> None:
        nonlocal current
        close_part()
        current = Part(index=len(parts) + extra)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal extra_data
        assert current is not None
        if len(parts) < max_parts:
            current.chunks.append(data[start:end])
        elif end > start:
            extra_data = True

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        assert current is not None
        name = b"".join(header_name).decode("latin-1").strip().lower()
        current.headers[name] = b"".join(header_value).decode("latin-1").strip()
        header_name.clear()
        header_value.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    # RFC 2046 5.1.1: text before the first delimiter (a "preamble", e.g. "This is a
    # multi-part message in MIME format.") is ignored; python-multipart refuses it, so it is
    # dropped here, up to the delimiter's line.
    delimiter = b"--" + boundary
    head: bytes | None = b""  # the body until its first delimiter is found
    try:
        async for chunk in request.stream():
            if head is not None:
                head += chunk
                at = 0 if head.startswith(delimiter) else head.find(b"\r\n" + delimiter)
                if at < 0:
                    if len(head) > MAX_PREAMBLE_BYTES:
                        raise BadMultipartError(
                            f"no boundary {boundary.decode('latin-1')!r} in the body's first "
                            f"{MAX_PREAMBLE_BYTES} bytes: the Content-Type's boundary must be "
                            "the one that separates the parts"
                        )
                    continue
                chunk, head = head[at:], None
            parser.write(chunk)
        if head is None:
            parser.finalize()  # python-multipart's finalize checks nothing: the state is read
    except MultipartParseError as exc:
        raise BadMultipartError(f"the multipart body could not be parsed: {exc}") from exc
    if head is None and parser.state != MultipartState.END:
        where = f"inside part {current.index}" if current is not None else "after its last part"
        raise TruncatedMultipartError(
            f"the body ends {where} without the closing delimiter "
            f"'--{boundary.decode('latin-1')}--'"
        )
    close_part()
    if not parts:
        raise BadMultipartError(f"the body has no parts for boundary {boundary.decode()!r}")
    return parts, extra


@dataclass
class Outcome:
    part: Part
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    candidate: Candidate | None = None
    error_code: str | None = None
    error: str | None = None
    prediction_id: str | None = None
    label: str | None = None
    created: bool = False
    # the intended-use verdict on this instance's header, and the stored prediction's when
    # it differs (a re-post; app/ingest.py Ingested.intended_use_verdict)
    violations: list[dict[str, Any]] | None = None
    stored_violations: list[dict[str, Any]] | None = None
    made_by_radlens: bool = False  # its header says so (_uids)
    output: bool = False  # an SR or SC radlens made, sent back: acknowledged, not predicted
    non_image: bool = False  # of a class that holds no image: acknowledged, not predicted

    def fail(self, code: str, message: str) -> None:
        self.error_code, self.error = code, message


def _uids(data: bytes, max_pixels: int) -> tuple[str | None, str | None, str | None, bool]:
    """SOP Class, SOP Instance and Study Instance UID of a part, when its header reads, and
    whether it is an SR or Secondary Capture radlens made (app/dicom_outputs.py: a PACS that
    forwards a study sends back the results the outbox filed into it), in one read.

    Raises:
        DeflatedDatasetTooLargeError: a deflated part that inflates beyond what
            ``max_pixels`` allows (models/dicomread.py); any other failure gives Nones.
    """
    from radlens.app.dicom_outputs import is_radlens_output
    from radlens.models.dicomread import read_dicom_bytes

    try:
        ds = read_dicom_bytes(
            data,
            max_pixels=max_pixels,
            stop_before_pixels=True,
            force=True,  # as preprocessing reads it (a dataset without preamble or file meta)
            specific_tags=[
                "SOPClassUID",
                "SOPInstanceUID",
                "StudyInstanceUID",
                "Manufacturer",
                "SeriesDescription",
                "SeriesNumber",
            ],
        )
    except DeflatedDatasetTooLargeError:
        raise
    except Exception:  # best effort: preprocessing reports what is wrong with the part
        return None, None, None, False
    values = (ds.get("SOPClassUID"), ds.get("SOPInstanceUID"), ds.get("StudyInstanceUID"))
    sop_class, sop_instance, study = (str(v) if v else None for v in values)
    meta = getattr(ds, "file_meta", None) or {}
    if sop_class is None and meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        # a DICOMDIR's data set holds no SOP Common module: its file meta names it
        sop_class = MEDIA_STORAGE_DIRECTORY
        sop_instance = str(meta.get("MediaStorageSOPInstanceUID") or "") or None
    return sop_class, sop_instance, study, sop_class in OUTPUT_SOP_CLASSES and is_radlens_output(ds)


# a storage SOP class UID as a file holds it (file meta, SOP Common): PS3.4 B.5 and the RT
# second-generation classes; and a DICOMDIR's (its file meta)
_STORAGE_CLASS_BYTES = re.compile(
    rb"1\.2\.840\.10008\.(?:5\.1\.4\.(?:1\.1|34)(?:\.[0-9]+)+|1\.3\.10(?![.0-9]))"
)


def _acknowledged_non_image(sop_class: str | None) -> bool:
    """An instance of a class that holds no image, or a DICOMDIR: acknowledged, not predicted
    (under RADLENS_NON_IMAGE_INSTANCES=acknowledge)."""
    return sop_class == MEDIA_STORAGE_DIRECTORY or holds_no_image(sop_class)


def _read_header_first(data: bytes, *, acknowledge_non_images: bool) -> bool:
    """Whether a part's header must be read before it is predicted: among its first bytes
    (file meta, SOP Common) the SOP class of an output radlens makes (an SR or SC it may have
    made, sent back) or, when they are acknowledged, of a class that holds no image. A byte
    search, no parse: every other part pays nothing, and the header read decides."""
    for match in _STORAGE_CLASS_BYTES.findall(data[:4096]):
        sop_class = match.decode()
        if sop_class in OUTPUT_SOP_CLASSES or (
            acknowledge_non_images and _acknowledged_non_image(sop_class)
        ):
            return True
    return False


async def _predict(outcome: Outcome, *, ingestor: Ingestor, study: str | None) -> None:
    part = outcome.part
    if part.content_type not in ("application/dicom", ""):
        outcome.fail("not-dicom-part", f"part {part.index} is {part.content_type!r}")
        return
    data = part.data
    if study is not None:  # the study is checked before the model runs
        try:
            uids = await asyncio.to_thread(_uids, data, ingestor.settings.max_pixels)
        except RadlensError as exc:  # a deflate bomb: refused before anything else
            outcome.fail(exc.code, str(exc))
            return
        _set_uids(outcome, uids)
        # a part whose header gives no UID at all is no DICOM instance: preprocessing says
        # what it is (every such part was a "study mismatch", QA round 13)
        # a DICOMDIR belongs to no study (it indexes a media export, perhaps of several)
        dicomdir = outcome.sop_class_uid == MEDIA_STORAGE_DIRECTORY
        if any(uids[:3]) and outcome.study_instance_uid != study and not dicomdir:
            outcome.fail(
                "study-mismatch",
                f"part {part.index} belongs to study {outcome.study_instance_uid!r}, "
                f"not {study!r} of the URL",
            )
            return
    acknowledge = ingestor.settings.non_image_instances == "acknowledge"
    # before the model runs on it (QA round 34: it ran on radlens' SC, then let it go)
    if _read_header_first(data, acknowledge_non_images=acknowledge):
        await _read_uids(outcome, data, ingestor.settings.max_pixels)
        if outcome.made_by_radlens:
            outcome.output = True
            return
        if acknowledge and _acknowledged_non_image(outcome.sop_class_uid):
            # a report, presentation state, PDF ... sent with its study (QA round 35: each
            # failed, and Orthanc failed the study's whole STOW-RS job); a media export's
            # DICOMDIR, sent with its images (QA 68: a 0x0122 failure without its UIDs)
            outcome.non_image = True
            return
    try:
        outcome.candidate = await ingestor.prepare(data)
        # the UIDs as received, from the preprocessed header (reading the header a second
        # time cost 2.5 ms per 512x512 CT slice, next to ~50 CPU ms for the whole slice)
        meta = outcome.candidate.image.metadata
        outcome.sop_class_uid, outcome.sop_instance_uid = meta.sop_class_uid, meta.sop_instance_uid
        outcome.study_instance_uid = meta.study_instance_uid
    except RadlensError as exc:
        await _read_uids(outcome, data, ingestor.settings.max_pixels)
        outcome.fail(exc.code, str(exc))
    except Exception as exc:  # one bad instance must not fail the others
        await _read_uids(outcome, data, ingestor.settings.max_pixels)
        # as CatchAllMiddleware: the type and the frames, not the message (it may quote input)
        logger.error(
            "STOW-RS part %d: unexpected %s (message withheld)\n%s",
            part.index,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        outcome.fail("inference-failed", f"part {part.index}: {type(exc).__name__}")


async def _read_uids(outcome: Outcome, data: bytes, max_pixels: int) -> None:
    """A failed instance's UIDs for the response, when its header reads (not read twice)."""
    if outcome.sop_instance_uid is None and outcome.sop_class_uid is None:
        try:
            uids = await asyncio.to_thread(_uids, data, max_pixels)
        except RadlensError:  # a deflate bomb: its UIDs stay unknown
            return
        _set_uids(outcome, uids)


def _set_uids(outcome: Outcome, header: tuple[str | None, str | None, str | None, bool]) -> None:
    (
        outcome.sop_class_uid,
        outcome.sop_instance_uid,
        outcome.study_instance_uid,
        outcome.made_by_radlens,
    ) = header


def _element(vr: str, *values: Any) -> dict[str, Any]:
    element: dict[str, Any] = {"vr": vr}
    present = [v for v in values if v is not None]
    if present:
        element["Value"] = present
    return element


def _item(outcome: Outcome) -> dict[str, Any]:
    return {
        "00081150": _element("UI", outcome.sop_class_uid),
        "00081155": _element("UI", outcome.sop_instance_uid),
        "00990010": _element("LO", PRIVATE_CREATOR),
    }


def _violation_values(records: list[dict[str, Any]]) -> list[str]:
    """Intended-use violations as LO values, ``<attribute> <value>`` (app/gate.py records):
    printable ASCII without the backslash (LO's value separator), at most 64 characters."""
    said = (f"{r.get('attribute')} {r.get('value')}" for r in records)
    return ["".join(c for c in v if " " <= c <= "~" and c != "\\")[:64] for v in said]


def stow_response(
    outcomes: list[Outcome], request: Request, *, validated: bool = False
) -> tuple[int, dict[str, Any]]:
    """The STOW-RS status and DICOM JSON body for the outcomes; ``validated``: the model's
    manifest says it was validated for clinical use (else each result carries the notice)."""
    referenced, failed = [], []
    for outcome in outcomes:
        item = _item(outcome)
        if outcome.output:  # radlens' own result sent back: received, nothing predicted
            item["00991003"] = _element("LO", "radlens-output")
            referenced.append(item)
        elif outcome.non_image:  # no image to predict on: received, nothing predicted
            item["00991003"] = _element("LO", "non-image")
            referenced.append(item)
        elif outcome.error_code is None:
            url = str(request.url_for("get_prediction", prediction_id=outcome.prediction_id))
            item["00081190"] = _element("UR", url)
            item["00991001"] = _element("LO", outcome.prediction_id)
            item["00991002"] = _element("LO", (outcome.label or "")[:64])
            item["00991003"] = _element("LO", "created" if outcome.created else "existing")
            if not validated:
                item["00991006"] = _element("LT", NOT_FOR_CLINICAL_USE)
            if outcome.violations:  # this upload is outside the model's intended use
                item["00991007"] = _element("LO", *_violation_values(outcome.violations))
            if outcome.stored_violations is not None:  # a re-post judged otherwise
                item["00991008"] = _element("LO", *_violation_values(outcome.stored_violations))
            referenced.append(item)
        else:
            item["00081197"] = _element("US", FAILURE_REASONS.get(outcome.error_code, 0x0110))
            item["00991004"] = _element("LO", outcome.error_code[:64])
            item["00991005"] = _element("LT", (outcome.error or "")[:10240])
            failed.append(item)
    body: dict[str, Any] = {}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    return status, body


_STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Every instance was predicted, or acknowledged without a prediction "
        "(ReferencedSOPSequence)",
        "content": {DICOM_JSON: {"schema": {"type": "object"}}},
    },
    202: {
        "description": "Some instances failed (FailedSOPSequence with FailureReason)",
        "content": {DICOM_JSON: {"schema": {"type": "object"}}},
    },
    409: {
        "description": "No instance could be predicted (FailedSOPSequence)",
        "content": {DICOM_JSON: {"schema": {"type": "object"}}},
    },
    **problem_responses(400, 413, 415, 422, 500, 503),
}


async def _store(
    outcome: Outcome, candidate: Candidate, *, ingestor: Ingestor, actor: str | None, explain: bool
) -> None:
    try:
        result = await ingestor.commit(candidate, actor, explain=explain)
    except RadlensError as exc:
        outcome.fail(exc.code, str(exc))
        return
    outcome.prediction_id = str(result.prediction.id)
    outcome.label = result.prediction.label
    outcome.created = result.created
    outcome.violations, outcome.stored_violations = result.intended_use_verdict()


async def _stow(
    request: Request,
    study: str | None,
    *,
    principal: Principal,
    ingestor: Ingestor,
    settings: Settings,
    explain: bool,
) -> JSONResponse:
    ingestor.check_capacity()
    limit = settings.stow_max_instances
    parts, extra = await read_parts(request, limit)
    outcomes = [Outcome(part) for part in parts]
    allowed = list(outcomes)
    if extra:  # one failure for the parts over the limit (their bytes were not kept)
        over = Outcome(Part(index=limit))
        which = f"part {limit}" if extra == 1 else f"parts {limit}-{limit + extra - 1}"
        over.fail(
            "too-many-instances",
            f"{which}: more than {limit} instances in one request (RADLENS_STOW_MAX_INSTANCES)",
        )
        outcomes.append(over)

    # model calls run concurrently (they share micro-batches), and each instance is committed
    # as soon as it is predicted (the commits share the writer's group transactions, each with
    # its own "prediction.create" audit row), so the writes overlap the remaining model calls
    async def predict_and_store(outcome: Outcome) -> None:
        await _predict(outcome, ingestor=ingestor, study=study)
        if outcome.candidate is not None:
            await _store(
                outcome, outcome.candidate, ingestor=ingestor, actor=principal.key_id,
                explain=explain,
            )  # fmt: skip

    await asyncio.gather(*(predict_and_store(o) for o in allowed))
    manifest = ingestor.predictor.manifest  # the model that made these predictions
    validated = manifest is not None and clinical.validated(
        request.app.state.settings, manifest.name, manifest.version
    )
    status, body = stow_response(outcomes, request, validated=validated)
    if status != 200:  # the predictions have their rows; the failed instances are this one's
        await record_outcome(request, status)
    logger.info(
        "STOW-RS: %d instances, %d predicted, %d failed, %d radlens outputs and %d instances "
        "of classes that hold no image acknowledged",
        len(parts) + extra,
        sum(o.error_code is None and not (o.output or o.non_image) for o in allowed),
        sum(o.error_code is not None for o in allowed) + extra,
        sum(o.output for o in allowed),
        sum(o.non_image for o in allowed),
    )
    return DicomJSONResponse(body, status_code=status)


_EXPLAIN = Query(description="Also compute and store each instance's Grad-CAM overlay")


# The body read by _stow, declared for OpenAPI (both routes take it).
STOW_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}


@router.post(
    "/studies",
    summary="STOW-RS: store instances (radlens predicts on each)",
    response_class=DicomJSONResponse,
    responses=_STOW_RESPONSES,
    openapi_extra=STOW_BODY_OPENAPI,
)
async def stow_studies(
    request: Request,
    principal: PrincipalDep,
    ingestor: IngestorDep,
    settings: SettingsDep,
    explain: Annotated[bool, _EXPLAIN] = False,
) -> JSONResponse:
    """Predict on every instance of the request; DICOM JSON STOW-RS response."""
    return await _stow(
        request, None, principal=principal, ingestor=ingestor, settings=settings, explain=explain
    )


@router.post(
    "/studies/{study}",
    summary="STOW-RS into one study: instances of another study fail (0xA900)",
    response_class=DicomJSONResponse,
    responses=_STOW_RESPONSES,
    openapi_extra=STOW_BODY_OPENAPI,
)
async def stow_study(
    study: str,
    request: Request,
    principal: PrincipalDep,
    ingestor: IngestorDep,
    settings: SettingsDep,
    explain: Annotated[bool, _EXPLAIN] = False,
) -> JSONResponse:
    """As POST /dicomweb/studies, for the instances of the study in the URL."""
    return await _stow(
        request, study, principal=principal, ingestor=ingestor, settings=settings, explain=explain
    )

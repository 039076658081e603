"""Explanations and DICOM outputs of a prediction: the Grad-CAM overlay (PNG), a DICOM
Structured Report and a Secondary Capture of the overlay (see docs/pacs-integration.md)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from radlens.app import catalogue, clinical, services
from radlens.app.auth import PrincipalDep
from radlens.app.deps import IngestorDep, SessionDep, SettingsDep
from radlens.app.dicom_outputs import (
    DICOM_MEDIA_TYPE,
    DicomSourceRequiredError,
    build_sc,
    build_sr,
    source_from_dataset,
    source_from_prediction,
)
from radlens.app.errors import AppError
from radlens.app.explain import require_explanation
from radlens.app.ingest import INTENDED_USE_HEADER, verdict_header
from radlens.app.routes.predictions import upload_openapi
from radlens.app.schemas import problem_responses
from radlens.app.settings import Settings
from radlens.app.tables import Prediction
from radlens.app.upload import read_file

# the body as POST /v1/predictions declares it, but the part must be a DICOM instance (a PNG
# or JPEG is a 409: no source for the SR)
DICOM_UPLOAD_OPENAPI = upload_openapi(DICOM_MEDIA_TYPE)

router = APIRouter(prefix="/v1/predictions", tags=["explanations and DICOM outputs"])
upload_router = APIRouter(prefix="/v1/predictions", tags=["explanations and DICOM outputs"])


class PseudonymisedUidsError(AppError):
    code = "uids-pseudonymised"
    title = (
        "Stored UIDs are pseudonymised (RADLENS_UID_PSEUDONYM_KEY), so a DICOM output cannot "
        "name the source study; upload the instance to POST /v1/predictions/dicom-sr"
    )
    status_code = 409


def _png_response() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "The overlay: the image as the model saw it, the Grad-CAM map "
            "(inferno colour map), a colour bar and a caption",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **problem_responses(404, 422, 500, 503),
    }


def _dicom_response(
    what: str, *statuses: int, success: tuple[int, ...] = (200,)
) -> dict[int | str, dict[str, Any]]:
    content = {DICOM_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}
    return {
        **{status: {"description": what, "content": content} for status in success},
        409: {
            "description": "The prediction's source is not DICOM (PNG/JPEG), lacked a UID "
            "(dicom-source-incomplete), or its UIDs are pseudonymised",
            "content": problem_responses(409)[409]["content"],
        },
        **problem_responses(*statuses),
    }


def stores_pseudonyms(prediction: Prediction, settings: Settings) -> bool:
    """Whether the prediction's stored UIDs are pseudonyms, so no DICOM output (SR, SC) can
    name its source: the row's own record decides (0004); a row stored before it recorded
    nothing, so the current setting is the best guess for it."""
    pseudonymised = prediction.uids_pseudonymised
    if pseudonymised is None:
        pseudonymised = (
            prediction.input_format == "dicom" and settings.uid_pseudonym_key_bytes is not None
        )
    return bool(pseudonymised)


def _stored_source(prediction: Prediction, settings: Settings) -> Any:
    if stores_pseudonyms(prediction, settings):
        raise PseudonymisedUidsError(
            f"prediction {prediction.id} stores pseudonyms, not the source's UIDs"
        )
    return source_from_prediction(prediction)


def _dicom(data: bytes, prediction_id: uuid.UUID, kind: str) -> Response:
    return Response(
        data,
        media_type=DICOM_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{prediction_id}-{kind}.dcm"'},
    )


@router.get(
    "/{prediction_id}/heatmap",
    name="get_heatmap",
    summary="The Grad-CAM overlay of a prediction (PNG)",
    response_class=Response,
    responses=_png_response(),
)
def get_heatmap(prediction_id: uuid.UUID, session: SessionDep) -> Response:
    """The stored overlay; 404 unless the image was posted with ?explain=true."""
    services.get_prediction(session, prediction_id)
    explanation = require_explanation(session, prediction_id)
    return Response(
        explanation.png,
        media_type="image/png",
        headers={
            "X-Radlens-Explained-Class": header_text(explanation.class_name),
            "X-Radlens-Explained-Layer": header_text(explanation.layer),
        },
    )


# printable ASCII but "%": what a header value carries as is
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_text(value: str) -> str:
    """``value`` as an HTTP header value: printable ASCII as is, anything else (a class name in
    another script, a dash, a control character) and "%" percent-encoded as UTF-8 (read it
    with ``urllib.parse.unquote``). Header values are Latin-1: a class name such as "胸水" sent
    as is made every overlay of the model a 500 (QA round 28)."""
    return quote(value, safe=_HEADER_SAFE)


@router.get(
    "/{prediction_id}/dicom/sr",
    name="get_dicom_sr",
    summary="A DICOM Structured Report of the prediction, in the source study",
    response_class=Response,
    responses=_dicom_response("Comprehensive 3D SR (application/dicom)", 404, 422, 500, 503),
)
def get_dicom_sr(prediction_id: uuid.UUID, session: SessionDep, settings: SettingsDep) -> Response:
    """Finding, scores, model and version, and a reference to the source image; patient
    attributes empty (the service stores none)."""
    prediction = services.get_prediction(session, prediction_id)
    source = _stored_source(prediction, settings)
    findings = catalogue.sr_findings(session, [prediction]).get(prediction.id, [])
    validated = clinical.validated(settings, prediction.model_name, prediction.model_version)
    return _dicom(build_sr(prediction, source, findings, validated=validated), prediction_id, "sr")


@router.get(
    "/{prediction_id}/dicom/secondary-capture",
    name="get_dicom_secondary_capture",
    summary="A DICOM Secondary Capture of the Grad-CAM overlay, in the source study",
    response_class=Response,
    responses=_dicom_response("Secondary Capture Image (application/dicom)", 404, 422, 500, 503),
)
def get_dicom_secondary_capture(
    prediction_id: uuid.UUID, session: SessionDep, settings: SettingsDep
) -> Response:
    """The overlay as an RGB Secondary Capture in the source study, in the overlay series of
    its source series and model version (numbered as its source), referencing the source
    instance; needs an explanation (post with ?explain=true)."""
    prediction = services.get_prediction(session, prediction_id)
    source = _stored_source(prediction, settings)
    explanation = require_explanation(session, prediction_id)
    validated = clinical.validated(settings, prediction.model_name, prediction.model_version)
    data = build_sc(prediction, source, explanation.png, validated=validated)
    return _dicom(data, prediction_id, "sc")


@upload_router.post(
    "/dicom-sr",
    name="create_prediction_dicom_sr",
    summary="Predict on one DICOM instance and answer with its Structured Report",
    response_class=Response,
    status_code=201,
    responses=_dicom_response(
        "The SR (201: the prediction is new; 200: it was stored before; Location names it). "
        "Patient and study identification are copied from the upload only when "
        "RADLENS_DICOM_COPY_PATIENT=true",
        400,
        413,
        415,
        422,
        500,
        503,
        success=(201, 200),
    ),
    # the part must be a DICOM instance (a PNG or JPEG is a 409: no source for the SR)
    openapi_extra=DICOM_UPLOAD_OPENAPI,
)
async def create_prediction_dicom_sr(
    request: Request, principal: PrincipalDep, ingestor: IngestorDep, settings: SettingsDep
) -> Response:
    """Same prediction path as POST /v1/predictions; the SR is built from the uploaded
    dataset in memory, so it can carry the patient module when the site allows it. A re-post
    (200) answers with the stored prediction's SR; when the intended-use gate judged this
    upload's header otherwise (RADLENS_GATE=flag), the Radlens-Intended-Use header says so
    (e.g. ``outside: BodyPartExamined WRIST; stored: none``)."""
    ingestor.check_capacity()
    data = await read_file(request)
    candidate = await ingestor.prepare(data)
    image_format = candidate.image.metadata.format
    if image_format != "dicom":
        raise DicomSourceRequiredError(
            f"the upload is a {image_format.upper()} image; an SR needs a DICOM source "
            "(nothing was stored)"
        )
    source = await run_in_threadpool(
        _source_of_upload, data, settings.dicom_copy_patient, settings.max_pixels
    )
    result = await ingestor.commit(candidate, principal.key_id)
    prediction = result.prediction
    # built after the commit: no transaction is open meanwhile
    findings: Any = result.findings
    if not result.created and findings:  # a re-post: the findings stored with the first
        findings = await run_in_threadpool(
            services.read_findings, request.app.state.resources.sessionmaker, prediction.id
        )
    # in the order every other route's SR has them (catalogue.sr_findings)
    findings = catalogue.in_model_order(prediction, findings or ())
    validated = clinical.validated(settings, prediction.model_name, prediction.model_version)
    sr = build_sr(prediction, source, findings, validated=validated)
    response = _dicom(sr, prediction.id, "sr")
    response.status_code = 201 if result.created else 200
    response.headers["Location"] = request.app.url_path_for(
        "get_prediction", prediction_id=str(prediction.id)
    )
    # a re-post whose header the gate judged otherwise than the stored SR's (app/ingest.py)
    verdict = verdict_header(result)
    if verdict is not None:
        response.headers[INTENDED_USE_HEADER] = verdict
    return response


def _source_of_upload(data: bytes, copy_patient: bool, max_pixels: int) -> Any:
    from radlens.models.dicomread import read_dicom_bytes

    # already decoded once by preprocessing: this read cannot fail on a valid instance
    ds = read_dicom_bytes(data, max_pixels=max_pixels, stop_before_pixels=True, force=True)
    return source_from_dataset(ds, copy_patient=copy_patient)

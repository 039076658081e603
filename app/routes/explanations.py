"""Explanations and DICOM outputs of a prediction: the Grad-CAM overlay (PNG), a DICOM
Structured Report and a Secondary Capture of the overlay (see docs/pacs-integration.md)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from app import services
from app.deps import MetricsDep, PredictorDep, SessionDep, SettingsDep
from app.dicom_outputs import (
    DICOM_MEDIA_TYPE,
    DicomSourceRequiredError,
    build_sc,
    build_sr,
    source_from_dataset,
    source_from_prediction,
)
from app.errors import AppError
from app.explain import require_explanation
from app.schemas import problem_responses
from app.settings import Settings
from app.tables import Prediction
from app.upload import MultipartRoute

router = APIRouter(prefix="/v1/predictions", tags=["explanations and DICOM outputs"])
upload_router = APIRouter(
    prefix="/v1/predictions", tags=["explanations and DICOM outputs"], route_class=MultipartRoute
)


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
            "description": "The prediction's source is not DICOM (PNG/JPEG), or its UIDs are "
            "pseudonymised",
            "content": problem_responses(409)[409]["content"],
        },
        **problem_responses(*statuses),
    }


def _stored_source(prediction: Prediction, settings: Settings) -> Any:
    if prediction.input_format == "dicom" and settings.uid_pseudonym_key_bytes is not None:
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
            "X-Radlens-Explained-Class": explanation.class_name,
            "X-Radlens-Explained-Layer": explanation.layer,
        },
    )


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
    return _dicom(build_sr(prediction, source), prediction_id, "sr")


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
    """The overlay as an RGB Secondary Capture in a new series of the source study,
    referencing the source instance; needs an explanation (post with ?explain=true)."""
    prediction = services.get_prediction(session, prediction_id)
    source = _stored_source(prediction, settings)
    explanation = require_explanation(session, prediction_id)
    return _dicom(build_sc(prediction, source, explanation.png), prediction_id, "sc")


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
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {"encoding": {"file": {"contentType": DICOM_MEDIA_TYPE}}}
            }
        }
    },
)
async def create_prediction_dicom_sr(
    file: Annotated[UploadFile, File(description="A DICOM image instance")],
    request: Request,
    session: SessionDep,
    predictor: PredictorDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Response:
    """Same prediction path as POST /v1/predictions; the SR is built from the uploaded
    dataset in memory, so it can carry the patient module when the site allows it."""
    from app.ingest import predict_and_store

    data = await file.read()
    result = await predict_and_store(
        data, session=session, predictor=predictor, settings=settings, metrics=metrics
    )
    prediction = result.prediction
    if result.image.metadata.format != "dicom":
        raise DicomSourceRequiredError(
            f"the upload is a {result.image.metadata.format.upper()} image; the prediction "
            f"{prediction.id} is stored, but an SR needs a DICOM source"
        )
    source = await run_in_threadpool(_source_of_upload, data, settings.dicom_copy_patient)
    response = _dicom(build_sr(prediction, source), prediction.id, "sr")
    response.status_code = 201 if result.created else 200
    response.headers["Location"] = request.app.url_path_for(
        "get_prediction", prediction_id=str(prediction.id)
    )
    return response


def _source_of_upload(data: bytes, copy_patient: bool) -> Any:
    import io

    import pydicom

    # already decoded once by preprocessing: this read cannot fail on a valid instance
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    return source_from_dataset(ds, copy_patient=copy_patient)

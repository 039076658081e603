"""API v1 predictions: upload an image, read one prediction, list them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, Field

from radlens.app import clinical, services
from radlens.app.auth import PrincipalDep
from radlens.app.deps import IngestorDep, SessionDep
from radlens.app.errors import UnknownFindingError
from radlens.app.pseudonym import pseudonymise_uid
from radlens.app.schemas import (
    NOT_FOR_CLINICAL_USE,
    FindingPublic,
    FrameResult,
    ModelRef,
    PredictionPage,
    PredictionPublic,
    problem_responses,
)
from radlens.app.services import FindingValue
from radlens.app.tables import Prediction, PredictionFinding
from radlens.app.upload import read_file
from radlens.models.decision import finding_point_of
from radlens.models.manifest import ModelManifest

MAX_PAGE_SIZE = 100
# Filter values the database can compare: PostgreSQL text cannot hold NUL and its integer
# columns are 32-bit; outside these a filter is a 422, not a driver error (found by fuzzing).
NO_NUL = r"^[^\x00]*$"
MAX_INT32 = 2**31 - 1


upload_router = APIRouter(prefix="/v1/predictions", tags=["predictions"])
router = APIRouter(prefix="/v1/predictions", tags=["predictions"])

EXPLAIN_DESCRIPTION = (
    "Also compute and store the Grad-CAM overlay (GET .../heatmap); re-posting with "
    "explain=true adds it to a stored prediction"
)
FILE_DESCRIPTION = "A DICOM (.dcm), PNG or JPEG image; the format is read from the bytes"


# The cursor's format, so that a client (and schemathesis) can tell a well-formed cursor from
# junk: unpadded base64url of the JSON array [created_at (ISO 8601 with its UTC offset),
# prediction id]. A well-formed cursor is accepted even if no prediction has that position.
CURSOR_DESCRIPTION = (
    "next_cursor of the previous page. Format `radlens-cursor`: unpadded base64url of the JSON "
    'array `["<created_at, ISO 8601 with offset>", "<prediction id>"]`; empty: the first page; '
    "anything else is a 422"
)
# (empty is the first page, as no cursor: a form or client that sends the field blank)
CURSOR_SCHEMA: dict[str, Any] = {"format": "radlens-cursor", "pattern": "^[A-Za-z0-9_-]*$"}
# What the upload's `file` part may hold (OpenAPI encoding: a list of media types; the service
# reads the format from the bytes, whatever the part's Content-Type says).
UPLOAD_MEDIA_TYPES = "application/dicom, image/png, image/jpeg"


EXPLAIN_FINDING_DESCRIPTION = (
    "Multi-label models: the finding(s) to explain, comma-separated; implies explain=true "
    "(without it the explanation shows the top positive findings, or the highest-scoring one "
    "when none is positive). A name the model does not have is a 404 unknown-finding"
)
FINDING_DESCRIPTION = (
    "Multi-label models: only predictions with this finding (a name of the model's findings, "
    "GET /v1/models); a name no model finding has is a 404 unknown-finding"
)
POSITIVE_DESCRIPTION = (
    "With finding: only predictions where it was decided positive (true) or negative (false). "
    "Alone: multi-label predictions with at least one positive finding (true) or none (false)"
)


IN_DISTRIBUTION_DESCRIPTION = (
    "The out-of-distribution verdict stored with the prediction: true lists those the model's "
    "detector scored in distribution, false those it flagged; predictions never scored (no "
    "detector, or stored before the gate) match neither"
)


DATE_TIME_DESCRIPTION = (
    "ISO 8601 date and time (e.g. 2026-01-01T00:00:00Z or 2026-01-01T01:00:00%2B01:00); "
    "without a zone it is UTC. A '+' of an offset left unencoded in the URL arrives as a "
    "space and is read as '+'"
)
_ISO_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
# A URL query decodes '+' to a space, so "...T01:00:00+01:00" typed into a URL arrives as
# "...T01:00:00 01:00": a space followed by the offset's digits cannot mean anything else.
_DECODED_PLUS = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?) (\d{2}(?::?\d{2})?)$"
)


def _iso_date_time(value: Any) -> Any:
    """The document says date-time: refuse what pydantic would also take (Unix seconds such as
    2934113872, a bare date) instead of answering it as if it were a documented value; read a
    positive offset whose '+' the URL turned into a space as that offset (not a 422)."""
    if isinstance(value, str):
        if not _ISO_DATE_TIME.match(value):
            raise ValueError("must be an ISO 8601 date and time, e.g. 2026-01-01T00:00:00Z")
        plus = _DECODED_PLUS.match(value)
        if plus:
            return f"{plus.group(1)}+{plus.group(2)}"
    return value


class PredictionUpload(BaseModel):
    """The multipart/form-data body of ``POST /v1/predictions`` (documentation only)."""

    file: bytes = Field(description=FILE_DESCRIPTION)


# The upload routes read their own body (after the key check: app/upload.read_file), so the
# body is declared here for OpenAPI and Swagger UI.
def upload_openapi(media_types: str) -> dict[str, Any]:
    """The multipart upload body, its ``file`` part limited to ``media_types``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"$ref": "#/components/schemas/PredictionUpload"},
                    "encoding": {"file": {"contentType": media_types}},
                }
            },
        },
    }


UPLOAD_OPENAPI = upload_openapi(UPLOAD_MEDIA_TYPES)
OPENAPI_SCHEMAS = {"PredictionUpload": PredictionUpload}  # added to components (app/main.py)


def to_public(
    prediction: Prediction,
    loaded: ModelManifest | None = None,
    findings: Sequence[PredictionFinding | FindingValue] = (),
    *,
    validated: bool = False,
) -> PredictionPublic:
    """``validated``: the model that made the prediction is validated for clinical use
    (app/clinical.py), so the answer carries no notice."""
    return PredictionPublic(
        id=prediction.id,
        created_at=prediction.created_at,
        model=ModelRef(name=prediction.model_name, version=prediction.model_version),
        preprocessing_version=prediction.preprocessing_version,
        label=prediction.label,
        scores={str(k): float(v) for k, v in prediction.scores.items()},
        threshold=prediction.threshold,
        operating_point=prediction.operating_point,
        study_instance_uid=prediction.study_instance_uid,
        series_instance_uid=prediction.series_instance_uid,
        sop_instance_uid=prediction.sop_instance_uid,
        instance_number=prediction.instance_number,
        modality=prediction.modality,
        rows=prediction.rows,
        columns=prediction.columns,
        frames=prediction.frames,
        photometric_interpretation=prediction.photometric_interpretation,
        transfer_syntax_uid=prediction.transfer_syntax_uid,
        input_sha256=prediction.input_sha256,
        input_format=prediction.input_format,
        inference_ms=prediction.inference_ms,
        batch_size=prediction.batch_size,
        device=prediction.device,
        runtime=prediction.runtime,
        precision=prediction.precision,
        frame_result=(
            FrameResult.model_validate(prediction.frame_result) if prediction.frame_result else None
        ),
        notice=None if validated else NOT_FOR_CLINICAL_USE,
        label_mode="multi-label" if findings else "single-label",
        findings=_public_findings(prediction, findings, loaded) if findings else None,
        ood_score=prediction.ood_score,
        in_distribution=prediction.in_distribution,
        intended_use_violations=prediction.intended_use_violations,
        burned_in_annotation=_burned_in(prediction.burned_in_annotation),
        voi=prediction.voi,
    )


def _burned_in(value: str | None) -> Literal["YES", "NO"] | None:
    """The stored Burned In Annotation as the schema's enum (the column holds only these)."""
    return "YES" if value == "YES" else "NO" if value == "NO" else None


def stored_finding_point(
    prediction: Prediction, loaded: ModelManifest | None, finding: str, threshold: float
) -> str | None:
    """The operating point one stored finding decision was taken at: its stored threshold
    read against the loaded model's table (models.decision.finding_point_of), so a stored
    prediction answers the same later; None (unknown) for another model version. The API's
    ``findings`` and the /ui prediction page both say it."""
    if loaded is None or (loaded.name, loaded.version) != (
        prediction.model_name,
        prediction.model_version,
    ):
        return None
    return finding_point_of(loaded, prediction.operating_point, finding, float(threshold))


def _public_findings(
    prediction: Prediction,
    findings: Sequence[PredictionFinding | FindingValue],
    loaded: ModelManifest | None = None,
) -> list[FindingPublic]:
    """In the order of the prediction's scores (the model's finding order), each with the
    operating point it was decided at (:func:`stored_finding_point`)."""
    order = {name: i for i, name in enumerate(prediction.scores)}
    public = []
    for f in findings:
        name = f.finding if isinstance(f, PredictionFinding) else f.name
        public.append(
            FindingPublic(
                name=name,
                score=f.score,
                threshold=f.threshold,
                positive=f.positive,
                operating_point=stored_finding_point(prediction, loaded, name, f.threshold),
            )
        )
    return sorted(public, key=lambda f: order.get(f.name, len(order)))


@upload_router.post(
    "",
    status_code=201,
    response_model=PredictionPublic,
    summary="Predict on one uploaded image",
    responses={
        201: {
            "description": "Predicted and stored; Location names the new prediction",
            "headers": {
                "Location": {"description": "/v1/predictions/{id}", "schema": {"type": "string"}}
            },
        },
        200: {
            "model": PredictionPublic,
            "description": "This instance was already predicted by this model: the stored "
            "prediction (same id), nothing new is stored",
        },
        **problem_responses(400, 404, 413, 415, 422, 500, 503),
    },
    openapi_extra=UPLOAD_OPENAPI,
)
async def create_prediction(
    request: Request,
    principal: PrincipalDep,
    ingestor: IngestorDep,
    explain: Annotated[bool, Query(description=EXPLAIN_DESCRIPTION)] = False,
    finding: Annotated[
        str | None,
        Query(max_length=1024, pattern=NO_NUL, description=EXPLAIN_FINDING_DESCRIPTION),
    ] = None,
) -> Response:
    """Preprocess the image exactly as in training, run the loaded model, store the result.

    Send the image as multipart/form-data in a field named `file`. Re-posting the same
    instance (same SOP Instance UID, or the same bytes when there is none) for the same model
    returns the stored prediction with status 200.
    """
    # The key (dependencies) before the body; a full queue refuses before reading it.
    explained = _explained_findings(finding, ingestor.predictor.manifest)
    explain = explain or explained is not None  # naming a finding asks for its explanation
    ingestor.check_capacity()
    data = await read_file(request)
    result = await ingestor.ingest(data, principal.key_id, explain=explain, findings=explained)
    stored = result.prediction
    findings = await _stored_findings(request, result, ingestor.predictor.manifest)
    headers = {"Location": request.app.url_path_for("get_prediction", prediction_id=str(stored.id))}
    if explain:
        heatmap = request.app.url_path_for("get_heatmap", prediction_id=str(stored.id))
        headers["Link"] = f'<{heatmap}>; rel="describedby"; type="image/png"'
    validated = clinical.validated(
        request.app.state.settings, stored.model_name, stored.model_version
    )
    public = to_public(stored, ingestor.predictor.manifest, findings, validated=validated)
    # a re-post: the intended-use verdict on the header it was sent with (Ingested)
    public.intended_use_violations, public.stored_intended_use_violations = (
        result.intended_use_verdict()
    )
    return Response(
        content=public.model_dump_json(),
        status_code=201 if result.created else 200,
        media_type="application/json",
        headers=headers,
    )


def _explained_findings(finding: str | None, manifest: ModelManifest) -> list[str] | None:
    """The findings named by ``?finding=`` (comma-separated) for the explanation; refused
    (404, before the body is read) on a single-label model or when a name is not one of the
    model's findings."""
    if finding is None:
        return None
    names = [n.strip() for n in finding.split(",") if n.strip()]
    if not manifest.multi_label:
        raise UnknownFindingError(
            f"model {manifest.ref} is single-label: it has no findings (received {finding!r})"
        )
    unknown = [n for n in names if n not in manifest.class_names]
    if unknown or not names:
        raise UnknownFindingError(
            f"unknown finding(s) {unknown or [finding]!r}; the model's findings: "
            f"{', '.join(manifest.class_names)}"
        )
    return names


def _single_valued(request: Request) -> None:
    """Every filter is one value: ``?model_name=a&model_name=b`` is refused (422), not read as
    its last value (schemathesis' negative phase, docs/benchmarks/reliability.md)."""
    repeated = sorted({k for k in request.query_params if len(request.query_params.getlist(k)) > 1})
    if repeated:
        name = repeated[0]
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", name),
                    "msg": f"{name} was given {len(request.query_params.getlist(name))} times; "
                    "give it once",
                    "input": request.query_params.getlist(name),
                }
            ]
        )


@router.get(
    "/{prediction_id}",
    response_model=PredictionPublic,
    name="get_prediction",
    summary="Read one prediction",
    responses=problem_responses(404, 422, 500, 503),
)
def get_prediction(
    prediction_id: uuid.UUID, session: SessionDep, request: Request
) -> PredictionPublic:
    """The stored prediction with this id (404 when there is none)."""
    prediction = services.get_prediction(session, prediction_id)
    found = services.findings_of(session, [prediction.id]).get(prediction.id, [])
    validated = clinical.validated(
        request.app.state.settings, prediction.model_name, prediction.model_version
    )
    return to_public(prediction, _loaded_manifest(request), found, validated=validated)


@router.get(
    "",
    response_model=PredictionPage,
    summary="List predictions, newest first",
    responses=problem_responses(404, 422, 500, 503),
)
def list_predictions(
    session: SessionDep,
    request: Request,
    study_instance_uid: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    label: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    model_name: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    model_version: Annotated[int | None, Query(ge=1, le=MAX_INT32)] = None,
    created_after: Annotated[
        datetime | None, BeforeValidator(_iso_date_time), Query(description=DATE_TIME_DESCRIPTION)
    ] = None,
    created_before: Annotated[
        datetime | None, BeforeValidator(_iso_date_time), Query(description=DATE_TIME_DESCRIPTION)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description=CURSOR_DESCRIPTION, json_schema_extra=CURSOR_SCHEMA),
    ] = None,
    finding: Annotated[
        str | None, Query(max_length=128, pattern=NO_NUL, description=FINDING_DESCRIPTION)
    ] = None,
    positive: Annotated[bool | None, Query(description=POSITIVE_DESCRIPTION)] = None,
    in_distribution: Annotated[bool | None, Query(description=IN_DISTRIBUTION_DESCRIPTION)] = None,
) -> PredictionPage:
    """Filter by study, label, model name/version, creation time, (multi-label models)
    finding and its decision, and the out-of-distribution verdict; page with next_cursor."""
    _single_valued(request)
    manifest = _loaded_manifest(request)
    known = manifest.class_names if manifest is not None and manifest.multi_label else []
    services.check_finding_filter(session, finding, known)
    filters = services.PredictionFilters(
        study_instance_uid=pseudonymise_uid(
            study_instance_uid, request.app.state.settings.uid_pseudonym_key_bytes
        ),
        label=label,
        model_name=model_name,
        model_version=model_version,
        created_after=services.as_utc(created_after),
        created_before=services.as_utc(created_before),
        finding=finding,
        positive=positive,
        in_distribution=in_distribution,
    )
    position = services.Cursor.decode(cursor) if cursor else None
    items, next_cursor = services.list_predictions(session, filters, limit=limit, cursor=position)
    found = services.findings_of(session, [p.id for p in items])
    validated = clinical.validator(request.app.state.settings)
    return PredictionPage(
        items=[
            to_public(
                p, manifest, found.get(p.id, []), validated=validated(p.model_name, p.model_version)
            )
            for p in items
        ],
        next_cursor=next_cursor.encode() if next_cursor else None,
    )


async def _stored_findings(
    request: Request, result: Any, manifest: ModelManifest
) -> Sequence[PredictionFinding | FindingValue]:
    """A new prediction's findings as just decided; a re-post's as stored with the first."""
    if result.created or not manifest.multi_label:
        return tuple(result.findings)
    return await run_in_threadpool(
        services.read_findings, request.app.state.resources.sessionmaker, result.prediction.id
    )


def _loaded_manifest(request: Request) -> ModelManifest | None:
    resources = getattr(request.app.state, "resources", None)
    return resources.predictor.manifest if resources is not None else None

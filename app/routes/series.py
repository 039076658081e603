"""API v1 series and study results: the stored predictions of a series (or a study) aggregated,
with links to each instance's prediction, and a series Structured Report (app/series.py)."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from radlens.app import clinical
from radlens.app.deps import SessionDep, SettingsDep
from radlens.app.dicom_outputs import (
    DICOM_MEDIA_TYPE,
    build_series_sr,
    output_series_uid,
    source_from_prediction,
)
from radlens.app.errors import AppError, NotFoundError
from radlens.app.routes.explanations import PseudonymisedUidsError
from radlens.app.schemas import NOT_FOR_CLINICAL_USE, ModelRef, problem_responses
from radlens.app.series import (
    FindingSeriesThresholds,
    InstanceScore,
    ModelResult,
    SeriesThresholds,
    SeriesView,
    series_output_uid,
    series_results,
    stored_uid_candidates,
    study_results,
)
from radlens.app.settings import Settings
from radlens.models.manifest import ModelManifest

router = APIRouter(prefix="/v1", tags=["series and studies"])

# A UID as the service may have stored it: at most 64 characters, no ASCII control character
# (app/ingest.check_recordable stores printable ones only, a narrower set; a UID outside it is
# simply not found). Not only DICOM's digits and dots (PS3.5 9.1): an
# instance whose UIDs are not (an anonymiser writing UUIDs, pydicom/deid's example output; a
# hospital's UID with letters) is predicted and stored, so its series and study must be
# readable by the UIDs its prediction shows (QA round 18). A UID that is stored under neither
# form is a 404 when it is a DICOM UID, else a 422 that says it is not one (_not_stored). The
# OpenAPI document states the DICOM form (DICOM_UID_PATTERN), the one a conforming client sends;
# its description says that other stored UIDs are taken too.
UID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
DICOM_UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
DICOM_UID = re.compile(DICOM_UID_PATTERN)


class MalformedUidError(AppError):
    code = "invalid-uid"
    title = "Not a DICOM UID (digits and dots), and nothing is stored under it; check the UID"
    status_code = 422


def _not_stored(what: str, uid: str) -> AppError:
    """The error for a series or study UID under which no prediction is stored."""
    if DICOM_UID.fullmatch(uid) is None:
        return MalformedUidError(
            f"{what} UID {uid!r} is not a DICOM UID, and no prediction is stored under it"
        )
    if what == "study":
        return NotFoundError(f"no prediction with a series is stored for study {uid!r}")
    return NotFoundError(f"no prediction is stored for series {uid!r}")


def uid_path(description: str) -> Any:
    """A UID path parameter: any UID radlens could have stored (an anonymiser's UUID too, QA
    round 18), at most 64 characters; the OpenAPI document states DICOM's digits and dots."""
    return Path(
        max_length=64,
        pattern=UID_PATTERN,
        json_schema_extra={"pattern": DICOM_UID_PATTERN},
        description=description,
    )


UidPath = Annotated[
    str,
    uid_path(
        "The UID as sent by the modality, or as a response shows it (a pseudonym when "
        "RADLENS_UID_PSEUDONYM_KEY is set). A UID stored as received that is not digits and dots "
        "(an anonymiser's UUID) is taken too"
    ),
]


class InstanceLink(BaseModel):
    """One instance's prediction in a series result."""

    prediction_id: uuid.UUID
    sop_instance_uid: str | None
    instance_number: int | None = Field(
        default=None,
        description="The source's DICOM Instance Number, as a viewer numbers the image in the "
        "series (null when unknown)",
    )
    score: float = Field(description="The instance's score for the aggregated class")
    label: str
    key_frame: int | None = Field(
        default=None, description="Multi-frame instances: the frame with the highest score"
    )
    href: str = Field(description="GET this for the instance's full prediction")


class SeriesFinding(BaseModel):
    """One finding of a multi-label model aggregated over the series' instances."""

    name: str = Field(examples=["Effusion"])
    score: float = Field(description="The instances' scores for this finding, aggregated")
    threshold: float = Field(
        description="The threshold this finding is decided at: its instances' one, or the "
        "series threshold the model's training chose for it (threshold_source)"
    )
    positive: bool = Field(description="score >= threshold")
    threshold_source: str = Field(
        default="model",
        examples=["series"],
        description="'series' when the threshold is the series threshold the model's training "
        "chose for this finding on validation series for this aggregation (the loaded model, "
        "whose instances were decided at its finding thresholds), 'model' when it is the "
        "instances' threshold (another aggregation or model version, or a finding whose "
        "validation series were all of one class)",
    )
    key_instances: list[InstanceLink] = Field(
        description="The RADLENS_SERIES_TOP_K instances with the highest scores for this finding"
    )


FINDINGS_DESCRIPTION = (
    "Multi-label models: every finding aggregated on its own and decided at its own threshold "
    "(its series threshold when threshold_source is 'series'; scores are independent, they do "
    "not sum to one); class_name, score, threshold and threshold_source are then the top "
    "positive finding's (else the top finding's) and label joins the positive findings with "
    "'|'. Null for single-label models."
)


INSTANCE_THRESHOLDS_DIFFER = (
    "True when this model's instances (for a multi-label model: some finding's) were decided at "
    "different thresholds -- the threshold or operating point changed while the series arrived. "
    "The series is then decided at its newest instance's threshold (or the series threshold "
    "chosen for it, threshold_source); the older instances' own labels keep theirs."
)


class SeriesResult(BaseModel):
    """One model's aggregate over a series' instances."""

    model: ModelRef
    class_name: str = Field(description="The class whose instance scores were aggregated")
    score: float = Field(description="The aggregated score (RADLENS_SERIES_AGGREGATION)")
    threshold: float | None
    label: str
    positive: bool | None = Field(description="Binary models: score >= threshold")
    threshold_source: str | None = Field(
        default=None,
        description="Binary models: 'series' when the threshold is the series threshold the "
        "model's training chose on validation series for this aggregation, 'model' when it is "
        "the instances' threshold; multi-label models: the top finding's (see findings)",
    )
    instance_thresholds_differ: bool = Field(
        default=False,
        description=INSTANCE_THRESHOLDS_DIFFER,
    )
    instance_count: int
    key_instances: list[InstanceLink] = Field(
        description="The RADLENS_SERIES_TOP_K instances with the highest scores"
    )
    instances: list[InstanceLink] = Field(description="Every instance, highest score first")
    findings: list[SeriesFinding] | None = Field(default=None, description=FINDINGS_DESCRIPTION)
    notice: str | None = Field(description="Present unless the model is validated")


class SeriesPublic(BaseModel):
    """A series' aggregate per model; never any patient identifier."""

    series_instance_uid: str = Field(description="As stored (a pseudonym when pseudonymised)")
    study_instance_uid: str | None
    modality: str | None
    rows: int
    columns: int
    uids_pseudonymised: bool
    aggregation: str = Field(examples=["max"])
    top_k: int
    results: list[SeriesResult] = Field(description="Per model, newest prediction first")
    study_href: str | None
    sr_href: str = Field(description="GET this for the series' DICOM Structured Report")


class SeriesLink(BaseModel):
    series_instance_uid: str
    modality: str | None
    instance_count: int
    score: float = Field(description="The series' highest aggregated score over the models")
    href: str


class StudyResult(BaseModel):
    """One model's result for a study: its most positive series' aggregate."""

    model: ModelRef
    class_name: str
    score: float
    threshold: float | None
    label: str
    positive: bool | None
    threshold_source: str | None = Field(default=None, description="As in a series result")
    instance_thresholds_differ: bool = Field(
        default=False, description="As in a series result, for the key series"
    )
    key_series_instance_uid: str
    key_series_href: str
    key_instances: list[InstanceLink]
    series_count: int
    instance_count: int
    findings: list[SeriesFinding] | None = Field(
        default=None, description="As in a series result, for the key series"
    )
    notice: str | None


class StudyPublic(BaseModel):
    """A study's series and, per model, the result of its most positive series."""

    study_instance_uid: str
    aggregation: str
    top_k: int
    results: list[StudyResult]
    series: list[SeriesLink] = Field(description="Highest score first")


def _notice(result: ModelResult, settings: Settings) -> str | None:
    """The notice unless the model that made the result is validated (app/clinical.py)."""
    validated = clinical.validated(settings, result.model_name, result.model_version)
    return None if validated else NOT_FOR_CLINICAL_USE


def _instance_links(request: Request, items: list[InstanceScore]) -> list[InstanceLink]:
    return [
        InstanceLink(
            prediction_id=i.prediction.id,
            sop_instance_uid=i.prediction.sop_instance_uid,
            instance_number=i.prediction.instance_number,
            score=i.score,
            label=i.prediction.label,
            key_frame=(i.prediction.frame_result or {}).get("key_frame"),
            href=request.app.url_path_for("get_prediction", prediction_id=str(i.prediction.id)),
        )
        for i in items
    ]


def _links(request: Request, result: ModelResult, which: str) -> list[InstanceLink]:
    return _instance_links(request, result.key_instances if which == "key" else result.instances)


def _findings(request: Request, result: ModelResult) -> list[SeriesFinding] | None:
    if result.findings is None:
        return None
    return [
        SeriesFinding(
            name=f.name,
            score=f.score,
            threshold=f.threshold,
            positive=f.positive,
            threshold_source=f.threshold_source,
            key_instances=_instance_links(request, f.key_instances),
        )
        for f in result.findings
    ]


def _loaded(request: Request) -> ModelManifest | None:
    resources = getattr(request.app.state, "resources", None)
    return resources.predictor.manifest if resources is not None else None


def _series_result(request: Request, result: ModelResult) -> SeriesResult:
    return SeriesResult(
        model=ModelRef(name=result.model_name, version=result.model_version),
        class_name=result.class_name,
        score=result.score,
        threshold=result.threshold,
        label=result.label,
        positive=result.positive,
        threshold_source=result.threshold_source,
        instance_thresholds_differ=result.instance_thresholds_differ,
        instance_count=result.instance_count,
        key_instances=_links(request, result, "key"),
        instances=_links(request, result, "all"),
        findings=_findings(request, result),
        notice=_notice(result, request.app.state.settings),
    )


def _series_thresholds(request: Request, settings: Settings) -> SeriesThresholds:
    """The loaded model's series threshold (a multi-label model's: per finding), when its
    training chose one for the configured aggregation (models.aggregation.
    recorded_series_threshold, recorded_finding_series_thresholds); other models: none."""
    from radlens.models.aggregation import (
        recorded_finding_series_thresholds,
        recorded_series_threshold,
    )
    from radlens.models.decision import finding_label

    loaded = _loaded(request)
    if loaded is None:
        return {}
    method, k = settings.series_aggregation, settings.series_top_k
    if loaded.multi_label:
        model = loaded.finding_thresholds
        pairs: dict[str, tuple[float | None, float]] = {
            name: (model[name], value)
            for name, value in recorded_finding_series_thresholds(loaded.metrics, method, k).items()
            if name in model  # a finding the model does not have: nothing to decide
        }
        if not pairs:
            return {}
        none_name = finding_label([], loaded)  # the no-finding label, as decide() gives it
        return {(loaded.name, loaded.version): FindingSeriesThresholds(pairs, none_name)}
    found = recorded_series_threshold(loaded.metrics, method, k)
    return {} if found is None else {(loaded.name, loaded.version): (loaded.threshold, found)}


def find_series(
    session: Any, series_uid: str, settings: Settings, request: Request | None = None
) -> SeriesView:
    """The series stored under ``series_uid`` as the caller gave it (as the modality sent it,
    pseudonymised here with the site key, or as a response shows it), aggregated per model;
    404 (422 for a UID that is no DICOM UID) when nothing is stored. Also the /ui series
    page's lookup (app/ui/routes.py)."""
    candidates = stored_uid_candidates(series_uid, settings.uid_pseudonym_key_bytes)
    view = series_results(
        session,
        candidates,
        settings.series_aggregation,
        settings.series_top_k,
        _series_thresholds(request, settings) if request is not None else None,
    )
    if view is None:
        raise _not_stored("series", series_uid)
    return view


@router.get(
    "/series/{series_uid}",
    response_model=SeriesPublic,
    name="get_series",
    summary="A series' result: its instances' predictions aggregated, per model",
    responses=problem_responses(404, 422, 500, 503),
)
def get_series(
    series_uid: UidPath, session: SessionDep, settings: SettingsDep, request: Request
) -> SeriesPublic:
    """Aggregate (max, mean of the top k or noisy-or) of the stored instances; 404 if none."""
    view = find_series(session, series_uid, settings, request)
    uid = view.series_instance_uid
    return SeriesPublic(
        series_instance_uid=uid,
        study_instance_uid=view.study_instance_uid,
        modality=view.modality,
        rows=view.rows,
        columns=view.columns,
        uids_pseudonymised=view.uids_pseudonymised,
        aggregation=settings.series_aggregation,
        top_k=settings.series_top_k,
        results=[_series_result(request, r) for r in view.results],
        study_href=(
            request.app.url_path_for("get_study", study_uid=view.study_instance_uid)
            if view.study_instance_uid
            else None
        ),
        sr_href=request.app.url_path_for("get_series_sr", series_uid=uid),
    )


@router.get(
    "/studies/{study_uid}",
    response_model=StudyPublic,
    name="get_study",
    summary="A study's result: per model, its most positive series' aggregate",
    responses=problem_responses(404, 422, 500, 503),
)
def get_study(
    study_uid: UidPath, session: SessionDep, settings: SettingsDep, request: Request
) -> StudyPublic:
    """Every series of the study aggregated, with links; 404 when none is stored."""
    candidates = stored_uid_candidates(study_uid, settings.uid_pseudonym_key_bytes)
    view = study_results(
        session,
        candidates,
        settings.series_aggregation,
        settings.series_top_k,
        _series_thresholds(request, settings),
    )
    if view is None:
        raise _not_stored("study", study_uid)
    results = []
    for result, series in view.results:
        href = request.app.url_path_for("get_series", series_uid=series.series_instance_uid)
        results.append(
            StudyResult(
                model=ModelRef(name=result.model_name, version=result.model_version),
                class_name=result.class_name,
                score=result.score,
                threshold=result.threshold,
                label=result.label,
                positive=result.positive,
                threshold_source=result.threshold_source,
                instance_thresholds_differ=result.instance_thresholds_differ,
                key_series_instance_uid=series.series_instance_uid,
                key_series_href=href,
                key_instances=_links(request, result, "key"),
                series_count=sum(
                    any(
                        (r.model_name, r.model_version) == (result.model_name, result.model_version)
                        for r in s.results
                    )
                    for s in view.series
                ),
                instance_count=sum(
                    r.instance_count
                    for s in view.series
                    for r in s.results
                    if (r.model_name, r.model_version) == (result.model_name, result.model_version)
                ),
                findings=_findings(request, result),
                notice=_notice(result, settings),
            )
        )
    return StudyPublic(
        study_instance_uid=view.study_instance_uid,
        aggregation=settings.series_aggregation,
        top_k=settings.series_top_k,
        results=results,
        series=[
            SeriesLink(
                series_instance_uid=s.series_instance_uid,
                modality=s.modality,
                instance_count=max(r.instance_count for r in s.results),
                score=max(r.score for r in s.results),
                href=request.app.url_path_for("get_series", series_uid=s.series_instance_uid),
            )
            for s in view.series
        ],
    )


@router.get(
    "/series/{series_uid}/dicom/sr",
    name="get_series_sr",
    summary="A DICOM Structured Report of the series' result, referencing its key instances",
    response_class=Response,
    responses={
        200: {
            "description": "Comprehensive 3D SR (application/dicom) in the series' study",
            "content": {DICOM_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        409: {
            "description": "The series' UIDs are pseudonymised",
            "content": problem_responses(409)[409]["content"],
        },
        **problem_responses(404, 422, 500, 503),
    },
)
def get_series_sr(
    series_uid: UidPath, session: SessionDep, settings: SettingsDep, request: Request
) -> Response:
    """The result of the loaded model (else the newest) as an SR: the series' finding and
    score, and the key instances as its image references; patient attributes empty."""
    view = find_series(session, series_uid, settings, request)
    # as the per-instance SR: a row's own record decides; rows stored before 0004 recorded
    # nothing, and the current setting is the best guess for them
    key_set = settings.uid_pseudonym_key_bytes is not None
    if any(
        i.prediction.uids_pseudonymised or (i.prediction.uids_pseudonymised is None and key_set)
        for r in view.results
        for i in r.instances
    ):
        raise PseudonymisedUidsError(
            f"series {series_uid!r} stores pseudonyms, not the source's UIDs"
        )
    manifest = _loaded(request)
    loaded = (manifest.name, manifest.version) if manifest is not None else None
    result = next(
        (r for r in view.results if (r.model_name, r.model_version) == loaded), view.results[0]
    )
    sources = [source_from_prediction(i.prediction) for i in result.key_instances]
    data = build_series_sr(
        result,
        sources,
        aggregation=settings.series_aggregation,
        # the SR series of this model's per-instance SRs about the series
        series_uid=output_series_uid(
            view.series_instance_uid, result.model_name, result.model_version, "sr"
        ),
        sop_uid=series_output_uid(view, result, "sr"),
        validated=clinical.validated(settings, result.model_name, result.model_version),
    )
    return Response(
        data,
        media_type=DICOM_MEDIA_TYPE,
        headers={"Content-Disposition": 'attachment; filename="series-sr.dcm"'},
    )

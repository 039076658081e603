"""QIDO-RS and WADO-RS (PS3.18 §10.4, §10.6) for the SR and SC objects radlens produced.

Search: ``GET /dicomweb/studies``, ``/series``, ``/instances`` and their study- and
series-scoped forms, answered in DICOM JSON (``application/dicom+json``) with the standard
match keys (app/catalogue.py), ``limit`` and ``offset``; 204 when nothing matches.
Retrieve: a study, series or instance as ``multipart/related; type="application/dicom"``,
their ``/metadata`` in DICOM JSON (the Pixel Data of an SC as a BulkDataURI to its frame),
and ``/frames/1`` of an SC. Behind the API key's read scope, as every GET. The objects are
built on request from the stored prediction (app/dicom_outputs.py), as
``GET /v1/predictions/{id}/dicom/...`` builds them: the same bytes, the same UIDs.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import URL

from radlens.app import catalogue
from radlens.app.catalogue import OutputInstance
from radlens.app.deps import SessionDep, SettingsDep
from radlens.app.dicom_outputs import build_sc, build_sr, source_from_prediction
from radlens.app.errors import AppError
from radlens.app.schemas import problem_responses
from radlens.app.tables import Explanation, Prediction

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

DICOM_JSON = "application/dicom+json"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
MAX_LIMIT = 1000


class DicomObjectNotFoundError(AppError):
    code = "dicom-object-not-found"
    title = (
        "No SR or Secondary Capture radlens produced has these UIDs; search with "
        "GET /dicomweb/studies"
    )
    status_code = 404


class DicomJSON(JSONResponse):
    media_type = DICOM_JSON


_LIMIT = Query(ge=1, le=MAX_LIMIT, description="results at most")
_OFFSET = Query(ge=0, description="results skipped")
_SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Matches (DICOM JSON)", "content": {DICOM_JSON: {}}},
    204: {"description": "Nothing matches"},
    **problem_responses(400, 422, 500, 503),
}
_RETRIEVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The objects, one per part",
        "content": {'multipart/related; type="application/dicom"': {}},
    },
    **problem_responses(404, 500, 503),
}
_METADATA_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON of each object", "content": {DICOM_JSON: {}}},
    **problem_responses(404, 500, 503),
}


# --- search ----------------------------------------------------------------------------


def _outputs(session: Any, settings: Any, study: str | None) -> list[OutputInstance]:
    return catalogue.find_outputs(
        session, study=study, pseudonym_key_set=settings.uid_pseudonym_key_bytes is not None
    )


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"


def _study_url(request: Request, study: str) -> str:
    return f"{_base(request)}/studies/{study}"


def _series_url(request: Request, o: OutputInstance) -> str:
    return f"{_study_url(request, o.study_instance_uid)}/series/{o.series_instance_uid}"


def _instance_url(request: Request, o: OutputInstance) -> str:
    return f"{_series_url(request, o)}/instances/{o.sop_instance_uid}"


def _el(vr: str, *values: Any) -> dict[str, Any]:
    element: dict[str, Any] = {"vr": vr}
    if values:
        element["Value"] = list(values)
    return element


def _empty_identification() -> dict[str, Any]:
    return {
        "00080020": _el("DA"),
        "00080030": _el("TM"),
        "00080050": _el("SH"),
        "00080090": _el("PN"),
        "00100010": _el("PN"),
        "00100020": _el("LO"),
        "00200010": _el("SH"),
    }


def _study_json(request: Request, uid: str, members: list[OutputInstance]) -> dict[str, Any]:
    series = {m.series_instance_uid for m in members}
    return {
        **_empty_identification(),
        "00080061": _el("CS", *sorted({m.modality for m in members})),
        "00081190": _el("UR", _study_url(request, uid)),
        "0020000D": _el("UI", uid),
        "00201206": _el("IS", len(series)),
        "00201208": _el("IS", len(members)),
    }


def _series_json(request: Request, o: OutputInstance, count: int) -> dict[str, Any]:
    return {
        "00080060": _el("CS", o.modality),
        "0008103E": _el("LO", o.series_description),
        "00081190": _el("UR", _series_url(request, o)),
        "0020000D": _el("UI", o.study_instance_uid),
        "0020000E": _el("UI", o.series_instance_uid),
        "00200011": _el("IS", o.series_number),
        "00201209": _el("IS", count),
    }


def _instance_json(request: Request, o: OutputInstance) -> dict[str, Any]:
    return {
        "00080016": _el("UI", o.sop_class_uid),
        "00080018": _el("UI", o.sop_instance_uid),
        "00080060": _el("CS", o.modality),
        "00081190": _el("UR", _instance_url(request, o)),
        "0020000D": _el("UI", o.study_instance_uid),
        "0020000E": _el("UI", o.series_instance_uid),
        "00200011": _el("IS", o.series_number),
        "00200013": _el("IS", o.instance_number),
    }


def _answer(results: list[dict[str, Any]], query: catalogue.Query, limit: int, offset: int) -> Any:
    page = results[offset : offset + limit]
    headers = {}
    if query.unsupported:
        names = ", ".join(sorted(set(query.unsupported)))[:200]
        headers["Warning"] = f'299 radlens "The fields {names} are not supported"'
    if not page:
        return Response(status_code=204, headers=headers)
    return DicomJSON(page, headers=headers)


def _search_studies(
    request: Request, session: Any, settings: Any, study: str | None, limit: int, offset: int
) -> Any:
    query = catalogue.Query.parse(request.query_params.multi_items(), "study")
    uids = catalogue.split_values(query.keys.get("StudyInstanceUID", ""))
    scope = study or (uids[0] if len(uids) == 1 and "*" not in uids[0] else None)
    studies = query.match_studies(_outputs(session, settings, scope))
    results = [_study_json(request, uid, members) for uid, members in studies.items()]
    return _answer(results, query, limit, offset)


def _search_series(
    request: Request, session: Any, settings: Any, study: str | None, limit: int, offset: int
) -> Any:
    query = catalogue.Query.parse(request.query_params.multi_items(), "series")
    matched = query.match(_outputs(session, settings, study))
    counts: dict[str, int] = {}
    first: dict[str, OutputInstance] = {}
    for o in matched:
        counts[o.series_instance_uid] = counts.get(o.series_instance_uid, 0) + 1
        first.setdefault(o.series_instance_uid, o)
    results = [_series_json(request, o, counts[uid]) for uid, o in first.items()]
    return _answer(results, query, limit, offset)


def _search_instances(
    request: Request,
    session: Any,
    settings: Any,
    study: str | None,
    series: str | None,
    limit: int,
    offset: int,
) -> Any:
    query = catalogue.Query.parse(request.query_params.multi_items(), "instance")
    matched = query.match(_outputs(session, settings, study))
    if series is not None:
        matched = [o for o in matched if o.series_instance_uid == series]
    return _answer([_instance_json(request, o) for o in matched], query, limit, offset)


Limit = Annotated[int, _LIMIT]
Offset = Annotated[int, _OFFSET]


@router.get("/studies", summary="QIDO-RS: search studies", responses=_SEARCH_RESPONSES)
def search_studies(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """Studies holding an SR or SC radlens produced."""
    return _search_studies(request, session, settings, None, limit, offset)


@router.get("/series", summary="QIDO-RS: search series", responses=_SEARCH_RESPONSES)
def search_series(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """Series of radlens SR/SC objects, in every study."""
    return _search_series(request, session, settings, None, limit, offset)


@router.get("/instances", summary="QIDO-RS: search instances", responses=_SEARCH_RESPONSES)
def search_instances(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """SR/SC instances radlens produced, in every study."""
    return _search_instances(request, session, settings, None, None, limit, offset)


@router.get(
    "/studies/{study}/series", summary="QIDO-RS: series of a study", responses=_SEARCH_RESPONSES
)
def search_study_series(
    study: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """The study's series of radlens SR/SC objects."""
    return _search_series(request, session, settings, study, limit, offset)


@router.get(
    "/studies/{study}/instances",
    summary="QIDO-RS: instances of a study",
    responses=_SEARCH_RESPONSES,
)
def search_study_instances(
    study: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """The study's radlens SR/SC instances."""
    return _search_instances(request, session, settings, study, None, limit, offset)


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="QIDO-RS: instances of a series",
    responses=_SEARCH_RESPONSES,
)
def search_series_instances(
    study: str,
    series: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """The series' radlens SR/SC instances."""
    return _search_instances(request, session, settings, study, series, limit, offset)


# --- retrieve ---------------------------------------------------------------------------


def _select(
    session: Any, settings: Any, study: str, series: str | None, instance: str | None
) -> list[OutputInstance]:
    found = [
        o
        for o in _outputs(session, settings, study)
        if (series is None or o.series_instance_uid == series)
        and (instance is None or o.sop_instance_uid == instance)
    ]
    if not found:
        shown = "/".join(u for u in (study, series, instance) if u)[:200]
        raise DicomObjectNotFoundError(f"nothing radlens produced under {shown!r}")
    return found


def _build(session: Any, output: OutputInstance) -> bytes:
    prediction = session.get(Prediction, output.prediction_id)
    source = source_from_prediction(prediction)
    if output.kind == "sr":
        return build_sr(prediction, source)
    explanation = session.query(Explanation).filter_by(prediction_id=output.prediction_id).one()
    return build_sc(prediction, source, explanation.png)


def _multipart(parts: list[bytes], part_type: str) -> Response:
    boundary = uuid.uuid4().hex
    chunks = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    media = part_type.split(";", 1)[0]
    return Response(
        b"".join(chunks),
        media_type=f'multipart/related; type="{media}"; boundary={boundary}',
    )


def _instances(session: Any, outputs: list[OutputInstance]) -> Response:
    part_type = f"application/dicom; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    return _multipart([_build(session, o) for o in outputs], part_type)


def _metadata(request: Request, session: Any, outputs: list[OutputInstance]) -> DicomJSON:
    import io

    import pydicom

    documents = []
    for output in outputs:
        ds = pydicom.dcmread(io.BytesIO(_build(session, output)))
        frames_url = URL(_instance_url(request, output) + "/frames/1")

        def bulk(_element: Any, url: str = str(frames_url)) -> str:
            return url

        documents.append(ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk))
    return DicomJSON(documents)


@router.get(
    "/studies/{study}", summary="WADO-RS: a study's SR/SC objects", responses=_RETRIEVE_RESPONSES
)
def retrieve_study(study: str, session: SessionDep, settings: SettingsDep) -> Response:
    """Every SR/SC radlens produced in the study, one per part."""
    return _instances(session, _select(session, settings, study, None, None))


@router.get(
    "/studies/{study}/series/{series}",
    summary="WADO-RS: a series' SR/SC objects",
    responses=_RETRIEVE_RESPONSES,
)
def retrieve_series(
    study: str, series: str, session: SessionDep, settings: SettingsDep
) -> Response:
    """The series' objects, one per part."""
    return _instances(session, _select(session, settings, study, series, None))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="WADO-RS: one SR/SC object",
    responses=_RETRIEVE_RESPONSES,
)
def retrieve_instance(
    study: str, series: str, instance: str, session: SessionDep, settings: SettingsDep
) -> Response:
    """The object, as the only part."""
    return _instances(session, _select(session, settings, study, series, instance))


@router.get(
    "/studies/{study}/metadata",
    summary="WADO-RS: metadata of a study's SR/SC objects",
    responses=_METADATA_RESPONSES,
)
def retrieve_study_metadata(
    study: str, request: Request, session: SessionDep, settings: SettingsDep
) -> DicomJSON:
    """DICOM JSON of every object (Pixel Data as a BulkDataURI)."""
    return _metadata(request, session, _select(session, settings, study, None, None))


@router.get(
    "/studies/{study}/series/{series}/metadata",
    summary="WADO-RS: metadata of a series' objects",
    responses=_METADATA_RESPONSES,
)
def retrieve_series_metadata(
    study: str, series: str, request: Request, session: SessionDep, settings: SettingsDep
) -> DicomJSON:
    """DICOM JSON of every object of the series."""
    return _metadata(request, session, _select(session, settings, study, series, None))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: metadata of one object",
    responses=_METADATA_RESPONSES,
)
def retrieve_instance_metadata(
    study: str,
    series: str,
    instance: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> DicomJSON:
    """DICOM JSON of the object."""
    return _metadata(request, session, _select(session, settings, study, series, instance))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    summary="WADO-RS: the pixel data of a Secondary Capture (frame 1)",
    responses={
        200: {"content": {'multipart/related; type="application/octet-stream"': {}}},
        **problem_responses(404, 500, 503),
    },
)
def retrieve_frames(
    study: str,
    series: str,
    instance: str,
    frames: str,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Uncompressed frame 1 of an SC (an SR has no frames)."""
    import io

    import pydicom

    (output,) = _select(session, settings, study, series, instance)
    if output.kind != "sc" or frames.strip() != "1":
        raise DicomObjectNotFoundError(
            f"{output.kind.upper()} {instance[:64]!r} has frame 1 only when it is a Secondary "
            f"Capture. Received frames {frames[:32]!r}"
        )
    ds = pydicom.dcmread(io.BytesIO(_build(session, output)))
    part = f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    return _multipart([bytes(ds.PixelData)], part)

"""QIDO-RS and WADO-RS (PS3.18 §10.4, §10.6) for the SR and SC objects radlens produced.

Search: ``GET /dicomweb/studies``, ``/series``, ``/instances`` and their study- and
series-scoped forms, answered in DICOM JSON (``application/dicom+json``) with the standard
match keys (app/catalogue.py), ``limit`` and ``offset``; 204 when nothing matches.
Retrieve: a study, series or instance as ``multipart/related; type="application/dicom"``,
their ``/metadata`` in DICOM JSON (the Pixel Data of an SC as a BulkDataURI to its frame),
and ``/frames/1`` of an SC. Behind the API key's read scope, as every GET. The objects are
built on request from the stored prediction (app/dicom_outputs.py), as
``GET /v1/predictions/{id}/dicom/...`` builds them: the same bytes, the same UIDs.

Content negotiation (PS3.18 8.7): each resource has one representation (the objects in
Explicit VR Little Endian, frames uncompressed, metadata and searches in DICOM JSON); the
Accept header is honoured (media ranges, wildcards, the multipart ``type`` and
``transfer-syntax`` parameters, q-values) and a request that accepts none of it is a 406
problem naming what radlens sends, rather than bytes of another type than it asked for (QA
round 45: JPEG frames were answered with raw pixels). No Accept header: the default.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import URL

from radlens.app import catalogue, clinical
from radlens.app.catalogue import OutputInstance
from radlens.app.deps import SessionDep, SettingsDep
from radlens.app.dicom_outputs import build_sc, build_sr, source_from_prediction
from radlens.app.errors import AppError, NotAcceptableError
from radlens.app.routes.series import DICOM_UID, MalformedUidError, uid_path
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


# --- content negotiation (PS3.18 8.7) ---------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """A representation radlens can send a resource as."""

    media_type: str  # e.g. "multipart/related", "application/dicom+json"
    part_type: str | None = None  # a multipart's ``type`` parameter
    transfer_syntax: str | None = None  # of each part of a multipart

    def __str__(self) -> str:
        if self.part_type is None:
            if self.transfer_syntax is not None:
                return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"
            return self.media_type
        return f'{self.media_type}; type="{self.part_type}"; transfer-syntax={self.transfer_syntax}'


# Read of an Accept header (a real one is a few hundred characters; parsing costs ~0.5 us a
# character, and the service takes headers of up to 64 KiB)
MAX_ACCEPT_CHARS = 4096
INSTANCES = (Offer("multipart/related", "application/dicom", EXPLICIT_VR_LITTLE_ENDIAN),)
# one instance may also go as a single-part Part 10 body, for clients that ask for exactly
# that (`Accept: application/dicom`: curl, simple scripts; it was a 200 of multipart before
# negotiation, then a 406: QA round 50); multipart stays the default
INSTANCE = (*INSTANCES, Offer("application/dicom", None, EXPLICIT_VR_LITTLE_ENDIAN))
FRAMES = (Offer("multipart/related", "application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN),)
JSON = (Offer(DICOM_JSON), Offer("application/json"))  # DICOM JSON is the default


class InstancesNotAcceptableError(NotAcceptableError):
    title = (
        'Accept multipart/related; type="application/dicom": radlens sends DICOM objects so, in '
        "Explicit VR Little Endian only (transfer-syntax=1.2.840.10008.1.2.1, or *)"
    )


class FramesNotAcceptableError(NotAcceptableError):
    title = (
        'Accept multipart/related; type="application/octet-stream": radlens sends frames so, '
        "uncompressed (transfer-syntax=1.2.840.10008.1.2.1, or *), and renders no JPEG or PNG"
    )


class JsonNotAcceptableError(NotAcceptableError):
    title = "Accept application/dicom+json: radlens sends DICOM JSON only, no XML"


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header."""

    media_type: str  # lower case; may be */* or type/*
    params: dict[str, str] = field(default_factory=dict)  # names lower case, values unquoted
    q: float = 1.0


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside double-quoted strings (a quoted ``type`` may
    hold ";" and ",")."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return value.strip()


def _parameters(pieces: list[str], params: dict[str, str]) -> float | None:
    """Adds ``name=value`` pieces to ``params`` (the first of a name wins); the q-value, if any."""
    q = None
    for piece in pieces:
        name, equals, value = piece.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            continue
        if name == "q":
            try:
                q = float(value.strip())
            except ValueError:
                q = None
            if q is not None and not 0 <= q <= 1:  # not a q-value (NaN too): ignored
                q = None
        else:
            params.setdefault(name, _unquote(value))
    return q


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header (RFC 9110 12.5.1). A ``type`` parameter may carry
    the part's own parameters (``type="application/dicom; transfer-syntax=*"``, as some clients
    write it): they count as the range's. An element that is no media range is ignored
    (PS3.18 8.7: values that are not valid are ignored)."""
    ranges = []
    for element in _split(header, ","):
        pieces = _split(element, ";")
        media_type = pieces[0].strip().lower()
        main, slash, sub = media_type.partition("/")
        if not slash or not main or not sub or "/" in sub:
            continue
        params: dict[str, str] = {}
        q = _parameters(pieces[1:], params)
        inner = _split(params.get("type", ""), ";")
        if len(inner) > 1:
            params["type"] = inner[0].strip()
            _parameters(inner[1:], params)
        ranges.append(MediaRange(media_type, params, 1.0 if q is None else q))
    return ranges


def _type_match(pattern: str, media_type: str) -> int | None:
    """How specifically ``pattern`` (``*/*``, ``type/*`` or a media type) names ``media_type``:
    0, 1, 2, or None when it does not."""
    if pattern == "*/*":
        return 0
    main, _, sub = pattern.partition("/")
    if sub == "*":
        return 1 if media_type.partition("/")[0] == main else None
    return 2 if pattern == media_type else None


def _match(media_range: MediaRange, offer: Offer) -> tuple[int, int, int] | None:
    """The specificity with which ``media_range`` names ``offer`` (the most specific range
    decides an offer's q-value, RFC 9110 12.5.1), or None when it does not name it."""
    level = _type_match(media_range.media_type, offer.media_type)
    if level is None:
        return None
    part_level = ts_level = 0
    if level == 2 and offer.part_type is not None:
        part = media_range.params.get("type", "").lower()
        if part:
            matched = _type_match(part, offer.part_type)
            if matched is None:
                return None
            part_level = 1 + matched
    if level == 2 and offer.transfer_syntax is not None:
        syntax = media_range.params.get("transfer-syntax", "")
        if syntax:
            if syntax not in ("*", offer.transfer_syntax):
                return None  # a transfer syntax radlens does not send: no transcoding
            ts_level = 1 if syntax == "*" else 2
    return level, part_level, ts_level


def negotiate(accept: str | None, offers: tuple[Offer, ...]) -> Offer | None:
    """The offer with the highest q-value the Accept header gives it (the first of equals),
    or None when it accepts none. No Accept header, or none that parses: the first offer."""
    ranges = parse_accept((accept or "")[:MAX_ACCEPT_CHARS])
    if not ranges:
        return offers[0]
    best, best_q = None, 0.0
    for offer in offers:
        matches = [
            (specificity, r.q) for r in ranges if (specificity := _match(r, offer)) is not None
        ]
        q = max(matches)[1] if matches else 0.0
        if q > best_q:
            best, best_q = offer, q
    return best


def _accept(request: Request, offers: tuple[Offer, ...], error: type[NotAcceptableError]) -> Offer:
    accept = request.headers.get("accept")
    offer = negotiate(accept, offers)
    if offer is None:
        raise error(f"received Accept: {(accept or '')[:300]!r}")
    return offer


# --- UIDs in paths ------------------------------------------------------------------------

# As GET /v1/series/{uid} (app/routes/series.py, QA round 18): any UID radlens could have stored
# (an anonymiser's UUID is listed by QIDO-RS and must be retrievable), at most 64 characters;
# the OpenAPI document states DICOM's digits and dots. One found nowhere is a 422 when it is not
# a DICOM UID (it cannot name anything), else a 404.
Uid = Annotated[
    str,
    uid_path(
        "A DICOM UID (digits and dots, at most 64 characters) as QIDO-RS lists it (a UID stored "
        "as received that is not digits and dots is taken too)"
    ),
]
_NOT_ACCEPTABLE: dict[int | str, dict[str, Any]] = {
    406: {
        **problem_responses(406)[406],
        "description": "The Accept header accepts nothing radlens can send this as (the "
        "problem's title names what it sends)",
    }
}


# PS3.18 8.3.4.4.1: a response holds min(matches - offset, maxResults, limit) results; a limit
# above the server's maximum is no error (it was a 422, QA round 45), the rest is announced in
# a Warning
_LIMIT = Query(
    ge=0, description=f"results at most (radlens returns at most {MAX_LIMIT} per response)"
)
_OFFSET = Query(ge=0, description="results skipped")
_SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Matches (DICOM JSON)", "content": {DICOM_JSON: {}}},
    204: {"description": "Nothing matches"},
    **problem_responses(400, 422, 500, 503),
    **_NOT_ACCEPTABLE,
}
_RETRIEVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The objects, one per part",
        "content": {'multipart/related; type="application/dicom"': {}},
    },
    **problem_responses(404, 422, 500, 503),
    **_NOT_ACCEPTABLE,
}
_METADATA_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON of each object", "content": {DICOM_JSON: {}}},
    **problem_responses(404, 422, 500, 503),
    **_NOT_ACCEPTABLE,
}


# --- search ----------------------------------------------------------------------------


def _outputs(session: Any, settings: Any, study: str | None) -> list[OutputInstance]:
    return catalogue.find_outputs(
        session,
        study=study,
        pseudonym_key_set=settings.uid_pseudonym_key_bytes is not None,
        validated=clinical.validator(settings),  # the model that made each prediction decides
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


def _answer(
    request: Request,
    results: list[dict[str, Any]],
    query: catalogue.Query,
    limit: int,
    offset: int,
) -> Any:
    offer = _accept(request, JSON, JsonNotAcceptableError)
    page = results[offset : offset + min(limit, MAX_LIMIT)]
    warnings = []
    if query.unsupported:
        names = ", ".join(sorted(set(query.unsupported)))[:200]
        warnings.append(f'299 radlens "The fields {names} are not supported"')
    remaining = len(results) - offset - len(page)
    if remaining > 0 and len(page) == MAX_LIMIT < limit:
        warnings.append(
            f'299 radlens "There are {remaining} additional results that can be requested"'
        )
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    if not page:
        return Response(status_code=204, headers=headers)
    return DicomJSON(page, headers=headers, media_type=offer.media_type)


def _search_studies(
    request: Request, session: Any, settings: Any, study: str | None, limit: int, offset: int
) -> Any:
    query = catalogue.Query.parse(request.query_params.multi_items(), "study")
    uids = catalogue.split_values(query.keys.get("StudyInstanceUID", ""))
    scope = study or (uids[0] if len(uids) == 1 and "*" not in uids[0] else None)
    studies = query.match_studies(_outputs(session, settings, scope))
    results = [_study_json(request, uid, members) for uid, members in studies.items()]
    return _answer(request, results, query, limit, offset)


def _scoped(
    session: Any, settings: Any, study: str | None, series: str | None
) -> list[OutputInstance]:
    """The outputs under the study and series of a search's path; a UID there that is no DICOM
    UID and names nothing radlens produced is a 422 (it was a 204, QA round 45)."""
    found = _outputs(session, settings, study)
    if series is not None:
        found = [o for o in found if o.series_instance_uid == series]
    malformed = [u for u in (study, series) if u and not DICOM_UID.fullmatch(u)]
    if not found and malformed:
        raise MalformedUidError(
            f"{malformed[0]!r} is not a DICOM UID, and nothing radlens produced is under it"
        )
    return found


def _search_series(
    request: Request, session: Any, settings: Any, study: str | None, limit: int, offset: int
) -> Any:
    query = catalogue.Query.parse(request.query_params.multi_items(), "series")
    matched = query.match(_scoped(session, settings, study, None))
    counts: dict[str, int] = {}
    first: dict[str, OutputInstance] = {}
    for o in matched:
        counts[o.series_instance_uid] = counts.get(o.series_instance_uid, 0) + 1
        first.setdefault(o.series_instance_uid, o)
    results = [_series_json(request, o, counts[uid]) for uid, o in first.items()]
    return _answer(request, results, query, limit, offset)


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
    matched = query.match(_scoped(session, settings, study, series))
    return _answer(request, [_instance_json(request, o) for o in matched], query, limit, offset)


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
    study: Uid,
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
    study: Uid,
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
    study: Uid,
    series: Uid,
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
        malformed = [u for u in (study, series, instance) if u and not DICOM_UID.fullmatch(u)]
        if malformed:  # it names nothing radlens could have produced (QA round 45)
            raise MalformedUidError(
                f"{malformed[0]!r} is not a DICOM UID, and nothing radlens produced is under "
                f"{shown!r}"
            )
        raise DicomObjectNotFoundError(f"nothing radlens produced under {shown!r}")
    return found


def _built(session: Any, outputs: list[OutputInstance]) -> list[bytes]:
    """The objects, built from the stored rows as ``GET /v1/predictions/{id}/dicom/sr`` and
    ``.../dicom/secondary-capture`` build them: an SR with its prediction's stored findings
    (:func:`catalogue.sr_findings`, one query for them all)."""
    predictions = {o.prediction_id: session.get(Prediction, o.prediction_id) for o in outputs}
    with_sr = [predictions[o.prediction_id] for o in outputs if o.kind == "sr"]
    findings = catalogue.sr_findings(session, with_sr) if with_sr else {}
    built = []
    for output in outputs:
        prediction = predictions[output.prediction_id]
        source = source_from_prediction(prediction)
        if output.kind == "sr":
            stored = findings.get(prediction.id, [])
            built.append(build_sr(prediction, source, stored, validated=output.validated))
            continue
        explanation = session.query(Explanation).filter_by(prediction_id=output.prediction_id).one()
        built.append(build_sc(prediction, source, explanation.png, validated=output.validated))
    return built


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
    return _multipart(_built(session, outputs), part_type)


def _metadata(request: Request, session: Any, outputs: list[OutputInstance]) -> DicomJSON:
    import io

    import pydicom

    offer = _accept(request, JSON, JsonNotAcceptableError)
    documents = []
    for output, data in zip(outputs, _built(session, outputs), strict=True):
        ds = pydicom.dcmread(io.BytesIO(data))
        frames_url = URL(_instance_url(request, output) + "/frames/1")

        def bulk(_element: Any, url: str = str(frames_url)) -> str:
            return url

        documents.append(ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk))
    return DicomJSON(documents, media_type=offer.media_type)


@router.get(
    "/studies/{study}", summary="WADO-RS: a study's SR/SC objects", responses=_RETRIEVE_RESPONSES
)
def retrieve_study(
    study: Uid, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """Every SR/SC radlens produced in the study, one per part."""
    _accept(request, INSTANCES, InstancesNotAcceptableError)
    return _instances(session, _select(session, settings, study, None, None))


@router.get(
    "/studies/{study}/series/{series}",
    summary="WADO-RS: a series' SR/SC objects",
    responses=_RETRIEVE_RESPONSES,
)
def retrieve_series(
    study: Uid, series: Uid, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    """The series' objects, one per part."""
    _accept(request, INSTANCES, InstancesNotAcceptableError)
    return _instances(session, _select(session, settings, study, series, None))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="WADO-RS: one SR/SC object",
    responses=_RETRIEVE_RESPONSES,
)
def retrieve_instance(
    study: Uid,
    series: Uid,
    instance: Uid,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """The object, as the only part (or, asked for with `Accept: application/dicom`, as a
    single-part Part 10 body)."""
    offer = _accept(request, INSTANCE, InstancesNotAcceptableError)
    outputs = _select(session, settings, study, series, instance)
    if offer.part_type is None:
        (data,) = _built(session, outputs)
        return Response(data, media_type=str(offer))
    return _instances(session, outputs)


@router.get(
    "/studies/{study}/metadata",
    summary="WADO-RS: metadata of a study's SR/SC objects",
    responses=_METADATA_RESPONSES,
)
def retrieve_study_metadata(
    study: Uid, request: Request, session: SessionDep, settings: SettingsDep
) -> DicomJSON:
    """DICOM JSON of every object (Pixel Data as a BulkDataURI)."""
    return _metadata(request, session, _select(session, settings, study, None, None))


@router.get(
    "/studies/{study}/series/{series}/metadata",
    summary="WADO-RS: metadata of a series' objects",
    responses=_METADATA_RESPONSES,
)
def retrieve_series_metadata(
    study: Uid, series: Uid, request: Request, session: SessionDep, settings: SettingsDep
) -> DicomJSON:
    """DICOM JSON of every object of the series."""
    return _metadata(request, session, _select(session, settings, study, series, None))


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: metadata of one object",
    responses=_METADATA_RESPONSES,
)
def retrieve_instance_metadata(
    study: Uid,
    series: Uid,
    instance: Uid,
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
        **problem_responses(404, 422, 500, 503),
        **_NOT_ACCEPTABLE,
    },
)
def retrieve_frames(
    study: Uid,
    series: Uid,
    instance: Uid,
    frames: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Uncompressed frame 1 of an SC (an SR has no frames)."""
    import io

    import pydicom

    _accept(request, FRAMES, FramesNotAcceptableError)
    (output,) = _select(session, settings, study, series, instance)
    if output.kind != "sc" or frames.strip() != "1":
        raise DicomObjectNotFoundError(
            f"{output.kind.upper()} {instance[:64]!r} has frame 1 only when it is a Secondary "
            f"Capture. Received frames {frames[:32]!r}"
        )
    (data,) = _built(session, [output])
    ds = pydicom.dcmread(io.BytesIO(data))
    part = f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    return _multipart([bytes(ds.PixelData)], part)

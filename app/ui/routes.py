"""Server-rendered pages under /ui: log in with an API key, the predictions (list with
filters, detail with the Grad-CAM overlay and provenance, SR/SC downloads), a series' result
(its instances aggregated per model, as GET /v1/series/{uid} gives it), an upload form
through the one ingest path (app/ingest.py), the loaded model's page, and the drift summary.

Every page says "not for clinical use" unless the model's manifest says validated; no page
shows a patient identifier (the service stores none). Session and CSRF: app/ui/session.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from radlens.app import audit as audit_log
from radlens.app import clinical, services
from radlens.app.auth import (
    Principal,
    UnauthorizedError,
    admit,
    audit_failure,
    authenticate_bearer,
    authorize,
)
from radlens.app.db import READ_ONLY
from radlens.app.deps import SessionDep, get_resources
from radlens.app.errors import AppError, UnknownFindingError
from radlens.app.explain import get_explanation
from radlens.app.schemas import NOT_FOR_CLINICAL_USE
from radlens.app.series import ModelResult
from radlens.app.tables import Prediction, PredictionFinding
from radlens.app.ui import session as ui_session
from radlens.app.ui.queries import PAGE_SIZE, explained_ids, find_predictions, parse_filters
from radlens.models.manifest import ModelManifest

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
PLOTS = {"roc": "roc_curve.png", "reliability": "reliability.png"}

router = APIRouter(prefix="/ui", include_in_schema=False)
# Nothing loads from elsewhere, no page may be framed, no response is cached by the browser.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """No valid session: the exception handler redirects to the login form."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfError(AppError):
    code = "csrf-failed"
    title = "The form's CSRF token is missing or wrong; reload the page and submit it again"
    status_code = 403


class UploadFormError(AppError):
    code = "upload-form"
    title = "Choose a DICOM, PNG or JPEG file to upload"
    status_code = 422


def _settings(request: Request) -> Any:
    return request.app.state.settings


async def require_login(request: Request) -> Principal:
    """The session's principal (scope checked as for the API: GET read, POST predict)."""
    settings = _settings(request)
    if settings.auth == "disabled":
        return await authorize(request, None)
    cookie = request.cookies.get(ui_session.SESSION_COOKIE)
    if not cookie:
        raise LoginRequired("login")
    digest = ui_session.token_digest(cookie)
    if digest is None:  # not a token this service issued: no query for it
        raise LoginRequired("expired")
    found = await run_in_threadpool(_look_up_session, request, digest)
    if found.key is None:
        raise LoginRequired(found.reason)
    return await admit(request, Principal(found.key.key_id, found.key.name, found.key.scopes))


def _look_up_session(request: Request, digest: str) -> ui_session.Lookup:
    # never cached: a logout or a revocation on any replica ends the session at once
    with get_resources(request).sessionmaker() as session:
        session.connection(execution_options=READ_ONLY)
        return ui_session.look_up(session, digest)


UiPrincipal = Annotated[Principal, Depends(require_login)]

# Whose clock decides a session's expiry: the database's (app/ui/session.py). Its begin and
# expiry are computed by the login's INSERT and compared by each request's SELECT on the
# database server, never with a replica's clock, so replicas whose clocks differ by seconds
# agree on every session and none needs leeway. (The cookie used to carry its issue time by
# the issuing replica's clock: one whose clock was behind refused it as "from the future"
# right after the login's redirect, QA 47, and the browser could rewrite it, QA 52.)


def loaded_manifest(request: Request) -> ModelManifest | None:
    resources = getattr(request.app.state, "resources", None)
    return resources.predictor.manifest if resources is not None else None


def loaded_notice(request: Request) -> str | None:
    """The notice of a page about the serving model (the model page, a page listing no
    result): None only when the store's sealed manifest of that model says validated
    (app/clinical.py), as for its results. Not the manifest loaded at start-up: one unsealed
    or edited in the store since then was shown as validated while its results carried the
    notice (QA 101)."""
    manifest = loaded_manifest(request)
    if manifest is None:
        return NOT_FOR_CLINICAL_USE
    return result_notice(request, manifest.name, manifest.version)


def result_notice(request: Request, name: str, version: int) -> str | None:
    """The notice on a stored result: None only when the model that made it is validated for
    clinical use (its sealed manifest says so, app/clinical.py), whichever model serves now."""
    validated = clinical.validated(_settings(request), name, version)
    return None if validated else NOT_FOR_CLINICAL_USE


def csrf_token(request: Request) -> str:
    """The page's CSRF token: the cookie's, or a new one (set by :func:`render`)."""
    token = request.cookies.get(ui_session.CSRF_COOKIE)
    if not token:
        token = getattr(request.state, "new_csrf", None) or ui_session.new_csrf_token()
        request.state.new_csrf = token
    return token


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    max_age = _settings(request).ui_session_minutes * 60
    _ui_cookie(request, response, name, value, max_age=max_age, path=ui_session.COOKIE_PATH)


def _ui_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int, path: str
) -> None:
    """Set (or, ``max_age`` 0, delete) a cookie of the UI's: HttpOnly, SameSite=Strict,
    Secure as RADLENS_UI_SECURE_COOKIES says."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        secure=_settings(request).ui_secure_cookies,
    )


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A page with the common context (notice, CSRF token, who is logged in)."""
    if "notice" not in context:
        context["notice"] = loaded_notice(request)
    context["csrf_token"] = csrf_token(request)
    context["csrf_field"] = ui_session.CSRF_FIELD
    context.setdefault("principal", getattr(request.state, "principal", None))
    context["auth_enabled"] = _settings(request).auth == "enabled"
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    new = getattr(request.state, "new_csrf", None)
    if new:
        set_cookie(request, response, ui_session.CSRF_COOKIE, new)
    return response


def no_store(response: Response) -> Response:
    """A file served under /ui (the overlay, SR, SC, a plot) with the pages' headers: a
    result is no more cached by the browser than the page showing it (QA round 28: the
    overlay, which may show burned-in text, and the SR were cacheable)."""
    response.headers.update(SECURITY_HEADERS)
    return response


async def check_csrf(request: Request) -> Any:
    """The submitted form, once its CSRF token matched the cookie (else CsrfError 403)."""
    form = await request.form()
    if not ui_session.csrf_valid(
        request.cookies.get(ui_session.CSRF_COOKIE), form.get(ui_session.CSRF_FIELD)
    ):
        await form.close()
        raise CsrfError(
            "the form was posted without the token of this session's pages"
            if not form.get(ui_session.CSRF_FIELD)
            else "the form's token does not match this session's"
        )
    return form


def parse_id(text: str) -> uuid.UUID:
    """A prediction id from the URL; anything else is a 404 page, not a validation error."""
    try:
        return uuid.UUID(text)
    except ValueError:
        from radlens.app.errors import NotFoundError

        raise NotFoundError(f"{text[:40]!r} is not a prediction id") from None


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- login and logout -------------------------------------------------------------------


@router.get("", name="ui_home")
async def home() -> RedirectResponse:
    return _redirect("/ui/predictions")


@router.get("/login", name="ui_login")
async def login_form(request: Request, reason: str = "") -> Response:
    messages = {
        # a revoked key's sessions are deleted with it (QA 68): its browser lands here too
        "expired": "Your session expired or its key was revoked; log in again.",
        "revoked": "The key of your session is unknown or revoked; log in with a valid key.",
        "ended": "This session was logged out; log in again.",
        "login": "Log in with an API key to see the results.",
        "upload": "Your file was not uploaded: the session had ended (it expired, was logged "
        "out, or its key was revoked) before it arrived. Log in, and the upload form opens "
        "again: choose the file once more.",
    }
    then = AFTER_LOGIN.get(reason, "")
    return render(request, "login.html", message=messages.get(reason), then=then)


# Where a login leads instead of the predictions, by the reason it was asked for: a fixed
# list, never an address from the request (no open redirect).
AFTER_LOGIN = {"upload": "/ui/upload"}


@router.post("/login", name="ui_login_post")
async def login(request: Request) -> Response:
    form = await check_csrf(request)
    key = str(form.get("api_key") or "").strip()
    # kept through a refused attempt; only a page AFTER_LOGIN lists
    then = str(form.get("then") or "")
    then = then if then in AFTER_LOGIN.values() else ""
    if not key:
        return render(request, "login.html", 401, message="Enter an API key.", then=then)
    try:
        principal = await authorize_key(request, key)
    except UnauthorizedError as exc:
        message = f"Not logged in: {exc.detail}."
        return render(request, "login.html", 401, message=message, then=then)
    if principal.key_id is None:  # authenticate_bearer's principals always have one
        raise UnauthorizedError("the key has no id")
    # a browser logging in again ends the session it held: no token it had stays live
    held = ui_session.token_digest(request.cookies.get(ui_session.SESSION_COOKIE))
    token = await run_in_threadpool(_start_session, request, principal.key_id, held)
    if token is None:  # revoked since it was authenticated (or cached): no session (QA 82)
        detail = f"key {principal.key_id!r} is unknown or revoked"
        return render(request, "login.html", 401, message=f"Not logged in: {detail}.", then=then)
    response = _redirect(then or "/ui/predictions")
    set_cookie(request, response, ui_session.SESSION_COOKIE, token)
    # a new CSRF token for the new session
    set_cookie(request, response, ui_session.CSRF_COOKIE, ui_session.new_csrf_token())
    _delete_verdict_cookies(request, response)  # the previous session's uploads' verdicts
    return response


def _start_session(request: Request, key_id: str, held: str | None) -> str | None:
    with get_resources(request).sessionmaker() as session:
        minutes = _settings(request).ui_session_minutes
        token = ui_session.start(session, key_id, minutes=minutes, replacing=held)
        session.commit()
        return token


async def authorize_key(request: Request, key: str) -> Principal:
    """The key's principal as a GET would see it (needs the read scope)."""
    principal = await authenticate_bearer(
        request, HTTPAuthorizationCredentials(scheme="Bearer", credentials=key)
    )
    if "read" not in principal.scopes:
        raise UnauthorizedError(f"key {principal.key_id!r} lacks the read scope the pages need")
    return principal


@router.post("/logout", name="ui_logout")
async def logout(request: Request) -> Response:
    await check_csrf(request)
    # ended in the database: every copy of the cookie stops working, on every replica
    digest = ui_session.token_digest(request.cookies.get(ui_session.SESSION_COOKIE))
    if digest is not None:
        await run_in_threadpool(_end_session, request, digest)
    response = _redirect("/ui/login")
    for name in (ui_session.SESSION_COOKIE, ui_session.CSRF_COOKIE):
        response.delete_cookie(name, path=ui_session.COOKIE_PATH)
    # nothing of the session stays in the browser: its uploads' verdicts go too (QA 101)
    _delete_verdict_cookies(request, response)
    return response


def _end_session(request: Request, digest: str) -> None:
    with get_resources(request).sessionmaker() as session:
        ui_session.end(session, digest)
        session.commit()


# --- predictions --------------------------------------------------------------------------


@router.get("/predictions", name="ui_predictions")
def predictions_page(request: Request, principal: UiPrincipal, session: SessionDep) -> Response:
    filters = parse_filters(request.query_params)
    manifest = loaded_manifest(request)
    negative = negative_label(manifest)
    known = manifest.class_names if manifest is not None and manifest.multi_label else []
    if not filters.errors:
        try:  # as the API's list: a finding no model has is refused, here with a message
            services.check_finding_filter(session, filters.query.finding, known)
        except UnknownFindingError as exc:
            filters.errors.append(f"finding: {exc.detail}")
    rows: list[Any] = []
    total = 0
    if not filters.errors:
        rows, total = find_predictions(session, filters, negative_label=negative)
    audit_log.add(
        session,
        actor=principal.key_id,
        action="ui.prediction.list",
        status=422 if filters.errors else 200,
        # a refused filter may hold what the database cannot store (a NUL): not recorded
        query=None
        if filters.errors
        else audit_log.minimal_query(request.query_params.multi_items()),
    )
    query = {k: v for k, v in filters.form_values().items() if v}
    pages = max(1, -(-total // PAGE_SIZE))
    # the notice is left out only when every row listed was made by a validated model (no
    # row: the loaded model's)
    validated = clinical.validator(_settings(request))
    notice = loaded_notice(request)
    if rows:
        unvalidated = any(not validated(r.model_name, r.model_version) for r in rows)
        notice = NOT_FOR_CLINICAL_USE if unvalidated else None
    return render(
        request,
        "predictions.html",
        422 if filters.errors else 200,
        filters=filters.form_values(),
        errors=filters.errors,
        rows=rows,
        total=total,
        page=filters.page,
        pages=pages,
        query="&".join(f"{k}={quote(v)}" for k, v in query.items()),
        negative=negative,
        findings=known,
        notice=notice,
        decisions={r.id: binary_decision(r, manifest) for r in rows},
    )


def negative_label(manifest: ModelManifest | None) -> str | None:
    """The label "flagged" differs from: a single-label model's first class ("normal"), a
    multi-label model's no-finding label ("No Finding"), not its first finding (QA round 28:
    a prediction of the first finding alone was listed as not flagged and one with no finding
    as flagged)."""
    if manifest is None:
        return None
    if manifest.multi_label:
        return str((manifest.findings or {}).get("none_name", "No Finding"))
    return manifest.class_names[0]


@router.get("/predictions/{prediction_id}", name="ui_prediction")
def prediction_page(
    prediction_id: str, request: Request, principal: UiPrincipal, session: SessionDep
) -> Response:
    from radlens.app.routes.explanations import stores_pseudonyms

    row = services.get_prediction(session, parse_id(prediction_id))
    explanation = get_explanation(session, row.id)
    audit_log.add(
        session,
        actor=principal.key_id,
        action="ui.prediction.read",
        target=str(row.id),
        status=200,
    )
    manifest = loaded_manifest(request)
    scores = sorted(((str(k), float(v)) for k, v in row.scores.items()), key=lambda kv: -kv[1])
    order = {name: i for i, (name, _) in enumerate(scores)}
    findings = sorted(
        services.findings_of(session, [row.id]).get(row.id, []),
        key=lambda f: (order.get(f.finding, len(order)), f.finding),
    )
    # this session's upload, answered with this stored prediction but judged otherwise
    page = f"/ui/predictions/{row.id}"
    cookie = request.cookies.get(UPLOAD_VERDICT_COOKIE)
    upload = decode_upload_verdict(cookie, _verdict_binding(request), page)
    response = render(
        request,
        "prediction.html",
        row=row,
        upload_violations=upload,
        violations=row.intended_use_violations if upload is None else upload,
        scores=scores,
        explanation=explanation,
        findings=findings,
        finding_points=_stored_finding_points(row, findings, manifest),
        notice=result_notice(request, row.model_name, row.model_version),
        decision=binary_decision(row, manifest),
        ood_threshold=(manifest.ood or {}).get("threshold")
        if manifest is not None and _is_loaded(row, manifest)
        else None,
        score_meaning=score_meaning(row, manifest),
        dicom=row.input_format == "dicom",
        # SR and SC name the source by its UIDs: refused (409) for pseudonyms, so not offered
        pseudonyms=stores_pseudonyms(row, _settings(request)),
    )
    if cookie and upload is None:  # another session's upload (or not this service's): gone
        _set_verdict_cookie(request, response, page, None)
    return response


def score_digits(score: float, threshold: float) -> int:  # also a template global
    """Decimals (4 to 8) at which a score and its threshold print differently, so a score just
    below its threshold never prints equal to it (0.48615 and 0.48616 are both "0.4862" at four
    decimals; QA round 73). Rounding keeps the order of two values that print differently."""
    for digits in range(4, 9):
        if f"{score:.{digits}f}" != f"{threshold:.{digits}f}":
            return digits
    return 8


def _is_loaded(row: Prediction, manifest: ModelManifest | None) -> bool:
    return manifest is not None and (manifest.name, manifest.version) == (
        row.model_name,
        row.model_version,
    )


def binary_decision(row: Prediction, manifest: ModelManifest | None) -> dict[str, Any] | None:
    """How a binary single-label prediction's label was decided, for the detail page: the
    positive class, its score and the threshold it was compared with (``score >= threshold``,
    models/decision.py), printed at the same precision, and the operating point's figures when
    the row's model is the loaded one. The page used to give the threshold without saying which
    class's score it applies to, so "normal 0.5001, abnormal 0.4999" labelled abnormal read as
    a contradiction (QA round 73). Describes the stored decision; decides nothing."""
    if row.threshold is None or len(row.scores) != 2:
        return None
    names = list(row.scores)
    loaded = _is_loaded(row, manifest)
    if manifest is not None and loaded and len(manifest.class_names) == 2:
        positive = manifest.class_names[1]
    else:
        positive = names[1]  # stored in class order (JSON keeps it)
    if positive not in row.scores:
        return None
    score, threshold = float(row.scores[positive]), float(row.threshold)
    digits = score_digits(score, threshold)
    figures = _point_figures(manifest, row.operating_point, threshold) if loaded else None
    return {
        "positive": positive,
        "other": next(name for name in names if name != positive),
        "digits": digits,
        "score": f"{score:.{digits}f}",
        "threshold": f"{threshold:.{digits}f}",
        "reached": score >= threshold,
        "figures": figures,
    }


def _point_figures(
    manifest: ModelManifest | None, point_name: str | None, threshold: float
) -> dict[str, Any] | None:
    """The sensitivity and specificity of the operating point a prediction was decided at
    (the loaded manifest's ``metrics.operating_points``, figures on the reported split), when
    its threshold is the prediction's; None otherwise."""
    if manifest is None:
        return None
    point = (manifest.metrics.get("operating_points") or {}).get(point_name or "")
    if not isinstance(point, dict) or not isinstance(point.get("threshold"), int | float):
        return None
    if abs(float(point["threshold"]) - threshold) > 1e-9:
        return None
    reported = manifest.metrics.get("reported")
    figures: dict[str, Any] = {
        key: _with_interval(point, key) for key in ("sensitivity", "specificity")
    }
    figures["split"] = _split_name(reported.get("split") if isinstance(reported, dict) else None)
    figures["positives"] = int(point.get("tp", 0)) + int(point.get("fn", 0))
    figures["negatives"] = int(point.get("tn", 0)) + int(point.get("fp", 0))
    return figures


def _split_name(split: Any) -> str:
    names = {"val": "validation", "test": "test", "train": "training"}
    return names.get(str(split), str(split)) if split else "held-out"


def _with_interval(figures: dict[str, Any], key: str) -> str:
    value, interval = figures.get(key), figures.get(f"{key}_ci95")
    text = f"{value:.3f}" if isinstance(value, int | float) else "not recorded"
    if isinstance(interval, list | tuple) and len(interval) == 2:
        text += f" (95% interval {interval[0]:.3f}–{interval[1]:.3f})"
    return text


def score_meaning(row: Prediction, manifest: ModelManifest | None) -> str:
    """What a score is, in words for a reader without ML training: whether this model's
    scores were calibrated (only the loaded model's manifest is known to the page)."""
    if not _is_loaded(row, manifest) or manifest is None:
        return (
            "A score is the model's output between 0 and 1. Whether model "
            f"{row.model_name}:{row.model_version} was calibrated is not known here (it is not "
            "the loaded model): do not read a score as the probability of disease."
        )
    if manifest.multi_label:
        return (
            "Each finding's score is the model's output between 0 and 1, scored on its own; "
            "the model page says, finding by finding, whether it was calibrated (a "
            "temperature) or not. A score is not the probability of disease."
        )
    calibration = getattr(manifest, "calibration", None) or manifest.metrics.get("calibration")
    if isinstance(calibration, dict) and calibration.get("method"):
        ece = calibration.get("ece_after")
        return (
            f"A score is the model's output between 0 and 1, calibrated by "
            f"{calibration['method']} on the {_split_name(calibration.get('fitted_on'))} "
            "split"
            + (
                f" (expected calibration error {ece:.3f} on the "
                f"{_split_name(calibration.get('evaluated_on'))} split)"
                if isinstance(ece, int | float)
                else ""
            )
            + ": it estimates how often images like the training data with this score had the "
            "class, not the probability for this patient, and says nothing about images unlike "
            "them."
        )
    return (
        "A score is the model's output between 0 and 1. This model's scores were not "
        "calibrated: they rank images, and are not the probability of disease."
    )


def _stored_finding_points(
    row: Prediction, findings: Sequence[PredictionFinding], manifest: ModelManifest | None
) -> dict[str, str | None]:
    """The operating point each stored finding was decided at, as the API's ``findings``
    say it (app/routes/predictions.stored_finding_point). A multi-label prediction made
    under RADLENS_OPERATING_POINT=sens95 stores ``sens95`` for the prediction, but a finding
    without that point was decided at its trained threshold: the page names each finding's
    point rather than the one variable (QA round 21: the page said "none (highest score)
    (operating point sens95)" for every finding)."""
    from radlens.app.routes.predictions import stored_finding_point

    return {
        f.finding: stored_finding_point(row, manifest, f.finding, float(f.threshold))
        for f in findings
    }


@router.get("/predictions/{prediction_id}/overlay.png", name="ui_overlay")
def overlay_png(prediction_id: str, principal: UiPrincipal, session: SessionDep) -> Response:
    from radlens.app.routes.explanations import get_heatmap

    return no_store(get_heatmap(parse_id(prediction_id), session))


@router.get("/predictions/{prediction_id}/sr.dcm", name="ui_sr")
def sr_download(
    prediction_id: str, request: Request, principal: UiPrincipal, session: SessionDep
) -> Response:
    from radlens.app.routes.explanations import get_dicom_sr

    return no_store(get_dicom_sr(parse_id(prediction_id), session, _settings(request)))


@router.get("/predictions/{prediction_id}/sc.dcm", name="ui_sc")
def sc_download(
    prediction_id: str, request: Request, principal: UiPrincipal, session: SessionDep
) -> Response:
    from radlens.app.routes.explanations import get_dicom_secondary_capture

    return no_store(
        get_dicom_secondary_capture(parse_id(prediction_id), session, _settings(request))
    )


# --- series -------------------------------------------------------------------------------

# what a series' threshold is, by ModelResult.threshold_source
THRESHOLD_SOURCES = {
    "series": "the series threshold the model's training chose on validation series for "
    "this aggregation",
    "model": "the model threshold its instances were decided at",
}


def parse_series_uid(text: str) -> str:
    """A series UID from the URL, as the API's path takes it (at most 64 characters, no
    control character); anything else is a 422 page, the API's invalid-uid. The detail does
    not quote it: whatever was typed in its place stays off the page."""
    from radlens.app.routes.series import UID_PATTERN, MalformedUidError

    if len(text) > 64 or re.fullmatch(UID_PATTERN, text) is None:
        raise MalformedUidError(
            f"the series UID in the address has {len(text)} characters"
            + (" (at most 64)" if len(text) > 64 else ", one of them a control character")
            + "; a DICOM UID is digits and dots: open the series from one of its predictions' "
            "pages, which links it"
        )
    return text


@router.get("/series/{series_uid}", name="ui_series")
def series_page(
    series_uid: str, request: Request, principal: UiPrincipal, session: SessionDep
) -> Response:
    from radlens.app.routes.explanations import stores_pseudonyms
    from radlens.app.routes.series import find_series

    settings = _settings(request)
    # the API's lookup: the UID as the modality sent it (pseudonymised here) or as stored
    view = find_series(session, parse_series_uid(series_uid), settings, request)
    # no target: a series UID is no prediction id, and the audit trail holds no UID
    audit_log.add(session, actor=principal.key_id, action="ui.series.read", status=200)
    explained = explained_ids(
        session, {i.prediction.id for r in view.results for i in r.key_instances}
    )
    results = [_series_model(r, explained, request) for r in view.results]
    instances = [i.prediction for r in view.results for i in r.instances]
    return render(
        request,
        "series.html",
        view=view,
        results=results,
        aggregation=settings.series_aggregation,
        top_k=settings.series_top_k,
        # the series SR names the source study by its UIDs: refused (409) for pseudonyms
        pseudonyms=any(stores_pseudonyms(p, settings) for p in instances),
        # links name the series as stored (the pseudonym), never as the address gave it
        href=f"/ui/series/{quote(view.series_instance_uid, safe='')}",
        # left out only when every model shown is validated
        notice=NOT_FOR_CLINICAL_USE if any(r["notice"] for r in results) else None,
    )


def _series_model(
    result: ModelResult, explained: set[uuid.UUID], request: Request
) -> dict[str, Any]:
    """One model's series result (app/series.ModelResult) for the page: its instances in
    the order a viewer shows them (Instance Number; unknown last, highest score first as
    the API lists them), which are key instances, and the key instances with an overlay."""
    keys = {i.prediction.id for i in result.key_instances}
    ordered = sorted(
        result.instances,
        key=lambda i: (i.prediction.instance_number is None, i.prediction.instance_number or 0),
    )
    rows = [
        {
            "prediction": i.prediction,
            "score": i.score,
            "key": i.prediction.id in keys,
            "key_frame": (i.prediction.frame_result or {}).get("key_frame"),
        }
        for i in ordered
    ]
    return {
        "result": result,
        "ref": f"{result.model_name}:{result.model_version}",
        "notice": result_notice(request, result.model_name, result.model_version),
        "threshold_source": THRESHOLD_SOURCES.get(str(result.threshold_source)),
        "instances": rows,
        "multi_frame": any(r["key_frame"] is not None for r in rows),
        # instances out of distribution or outside the intended use: the series result built
        # on them is no more valid than they are (as the series SR says, QA 109)
        "not_valid": sum(
            1
            for i in result.instances
            if i.prediction.in_distribution is False or i.prediction.intended_use_violations
        ),
        "thumbnails": [i for i in result.key_instances if i.prediction.id in explained],
    }


@router.get("/series/{series_uid}/sr.dcm", name="ui_series_sr")
def series_sr_download(
    series_uid: str, request: Request, principal: UiPrincipal, session: SessionDep
) -> Response:
    from radlens.app.routes.explanations import PseudonymisedUidsError
    from radlens.app.routes.series import get_series_sr

    try:
        sr = get_series_sr(parse_series_uid(series_uid), session, _settings(request), request)
    except PseudonymisedUidsError:
        # the API's 409, without the UID the address gave (the original, for a pseudonym)
        raise PseudonymisedUidsError(
            "this series' UIDs are stored as pseudonyms (RADLENS_UID_PSEUDONYM_KEY), and a "
            "series SR must name the source study by its UIDs"
        ) from None
    return no_store(sr)


# --- upload -------------------------------------------------------------------------------


@router.get("/upload", name="ui_upload")
async def upload_form(request: Request, principal: UiPrincipal) -> Response:
    return render(request, "upload.html")


# a failed upload gets its audit row as the API's do (app/auth.audit_failure); a stored
# prediction's "prediction.create" row is the writer's
@router.post(
    "/upload", name="ui_upload_post", dependencies=[Depends(audit_failure, scope="function")]
)
async def upload(request: Request, principal: UiPrincipal) -> Response:
    ingestor = get_resources(request).ingestor
    ingestor.check_capacity()
    form = await check_csrf(request)
    try:
        upload_file = form.get("file")
        if not isinstance(upload_file, UploadFile):
            raise UploadFormError("the form has no file (field 'file')")
        data = await upload_file.read()
        if not data:
            # never the file's name: an export's names can hold the patient's (QA 112)
            raise UploadFormError(
                "the chosen file is empty (0 bytes)" if upload_file.filename else "no file chosen"
            )
        explain = form.get("explain") == "on"
    finally:
        await form.close()
    if not ingestor.predictor.ready:
        from radlens.app.errors import ModelNotReadyError

        raise ModelNotReadyError("the model is not warmed up yet")
    # the detail page warns from the stored Burned In Annotation (app/ingest.py)
    result = await ingestor.ingest(data, principal.key_id, explain=explain)
    page = f"/ui/predictions/{result.prediction.id}"
    response = _redirect(page)
    # a re-post judged otherwise than the stored prediction it is answered with: the page
    # says this upload's verdict (else it would show the stored one's only, QA 93)
    mine, stored = result.intended_use_verdict()
    # no verdict to add: deleted, an earlier upload's verdict is not this one's
    value = None
    if stored is not None:
        value = encode_upload_verdict(mine or [], _verdict_binding(request), page)
    _set_verdict_cookie(request, response, page, value)
    _note_verdict_page(request, response, str(result.prediction.id), value is not None)
    return response


def _set_verdict_cookie(request: Request, response: Response, page: str, value: str | None) -> None:
    """Set the upload-verdict cookie for ``page``, or delete it (``value`` None)."""
    max_age = UPLOAD_VERDICT_SECONDS if value else 0
    # path: sent with this prediction's page only
    _ui_cookie(request, response, UPLOAD_VERDICT_COOKIE, value or "", max_age=max_age, path=page)


# The verdict of an upload answered with a stored prediction (a re-post whose header the
# intended-use gate judged otherwise, app/ingest.py Ingested.intended_use_verdict) travels to
# the page the upload redirects to in a cookie scoped to that page, never in its URL (which
# browsers keep in their history and proxies log): attribute names and header values only
# (e.g. BodyPartExamined WRIST), no UID. It lasts UPLOAD_VERDICT_SECONDS, so a reload of the
# page still shows it; the next upload of the same instance replaces or deletes it. Read back
# it can only change what the page says about that session's own upload: the stored
# prediction's verdict is shown from the database either way. It belongs to the login that
# uploaded, not to the browser (QA 96: another user logged in on that browser within the 10
# minutes saw the previous uploader's verdict): with RADLENS_AUTH enabled the value carries an
# HMAC keyed with the session's token (the HttpOnly session cookie, which no later login has)
# over the page and the verdict; a cookie whose tag does not match the session viewing the
# page is ignored and deleted. Logging out (or in again) ends the token, so its cookies match
# no session after it; and they are deleted then: each is scoped to its own page's path, which
# the logout's request does not carry, so the pages holding one are listed in another cookie,
# UPLOAD_PAGES_COOKIE (scoped to /ui: the prediction ids, at most UPLOAD_PAGES_KEPT, newest
# last), and the logout and login responses delete the cookie of each page listed (QA 101: a
# logout left them in the browser for up to 10 minutes).
UPLOAD_VERDICT_COOKIE = "radlens_upload_verdict"
UPLOAD_VERDICT_SECONDS = 600
UPLOAD_PAGES_COOKIE = "radlens_upload_pages"
UPLOAD_PAGES_KEPT = 32  # 37 characters each: a cookie of 1.2 kB at most
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


def _verdict_pages(request: Request) -> list[str]:
    """The prediction ids whose page holds an upload-verdict cookie, as listed (well-formed
    ids only: the cookie is the browser's to send)."""
    listed = request.cookies.get(UPLOAD_PAGES_COOKIE) or ""
    pages: list[str] = []
    for text in listed.split(".")[-UPLOAD_PAGES_KEPT:]:
        try:
            page = str(uuid.UUID(text))
        except ValueError:
            continue
        if page == text and page not in pages:
            pages.append(page)
    return pages


def _note_verdict_page(
    request: Request, response: Response, prediction_id: str, held: bool
) -> None:
    """List (``held``) or unlist the page of ``prediction_id`` in UPLOAD_PAGES_COOKIE."""
    pages = [page for page in _verdict_pages(request) if page != prediction_id]
    if held:
        pages = [*pages, prediction_id][-UPLOAD_PAGES_KEPT:]
    if pages or UPLOAD_PAGES_COOKIE in request.cookies:
        # as long as the newest page's verdict lasts; none listed: deleted
        max_age = UPLOAD_VERDICT_SECONDS if pages else 0
        _ui_cookie(
            request,
            response,
            UPLOAD_PAGES_COOKIE,
            ".".join(pages),
            max_age=max_age,
            path=ui_session.COOKIE_PATH,
        )


def _delete_verdict_cookies(request: Request, response: Response) -> None:
    """Delete the upload-verdict cookie of every page UPLOAD_PAGES_COOKIE lists, and it."""
    if UPLOAD_PAGES_COOKIE not in request.cookies:
        return
    for page in _verdict_pages(request):
        _set_verdict_cookie(request, response, f"/ui/predictions/{page}", None)
    _ui_cookie(request, response, UPLOAD_PAGES_COOKIE, "", max_age=0, path=ui_session.COOKIE_PATH)


def _printable(value: Any) -> str:
    return "".join(c for c in str(value) if " " <= c <= "~")[:64]


def _verdict_binding(request: Request) -> str | None:
    """The session token the upload-verdict cookie is bound to; None with RADLENS_AUTH
    disabled (no login: the pages have no user to tell apart)."""
    if _settings(request).auth == "disabled":
        return None
    return request.cookies.get(ui_session.SESSION_COOKIE) or ""


def _verdict_tag(binding: str, page: str, payload: str) -> str:
    message = f"radlens upload verdict\n{page}\n{payload}".encode()
    digest = hmac.new(binding.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def encode_upload_verdict(
    violations: list[dict[str, Any]], binding: str | None = None, page: str = ""
) -> str:
    """The cookie value: ``[[attribute, value], ...]`` ([] when the upload is inside the
    intended use) as unpadded base64url JSON (cookie-safe characters only), followed with a
    login (``binding``: the session token) by ``.`` and its tag for that session and ``page``."""
    pairs = [
        [_printable(v.get("attribute")), _printable(v.get("value"))]
        for v in violations
        if _ATTRIBUTE.fullmatch(str(v.get("attribute")))
    ]
    text = json.dumps(pairs[:8], separators=(",", ":"))
    payload = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    if binding is None:
        return payload
    return f"{payload}.{_verdict_tag(binding, page, payload)}"


def decode_upload_verdict(
    value: str | None, binding: str | None = None, page: str = ""
) -> list[dict[str, str]] | None:
    """The upload's violations from the cookie ([]: inside the intended use); None when there
    is no cookie or it is not one this service wrote: with a login (``binding``), for this
    session and ``page`` (an empty binding, no session, matches nothing)."""
    if not value or len(value) > 2048:
        return None
    value, _, tag = value.partition(".")
    if binding is not None and not (
        binding
        and tag
        and hmac.compare_digest(tag.encode(), _verdict_tag(binding, page, value).encode())
    ):
        return None
    try:
        pairs = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs
    ):
        return None
    return [{"attribute": a, "value": _printable(v)} for a, v in pairs if _ATTRIBUTE.fullmatch(a)]


# --- the model ------------------------------------------------------------------------------


@router.get("/model", name="ui_model")
def model_page(request: Request, principal: UiPrincipal) -> Response:
    from radlens.models.decision import points_not_computed

    manifest = get_resources(request).predictor.manifest
    folder = _model_folder(request, manifest)
    plots = [kind for kind, name in PLOTS.items() if (folder / name).is_file()]
    # the store's sealed manifest decides, as for the model's results (app/clinical.py)
    validated = clinical.validated(_settings(request), manifest.name, manifest.version)
    return render(
        request,
        "model.html",
        manifest=manifest,
        metric_tables=_metric_tables(manifest.metrics),
        operating_points=_operating_points(manifest.metrics.get("operating_points")),
        points_not_computed=list(points_not_computed(manifest.metrics).items()),
        finding_points=_finding_operating_points(manifest.metrics),
        finding_rows=_finding_rows(manifest, _settings(request)),
        # a manifest field in newer manifests, a metrics section in older ones
        calibration=_scalars(getattr(manifest, "calibration", None)),
        plots=plots,
        intended_use=_intended_use_rows(manifest, _settings(request)),
        validated=validated,
        notice=None if validated else NOT_FOR_CLINICAL_USE,
        created_utc=utc_text(manifest.created_at),
    )


def utc_text(stamp: str) -> str:
    """A manifest's ISO 8601 time (it carries an offset, models/manifest.py) as the other
    pages print theirs, in UTC to the second: the model page printed it raw
    (``2026-12-08T00:19:18.107786+00:00``, or a training host's ``+02:00``) beside pages whose
    times say "(UTC)" (QA 109). Anything unreadable is shown as it is."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return str(stamp)
    if moment.tzinfo is None:
        return str(stamp)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _intended_use_rows(manifest: ModelManifest, settings: Any) -> list[tuple[str, str]]:
    """What the model is for, as the gate applies it: the accepted modalities, body parts and
    view positions (stated at training, else seen in its DICOM headers), what the service does
    with an upload outside them (RADLENS_GATE) and the out-of-distribution check."""
    from radlens.models.intended_use import from_record

    record = manifest.intended_use or {}
    source = record.get("source") or "not recorded"
    gated = from_record(record)  # what the gate reads from the record, read the same way
    rows = [
        (label, ", ".join(values) or "any (not restricted)")
        for label, values in (
            ("Modalities", gated.modalities),
            ("Body parts", gated.body_parts),
            ("View positions", gated.view_positions),
        )
    ]
    rows.append(("Taken from", str(source) if record else "not recorded (an older manifest)"))
    gate = {
        "refuse": "refused (422 outside-intended-use)",
        "flag": "predicted and flagged",
        "off": "predicted, not checked",
    }.get(str(settings.gate), str(settings.gate))
    rows.append(("Outside them", f"{gate} (RADLENS_GATE={settings.gate})"))
    ood = manifest.ood or {}
    rows.append(
        (
            "Out-of-distribution check",
            f"{ood.get('method')}, threshold {ood.get('threshold'):.4g}"
            if ood and isinstance(ood.get("threshold"), int | float)
            else "none stored with this model",
        )
    )
    return rows


@router.get("/model/plots/{kind}.png", name="ui_model_plot")
def model_plot(kind: str, request: Request, principal: UiPrincipal) -> Response:
    manifest = get_resources(request).predictor.manifest
    name = PLOTS.get(kind)
    path = _model_folder(request, manifest) / name if name else None
    if path is None or not path.is_file():
        from radlens.app.errors import NotFoundError

        raise NotFoundError(f"the model store holds no {kind!r} plot for {manifest.ref}")
    return no_store(Response(path.read_bytes(), media_type="image/png"))


def _model_folder(request: Request, manifest: ModelManifest) -> Path:
    return Path(_settings(request).model_store) / manifest.name / str(manifest.version)


def _operating_points(points: Any) -> list[dict[str, str]]:
    """An operating-point table (the manifest's ``operating_points``, or one finding's:
    threshold chosen on validation, figures on the reported split with Wilson 95%
    intervals), formatted for the model page."""
    if not isinstance(points, dict):
        return []
    rows = []
    for name, figures in points.items():
        if not isinstance(figures, dict) or not isinstance(figures.get("threshold"), int | float):
            continue
        row = {"name": str(name), "threshold": f"{figures['threshold']:.3f}"}
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            value, interval = figures.get(key), figures.get(f"{key}_ci95")
            text = f"{value:.3f}" if isinstance(value, int | float) else "–"
            if isinstance(interval, list | tuple) and len(interval) == 2:
                text += f" ({interval[0]:.3f}–{interval[1]:.3f})"
            row[key] = text
        rows.append(row)
    return rows


def _finding_operating_points(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """A multi-label model's operating points, finding by finding
    (``metrics["operating_points_per_finding"]``, training.findings): each finding's table and
    the points its validation positives could not choose, with training's reason; [] for
    other models and for manifests written before the table."""
    from radlens.models.decision import finding_points_not_computed

    record = metrics.get("operating_points_per_finding")
    per_finding = record.get("per_finding") if isinstance(record, dict) else None
    if not isinstance(per_finding, dict):
        return []
    missing = finding_points_not_computed(metrics)
    return [
        {
            "name": str(finding),
            "rows": _operating_points(points),
            "not_computed": list(missing.get(str(finding), {}).items()),
        }
        for finding, points in per_finding.items()
    ]


def _finding_rows(manifest: ModelManifest, settings: Any) -> list[dict[str, str]]:
    """A multi-label model's findings, one row each: the trained threshold, the one served
    (RADLENS_OPERATING_POINT), the temperature calibration fitted (``metrics.calibration``'s
    ``temperatures``) and the series threshold for the service's aggregation
    (models.aggregation.recorded_finding_series_thresholds), none of which the page's
    one-value-per-line metrics tables can show; [] for single-label models."""
    from radlens.models.aggregation import recorded_finding_series_thresholds

    if not manifest.multi_label:
        return []
    calibration = manifest.metrics.get("calibration")
    temperatures = calibration.get("temperatures") if isinstance(calibration, dict) else None
    temperatures = temperatures if isinstance(temperatures, dict) else {}
    series = recorded_finding_series_thresholds(
        manifest.metrics, settings.series_aggregation, settings.series_top_k
    )
    served = manifest.decision_thresholds

    def number(value: Any, digits: int = 3) -> str:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return f"{value:.{digits}f}" if ok else "–"

    return [
        {
            "name": name,
            "trained": number(trained),
            "served": number(served.get(name)),
            "temperature": number(temperatures.get(name)),
            "series": number(series[name]) if name in series else "its threshold",
        }
        for name, trained in manifest.finding_thresholds.items()
    ]


def _scalars(values: Any) -> list[tuple[str, str]]:
    """A dict's scalar entries, formatted; [] for anything else."""
    if not isinstance(values, dict):
        return []
    return [
        (str(name), f"{value:.4g}" if isinstance(value, float) else str(value))
        for name, value in values.items()
        if isinstance(value, int | float | str) and not isinstance(value, bool)
    ]


def _metric_tables(metrics: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each metrics section's scalar values, formatted (nested tables are left out)."""
    tables = []
    for section, values in metrics.items():
        if not isinstance(values, dict):
            continue
        rows = _scalars(values)
        if rows:
            tables.append((str(section), rows))
    return tables


# --- drift ----------------------------------------------------------------------------------


@router.get("/drift", name="ui_drift")
def drift_page(request: Request, principal: UiPrincipal) -> Response:
    from radlens.app.routes.drift import drift_monitor

    return render(request, "drift.html", summary=drift_monitor(request).summary())


TEMPLATES.env.globals["score_digits"] = score_digits

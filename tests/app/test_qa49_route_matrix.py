"""The authorization matrix: every route the app serves, for every kind of credential.

The routes are enumerated from the app itself (``fastapi.routing.iter_route_contexts`` over
``app.routes``: the API, /ui, /docs, the mounts), so a route added without a decision in
``EXPECTED`` fails ``test_every_route_has_an_access_decision``. Each route is then asked with
no key, a malformed, unknown, wrong-secret and revoked key, the key in the query string, two
Authorization headers, a key holding only the removed ``admin`` scope, and keys with ``read``,
``predict`` and both (docs/security.md):

- a denied API request is 401 (with ``WWW-Authenticate: Bearer``, the token never echoed) or
  403, as problem+json, and a 403 does not depend on whether the object exists (no 404 oracle
  for a key that may not read); an allowed one is neither, and never a 5xx;
- HEAD is answered as GET (same key, same status); PUT, PATCH, DELETE and OPTIONS are 405;
- the /ui pages take the key from the server-side session whose token the cookie holds
  (QA 52; each key below has one, stored directly so that keys the login form refuses have
  one too): no cookie, an unknown or expired session redirects to the login form, a key
  without ``read`` gets a 403 page, every state-changing form needs the CSRF token, and every
  page and file carries the pages' security headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.app.conftest import (
    Service,
    TestClient,
    assert_problem,
    create_api_key,
    dicom_bytes,
    png_bytes,
)

OPEN = "open"  # no key needed; a key of any kind is ignored
READ = "read"  # API, needs the read scope
PREDICT = "predict"  # API, needs the predict scope
UI_OPEN = "ui-open"  # /ui page or form open to all (the login form; POSTs need CSRF)
UI_READ = "ui-read"  # /ui page behind the session, read scope
UI_PREDICT = "ui-predict"  # /ui form behind the session, predict scope (and CSRF)
MOUNT = "mount"  # static files, open

# (method, path) -> the access decision. A new route must be added here, with its scope.
EXPECTED: dict[tuple[str, str], str] = {
    # operations and documentation
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("HEAD", "/openapi.json"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/redoc"): OPEN,
    ("MOUNT", "/docs-assets"): MOUNT,
    ("MOUNT", "/ui/static"): MOUNT,
    # predictions, explanations, DICOM outputs
    ("POST", "/v1/predictions"): PREDICT,
    ("GET", "/v1/predictions"): READ,
    ("GET", "/v1/predictions/{prediction_id}"): READ,
    ("POST", "/v1/predictions/dicom-sr"): PREDICT,
    ("GET", "/v1/predictions/{prediction_id}/heatmap"): READ,
    ("GET", "/v1/predictions/{prediction_id}/dicom/sr"): READ,
    ("GET", "/v1/predictions/{prediction_id}/dicom/secondary-capture"): READ,
    # series and studies
    ("GET", "/v1/series/{series_uid}"): READ,
    ("GET", "/v1/studies/{study_uid}"): READ,
    ("GET", "/v1/series/{series_uid}/dicom/sr"): READ,
    # the model, drift, the send-back outbox
    ("GET", "/v1/models"): READ,
    ("GET", "/v1/drift"): READ,
    ("GET", "/v1/dicom/outbox"): READ,
    # DICOMweb: STOW-RS, QIDO-RS, WADO-RS
    ("POST", "/dicomweb/studies"): PREDICT,
    ("POST", "/dicomweb/studies/{study}"): PREDICT,
    ("GET", "/dicomweb/studies"): READ,
    ("GET", "/dicomweb/series"): READ,
    ("GET", "/dicomweb/instances"): READ,
    ("GET", "/dicomweb/studies/{study}/series"): READ,
    ("GET", "/dicomweb/studies/{study}/instances"): READ,
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances"): READ,
    ("GET", "/dicomweb/studies/{study}"): READ,
    ("GET", "/dicomweb/studies/{study}/series/{series}"): READ,
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}"): READ,
    ("GET", "/dicomweb/studies/{study}/metadata"): READ,
    ("GET", "/dicomweb/studies/{study}/series/{series}/metadata"): READ,
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata"): READ,
    ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"): (
        READ
    ),
    # the /ui pages
    ("GET", "/ui"): UI_OPEN,
    ("GET", "/ui/login"): UI_OPEN,
    ("POST", "/ui/login"): UI_OPEN,
    ("POST", "/ui/logout"): UI_OPEN,
    ("GET", "/ui/predictions"): UI_READ,
    ("GET", "/ui/predictions/{prediction_id}"): UI_READ,
    ("GET", "/ui/predictions/{prediction_id}/overlay.png"): UI_READ,
    ("GET", "/ui/predictions/{prediction_id}/sr.dcm"): UI_READ,
    ("GET", "/ui/predictions/{prediction_id}/sc.dcm"): UI_READ,
    ("GET", "/ui/series/{series_uid}"): UI_READ,
    ("GET", "/ui/series/{series_uid}/sr.dcm"): UI_READ,
    ("GET", "/ui/upload"): UI_READ,
    ("POST", "/ui/upload"): UI_PREDICT,
    ("GET", "/ui/model"): UI_READ,
    ("GET", "/ui/model/plots/{kind}.png"): UI_READ,
    ("GET", "/ui/drift"): UI_READ,
}

API_ROUTES = sorted(k for k, v in EXPECTED.items() if v in (READ, PREDICT))
UI_ROUTES = sorted(k for k, v in EXPECTED.items() if v in (UI_READ, UI_PREDICT))
OPEN_ROUTES = sorted(k for k, v in EXPECTED.items() if v == OPEN and k[0] == "GET")
MISSING_ID = "00000000-0000-0000-0000-000000000000"
MISSING_UID = "1.2.826.0.1.3680043.9.9999.1"


def app_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) the app routes, and ("MOUNT", path) for each mount."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Mount

    found: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, Mount):
            found.add(("MOUNT", str(context.path)))
            continue
        for method in context.methods or ():
            found.add((method, str(context.path)))
    return found


# --- credentials ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    read: str
    predict: str
    full: str
    revoked: str
    admin_only: str
    # key -> the token of a /ui session of it; the malformed and unknown keys of
    # ui_sessions() -> a malformed token and a well-formed one no session has
    sessions: dict[str, str]


@pytest.fixture(scope="module")
def keys(service: Service) -> Keys:
    """A key of each scope, a revoked one (revoked before any use, so never cached) and one
    holding only the removed ``admin`` scope (as stored before its removal), each with a /ui
    session (the revoked key's begun after its revocation, as a login racing it, or within
    RADLENS_AUTH_CACHE_TTL_S of it, can: revoking a key deletes the sessions it has)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from radlens.app.keys import key_id_of, revoke_key
    from radlens.app.security_tables import ApiKey, UiSession
    from radlens.app.ui import session as ui_session

    made = Keys(
        read=create_api_key(service.database_url, "read", name="qa49 read"),
        predict=create_api_key(service.database_url, "predict", name="qa49 predict"),
        full=create_api_key(service.database_url, "predict,read", name="qa49 full"),
        revoked=create_api_key(service.database_url, "predict,read", name="qa49 revoked"),
        admin_only=create_api_key(service.database_url, "read", name="qa49 admin"),
        sessions={
            "not-a-radlens-key": "not-a-radlens-key",
            "rl_0123456789ab_" + "A" * 43: ui_session.new_token(),
        },
    )
    with service.app.state.resources.sessionmaker() as session:
        revoke_key(session, str(key_id_of(made.revoked)))
        for key in (made.read, made.predict, made.full, made.admin_only):
            token = ui_session.start(session, str(key_id_of(key)), minutes=60)
            assert token is not None
            made.sessions[key] = token
        # since QA 82 a login begins no session of a revoked key; a replica of an earlier
        # version running beside this one (a rolling update) could: its row, as it wrote it
        made.sessions[made.revoked] = ui_session.new_token()
        now = datetime.now(UTC)
        session.add(
            UiSession(
                token_sha256=ui_session.token_digest(made.sessions[made.revoked]),
                key_id=str(key_id_of(made.revoked)),
                created_at=now,
                expires_at=now + timedelta(minutes=60),
            )
        )
        session.execute(update(ApiKey).where(ApiKey.name == "qa49 admin").values(scopes="admin"))
        session.commit()
    return made


def credentials(keys: Keys) -> dict[str, tuple[list[tuple[str, str]], dict[str, str]]]:
    """Name -> (headers, query parameters)."""

    def bearer(key: str) -> list[tuple[str, str]]:
        return [("Authorization", f"Bearer {key}")]

    return {
        "none": ([], {}),
        "malformed": (bearer("not-a-radlens-key"), {}),
        "unknown": (bearer("rl_0123456789ab_" + "A" * 43), {}),
        "wrong-secret": (bearer(keys.full[:16] + "B" * 43), {}),
        "revoked": (bearer(keys.revoked), {}),
        "basic": ([("Authorization", "Basic cWE0OTpxYTQ5")], {}),
        "in-query": ([], {"api_key": keys.full, "access_token": keys.full}),
        "two-headers": (bearer(keys.full) + bearer(keys.full), {}),
        "admin-only": (bearer(keys.admin_only), {}),
        "read": (bearer(keys.read), {}),
        "predict": (bearer(keys.predict), {}),
        "full": (bearer(keys.full), {}),
    }


UNAUTHENTICATED = {"none", "malformed", "unknown", "wrong-secret", "revoked", "basic"}
UNAUTHENTICATED |= {"in-query", "two-headers"}
SCOPES_OF = {"admin-only": set(), "read": {READ}, "predict": {PREDICT}, "full": {READ, PREDICT}}


# --- the stored objects the paths name -------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    prediction_id: str
    study: str
    series: str
    sc_series: str
    sc_instance: str
    upload: bytes


@pytest.fixture(scope="module")
def seeded(service: Service, keys: Keys) -> Seeded:
    """One explained DICOM prediction (so its heatmap, SR, SC and their DICOMweb instances
    exist)."""
    client = TestClient(service.app)
    data = dicom_bytes(seed=49)
    response = client.post(
        "/v1/predictions",
        params={"explain": "true"},
        files={"file": ("a.dcm", data, "application/dicom")},
        headers={"Authorization": f"Bearer {keys.full}"},
    )
    assert response.status_code in (200, 201), response.text
    body = response.json()
    study = body["study_instance_uid"]
    found = client.get(
        f"/dicomweb/studies/{study}/instances",
        params={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"},
        headers={"Authorization": f"Bearer {keys.full}"},
    )
    assert found.status_code == 200, found.text
    sc = found.json()[0]
    return Seeded(
        prediction_id=body["id"],
        study=study,
        series=body["series_instance_uid"],
        sc_series=sc["0020000E"]["Value"][0],
        sc_instance=sc["00080018"]["Value"][0],
        upload=data,
    )


def url_for(path: str, seeded: Seeded, *, exists: bool) -> str:
    """The path with its parameters naming stored objects (or objects that do not exist)."""
    wado = "/dicomweb/studies/{study}/series/{series}" in path
    values = {
        "prediction_id": seeded.prediction_id if exists else MISSING_ID,
        "study": seeded.study if exists else MISSING_UID,
        "study_uid": seeded.study if exists else MISSING_UID,
        "series": (seeded.sc_series if wado else seeded.series) if exists else MISSING_UID,
        "series_uid": seeded.series if exists else MISSING_UID,
        "instance": seeded.sc_instance if exists else MISSING_UID,
        "frames": "1",
        "kind": "roc",
    }
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], path)


def upload_kwargs(path: str, seeded: Seeded) -> dict[str, Any]:
    if path.startswith("/dicomweb"):
        boundary = "qa49-boundary"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + seeded.upload
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        return {"content": body, "headers": [("Content-Type", content_type)]}
    return {"files": {"file": ("a.dcm", seeded.upload, "application/dicom")}}


@pytest.fixture(scope="module")
def bare(service: Service) -> Iterator[TestClient]:
    """A client on the running app that sends nothing by default and follows no redirect."""
    yield TestClient(service.app, follow_redirects=False)


# --- the route list --------------------------------------------------------------------


def test_every_route_has_an_access_decision(service: Service) -> None:
    """A route added without an entry in EXPECTED (its scope) fails here, as does a removed
    one still listed."""
    routes = app_routes(service.app)
    assert routes - EXPECTED.keys() == set(), "routes without an access decision in EXPECTED"
    assert EXPECTED.keys() - routes == set(), "EXPECTED lists routes the app no longer has"


def test_every_api_route_depends_on_authorize_and_no_open_route_does(service: Service) -> None:
    """Structurally: the keyed routes carry app.auth.authorize, the /ui pages behind the
    session app.ui.routes.require_login, and the open routes neither."""
    from fastapi.routing import iter_route_contexts

    from radlens.app.auth import authorize
    from radlens.app.ui.routes import require_login

    def calls(dependant: Any) -> set[Any]:
        found = {dependant.call}
        for sub in dependant.dependencies:
            found |= calls(sub)
        return found

    for context in iter_route_contexts(service.app.routes):
        dependant = getattr(context, "dependant", None)
        if dependant is None:
            continue
        deps = calls(dependant)
        for method in context.methods or ():
            decision = EXPECTED[(method, str(context.path))]
            if decision in (READ, PREDICT):
                assert authorize in deps, (method, context.path)
            elif decision in (UI_READ, UI_PREDICT):
                assert require_login in deps, (method, context.path)
            else:
                assert authorize not in deps and require_login not in deps, (method, context.path)


def test_the_openapi_document_declares_the_key_exactly_on_the_keyed_routes(
    bare: TestClient,
) -> None:
    document = bare.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    listed = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            key = (method.upper(), path)
            listed.add(key)
            assert key in EXPECTED, f"{key} is documented but has no access decision"
            secured = {"ApiKey": []} in operation.get("security", [])
            assert secured == (EXPECTED[key] in (READ, PREDICT)), key
    assert set(API_ROUTES) <= listed, "a keyed route is missing from the OpenAPI document"


# --- the API matrix --------------------------------------------------------------------


def expected_api_outcome(decision: str, credential: str) -> int | None:
    """401 or 403 when the credential may not use the route, None when it may."""
    if credential in UNAUTHENTICATED:
        return 401
    return None if decision in SCOPES_OF[credential] else 403


@pytest.mark.parametrize(("method", "path"), API_ROUTES, ids=[f"{m} {p}" for m, p in API_ROUTES])
def test_api_route_matrix(
    method: str, path: str, bare: TestClient, keys: Keys, seeded: Seeded
) -> None:
    decision = EXPECTED[(method, path)]
    existence = [True, False] if "{" in path else [True]
    asked = [method, "HEAD"] if method == "GET" else [method]
    problems = []
    for verb in asked:
        for exists in existence:
            url = url_for(path, seeded, exists=exists)
            denied_bodies: dict[str, Any] = {}
            for name, (headers, params) in credentials(keys).items():
                kwargs = upload_kwargs(path, seeded) if verb == "POST" else {}
                all_headers = headers + kwargs.pop("headers", [])
                response = bare.request(verb, url, headers=all_headers, params=params, **kwargs)
                want = expected_api_outcome(decision, name)
                where = f"{verb} {url} with {name}"
                status = response.status_code
                if status >= 500:
                    problems.append(f"{where}: {status} {response.text[:200]}")
                elif want is None and status in (401, 403):
                    problems.append(f"{where}: refused {status} {response.text[:200]}")
                elif want is not None and status != want:
                    problems.append(f"{where}: {status}, expected {want}")
                elif want is not None:
                    if verb != "HEAD":
                        body = assert_problem(response, want)
                        for _, value in headers:
                            secret = value.split(" ", 1)[-1]
                            assert secret not in response.text or len(secret) < 20, where
                        denied_bodies[name] = (body["type"], body["detail"])
                    if want == 401:
                        assert response.headers["www-authenticate"].startswith("Bearer"), where
                    assert keys.full not in response.text, where
            if exists:
                first = denied_bodies
            elif verb != "HEAD":
                # a key that may not read learns nothing about which objects exist
                for name in ("admin-only", "read", "predict"):
                    if name in denied_bodies:
                        assert denied_bodies[name] == first[name], (verb, path, name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", sorted({p for _, p in EXPECTED}))
def test_methods_without_a_route_are_405(path: str, bare: TestClient, keys: Keys) -> None:
    """PUT, PATCH, DELETE and OPTIONS (a CORS preflight included): 405 with Allow, for any
    key; no CORS header is ever granted."""
    url = path.replace("{kind}", "roc")
    url = re.sub(r"\{[^}]+\}", "1.2.3", url)
    if path in ("/docs-assets", "/ui/static"):
        url = f"{path}/missing.css"
    for verb in ("PUT", "PATCH", "DELETE", "OPTIONS"):
        response = bare.request(
            verb,
            url,
            headers={
                "Authorization": f"Bearer {keys.full}",
                "Origin": "https://elsewhere.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert response.status_code == 405, (verb, url, response.status_code)
        allowed = {m.strip() for m in response.headers.get("allow", "").split(",")}
        assert allowed and allowed <= {"GET", "HEAD", "POST"}, (verb, url, allowed)
        assert not any(h.startswith("access-control-") for h in response.headers), (verb, url)


@pytest.mark.parametrize(("method", "path"), OPEN_ROUTES, ids=[f"{m} {p}" for m, p in OPEN_ROUTES])
def test_open_routes_answer_every_credential(
    method: str, path: str, bare: TestClient, keys: Keys
) -> None:
    for name, (headers, params) in credentials(keys).items():
        for verb in ("GET", "HEAD"):
            response = bare.request(verb, path, headers=headers, params=params)
            assert response.status_code == 200, (verb, path, name, response.status_code)


@pytest.mark.parametrize("mount", ["/docs-assets/swagger-ui.css", "/ui/static/ui.css"])
def test_static_files_are_open_and_stay_in_their_directory(mount: str, bare: TestClient) -> None:
    assert bare.get(mount).status_code == 200
    base = mount.rsplit("/", 1)[0]
    for escape in ("/../main.py", "/%2e%2e/main.py", "/..%2fmain.py"):
        assert bare.get(base + escape).status_code == 404, escape


# --- the /ui matrix ---------------------------------------------------------------------


def cookie_header(keys: Keys, key: str | None, *, csrf: str | None = None) -> str:
    """The cookies of a browser holding a /ui session of ``key`` (none: None)."""
    from radlens.app.ui import session as ui_session

    parts = []
    if key is not None:
        parts.append(f"{ui_session.SESSION_COOKIE}={keys.sessions[key]}")
    if csrf is not None:
        parts.append(f"{ui_session.CSRF_COOKIE}={csrf}")
    return "; ".join(parts)


def ui_sessions(keys: Keys) -> dict[str, str | None]:
    return {
        "none": None,
        "malformed": "not-a-radlens-key",
        "unknown": "rl_0123456789ab_" + "A" * 43,
        "revoked": keys.revoked,
        "admin-only": keys.admin_only,
        "read": keys.read,
        "predict": keys.predict,
        "full": keys.full,
    }


def assert_security_headers(response: Any, where: str) -> None:
    from radlens.app.ui.routes import SECURITY_HEADERS

    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (where, name)


@pytest.mark.parametrize(("method", "path"), UI_ROUTES, ids=[f"{m} {p}" for m, p in UI_ROUTES])
def test_ui_route_matrix(
    method: str, path: str, bare: TestClient, keys: Keys, seeded: Seeded
) -> None:
    decision = EXPECTED[(method, path)]
    needed = READ if decision == UI_READ else PREDICT
    token = "qa49-csrf-token-0123456789"
    problems = []
    for exists in [True, False] if "{" in path else [True]:
        url = url_for(path, seeded, exists=exists)
        for name, key in ui_sessions(keys).items():
            headers = {"Cookie": cookie_header(keys, key, csrf=token)}
            if method == "POST":
                response = bare.post(
                    url,
                    headers=headers,
                    data={"csrf_token": token},
                    files={"file": ("a.png", png_bytes(seed=49), "image/png")},
                )
            else:
                response = bare.get(url, headers=headers)
                head = bare.head(url, headers=headers)
                if head.status_code != response.status_code:
                    problems.append(f"HEAD {url} with a {name} session: {head.status_code}")
            status = response.status_code
            where = f"{method} {url} with a {name} session"
            if name == "none":
                want = (303, "/ui/login?reason=login")
            elif name in ("malformed", "unknown"):
                want = (303, "/ui/login?reason=expired")
            elif name == "revoked":
                want = (303, "/ui/login?reason=revoked")
            elif needed in SCOPES_OF[name]:
                want = None
            else:
                want = (403, None)
            if want is not None and want[0] == 303 and (method, path) == ("POST", "/ui/upload"):
                # whatever ended the session, the login says the file was not uploaded and
                # leads back to the form (QA 109)
                want = (303, "/ui/login?reason=upload")
            if status >= 500:
                problems.append(f"{where}: {status}")
            elif want is None:
                if status in (303, 401, 403) and not (method == "POST" and status == 303):
                    problems.append(f"{where}: refused {status}")
                elif method == "POST":
                    assert response.headers["location"].startswith("/ui/predictions/"), where
            elif status != want[0]:
                problems.append(f"{where}: {status}, expected {want[0]}")
            elif want[1] is not None:
                assert response.headers["location"] == want[1], where
            if status != 303:
                assert_security_headers(response, where)
                assert key is None or len(key) < 20 or key not in response.text, where
    assert not problems, "\n".join(problems)


def test_ui_session_expires_and_an_edited_token_is_refused(
    bare: TestClient, keys: Keys, service: Service
) -> None:
    """The session's row expires (by the database's clock); a token edited by the browser
    (one character changed) is no session."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from radlens.app.keys import key_id_of
    from radlens.app.security_tables import UiSession
    from radlens.app.ui import session as ui_session

    with service.app.state.resources.sessionmaker() as session:
        token = ui_session.start(session, str(key_id_of(keys.full)), minutes=60)
        session.execute(
            update(UiSession)
            .where(UiSession.token_sha256 == ui_session.token_digest(token))
            .values(expires_at=datetime.now(UTC) - timedelta(hours=1))
        )
        session.commit()
    live = keys.sessions[keys.full]
    edited = live[:-1] + ("A" if live[-1] != "A" else "B")
    for value in (token, edited):
        response = bare.get(
            "/ui/predictions", headers={"Cookie": f"{ui_session.SESSION_COOKIE}={value}"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login?reason=expired"
    page = bare.get("/ui/predictions", headers={"Cookie": f"{ui_session.SESSION_COOKIE}={live}"})
    assert page.status_code == 200


def test_ui_forms_need_the_csrf_token(bare: TestClient, keys: Keys) -> None:
    """Login, logout and upload: without the token, or with another session's, a 403 page."""
    token = "qa49-csrf-token-0123456789"
    for path, data in (
        ("/ui/login", {"api_key": keys.full}),
        ("/ui/logout", {}),
        ("/ui/upload", {}),
    ):
        for cookie_token, form_token in (
            (token, None),
            (token, "another-sessions-token"),
            (None, token),
        ):
            form = dict(data)
            if form_token is not None:
                form["csrf_token"] = form_token
            response = bare.post(
                path,
                headers={"Cookie": cookie_header(keys, keys.full, csrf=cookie_token)},
                data=form,
                files={"file": ("a.png", png_bytes(seed=7), "image/png")}
                if path == "/ui/upload"
                else None,
            )
            assert response.status_code == 403, (path, cookie_token, form_token)
            assert_security_headers(response, path)


def test_ui_login_cookies_and_who_may_log_in(bare: TestClient, keys: Keys) -> None:
    """Only a key with the read scope logs in; the cookies are HttpOnly, SameSite=Strict,
    limited to /ui and to the session's length; a refused login sets no session."""
    token = "qa49-csrf-token-0123456789"
    for name, key in ui_sessions(keys).items():
        response = bare.post(
            "/ui/login",
            headers={"Cookie": cookie_header(keys, None, csrf=token)},
            data={"csrf_token": token, "api_key": key or ""},
        )
        cookies = response.headers.get_list("set-cookie")
        if name in ("read", "full"):
            assert response.status_code == 303, name
            assert len(cookies) == 2
            for cookie in cookies:
                flags = {part.strip().lower() for part in cookie.split(";")[1:]}
                assert {"httponly", "samesite=strict", "path=/ui"} <= flags, cookie
                assert any(f.startswith("max-age=") for f in flags), cookie
        else:
            assert response.status_code == 401, name
            assert not any(c.startswith("radlens_session=") for c in cookies), name
            assert_security_headers(response, name)


def test_ui_pages_carry_the_not_for_clinical_use_notice(
    bare: TestClient, keys: Keys, seeded: Seeded
) -> None:
    from radlens.app.schemas import NOT_FOR_CLINICAL_USE

    headers = {"Cookie": cookie_header(keys, keys.read)}
    for path in (
        "/ui/predictions",
        f"/ui/predictions/{seeded.prediction_id}",
        f"/ui/series/{seeded.series}",
        "/ui/model",
        "/ui/drift",
        "/ui/upload",
    ):
        response = bare.get(path, headers=headers)
        assert response.status_code == 200, path
        assert "not for clinical use" in response.text.lower(), path
    api = {"Authorization": f"Bearer {keys.read}"}
    for path in (f"/v1/predictions/{seeded.prediction_id}", "/v1/models"):
        body = bare.get(path, headers=api).json()
        found = body.get("notice") or body["models"][0].get("notice")
        assert found == NOT_FOR_CLINICAL_USE, path
    listing = bare.get("/v1/predictions", headers=api, params={"limit": 5}).json()
    assert all(item["notice"] == NOT_FOR_CLINICAL_USE for item in listing["items"])

"""QA 67 (an operator upgrading a radlens that has served for months): databases written by
older releases, upgraded to head, read through this release's API, /ui pages, DICOM outputs and
CLI, on SQLite and PostgreSQL.

The old installs were first made by running each old release's own service and CLI (checkouts
at migrations 0013, 0016 and 0017: PNG and DICOM uploads, a 10-frame MR, a 4-instance series,
explanations, a findings model, API keys, a revoked one, audit rows, /ui sessions, an outbox),
then upgraded by this release. The rows below are shaped as those releases wrote them (the
columns and values their services stored, copied from those databases), and as the first
release (migration 0001) wrote them: nothing that later migrations added.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from radlens.app.db import make_engine
from radlens.app.migrate import current_revision, head_revision, upgrade
from tests.app.conftest import Databases, dicom_bytes, make_settings, new_uid, png_bytes

NOW = datetime.now(UTC).replace(tzinfo=None)  # the naive UTC times the old services stored
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_ENHANCED = "1.2.840.10008.5.1.4.1.1.4.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _insert(engine: Engine, table: str, row: dict[str, Any]) -> None:
    columns = ", ".join(f'"{c}"' for c in row)
    values = ", ".join(f":{c}" for c in row)
    params = {c: json.dumps(v) if isinstance(v, dict | list) else v for c, v in row.items()}
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({values})"), params)


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _app(url: str, store: Path) -> Any:
    from radlens.app.main import create_app

    return create_app(make_settings(url, store, auth="enabled"))


def _id(row: dict[str, Any]) -> str:
    return str(uuid.UUID(row["id"]))


# --- the first release (migration 0001, commit b5704e3) ------------------------------------


def _first_release_row(data: bytes, *, fmt: str, **dicom: Any) -> dict[str, Any]:
    """A prediction as the first release stored it: the dedupe key ``sop:<SOP Instance
    UID>``, else ``sha256:<the bytes' sha256>``; no SOP Class UID (0002), no pseudonymisation
    record (0004), runtime (0005), dedupe identity (0010), operating point (0011) ..."""
    digest = hashlib.sha256(data).hexdigest()
    sop = dicom.get("sop_instance_uid")
    return {
        "id": uuid.uuid4().hex,
        "created_at": NOW - timedelta(days=200),
        "model_name": "tiny",
        "model_version": 1,
        "preprocessing_version": "5",
        "device": "/CPU:0",
        "label": "abnormal",
        "scores": {"normal": 0.4, "abnormal": 0.6},
        "threshold": 0.5,
        "inference_ms": 12.5,
        "batch_size": 1,
        "dedupe_key": f"sop:{sop}" if sop else f"sha256:{digest}",
        "input_sha256": digest,
        "input_format": fmt,
        "study_instance_uid": dicom.get("study_instance_uid"),
        "series_instance_uid": dicom.get("series_instance_uid"),
        "sop_instance_uid": sop,
        "modality": dicom.get("modality"),
        "rows": dicom.get("rows", 16),
        "columns": dicom.get("columns", 16),
        "frames": 1,
        "photometric_interpretation": dicom.get("photometric_interpretation"),
        "transfer_syntax_uid": dicom.get("transfer_syntax_uid"),
    }


@dataclass
class FirstRelease:
    url: str
    study: str
    series: str
    instances: list[bytes]
    png: bytes
    rows: list[dict[str, Any]]


@pytest.fixture()
def first_release(databases: Databases) -> FirstRelease:
    url = databases.new()
    upgrade(url, "0001")
    study, series = new_uid(), new_uid()
    sops = [new_uid(), new_uid()]
    instances = [
        dicom_bytes(study=study, series=series, sop=sop, instance=i + 1, seed=i)
        for i, sop in enumerate(sops)
    ]
    png = png_bytes(seed=67)
    rows = [
        _first_release_row(
            data,
            fmt="dicom",
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop,
            modality="CT",
            photometric_interpretation="MONOCHROME2",
            transfer_syntax_uid=EXPLICIT_LE,
        )
        for data, sop in zip(instances, sops, strict=True)
    ]
    rows.append(_first_release_row(png, fmt="png", rows=40, columns=48))
    engine = make_engine(url)
    try:
        for row in rows:
            _insert(engine, "predictions", row)
        upgrade(url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    return FirstRelease(url, study, series, instances, png, rows)


def test_first_release_rows_read_through_head(
    first_release: FirstRelease, model_store: Path
) -> None:
    """Rows from before every later migration (their new columns NULL) are listed, shown, put
    in their series (0008's backfill), found again by a re-post (the ``dedupe_key`` rule) and
    shown on the /ui pages; a DICOM output, which needs the SOP Class UID they never stored, is
    a 409 that says so, never a 500."""
    from tests.app.conftest import create_api_key
    from tests.app.test_ui import login

    old = first_release
    key = create_api_key(old.url)
    with TestClient(_app(old.url, model_store), headers={"Authorization": f"Bearer {key}"}) as c:
        listed = c.get("/v1/predictions", params={"limit": 100})
        assert listed.status_code == 200, listed.text
        assert {_id(r) for r in old.rows} <= {p["id"] for p in listed.json()["items"]}
        for row in old.rows:
            detail = c.get(f"/v1/predictions/{_id(row)}")
            assert detail.status_code == 200, detail.text
            body = detail.json()
            assert (body["label"], body["scores"]) == (row["label"], row["scores"])
            assert body["runtime"] is None and body["operating_point"] is None
            for output in ("sr", "secondary-capture"):
                response = c.get(f"/v1/predictions/{_id(row)}/dicom/{output}")
                assert response.status_code == 409, response.text
                assert response.headers["content-type"].startswith("application/problem+json")
        series = c.get(f"/v1/series/{old.series}")
        assert series.status_code == 200, series.text
        assert series.json()["results"][0]["instance_count"] == 2
        assert c.get(f"/v1/studies/{old.study}").status_code == 200
        assert c.get("/v1/drift").status_code == 200

        # the same files again: the stored rows, nothing new
        repost = c.post("/v1/predictions", files={"file": ("a.dcm", old.instances[0])})
        assert (repost.status_code, repost.json()["id"]) == (200, _id(old.rows[0]))
        repost = c.post("/v1/predictions", files={"file": ("a.png", old.png)})
        assert (repost.status_code, repost.json()["id"]) == (200, _id(old.rows[2]))

        c.headers.pop("Authorization")
        login(c, key)
        for row in old.rows:
            assert c.get(f"/ui/predictions/{_id(row)}").status_code == 200
            for sub in ("overlay.png", "sr.dcm", "sc.dcm"):
                assert c.get(f"/ui/predictions/{_id(row)}/{sub}").status_code < 500
        for page in ("/ui/predictions", f"/ui/series/{old.series}", "/ui/drift"):
            assert c.get(page).status_code == 200, page


# --- releases at migrations 0013 (3495d57), 0016 (05f373c) and 0017 (12d1b8c) --------------


@dataclass
class OldInstall:
    """What an old release's service and CLI left in its database."""

    url: str
    revision: str
    keys: dict[str, str] = field(default_factory=dict)  # name -> the full key
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    series: str = ""
    study: str = ""
    session_token: str = ""  # a /ui session (0017 on)
    revoked_session_token: str = ""
    audit_rows: int = 0


def _old_key(engine: Engine, name: str, scopes: str, revoked: bool = False) -> str:
    """An API key as `radlens keys create` stored it (rl_<id>_<secret>, the sha256 of it)."""
    key_id = secrets.token_hex(6)
    key = f"rl_{key_id}_{secrets.token_urlsafe(32)}"
    _insert(
        engine,
        "api_keys",
        {
            "key_id": key_id,
            "name": name,
            "scopes": scopes,
            "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
            "created_at": NOW - timedelta(days=90),
            "revoked_at": NOW - timedelta(days=1) if revoked else None,
        },
    )
    _audit(engine, "cli", "key.create", key_id, 201)
    if revoked:
        _audit(engine, "cli", "key.revoke", key_id, 200)
    return key


def _audit(engine: Engine, actor: str, action: str, target: str | None, status: int) -> None:
    _insert(
        engine,
        "audit_events",
        {
            "at": NOW - timedelta(days=30),
            "actor": actor,
            "action": action,
            "target": target,
            "query": None,
            "status": status,
        },
    )


def _old_prediction(revision: str, data: bytes, **values: Any) -> dict[str, Any]:
    """A prediction row as the release at ``revision`` stored it (the columns and value forms
    of the rows its service wrote: the dedupe key ``sop:``/``sha256:``, the dedupe identity
    ``uid:<keyed hash>`` or ``sha256:``, the operating point ``chosen``, the input statistics;
    0015 on: the Instance Number)."""
    digest = hashlib.sha256(data).hexdigest()
    sop = values.get("sop_instance_uid")
    row = {
        "id": uuid.uuid4().hex,
        "created_at": NOW - timedelta(days=40),
        "model_name": "tiny",
        "model_version": 1,
        "preprocessing_version": "5",
        "device": "/CPU:0",
        "label": "abnormal",
        "scores": {"normal": 0.49, "abnormal": 0.51},
        "threshold": 0.5,
        "inference_ms": 64.3,
        "batch_size": 8,
        "dedupe_key": f"sop:{sop}" if sop else f"sha256:{digest}",
        "input_sha256": digest,
        "input_format": "dicom" if sop else "png",
        "study_instance_uid": None,
        "series_instance_uid": None,
        "sop_instance_uid": None,
        "modality": None,
        "rows": 32,
        "columns": 32,
        "frames": 1,
        "photometric_interpretation": "MONOCHROME2" if sop else None,
        "transfer_syntax_uid": EXPLICIT_LE if sop else None,
        "sop_class_uid": CT_IMAGE if sop else None,
        "uids_pseudonymised": False,
        "pseudonym_key_id": None,
        "runtime": "tensorflow",
        "precision": "fp32",
        "dedupe_identity": f"sha256:{digest}",
        "operating_point": "chosen",
        "frame_result": None,
        "ood_score": None,
        "in_distribution": None,
        "intended_use_violations": None,
        "input_mean_intensity": 0.315,
        "input_std_intensity": 0.215,
        "burned_in_annotation": "NO" if sop else None,
    }
    if revision >= "0015":
        row["instance_number"] = values.pop("instance_number", None)
    else:
        values.pop("instance_number", None)
    row.update(values)
    return row


def _multiframe_mr() -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("emri_small.dcm")  # pydicom-data: 10 frames, MR
    if path is None:
        pytest.skip("pydicom-data's emri_small.dcm is not installed")
    return Path(str(path)).read_bytes()


@pytest.fixture(params=["0013", "0017"])
def old_install(request: pytest.FixtureRequest, databases: Databases) -> Iterator[OldInstall]:
    revision = request.param
    url = databases.new()
    upgrade(url, revision)
    old = OldInstall(url=url, revision=revision, study=new_uid(), series=new_uid())
    engine = make_engine(url)
    try:
        old.keys = {
            "ops": _old_key(engine, "ops", "predict,read"),
            "reader": _old_key(engine, "reader", "read"),
            "gone": _old_key(engine, "gone", "predict,read", revoked=True),
            # the releases before commit 7a63bf9 also had the admin scope (removed since)
            "legacy": _old_key(engine, "legacy", "admin,predict,read"),
        }
        actor = old.keys["ops"].split("_")[1]
        # a 4-instance CT series (instance 2 explained), a 10-frame MR, a PNG, a findings row
        for n in range(1, 5):
            data = dicom_bytes(
                study=old.study, series=old.series, instance=n, seed=n, rows=32, columns=32
            )
            ds = pydicom.dcmread(io.BytesIO(data))
            old.predictions[f"ct{n}"] = _old_prediction(
                revision,
                data,
                study_instance_uid=old.study,
                series_instance_uid=old.series,
                sop_instance_uid=str(ds.SOPInstanceUID),
                modality="CT",
                instance_number=n,
                dedupe_identity=f"sha256:{hashlib.sha256(data).hexdigest()}",
            )
        mr = pydicom.dcmread(io.BytesIO(_multiframe_mr()))
        old.predictions["mr"] = _old_prediction(
            revision,
            _multiframe_mr(),
            study_instance_uid=str(mr.StudyInstanceUID),
            series_instance_uid=str(mr.SeriesInstanceUID),
            sop_instance_uid=str(mr.SOPInstanceUID),
            modality="MR",
            rows=64,
            columns=64,
            frames=10,
            sop_class_uid=MR_ENHANCED,
            instance_number=1,
            frame_result={
                "aggregation": "max",
                "top_k": 3,
                "class_name": "abnormal",
                "frames": list(range(10)),
                "scores": [0.49 + i / 1000 for i in range(10)],
                "key_frame": 9,
            },
        )
        old.predictions["png"] = _old_prediction(revision, png_bytes(seed=670))
        old.predictions["findings"] = _old_prediction(
            revision,
            png_bytes(seed=671),
            model_name="findings",
            label="Effusion",
            scores={"Effusion": 0.88, "Infiltration": 0.12, "Nodule": 0.5},
            threshold=None,
        )
        for row in old.predictions.values():
            _insert(engine, "predictions", row)
            _audit(engine, actor, "prediction.create", _id(row), 201)
        # the series rows the writer kept (0008), one per source series
        for uid, row in (
            (old.series, old.predictions["ct1"]),
            (mr.SeriesInstanceUID, old.predictions["mr"]),
        ):
            _insert(
                engine,
                "prediction_series",
                {
                    "series_instance_uid": str(uid),
                    "study_instance_uid": row["study_instance_uid"],
                    "modality": row["modality"],
                    "rows": row["rows"],
                    "columns": row["columns"],
                    "created_at": row["created_at"],
                },
            )
        for name in ("ct2", "png"):
            _insert(
                engine,
                "explanations",
                {
                    "id": uuid.uuid4().hex,
                    "prediction_id": old.predictions[name]["id"],
                    "created_at": old.predictions[name]["created_at"],
                    "layer": "conv4",
                    "class_index": 1,
                    "class_name": "abnormal",
                    "score": 0.51,
                    "png": png_bytes(seed=7, size=(32, 32)),
                },
            )
        for finding, score, threshold in (
            ("Effusion", 0.88, 0.5),
            ("Infiltration", 0.12, 0.5),
            ("Nodule", 0.5, 0.6),
        ):
            _insert(
                engine,
                "prediction_findings",
                {
                    "id": uuid.uuid4().hex,
                    "prediction_id": old.predictions["findings"]["id"],
                    "finding": finding,
                    "score": score,
                    "threshold": threshold,
                    "positive": score >= threshold,
                },
            )
        _audit(engine, "dicom-send", "dicom.send.queue", _id(old.predictions["ct1"]), 202)
        if revision >= "0017":
            for key_name, attribute in (
                ("ops", "session_token"),
                ("gone", "revoked_session_token"),
            ):
                token = secrets.token_urlsafe(32)
                setattr(old, attribute, token)
                _insert(
                    engine,
                    "ui_sessions",
                    {
                        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                        "key_id": old.keys[key_name].split("_")[1],
                        "created_at": NOW - timedelta(minutes=10),
                        "expires_at": NOW + timedelta(hours=7),
                        "ended_at": None,
                    },
                )
        old.audit_rows = _count(engine, "audit_events")
        upgrade(url)
        upgrade(url)  # a second run (another replica's Job) changes nothing
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    yield old


def test_old_rows_keys_and_outputs_after_the_upgrade(
    old_install: OldInstall, model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = old_install
    monkeypatch.setenv("RADLENS_DICOM_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("RADLENS_DIMSE_INBOX_DIR", str(tmp_path / "inbox"))
    ops = {"Authorization": f"Bearer {old.keys['ops']}"}
    with TestClient(_app(old.url, model_store), headers=ops) as c:
        # the old keys: as they were
        reader = {"Authorization": f"Bearer {old.keys['reader']}"}
        assert c.get("/v1/predictions", headers=reader).status_code == 200
        refused = c.post("/v1/predictions", files={"file": ("a.png", png_bytes())}, headers=reader)
        assert refused.status_code == 403
        gone = {"Authorization": f"Bearer {old.keys['gone']}"}
        assert c.get("/v1/predictions", headers=gone).status_code == 401
        legacy = {"Authorization": f"Bearer {old.keys['legacy']}"}
        assert c.get("/v1/models", headers=legacy).status_code == 200

        listed = c.get("/v1/predictions", params={"limit": 100}).json()["items"]
        assert {p["id"] for p in listed} == {_id(r) for r in old.predictions.values()}
        for name, row in old.predictions.items():
            body = c.get(f"/v1/predictions/{_id(row)}").json()
            assert body["scores"] == row["scores"], name
            assert body["operating_point"] == "chosen" and body["voi"] is None
        mr = c.get(f"/v1/predictions/{_id(old.predictions['mr'])}").json()
        assert mr["frame_result"]["key_frame"] == 9
        assert mr["frame_result"]["frame_voi"] is None
        findings = c.get(f"/v1/predictions/{_id(old.predictions['findings'])}").json()["findings"]
        assert [(f["name"], f["positive"]) for f in findings] == [
            ("Effusion", True),
            ("Infiltration", False),
            ("Nodule", False),
        ]
        assert c.get(
            "/v1/predictions",
            params={"model": "findings", "finding": "Effusion", "positive": "true"},
        ).json()["items"][0]["id"] == (_id(old.predictions["findings"]))

        # DICOM outputs of old predictions: Instance Numbers as stored (1 before 0015)
        for name in ("ct1", "ct3", "mr"):
            response = c.get(f"/v1/predictions/{_id(old.predictions[name])}/dicom/sr")
            assert response.status_code == 200, response.text
            sr = pydicom.dcmread(io.BytesIO(response.content))
            assert sr.StudyInstanceUID == old.predictions[name]["study_instance_uid"]
            stored = old.predictions[name].get("instance_number")
            assert int(sr.InstanceNumber) == (stored if stored is not None else 1)
        sc = c.get(f"/v1/predictions/{_id(old.predictions['ct2'])}/dicom/secondary-capture")
        assert sc.status_code == 200, sc.text
        assert pydicom.dcmread(io.BytesIO(sc.content)).Modality == "OT"
        for name in ("ct2", "png"):
            heatmap = c.get(f"/v1/predictions/{_id(old.predictions[name])}/heatmap")
            assert heatmap.status_code == 200 and heatmap.content[:4] == b"\x89PNG"
        series = c.get(f"/v1/series/{old.series}")
        assert series.status_code == 200, series.text
        assert series.json()["results"][0]["instance_count"] == 4
        series_sr = c.get(f"/v1/series/{old.series}/dicom/sr")
        assert series_sr.status_code == 200, series_sr.text
        assert c.get(f"/v1/studies/{old.study}").status_code == 200

        # the /ui pages: a 0017 session goes on, a revoked key's is refused, an older release's
        # cookie (the API key and a time) is no session
        c.headers.pop("Authorization")
        c.cookies.clear()
        if old.session_token:
            c.cookies.set("radlens_session", old.session_token, path="/ui")
            assert c.get("/ui/predictions", follow_redirects=False).status_code == 200
            c.cookies.clear()
            c.cookies.set("radlens_session", old.revoked_session_token, path="/ui")
            assert c.get("/ui/predictions", follow_redirects=False).status_code == 303
        else:
            c.cookies.set("radlens_session", f"{old.keys['ops']}.1796640000.sig", path="/ui")
            assert c.get("/ui/predictions", follow_redirects=False).status_code == 303
        c.cookies.clear()
        from tests.app.test_ui import login

        login(c, old.keys["ops"])
        for name, row in old.predictions.items():
            page = c.get(f"/ui/predictions/{_id(row)}")
            assert page.status_code == 200, (name, page.text[:300])
        assert c.get(f"/ui/series/{old.series}").status_code == 200
        sr_page = c.get(f"/ui/predictions/{_id(old.predictions['ct1'])}/sr.dcm")
        assert sr_page.status_code == 200

    # the audit trail goes on from the old rows, in order; purge removes the old predictions
    # with their explanations, findings and series rows, never an audit row
    engine = make_engine(old.url)
    try:
        with engine.connect() as conn:
            ids = [r[0] for r in conn.execute(text("SELECT id FROM audit_events ORDER BY id"))]
        assert len(ids) > old.audit_rows and ids == sorted(set(ids))
        from radlens.cli.main import main

        assert main(["purge", "--retention-days", "30", "--database-url", old.url]) == 0
        for table in ("predictions", "explanations", "prediction_findings", "prediction_series"):
            assert _count(engine, table) == 0, table
        assert _count(engine, "audit_events") > old.audit_rows
        assert main(["audit", "--action", "key.revoke", "--database-url", old.url]) == 0
        assert main(["keys", "list", "--database-url", old.url]) == 0
    finally:
        engine.dispose()

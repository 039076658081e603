"""De-duplication that survives pseudonymisation changes (app/dedupe.py, migration 0010).

A re-post of an instance after RADLENS_UID_PSEUDONYM_KEY was switched on, off, or changed is
answered with the stored prediction (200), through POST /v1/predictions, STOW-RS and the DICOM
Storage SCP; the database keeps one row even when two replicas in different states store the
same instance at once; rows stored before 0010 keep the old rule. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from radlens.app.dedupe import NO_KEY, dedupe_identity
from tests.app.conftest import (
    Databases,
    TestClient,
    dicom_bytes,
    make_settings,
    new_uid,
    png_bytes,
    prediction_row,
)

DEDUPE_KEY = "dedupe-key-0123456789abcdef"
PSEUDONYM_KEY = "pseudonym-key-one-0123456789"
ROTATED_KEY = "pseudonym-key-two-9876543210"
DIGEST = "ab" * 32


class TestIdentity:
    def test_known_value(self) -> None:
        key = DEDUPE_KEY.encode()
        mac = hmac.new(key, b"SOPInstanceUID\x001.2.3.4", hashlib.sha256).hexdigest()
        assert dedupe_identity(sop_instance_uid="1.2.3.4", input_sha256=DIGEST, key=key) == (
            f"uid:{mac}"
        )

    def test_depends_on_the_uid_and_the_key_never_holds_the_uid(self) -> None:
        uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
        one = dedupe_identity(sop_instance_uid=uid, input_sha256=DIGEST, key=b"k" * 16)
        assert one == dedupe_identity(sop_instance_uid=uid, input_sha256="cd" * 32, key=b"k" * 16)
        assert one != dedupe_identity(sop_instance_uid=uid, input_sha256=DIGEST, key=b"j" * 16)
        assert one != dedupe_identity(
            sop_instance_uid=uid + "1", input_sha256=DIGEST, key=b"k" * 16
        )
        assert uid not in one and len(one) <= 80
        # padding as read from some files does not make another instance
        assert one == dedupe_identity(
            sop_instance_uid=f" {uid} ", input_sha256=DIGEST, key=b"k" * 16
        )

    def test_without_a_key_the_public_no_key_is_used(self) -> None:
        assert dedupe_identity(sop_instance_uid="1.2.3", input_sha256=DIGEST, key=None) == (
            dedupe_identity(sop_instance_uid="1.2.3", input_sha256=DIGEST, key=NO_KEY)
        )

    def test_no_uid_is_the_sha256_under_any_key(self) -> None:
        for uid in (None, "", "  "):
            for key in (None, b"k" * 16):
                got = dedupe_identity(sop_instance_uid=uid, input_sha256=DIGEST, key=key)
                assert got == f"sha256:{DIGEST}"


class TestSetting:
    def test_pseudonymisation_needs_a_dedupe_key(self, tmp_path: Path) -> None:
        from radlens.app.settings import describe_validation_error

        with pytest.raises(ValidationError, match="needs RADLENS_DEDUPE_KEY") as info:
            make_settings("sqlite://", tmp_path, uid_pseudonym_key=PSEUDONYM_KEY)
        line = describe_validation_error(info.value)
        assert "RADLENS_DEDUPE_KEY" in line and PSEUDONYM_KEY not in line

    @pytest.mark.usefixtures("clean_radlens_env")
    def test_serve_stops_in_one_line(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        from radlens.cli.main import main

        monkeypatch.setenv("RADLENS_UID_PSEUDONYM_KEY", PSEUDONYM_KEY)
        monkeypatch.setenv("RADLENS_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
        assert main(["serve"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs RADLENS_DEDUPE_KEY" in err, err
        assert PSEUDONYM_KEY not in err and not (tmp_path / "x.db").exists()

    def test_the_two_keys_must_differ(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="must differ from RADLENS_UID_PSEUDONYM_KEY"):
            make_settings(
                "sqlite://", tmp_path, uid_pseudonym_key=PSEUDONYM_KEY, dedupe_key=PSEUDONYM_KEY
            )

    def test_short_dedupe_key_is_refused_and_withheld(self, tmp_path: Path) -> None:
        from radlens.app.settings import describe_validation_error

        with pytest.raises(ValidationError, match="at least 16 characters") as info:
            make_settings("sqlite://", tmp_path, dedupe_key="short-secret")
        line = describe_validation_error(info.value)
        assert line.startswith("invalid configuration: RADLENS_DEDUPE_KEY: ")
        assert "short-secret" not in line and "<secret withheld>" in line

    def test_dedupe_key_alone_is_fine_and_secret(self, tmp_path: Path) -> None:
        settings = make_settings("sqlite://", tmp_path, dedupe_key=DEDUPE_KEY)
        assert settings.dedupe_key_bytes == DEDUPE_KEY.encode()
        assert DEDUPE_KEY not in repr(settings)
        assert make_settings("sqlite://", tmp_path, dedupe_key="").dedupe_key is None


# --- the service, across pseudonymisation changes ------------------------------------------


@contextmanager
def running(url: str, store: Path, pseudonym_key: str | None, **extra: Any) -> Iterator[Any]:
    """The app on ``url`` with the dedupe key and this pseudonymisation state."""
    from radlens.app.main import create_app

    settings = make_settings(
        url, store, dedupe_key=DEDUPE_KEY, uid_pseudonym_key=pseudonym_key, **extra
    )
    app = create_app(settings)
    with TestClient(app) as client:
        client.app_state = app.state  # type: ignore[attr-defined]
        yield client


def post(client: Any, data: bytes) -> Any:
    return client.post("/v1/predictions", files={"file": ("a.dcm", data, "application/dicom")})


def table(url: str) -> list[dict[str, Any]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(text("SELECT * FROM predictions")).mappings()]
    finally:
        engine.dispose()


@pytest.fixture()
def url(databases: Databases) -> str:
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    return url


@pytest.mark.parametrize(
    ("before", "after"),
    [(None, PSEUDONYM_KEY), (PSEUDONYM_KEY, None), (PSEUDONYM_KEY, ROTATED_KEY)],
    ids=["switched-on", "switched-off", "key-rotated"],
)
def test_a_repost_after_the_change_returns_the_stored_prediction(
    url: str, model_store: Path, before: str | None, after: str | None
) -> None:
    sop = new_uid()
    data = dicom_bytes(sop=sop)
    with running(url, model_store, before) as client:
        first = post(client, data)
        assert first.status_code == 201, first.text
    with running(url, model_store, after) as client:
        again = post(client, data)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.json() == client.get(f"/v1/predictions/{first.json()['id']}").json()
        # a re-encoded copy (other bytes, same instance) is the same instance too
        assert post(client, dicom_bytes(sop=sop, seed=5)).json()["id"] == first.json()["id"]
    rows = table(url)
    assert len(rows) == 1
    if before is not None:  # stored pseudonymised: the raw UID is nowhere in the row
        assert sop not in repr(rows)


def test_a_uid_re_posted_in_other_bytes_is_said_in_the_log(
    url: str, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same SOP Instance UID, other pixels (a sender that reuses UIDs, as the QA round 16
    files did): the stored prediction is the answer, as documented, and the operator's log
    says it came from other bytes and how far this upload's own scores were; a byte-identical
    re-post says nothing of the kind."""
    import logging

    uids = {"study": new_uid(), "series": new_uid(), "sop": new_uid()}
    sop = uids["sop"]
    with running(url, model_store, None) as client:
        first = post(client, dicom_bytes(**uids, seed=1))
        assert first.status_code == 201, first.text
        with caplog.at_level(logging.INFO, logger="radlens.app.ingest"):
            same = post(client, dicom_bytes(**uids, seed=1))
            other = post(client, dicom_bytes(**uids, seed=7))
    assert same.status_code == other.status_code == 200
    assert same.json()["id"] == other.json()["id"] == first.json()["id"]
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "radlens.app.ingest" and "other bytes" in r.getMessage()
    ]
    assert len(said) == 1, said  # the other pixels only
    assert said[0].startswith(f"prediction {first.json()['id']}: its SOP Instance UID was")
    assert "from the stored scores" in said[0] and sop not in said[0]


def test_the_other_bytes_line_is_a_warning_when_the_scores_disagree(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Same label within 0.01: a copy, INFO; another label or a wider gap: a WARNING (a
    reused UID); scores that cannot be compared still give the line, without a gap."""
    import logging

    from radlens.app.ingest import _note_other_bytes
    from radlens.app.tables import Prediction

    def row(digest: str, label: str, abnormal: object) -> Prediction:
        return Prediction(input_sha256=digest, label=label, scores={"abnormal": abnormal})

    stored = row("a" * 64, "abnormal", 0.80)
    with caplog.at_level(logging.INFO, logger="radlens.app.ingest"):
        _note_other_bytes(row("a" * 64, "abnormal", 0.10), stored)  # same bytes: nothing
        _note_other_bytes(row("b" * 64, "abnormal", 0.805), stored)
        _note_other_bytes(row("c" * 64, "normal", 0.30), stored)
        _note_other_bytes(row("d" * 64, "abnormal", 10**400), stored)  # float() overflows
    levels = [(r.levelno, r.getMessage()[-60:]) for r in caplog.records]
    assert [level for level, _ in levels] == [logging.INFO, logging.WARNING, logging.WARNING]
    assert "label abnormal, up to 0.005" in levels[0][1]
    assert "label normal, up to 0.500" in levels[1][1]
    assert levels[2][1].endswith("the stored result was returned")


def test_stowrs_dicom_sr_and_the_storage_scp_recognise_the_instance_too(
    url: str, model_store: Path
) -> None:
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    from tests.app.test_stowrs import multipart_related

    pynetdicom = pytest.importorskip("pynetdicom")
    data = dicom_bytes()
    with running(url, model_store, PSEUDONYM_KEY) as client:
        stored = post(client, data).json()["id"]
    with running(url, model_store, ROTATED_KEY, dimse_port=0) as client:
        body, content_type = multipart_related([data])
        response = client.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 200, response.text
        (item,) = Dataset.from_json(response.json()).ReferencedSOPSequence
        assert item[0x00991003].value == "existing"
        assert item[0x00991001].value == stored

        sr = client.post(
            "/v1/predictions/dicom-sr", files={"file": ("a.dcm", data, "application/dicom")}
        )
        assert sr.status_code == 200, sr.text
        assert sr.headers["Location"].endswith(f"/v1/predictions/{stored}")

        ae = pynetdicom.AE(ae_title="SENDER")
        ae.add_requested_context(pynetdicom.sop_class.CTImageStorage)
        port = client.app_state.dimse.port
        # addressed to dcmtk's default title: by default any called AE title is accepted
        # (RADLENS_DIMSE_REQUIRE_CALLED_AE_TITLE off, as in most PACS nodes)
        assoc = ae.associate("127.0.0.1", port, ae_title="ANY-SCP")
        assert assoc.is_established
        status = assoc.send_c_store(dcmread(io.BytesIO(data)))
        assoc.release()
        assert status.Status == 0x0000
    assert [str(uuid.UUID(str(row["id"]))) for row in table(url)] == [stored]


def test_png_reposts_are_recognised_in_any_state(url: str, model_store: Path) -> None:
    data = png_bytes()
    with running(url, model_store, None) as client:
        first = client.post("/v1/predictions", files={"file": ("a.png", data)}).json()["id"]
    with running(url, model_store, PSEUDONYM_KEY) as client:
        again = client.post("/v1/predictions", files={"file": ("a.png", data)})
        assert again.status_code == 200 and again.json()["id"] == first
    assert len(table(url)) == 1


def test_two_replicas_in_different_states_at_once_store_one_row(
    url: str, model_store: Path
) -> None:
    """Two replicas mid-change (one pseudonymising, one not) receive the same instances at
    the same time: one row per instance, every answer names it."""
    uploads = [dicom_bytes() for _ in range(4)]
    with (
        running(url, model_store, None) as plain,
        running(url, model_store, PSEUDONYM_KEY) as pseudonymising,
    ):
        jobs = [(client, data) for data in uploads for client in (plain, pseudonymising)] * 2
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda job: post(*job), jobs))
    assert sorted(r.status_code for r in responses) == [200] * 12 + [201] * 4
    ids: dict[bytes, set[str]] = {}
    for (_, data), response in zip(jobs, responses, strict=True):
        ids.setdefault(data, set()).add(response.json()["id"])
    assert all(len(found) == 1 for found in ids.values())
    assert len(table(url)) == 4


# --- the database enforces it ---------------------------------------------------------------


def _candidate(identity: str, dedupe_key: str) -> Any:
    row = prediction_row(dedupe_key)
    row.dedupe_identity = identity
    return row


def test_the_database_keeps_one_row_when_states_race(url: str) -> None:
    """A transaction holding an uncommitted row of the instance (stored with pseudonyms) and
    another inserting it as received: the second waits for the first, then returns its row,
    on the one-statement path; the portable path (SAVEPOINT) returns it too."""
    from radlens.app import services
    from radlens.app.db import make_engine, make_sessionmaker

    uid = new_uid()
    identity = dedupe_identity(sop_instance_uid=uid, input_sha256=DIGEST, key=b"k" * 16)
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    try:
        with sessionmaker() as first:
            winner, created = services.record_prediction(
                first, _candidate(identity, "sop:2.25.1234")
            )
            assert created
            result: dict[str, Any] = {}

            def second() -> None:
                with sessionmaker() as session:
                    result["stored"], result["created"] = services.record_prediction(
                        session, _candidate(identity, f"sop:{uid}")
                    )
                    result["id"] = result["stored"].id
                    session.commit()

            thread = threading.Thread(target=second)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waiting for the first transaction's row
            first.commit()
            thread.join(30)
        assert result["created"] is False and result["id"] == winner.id

        with sessionmaker() as session:
            stored, created = services._record_portable(
                session, _candidate(identity, f"sop:{new_uid()}")
            )
            session.commit()
        assert created is False and stored.id == winner.id
    finally:
        engine.dispose()
    assert len(table(url)) == 1


def test_rows_before_0010_keep_the_old_rule(url: str, model_store: Path) -> None:
    """A row with no identity (stored before migration 0010) is found by its dedupe key, i.e.
    by a re-post in the state it was stored in; after a change it is not (docs/security.md)."""
    from radlens.app.db import make_engine, make_sessionmaker

    sop = new_uid()
    old = prediction_row(f"sop:{sop}")  # no identity, the UID as stored (not pseudonymised)
    old.input_format, old.sop_instance_uid, old.uids_pseudonymised = "dicom", sop, False
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            session.add(old)
            session.commit()
    finally:
        engine.dispose()
    data = dicom_bytes(sop=sop)
    with running(url, model_store, None) as client:
        same_state = post(client, data)
        assert same_state.status_code == 200 and same_state.json()["id"] == str(old.id)
    with running(url, model_store, PSEUDONYM_KEY) as client:
        other_state = post(client, data)
        assert other_state.status_code == 201  # the documented one extra row
    with running(url, model_store, None) as client:
        # both rules match now; the identity's row (the rule new rows follow) is returned
        back = post(client, data)
        assert back.status_code == 200 and back.json()["id"] == other_state.json()["id"]
    assert len(table(url)) == 2

"""RADLENS_UID_PSEUDONYM_KEY: stored UIDs are keyed-hash pseudonyms that still look like UIDs,
dedupe and the study filter keep working, and the original UIDs are nowhere in the database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from radlens.app.pseudonym import pseudonymise_uid
from tests.app.conftest import (
    Databases,
    Service,
    TestClient,
    dicom_bytes,
    make_settings,
    new_uid,
)

SITE_KEY = "site-key-0123456789abcdef"
DEDUPE_KEY = (
    "dedupe-key-0123456789abcdef"  # required with a pseudonym key (tests/app/test_dedupe.py)
)
UID = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


class TestPseudonymiseUid:
    def test_is_a_valid_stable_uid(self) -> None:
        original = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
        pseudonym = pseudonymise_uid(original, SITE_KEY.encode())
        assert pseudonym is not None and UID.match(pseudonym)
        assert len(pseudonym) <= 64 and int(pseudonym[5:]) < 2**128
        assert pseudonym == pseudonymise_uid(original, SITE_KEY.encode())
        assert pseudonym != original

    def test_depends_on_the_key_and_the_uid(self) -> None:
        a = pseudonymise_uid("1.2.3.4", b"key-one-0123456789")
        assert a != pseudonymise_uid("1.2.3.4", b"key-two-0123456789")
        assert a != pseudonymise_uid("1.2.3.5", b"key-one-0123456789")

    def test_known_value(self) -> None:
        # HMAC-SHA256(b"k" * 16, b"1.2.3"), first 16 bytes as a big-endian integer
        import hashlib
        import hmac

        digest = hmac.new(b"k" * 16, b"1.2.3", hashlib.sha256).digest()
        assert pseudonymise_uid("1.2.3", b"k" * 16) == f"2.25.{int(digest[:16].hex(), 16)}"

    def test_no_key_or_no_uid_passes_through(self) -> None:
        assert pseudonymise_uid("1.2.3", None) == "1.2.3"
        assert pseudonymise_uid(None, b"k" * 16) is None
        assert pseudonymise_uid("", b"k" * 16) == ""


class TestSetting:
    def test_short_key_is_refused(self, tmp_path: Path) -> None:
        from radlens.app.settings import describe_validation_error

        with pytest.raises(ValidationError, match="at least 16 characters") as info:
            make_settings("sqlite://", tmp_path, uid_pseudonym_key="short-secret")
        line = describe_validation_error(info.value)
        assert line.startswith("invalid configuration: RADLENS_UID_PSEUDONYM_KEY: ")
        assert "short-secret" not in line and "<secret withheld>" in line

    def test_empty_means_off_and_the_key_is_secret(self, tmp_path: Path) -> None:
        assert make_settings("sqlite://", tmp_path, uid_pseudonym_key="").uid_pseudonym_key is None
        settings = make_settings(
            "sqlite://", tmp_path, uid_pseudonym_key=SITE_KEY, dedupe_key=DEDUPE_KEY
        )
        assert SITE_KEY not in repr(settings)
        assert settings.uid_pseudonym_key_bytes == SITE_KEY.encode()


@pytest.fixture()
def pseudonymising(databases: Databases, model_store: Path) -> Iterator[Service]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    app = create_app(
        make_settings(url, model_store, uid_pseudonym_key=SITE_KEY, dedupe_key=DEDUPE_KEY)
    )
    with TestClient(app) as client:
        yield Service(client=client, app=app, database_url=url, backend=databases.backend)


def test_stored_uids_are_pseudonyms_and_filters_still_work(pseudonymising: Service) -> None:
    service = pseudonymising
    study, series, sop = new_uid(), new_uid(), new_uid()
    data = dicom_bytes(study=study, series=series, sop=sop)
    created = service.post(data, "a.dcm")
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    key = SITE_KEY.encode()
    assert body["study_instance_uid"] == pseudonymise_uid(study, key)
    assert body["series_instance_uid"] == pseudonymise_uid(series, key)
    assert body["sop_instance_uid"] == pseudonymise_uid(sop, key)
    dump = repr(service.rows())
    for original in (study, series, sop):
        assert original not in dump

    # the same instance again is recognised (dedupe on the pseudonymous SOP UID)
    again = service.post(data, "a.dcm")
    assert again.status_code == 200 and again.json()["id"] == body["id"]

    # the study filter takes the original UID and hashes it the same way
    page = service.client.get("/v1/predictions", params={"study_instance_uid": study}).json()
    assert [item["id"] for item in page["items"]] == [body["id"]]
    other = service.client.get("/v1/predictions", params={"study_instance_uid": new_uid()})
    assert other.json()["items"] == []


# --- the pseudonymisation recorded per row (migration 0004) -------------------------------


def test_the_key_id_tells_keys_apart_and_reveals_nothing() -> None:
    import hashlib

    from radlens.app.pseudonym import pseudonym_key_id

    key = SITE_KEY.encode()
    key_id = pseudonym_key_id(key)
    assert re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert key_id == pseudonym_key_id(key)
    assert key_id != pseudonym_key_id(b"another-key-0123456789")
    assert key_id not in hashlib.sha256(key).hexdigest()  # not a plain hash of the key


def test_each_row_records_whether_its_uids_are_pseudonyms(pseudonymising: Service) -> None:
    from sqlalchemy import select

    from radlens.app.pseudonym import pseudonym_key_id
    from radlens.app.tables import Prediction
    from tests.app.conftest import png_bytes

    dicom = pseudonymising.post(dicom_bytes(), "a.dcm").json()["id"]
    png = pseudonymising.post(png_bytes(), "a.png").json()["id"]
    with pseudonymising.app.state.resources.sessionmaker() as session:
        rows = {
            str(p.id): (p.uids_pseudonymised, p.pseudonym_key_id)
            for p in session.scalars(select(Prediction))
        }
    assert rows[dicom] == (True, pseudonym_key_id(SITE_KEY.encode()))
    assert rows[png] == (False, None)  # no UIDs to pseudonymise


def test_dicom_outputs_follow_the_row_not_the_current_setting(
    databases: Databases, model_store: Path
) -> None:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from tests.app.conftest import assert_problem

    url = databases.new()
    upgrade(url)

    def sr(client: Any, prediction_id: str) -> Any:
        return client.get(f"/v1/predictions/{prediction_id}/dicom/sr")

    with TestClient(
        create_app(
            make_settings(url, model_store, uid_pseudonym_key=SITE_KEY, dedupe_key=DEDUPE_KEY)
        )
    ) as c:
        pseudonymised = c.post("/v1/predictions", files={"file": ("a.dcm", dicom_bytes())})
        pseudonymised_id = pseudonymised.json()["id"]
    with TestClient(create_app(make_settings(url, model_store))) as c:  # the key turned off
        raw_id = c.post("/v1/predictions", files={"file": ("b.dcm", dicom_bytes())}).json()["id"]
        assert sr(c, raw_id).status_code == 200
        # the row holds pseudonyms: an SR would name them as the source's UIDs
        assert_problem(sr(c, pseudonymised_id), 409, code="uids-pseudonymised")
    with TestClient(
        create_app(
            make_settings(url, model_store, uid_pseudonym_key=SITE_KEY, dedupe_key=DEDUPE_KEY)
        )
    ) as c:
        assert sr(c, raw_id).status_code == 200  # stored with the source's own UIDs
        assert_problem(sr(c, pseudonymised_id), 409, code="uids-pseudonymised")

"""Burned In Annotation stored with every prediction (issue #21, migration 0013): set from the
source's DICOM attribute on each ingest path (POST, STOW-RS; DIMSE in test_dimse.py), in the
response, on the /ui detail page of any stored prediction and in the Secondary Capture, and
never a reason to refuse an upload. Real DICOM (the RSNA chest CR of ../shared/data), the tag
written into a copy in tmp; SQLite and PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.app.conftest import Service, TestClient, new_uid, png_bytes
from tests.app.conftest import ui_detail_text as detail
from tests.app.test_stowrs import parse, stow
from tests.conftest import shared_data_path

CHEST_CR = ("dicom", "rsna_chest_cr_jpeg_baseline.dcm")
WARNING = "Burned-in annotation."
DECLARED_NO = "The source declares no burned-in text"
UNKNOWN = "The source did not say whether its pixels carry burned-in text"


def real_copy(tmp_path: Path, value: str | None) -> bytes:
    """The real chest CR with Burned In Annotation ``value`` (None: the tag removed) and a
    new SOP Instance UID (a new instance: no dedupe against an earlier test's post), written
    to a file in tmp and read back."""
    ds = pydicom.dcmread(shared_data_path(*CHEST_CR))
    if value is None:
        ds.pop("BurnedInAnnotation", None)
    else:
        ds.BurnedInAnnotation = value
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(new_uid())
    path = tmp_path / f"copy-{value}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def stored_value(service: Service, prediction_id: str) -> Any:
    """The column as the database holds it (plain SQL, not the ORM; SQLite keeps the id as
    32 hex digits)."""
    from sqlalchemy import text

    key = prediction_id.replace("-", "")
    with service.app.state.resources.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, burned_in_annotation FROM predictions")).all()
    values = [value for row_id, value in rows if str(row_id).replace("-", "") == key]
    assert len(values) == 1
    return values[0]


def post(service: Service, data: bytes, filename: str = "src.dcm") -> dict[str, Any]:
    response = service.post(data, filename)
    assert response.status_code == 201, response.text  # never refused because of the tag
    body: dict[str, Any] = response.json()
    return body


class TestStored:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("YES", "YES"), ("NO", "NO"), (None, None), ("MAYBE", None)],
    )
    def test_post_stores_and_returns_the_source_value(
        self, service: Service, tmp_path: Path, value: str | None, expected: str | None
    ) -> None:
        body = post(service, real_copy(tmp_path, value))
        assert body["burned_in_annotation"] == expected
        assert stored_value(service, body["id"]) == expected
        again = service.client.get(f"/v1/predictions/{body['id']}").json()
        assert again["burned_in_annotation"] == expected

    def test_a_multi_frame_instance_keeps_it(self, service: Service, tmp_path: Path) -> None:
        """Predicted frame by frame (app/ingest.py), stored from the key frame's metadata: the
        value is the instance's all the same (pydicom's real 10-frame MR, tag set to YES)."""
        from pydicom.data import get_testdata_file

        path = get_testdata_file("emri_small.dcm")
        if path is None:
            pytest.skip("pydicom's emri_small.dcm (multi-frame MR) is not installed")
        ds = pydicom.dcmread(str(path))
        ds.BurnedInAnnotation = "YES"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(new_uid())
        copy = tmp_path / "multi-frame.dcm"
        ds.save_as(copy, enforce_file_format=True)
        body = post(service, copy.read_bytes())
        assert body["frames"] == 10 and body["frame_result"] is not None
        assert body["burned_in_annotation"] == "YES"
        assert stored_value(service, body["id"]) == "YES"

    def test_png_is_unknown(self, service: Service) -> None:
        body = post(service, png_bytes(), "x.png")
        assert body["burned_in_annotation"] is None
        assert stored_value(service, body["id"]) is None

    def test_stow_rs_stores_it_per_instance(self, service: Service, tmp_path: Path) -> None:
        yes, absent = real_copy(tmp_path, "YES"), real_copy(tmp_path, None)
        response = stow(service, [yes, absent])
        assert response.status_code == 200, response.text
        ids = [item[0x00991001].value for item in parse(response).ReferencedSOPSequence]
        assert [stored_value(service, i) for i in ids] == ["YES", None]

    def test_the_list_carries_it_too(self, service: Service, tmp_path: Path) -> None:
        body = post(service, real_copy(tmp_path, "YES"))
        page = service.client.get("/v1/predictions", params={"limit": 100}).json()
        listed = {item["id"]: item for item in page["items"]}
        assert listed[body["id"]]["burned_in_annotation"] == "YES"

    def test_the_secondary_capture_copies_the_stored_value(
        self, service: Service, tmp_path: Path
    ) -> None:
        """The SC of a stored prediction says what the source said (NO stays NO); unknown
        stays YES (test_dicom_outputs.py)."""
        body = service.post(real_copy(tmp_path, "NO"), "src.dcm", params={"explain": "true"})
        assert body.status_code == 201, body.text
        sc = service.client.get(f"/v1/predictions/{body.json()['id']}/dicom/secondary-capture")
        assert sc.status_code == 200, sc.text
        assert pydicom.dcmread(io.BytesIO(sc.content)).BurnedInAnnotation == "NO"


@pytest.fixture()
def ui(signed_in_ui: TestClient) -> TestClient:
    return signed_in_ui


class TestDetailPage:
    """The warning comes from the stored value: any stored prediction, not only right after
    a /ui upload (the page is read with a plain GET, no query parameter)."""

    def test_yes_warns(self, service: Service, ui: TestClient, tmp_path: Path) -> None:
        body = post(service, real_copy(tmp_path, "YES"))
        text = detail(ui, body["id"])
        assert WARNING in text and "Burned In Annotation YES" in text
        assert DECLARED_NO not in text and UNKNOWN not in text

    def test_no_says_so(self, service: Service, ui: TestClient, tmp_path: Path) -> None:
        text = detail(ui, post(service, real_copy(tmp_path, "NO"))["id"])
        assert DECLARED_NO in text and WARNING not in text and UNKNOWN not in text

    def test_absent_is_unknown(self, service: Service, ui: TestClient, tmp_path: Path) -> None:
        text = detail(ui, post(service, real_copy(tmp_path, None))["id"])
        assert UNKNOWN in text and WARNING not in text and DECLARED_NO not in text

    def test_png_says_nothing_about_it(self, service: Service, ui: TestClient) -> None:
        text = detail(ui, post(service, png_bytes(), "x.png")["id"])
        assert WARNING not in text and DECLARED_NO not in text and UNKNOWN not in text

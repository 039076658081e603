"""QA 59: how the VOI of the image the model saw was chosen (ImageMetadata.window) is stored with
every prediction (predictions.voi, migration 0018) on every ingest path (POST, STOW-RS, DIMSE
C-STORE, a multi-frame instance frame by frame), returned in its JSON and the OpenAPI schema,
shown on the /ui detail page and named in the SR; the label holds numbers and fixed words only,
whatever text a hostile file carries. Real DICOM of ../shared/data where one fits, copies
written in tmp; SQLite and PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from tests.app.conftest import (
    Databases,
    Service,
    TestClient,
    dicom_bytes,
    make_settings,
    new_uid,
    png_bytes,
    save_tiny_model,
)
from tests.app.conftest import ui_detail_text as detail
from tests.app.test_stowrs import parse, stow
from tests.conftest import shared_data_path

HOSTILE = "DOE^JOHN^1970-01"  # what a hostile file could put where a function name belongs
WORD = "ABCDEFGHIJKLMNOP"  # a placeholder as long, written as a valid value first
VOI_PORT = 25900  # QA 59's loopback ports: 25900-25999 (+1 for PostgreSQL)


def real_copy(tmp_path: Path, name: str, hostile: bool = False, **attributes: Any) -> bytes:
    """A real file of ../shared/data with ``attributes`` set (None: removed) and a new SOP
    Instance UID (a new instance: no dedupe against another test's post); ``hostile``: the
    placeholder WORD's bytes replaced by HOSTILE (pydicom refuses to write such a value)."""
    ds = pydicom.dcmread(shared_data_path("dicom", name))
    for keyword, value in attributes.items():
        if value is None:
            ds.pop(keyword, None)
        else:
            setattr(ds, keyword, value)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid())
    path = tmp_path / f"{new_uid()}.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    if hostile:
        assert data.count(WORD.encode()) == 1
        data = data.replace(WORD.encode(), HOSTILE.encode())
    return data


def stored_voi(app: Any, prediction_id: str) -> Any:
    """The column as the database holds it (plain SQL; SQLite keeps the id as 32 hex digits)."""
    from sqlalchemy import text

    key = prediction_id.replace("-", "")
    with app.state.resources.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, voi FROM predictions")).all()
    values = [value for row_id, value in rows if str(row_id).replace("-", "") == key]
    assert len(values) == 1
    return values[0]


def posted(client: TestClient, data: bytes, filename: str = "src.dcm") -> dict[str, Any]:
    response = client.post(
        "/v1/predictions", files={"file": (filename, data, "application/octet-stream")}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


class TestRecordedOnPost:
    @pytest.mark.parametrize(
        ("attributes", "expected"),
        [
            ({}, "minmax"),  # the real CT has no window
            ({"WindowCenter": "40", "WindowWidth": "400"}, "file:40/400"),
            (
                {"WindowCenter": "40", "WindowWidth": "400", "VOILUTFunction": "SIGMOID"},
                "file:40/400 SIGMOID",
            ),
            # a window that maps every pixel to black: passed over for min-max, and said so
            ({"WindowCenter": "30000", "WindowWidth": "10"}, "minmax(not file:30000/10)"),
        ],
    )
    def test_the_stored_and_returned_label(
        self, service: Service, tmp_path: Path, attributes: dict[str, Any], expected: str
    ) -> None:
        body = posted(service.client, real_copy(tmp_path, "ct_image.dcm", **attributes))
        assert body["voi"] == expected
        assert stored_voi(service.app, body["id"]) == expected
        assert service.client.get(f"/v1/predictions/{body['id']}").json()["voi"] == expected
        page = service.client.get("/v1/predictions", params={"limit": 100}).json()
        assert {i["id"]: i["voi"] for i in page["items"]}[body["id"]] == expected

    def test_a_real_file_window(self, service: Service, tmp_path: Path) -> None:
        body = posted(service.client, real_copy(tmp_path, "dx_image.dcm"))
        assert body["voi"] == "file:128/256"

    def test_png_is_full_range(self, service: Service) -> None:
        body = posted(service.client, png_bytes(), "x.png")
        assert body["voi"] == "full-range"
        assert stored_voi(service.app, body["id"]) == "full-range"

    def test_a_hostile_function_name_never_reaches_the_row(
        self, service: Service, tmp_path: Path
    ) -> None:
        """A VOI LUT Function that is no function: the window is unusable (min-max), and its
        text is nowhere in the database or the answer."""
        data = real_copy(
            tmp_path,
            "ct_image.dcm",
            True,
            WindowCenter="40",
            WindowWidth="400",
            VOILUTFunction=WORD,
        )
        response = service.post(data, "src.dcm")
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["voi"] == "minmax(not file:unusable)"
        assert stored_voi(service.app, body["id"]) == "minmax(not file:unusable)"
        assert "DOE" not in response.text
        assert not [r for r in service.rows() if "DOE" in repr(r)]

    def test_a_label_of_another_form_is_not_stored(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Whatever preprocessing becomes, the column takes only the forms it writes today:
        a label carrying other text is stored as "unrecognised"."""
        import dataclasses

        import radlens.app.ingest as ingest

        real = ingest.preprocess_upload

        def hostile(*args: Any, **kwargs: Any) -> Any:
            image = real(*args, **kwargs)
            meta = dataclasses.replace(image.metadata, window=f"file:40/400 {HOSTILE}")
            return dataclasses.replace(image, metadata=meta)

        monkeypatch.setattr(ingest, "preprocess_upload", hostile)
        response = service.post(dicom_bytes(seed=5901), "src.dcm")
        assert response.status_code == 201, response.text
        assert response.json()["voi"] == "unrecognised"
        assert stored_voi(service.app, response.json()["id"]) == "unrecognised"
        assert not [r for r in service.rows() if "DOE" in repr(r)]

    def test_a_row_stored_before_0018_says_null(self, service: Service) -> None:
        from tests.app.conftest import prediction_row

        row = prediction_row(f"sha256:{new_uid()}")
        with service.app.state.resources.sessionmaker() as session:
            session.add(row)
            session.commit()
        body = service.client.get(f"/v1/predictions/{row.id}").json()
        assert "voi" in body and body["voi"] is None


class TestOtherPaths:
    def test_stow_rs_records_each_instance(self, service: Service, tmp_path: Path) -> None:
        windowed = real_copy(tmp_path, "ct_image.dcm", WindowCenter="40", WindowWidth="400")
        plain = real_copy(tmp_path, "ct_image.dcm")
        response = stow(service, [windowed, plain])
        assert response.status_code == 200, response.text
        ids = [item[0x00991001].value for item in parse(response).ReferencedSOPSequence]
        assert [stored_voi(service.app, i) for i in ids] == ["file:40/400", "minmax"]

    def test_the_sr_names_it(self, service: Service, tmp_path: Path) -> None:
        body = posted(
            service.client,
            real_copy(tmp_path, "ct_image.dcm", WindowCenter="40", WindowWidth="400"),
        )
        sr = service.client.get(f"/v1/predictions/{body['id']}/dicom/sr")
        assert sr.status_code == 200, sr.text
        ds = pydicom.dcmread(io.BytesIO(sr.content))
        texts = [
            (i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue)
            for i in _content_items(ds)
            if i.ValueType == "TEXT"
        ]
        assert ("Algorithm Parameters", "VOI: file:40/400") in texts


def _content_items(ds: Any) -> Iterator[Any]:
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _content_items(item)


def multi_frame_ct(tmp_path: Path) -> bytes:
    """A classic 3-frame CT (12-bit, rescale -1024) with one window, 1000/10 HU: frames 0 and
    2 span every stored value (the window shows them), frame 1 (the middle one, predicted
    first) lies far below the window, which would show it black, so it gets min-max."""
    raw = pydicom.dcmread(io.BytesIO(dicom_bytes(rows=16, columns=16)))
    rng = np.random.default_rng(59)
    frames = np.stack(
        [
            rng.integers(0, 4096, size=(16, 16)),
            rng.integers(0, 100, size=(16, 16)),
            rng.integers(0, 4096, size=(16, 16)),
        ]
    ).astype(np.uint16)
    raw.NumberOfFrames = 3
    raw.PixelData = frames.tobytes()
    raw.WindowCenter = "1000"
    raw.WindowWidth = "10"
    path = tmp_path / "multi-frame.dcm"
    raw.save_as(path, enforce_file_format=True)
    return path.read_bytes()


class TestMultiFrame:
    def test_the_key_frame_and_each_frame_when_they_differ(
        self, service: Service, tmp_path: Path
    ) -> None:
        body = posted(service.client, multi_frame_ct(tmp_path))
        result = body["frame_result"]
        assert result is not None and result["frames"] == [0, 1, 2]
        assert result["frame_voi"] == [
            "file:1000/10",
            "minmax(not file:1000/10)",
            "file:1000/10",
        ]
        key = result["frames"].index(result["key_frame"])
        assert body["voi"] == result["frame_voi"][key]
        assert stored_voi(service.app, body["id"]) == body["voi"]

    def test_frames_alike_say_it_once(self, service: Service, tmp_path: Path) -> None:
        """pydicom's real 10-frame MR: every frame min-max, no per-frame list."""
        from pydicom.data import get_testdata_file

        path = get_testdata_file("emri_small.dcm")
        if path is None:
            pytest.skip("pydicom's emri_small.dcm (multi-frame MR) is not installed")
        ds = pydicom.dcmread(str(path))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid())
        copy = tmp_path / "mr.dcm"
        ds.save_as(copy, enforce_file_format=True)
        body = posted(service.client, copy.read_bytes())
        assert body["frame_result"] is not None
        assert body["voi"] == "minmax"
        assert body["frame_result"]["frame_voi"] is None


@pytest.fixture(scope="module")
def lung(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Any]]:
    """An app serving a model with the lung preset, its DICOM SCP on QA 59's port."""
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    store = tmp_path_factory.mktemp("lung-store")
    save_tiny_model(store, window="lung")
    url = databases.new()
    upgrade(url)
    port = VOI_PORT + (0 if databases.backend == "sqlite" else 1)
    app = create_app(make_settings(url, store, dimse_port=port))
    with TestClient(app) as client:
        yield client, app


class TestPresetModel:
    """A model with the lung preset: GET /v1/models says "lung", but only a CT gets it."""

    def test_ct_gets_the_preset_a_radiograph_its_own_window(
        self, lung: tuple[TestClient, Any], tmp_path: Path
    ) -> None:
        client, app = lung
        assert client.get("/v1/models").json()["models"][0]["window"] == "lung"
        ct = posted(client, real_copy(tmp_path, "TOSHIBA_J2K_OpenJPEGv2Regression.dcm"))
        assert ct["voi"] == "preset:lung(-600/1500)"  # not the file's own -550/1600
        cr = posted(client, real_copy(tmp_path, "RG2_JLSL.dcm"))
        assert cr["voi"] == "file:511/1024"
        assert stored_voi(app, cr["id"]) == "file:511/1024"

    def test_c_store_records_it(self, lung: tuple[TestClient, Any], tmp_path: Path) -> None:
        pynetdicom = pytest.importorskip("pynetdicom")
        from sqlalchemy import text

        _, app = lung
        ds = pydicom.dcmread(io.BytesIO(real_copy(tmp_path, "ct_image.dcm")))
        ae = pynetdicom.AE(ae_title="SENDER")
        ae.add_requested_context(ds.SOPClassUID)
        assoc = ae.associate("127.0.0.1", app.state.dimse.port, ae_title="RADLENS")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0x0000
        with app.state.resources.engine.connect() as conn:
            stored = conn.execute(
                text("SELECT voi FROM predictions WHERE sop_instance_uid = :uid"),
                {"uid": str(ds.SOPInstanceUID)},
            ).all()
        assert [tuple(row) for row in stored] == [("preset:lung(-600/1500)",)]


@pytest.fixture()
def ui(signed_in_ui: TestClient) -> TestClient:
    return signed_in_ui


class TestDetailPage:
    def test_a_file_window(self, service: Service, ui: TestClient, tmp_path: Path) -> None:
        body = posted(ui, real_copy(tmp_path, "ct_image.dcm", WindowCenter="40", WindowWidth="400"))
        text = detail(ui, body["id"])
        assert "Intensity window (VOI)" in text
        assert "<code>file:40/400</code>: the file's own window" in text

    def test_a_min_max_fallback(self, service: Service, ui: TestClient, tmp_path: Path) -> None:
        data = real_copy(tmp_path, "ct_image.dcm", WindowCenter="30000", WindowWidth="10")
        text = detail(ui, posted(ui, data)["id"])
        assert "<code>minmax(not file:30000/10)</code>: the image's own range" in text

    def test_frames_that_differ(self, service: Service, ui: TestClient, tmp_path: Path) -> None:
        text = detail(ui, posted(ui, multi_frame_ct(tmp_path))["id"])
        assert "the frames' differ: file:1000/10, minmax(not file:1000/10)" in text

    def test_a_row_stored_before_0018(self, service: Service, ui: TestClient) -> None:
        from tests.app.conftest import prediction_row

        row = prediction_row(f"sha256:{new_uid()}")
        with service.app.state.resources.sessionmaker() as session:
            session.add(row)
            session.commit()
        assert "not recorded (stored before migration 0018)" in detail(ui, str(row.id))


def test_the_openapi_schema_documents_it(service: Service) -> None:
    schemas = service.client.get("/openapi.json").json()["components"]["schemas"]
    voi = schemas["PredictionPublic"]["properties"]["voi"]
    assert "minmax" in voi["description"] and "0018" in voi["description"]
    assert "frame_voi" in schemas["FrameResult"]["properties"]

"""The intended-use metadata gate (app/gate.py) in the one ingest path, on real DICOM files:
a chest CR/DX model refuses CT slices, a hip radiograph and an RT plan; chest CRs and junk
body-part values pass; RADLENS_GATE=flag records instead; the DIMSE SCP says why."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.app.conftest import Databases, assert_problem, make_settings, save_tiny_model
from tests.conftest import segmentation_of_ct_small

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"the shared real-data folder {DATA} is absent"
)
CHEST_CR_DX = {
    "stated": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]},
    "observed": {"images": 0, "formats": {}},
    "accepts": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]},
    "source": "stated",
}


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def chest_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("chest-store")
    save_tiny_model(store, name="chest", intended_use=CHEST_CR_DX)
    return store


class Gated:
    def __init__(self, client: TestClient, app: Any) -> None:
        self.client = client
        self.app = app

    def post(self, data: bytes) -> Any:
        files = {"file": ("image.dcm", data, "application/dicom")}
        return self.client.post("/v1/predictions", files=files)

    def rows(self) -> list[dict[str, Any]]:
        from sqlalchemy import text

        with self.app.state.resources.engine.connect() as conn:
            return [dict(r) for r in conn.execute(text("SELECT * FROM predictions")).mappings()]

    def metric(self, reason: str, action: str) -> float:
        value = self.app.state.metrics.registry.get_sample_value(
            "radlens_gated_inputs_total", {"reason": reason, "action": action}
        )
        return float(value or 0.0)


def _app(databases: Databases, store: Path, **settings: Any) -> Iterator[Gated]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    app = create_app(make_settings(url, store, **settings))
    with TestClient(app) as client:
        yield Gated(client, app)


@pytest.fixture(scope="module")
def refusing(databases: Databases, chest_store: Path) -> Iterator[Gated]:
    yield from _app(databases, chest_store)  # RADLENS_GATE defaults to refuse


@pytest.fixture(scope="module")
def flagging(databases: Databases, chest_store: Path) -> Iterator[Gated]:
    yield from _app(databases, chest_store, gate="flag")


def _edited(path: str | Path, **attributes: str) -> bytes:
    ds = pydicom.dcmread(path)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # vendor junk breaks CS rules on purpose
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(buf)
    return buf.getvalue()


@needs_data
@pytest.mark.parametrize("name", ["CT1_JLSN.dcm", "ct_image.dcm"])
def test_ct_slices_are_refused_naming_modality(refusing: Gated, name: str) -> None:
    before = len(refusing.rows())
    metric = refusing.metric("outside-intended-use", "refused")
    body = assert_problem(
        refusing.post((DATA / name).read_bytes()), 422, code="outside-intended-use"
    )
    assert "Modality 'CT'" in body["detail"] and "CR, DX" in body["detail"], body
    assert len(refusing.rows()) == before  # nothing half-written
    assert refusing.metric("outside-intended-use", "refused") == metric + 1


def test_pydicom_ct_small_is_refused(refusing: Gated) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert_problem(refusing.post(data), 422, code="outside-intended-use")


@needs_data
def test_hip_radiograph_is_refused_naming_body_part(refusing: Gated) -> None:
    body = assert_problem(
        refusing.post((DATA / "RG2_JLSL.dcm").read_bytes()), 422, code="outside-intended-use"
    )
    assert "BodyPartExamined 'HIP'" in body["detail"] and "CHEST" in body["detail"], body
    assert "Modality" not in body["detail"]  # CR is accepted


def test_rt_plan_is_refused_by_sop_class_before_decoding(refusing: Gated) -> None:
    data = Path(get_testdata_file("rtplan.dcm")).read_bytes()
    body = assert_problem(refusing.post(data), 422, code="outside-intended-use")
    assert "SOPClassUID '1.2.840.10008.5.1.4.1.1.481.5'" in body["detail"], body


def test_a_segmentation_is_refused_by_modality_and_sop_class(refusing: Gated) -> None:
    """A SEG's Modality was "not known" and its SOP class not listed: a chest model scored the
    mask (QA round 11, highdicom's seg_image_ct_binary.dcm)."""
    before = len(refusing.rows())
    body = assert_problem(
        refusing.post(segmentation_of_ct_small()), 422, code="outside-intended-use"
    )
    assert "SOPClassUID '1.2.840.10008.5.1.4.1.1.66.4'" in body["detail"], body
    assert "Modality 'SEG'" in body["detail"], body
    assert len(refusing.rows()) == before


@needs_data
def test_modality_other_is_not_known_and_passes(refusing: Gated) -> None:
    """OT says nothing of what was imaged (a secondary capture of a chest film carries it)."""
    data = _edited(
        DATA / "rsna_chest_cr_jpeg_baseline.dcm",
        Modality="OT",
        SeriesInstanceUID=generate_uid(),
        SOPInstanceUID=generate_uid(),
    )
    response = refusing.post(data)
    assert response.status_code in (200, 201), response.text


@needs_data
@pytest.mark.parametrize(
    "name", ["rsna_chest_cr_jpeg_baseline.dcm", "rsna_chest_cr_tagged_monochrome1.dcm"]
)
def test_chest_crs_pass(refusing: Gated, name: str) -> None:
    response = refusing.post((DATA / name).read_bytes())
    assert response.status_code in (200, 201), response.text  # same SOP UID: 200 the second
    assert response.json()["intended_use_violations"] is None


def test_pydicom_data_chest_cr_passes(refusing: Gated) -> None:
    path = get_testdata_file("RG1_J2KR.dcm")
    if path is None:
        pytest.skip("pydicom-data is not installed (RG1_J2KR.dcm)")
    response = refusing.post(Path(path).read_bytes())
    assert response.status_code == 201, response.text


@needs_data
@pytest.mark.parametrize(
    "junk", ["JPEG 2000 Compressed Image", "", "UNKNOWN", "abdo/chest??", "xyz123"]
)
def test_junk_body_parts_never_refuse(refusing: Gated, junk: str) -> None:
    data = _edited(
        DATA / "rsna_chest_cr_jpeg_baseline.dcm",
        BodyPartExamined=junk,
        SOPInstanceUID=pydicom.uid.generate_uid(),
    )
    response = refusing.post(data)
    assert response.status_code == 201, response.text


@needs_data
def test_synonyms_of_chest_pass_and_of_hip_are_refused(refusing: Gated) -> None:
    chest = DATA / "rsna_chest_cr_jpeg_baseline.dcm"
    thorax = _edited(chest, BodyPartExamined="thorax", SOPInstanceUID=pydicom.uid.generate_uid())
    assert refusing.post(thorax).status_code == 201
    hips = _edited(chest, BodyPartExamined="Hips", SOPInstanceUID=pydicom.uid.generate_uid())
    assert_problem(refusing.post(hips), 422, code="outside-intended-use")


@needs_data
def test_flag_predicts_and_records_the_violation(flagging: Gated) -> None:
    metric = flagging.metric("outside-intended-use", "flagged")
    response = flagging.post((DATA / "CT1_JLSN.dcm").read_bytes())
    assert response.status_code == 201, response.text
    violations = response.json()["intended_use_violations"]
    assert violations == [{"attribute": "Modality", "value": "CT", "accepted": ["CR", "DX"]}]
    wanted = response.json()["id"].replace("-", "")
    (row,) = [r for r in flagging.rows() if str(r["id"]).replace("-", "") == wanted]
    stored = row["intended_use_violations"]
    if isinstance(stored, str):  # SQLite hands JSON back as text through plain SQL
        import json

        stored = json.loads(stored)
    assert stored == violations
    assert flagging.metric("outside-intended-use", "flagged") == metric + 1
    got = flagging.client.get(f"/v1/predictions/{response.json()['id']}").json()
    assert got["intended_use_violations"] == violations
    again = flagging.post((DATA / "CT1_JLSN.dcm").read_bytes())  # answered with the stored one
    assert again.status_code == 200, again.text
    assert flagging.metric("outside-intended-use", "flagged") == metric + 1


def test_models_endpoint_shows_the_intended_use(refusing: Gated, service: Any) -> None:
    (model,) = refusing.client.get("/v1/models").json()["models"]
    assert model["intended_use"]["accepts"] == {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]}
    assert model["ood"] is None
    # the session's tiny model was saved without one: "not stated", and nothing is gated
    (older,) = service.client.get("/v1/models").json()["models"]
    assert older["intended_use"] == "not stated"


def test_gate_setting_is_validated() -> None:
    from pydantic import ValidationError

    from radlens.app.settings import Settings

    with pytest.raises(ValidationError, match="gate"):
        Settings(gate="maybe")
    with pytest.raises(ValidationError, match="ood"):
        Settings(ood="sometimes")


@needs_data
def test_dimse_refusal_says_why(databases: Databases, chest_store: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    app = create_app(make_settings(url, chest_store, dimse_port=0))
    with TestClient(app):
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(CTImageStorage, pydicom.uid.JPEGLSNearLossless)
        assoc = ae.associate("127.0.0.1", app.state.dimse.port, ae_title="RADLENS")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(pydicom.dcmread(DATA / "CT1_JLSN.dcm"))
        finally:
            assoc.release()
    assert status.Status == 0xC000
    assert status.ErrorComment == "Outside intended use: Modality CT"


def _stow_one_refused_one_stored(gated: Gated, refused: bytes, stored: bytes) -> str:
    """POST both to STOW-RS; the refused one's reason (the stored one's prediction exists)."""
    from tests.app.test_stowrs import multipart_related

    body, content_type = multipart_related([refused, stored])
    response = gated.client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 202, response.text  # some stored, some failed
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert failed["00991004"]["Value"] == ["outside-intended-use"]
    assert len(response.json()["00081199"]["Value"]) == 1
    return str(failed["00991005"]["Value"][0])


@needs_data
def test_stow_rs_fails_the_ct_instance_and_stores_the_chest_one(refusing: Gated) -> None:
    chest = _edited(
        DATA / "rsna_chest_cr_jpeg_baseline.dcm", SOPInstanceUID=pydicom.uid.generate_uid()
    )
    reason = _stow_one_refused_one_stored(refusing, (DATA / "CT1_JLSN.dcm").read_bytes(), chest)
    assert "Modality 'CT'" in reason


def test_the_sr_carries_the_gate_flags() -> None:
    from radlens.app.dicom_outputs import build_sr, source_from_prediction
    from tests.app.conftest import new_uid, prediction_row

    row = prediction_row("sop:x")
    row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid = (
        new_uid(),
        new_uid(),
        new_uid(),
    )
    row.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"

    def meanings(sr: bytes) -> set[str]:
        ds = pydicom.dcmread(io.BytesIO(sr))
        found, stack = set(), list(ds.ContentSequence)
        while stack:
            item = stack.pop()
            if "ConceptCodeSequence" in item:
                found.add(item.ConceptCodeSequence[0].CodeMeaning)
            stack.extend(getattr(item, "ContentSequence", []))
        return found

    plain = meanings(build_sr(row, source_from_prediction(row)))
    assert not any("distribution" in m or "intended use" in m for m in plain)
    row.in_distribution = False
    row.intended_use_violations = [
        {"attribute": "Modality", "value": "CT", "accepted": ["CR", "DX"]}
    ]
    flagged = meanings(build_sr(row, source_from_prediction(row)))
    assert "Out of distribution for this model" in flagged
    assert "Outside intended use: Modality CT" in flagged
    row.in_distribution, row.intended_use_violations = True, None
    assert "Like the model's training images" in meanings(
        build_sr(row, source_from_prediction(row))
    )


FRONTAL_CHEST = {
    "stated": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]},
    "observed": {"images": 2, "formats": {"dicom": 2}, "view_positions": {"PA": 1, "AP": 1}},
    "accepts": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"], "view_positions": ["FRONTAL"]},
    "source": "stated",
}


@pytest.fixture(scope="module")
def frontal(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gated]:
    """A chest model whose training films were all PA or AP (the manifest's view positions)."""
    store = tmp_path_factory.mktemp("frontal-store")
    save_tiny_model(store, name="frontal", intended_use=FRONTAL_CHEST)
    yield from _app(databases, store)


@needs_data
@pytest.mark.parametrize("view", ["LL", "RL", "lateral", "LAT"])
def test_a_lateral_to_a_frontal_model_is_refused_naming_view_position(
    frontal: Gated, view: str
) -> None:
    data = _edited(
        DATA / "rsna_chest_cr_jpeg_baseline.dcm",
        ViewPosition=view,
        SOPInstanceUID=pydicom.uid.generate_uid(),
    )
    before = len(frontal.rows())
    body = assert_problem(frontal.post(data), 422, code="outside-intended-use")
    assert f"ViewPosition {view!r}" in body["detail"] and "FRONTAL" in body["detail"], body
    assert "Modality" not in body["detail"] and "BodyPart" not in body["detail"]
    assert len(frontal.rows()) == before


@needs_data
@pytest.mark.parametrize("view", ["PA", "AP", "", "JPEG 2000 Compressed Image", "xyz123"])
def test_frontal_and_junk_view_positions_pass(frontal: Gated, view: str) -> None:
    data = _edited(
        DATA / "rsna_chest_cr_jpeg_baseline.dcm",  # ViewPosition PA as it ships
        ViewPosition=view,
        SOPInstanceUID=pydicom.uid.generate_uid(),
    )
    response = frontal.post(data)
    assert response.status_code == 201, response.text
    assert response.json()["intended_use_violations"] is None


# --- a Modality that says nothing: the SOP class stands in (QA round 14) ----------------------
# A real CT with Modality and BodyPartExamined deleted (orthanc-tests Comunix/Ct) was predicted
# by the chest CR/DX model: the gate read the SOP class only for classes that hold no picture.

CT_IMAGE_STORAGE = str(pydicom.uid.CTImageStorage)


def _ct_small_without_modality(how: str) -> bytes:
    """pydicom's CT_small.dcm (CT Image Storage) with Modality absent or empty, as new."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    if how == "absent":
        del ds.Modality
    else:
        ds.Modality = ""
    ds.SOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _made(sop_class: str, **attributes: str) -> bytes:
    """A 32x32 gradient of ``sop_class`` (no Modality unless given), written by pydicom."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint16) * 60
    ds.PixelData = ramp.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(("how", "said"), [("absent", "absent"), ("empty", "empty")])
def test_a_ct_without_modality_is_refused_by_its_sop_class(
    refusing: Gated, how: str, said: str
) -> None:
    before = len(refusing.rows())
    metric = refusing.metric("outside-intended-use", "refused")
    body = assert_problem(
        refusing.post(_ct_small_without_modality(how)), 422, code="outside-intended-use"
    )
    assert body["detail"] == (
        f"Modality is {said}; SOP Class 'CT Image Storage' ({CT_IMAGE_STORAGE}) implies 'CT', "
        "which this model is not for (model accepts CR, DX)"
    ), body
    assert len(refusing.rows()) == before
    assert refusing.metric("outside-intended-use", "refused") == metric + 1


@pytest.mark.parametrize(
    "sop_class",
    [
        pydicom.uid.ComputedRadiographyImageStorage,
        pydicom.uid.DigitalXRayImageStorageForPresentation,
        pydicom.uid.DigitalXRayImageStorageForProcessing,
    ],
)
@pytest.mark.parametrize("modality", [None, ""])
def test_a_chest_cr_or_dx_without_modality_passes(
    refusing: Gated, sop_class: str, modality: str | None
) -> None:
    written = {} if modality is None else {"Modality": modality}
    response = refusing.post(_made(sop_class, BodyPartExamined="CHEST", **written))
    assert response.status_code == 201, response.text
    assert response.json()["intended_use_violations"] is None


@pytest.mark.parametrize(
    "sop_class",
    [
        pydicom.uid.SecondaryCaptureImageStorage,
        pydicom.uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    ],
)
def test_a_secondary_capture_without_modality_is_not_gated_by_modality(
    refusing: Gated, sop_class: str
) -> None:
    """A secondary capture may hold any picture: its SOP class implies no modality."""
    response = refusing.post(_made(sop_class, BodyPartExamined="CHEST"))
    assert response.status_code == 201, response.text


def test_flag_records_the_modality_the_sop_class_implies(flagging: Gated) -> None:
    response = flagging.post(_ct_small_without_modality("absent"))
    assert response.status_code == 201, response.text
    assert response.json()["intended_use_violations"] == [
        {
            "attribute": "Modality",
            "value": "CT",
            "accepted": ["CR", "DX"],
            "implied_by": f"SOP Class 'CT Image Storage' ({CT_IMAGE_STORAGE})",
        }
    ]


def test_dimse_refuses_a_ct_without_modality(databases: Databases, chest_store: Path) -> None:
    from pynetdicom import AE

    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    ds = pydicom.dcmread(io.BytesIO(_ct_small_without_modality("absent")))
    url = databases.new()
    upgrade(url)
    app = create_app(make_settings(url, chest_store, dimse_port=0))
    with TestClient(app):
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", app.state.dimse.port, ae_title="RADLENS")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
    assert status.Status == 0xC000
    assert status.ErrorComment == "Outside intended use: Modality CT (from SOP class)"


def test_stow_rs_fails_a_ct_without_modality(refusing: Gated) -> None:
    chest = _made(pydicom.uid.DigitalXRayImageStorageForPresentation, BodyPartExamined="CHEST")
    reason = _stow_one_refused_one_stored(refusing, _ct_small_without_modality("empty"), chest)
    assert "Modality is empty; SOP Class 'CT Image Storage'" in reason

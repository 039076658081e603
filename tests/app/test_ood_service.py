"""The out-of-distribution score in the service (RADLENS_OOD), with a small real model trained
here on PneumoniaMNIST (pediatric chest X-rays) and its detector: a CT slice and a hip
radiograph sent as PNG (no metadata to gate on) are flagged or refused by the image score;
chest images of the model's own validation split are not."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, assert_problem, make_settings

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
NPZ = SHARED / "pneumoniamnist" / "pneumoniamnist_28_trainval.npz"
pytestmark = pytest.mark.skipif(
    not (NPZ.is_file() and (SHARED / "dicom").is_dir()),
    reason=f"the shared real-data folder {SHARED} (PneumoniaMNIST, dicom/) is absent",
)
SIZE = (32, 32)
TRAIN, VAL = 1200, 262  # images fitting the model/detector; the threshold's val images


def _png(gray: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    return buf.getvalue()


def _as_png(path: Path) -> bytes:
    """A DICOM's pixels as an 8-bit PNG upload (as displayed: windowed, 256 px)."""
    from radlens.models.preprocessing import preprocess

    image = preprocess(path.read_bytes(), size=(256, 256))
    return _png((np.clip(image.pixels, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def ood_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simple_cnn trained for 3 epochs on 1200 PneumoniaMNIST images, with its detector."""
    import keras

    from radlens.models.architectures import build_model
    from radlens.models.preprocessing import preprocess_array
    from radlens.models.registry import ModelRegistry
    from radlens.training.ood import attach_detector

    data = np.load(NPZ)

    def inputs(images: np.ndarray) -> np.ndarray:
        return np.stack([preprocess_array(a, size=SIZE) for a in images])[..., None]

    x, y = inputs(data["train_images"][:TRAIN]), data["train_labels"][:TRAIN, 0]
    keras.utils.set_random_seed(0)
    model = build_model("simple_cnn", input_shape=(*SIZE, 1), num_classes=2)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    store = tmp_path_factory.mktemp("ood-store")
    registry = ModelRegistry(store)
    registry.save(
        model,
        name="pneumonia",
        architecture="simple_cnn",
        class_names=["normal", "pneumonia"],
        threshold=0.5,
        window=None,
        filters=[],
        metrics={},
        training_config={"note": "tests/app/test_ood_service.py"},
        data_fingerprint=None,
    )
    attach_detector(
        registry,
        "pneumonia:1",
        model,
        (x, y),
        inputs(data["val_images"][:VAL]),
        method="mahalanobis",
    )
    return store


class Node:
    def __init__(self, client: TestClient, app: Any) -> None:
        self.client = client
        self.app = app

    def post(self, data: bytes) -> Any:
        return self.client.post("/v1/predictions", files={"file": ("x.png", data, "image/png")})

    def count(self) -> int:
        from sqlalchemy import text

        with self.app.state.resources.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM predictions")).scalar() or 0)

    def metric(self, action: str) -> float:
        value = self.app.state.metrics.registry.get_sample_value(
            "radlens_gated_inputs_total", {"reason": "out-of-distribution", "action": action}
        )
        return float(value or 0.0)


def _node(databases: Databases, store: Path, policy: str) -> Iterator[Node]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    app = create_app(make_settings(url, store, ood=policy))
    with TestClient(app) as client:
        yield Node(client, app)


@pytest.fixture(scope="module")
def flagging(databases: Databases, ood_store: Path) -> Iterator[Node]:
    yield from _node(databases, ood_store, "flag")


@pytest.fixture(scope="module")
def refusing(databases: Databases, ood_store: Path) -> Iterator[Node]:
    yield from _node(databases, ood_store, "refuse")


@pytest.mark.parametrize("name", ["CT1_JLSN.dcm", "RG2_JLSL.dcm"])
def test_ct_and_hip_pixels_as_png_are_flagged(flagging: Node, name: str) -> None:
    before = flagging.metric("flagged")
    response = flagging.post(_as_png(SHARED / "dicom" / name))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["in_distribution"] is False, body
    threshold = flagging.client.get("/v1/models").json()["models"][0]["ood"]["threshold"]
    assert body["ood_score"] > threshold
    assert flagging.metric("flagged") == before + 1
    stored = flagging.client.get(f"/v1/predictions/{body['id']}").json()
    assert stored["in_distribution"] is False and stored["ood_score"] == body["ood_score"]
    # a re-post is answered with the stored prediction and not counted again (QA round 12:
    # the counter rose at each re-post of an instance whose stored prediction was another's)
    again = flagging.post(_as_png(SHARED / "dicom" / name))
    assert again.status_code == 200 and again.json()["id"] == body["id"], again.text
    assert flagging.metric("flagged") == before + 1


def test_own_validation_chest_images_are_not_flagged(flagging: Node) -> None:
    data = np.load(NPZ)
    held_out = data["val_images"][VAL : VAL + 20]  # not among the threshold's images
    verdicts = [flagging.post(_png(image)).json()["in_distribution"] for image in held_out]
    assert verdicts.count(False) <= 1, verdicts  # the threshold is their 99th percentile


def test_the_sr_says_out_of_distribution(flagging: Node) -> None:
    import pydicom

    # this model states no intended use: the CT DICOM passes the metadata gate, the score flags it
    body = flagging.post((SHARED / "dicom" / "CT1_JLSN.dcm").read_bytes()).json()
    assert body["in_distribution"] is False, body
    sr = flagging.client.get(f"/v1/predictions/{body['id']}/dicom/sr")
    assert sr.status_code == 200, sr.text
    ds = pydicom.dcmread(io.BytesIO(sr.content))
    meanings = {
        item.ConceptCodeSequence[0].CodeMeaning
        for item in _walk(ds)
        if "ConceptCodeSequence" in item
    }
    assert "Out of distribution for this model" in meanings


def _walk(ds: Any) -> Iterator[Any]:
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)


def test_refuse_answers_422_and_stores_nothing(refusing: Node) -> None:
    before, metric = refusing.count(), refusing.metric("refused")
    body = assert_problem(
        refusing.post(_as_png(SHARED / "dicom" / "CT1_JLSN.dcm")), 422, code="out-of-distribution"
    )
    assert "above the model's threshold" in body["detail"], body
    assert refusing.count() == before
    assert refusing.metric("refused") == metric + 1
    chest = refusing.post(_png(np.load(NPZ)["val_images"][VAL + 1]))
    assert chest.status_code == 201 and chest.json()["in_distribution"] is True


# --- multi-frame instances: every frame scored ------------------------------------------------


def _multiframe(frames: list[np.ndarray]) -> bytes:
    """An 8-bit MONOCHROME2 multi-frame instance of the given (28 x 28) frames."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    sop_class = UID("1.2.840.10008.5.1.4.1.1.7.2")  # Multi-frame Grayscale Byte SC
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = frames[0].shape
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    # displayed as stored (0..255 -> 0..1), as the model's PNG training images were: without
    # a window the DICOM path stretches each frame's own range, which this PNG-trained model
    # never saw (its OOD scores of chest frames then double and one in four is flagged)
    ds.WindowCenter, ds.WindowWidth = 127.5, 256
    ds.PixelData = np.stack(frames).astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buf.getvalue())).pixel_array.shape == (len(frames), 28, 28)
    return buf.getvalue()


def _ct_frame() -> np.ndarray:
    """CT1_JLSN's pixels as displayed, at PneumoniaMNIST's 28 x 28."""
    from PIL import Image

    from radlens.models.preprocessing import preprocess

    image = preprocess((SHARED / "dicom" / "CT1_JLSN.dcm").read_bytes(), size=(256, 256))
    gray = Image.fromarray((np.clip(image.pixels, 0, 1) * 255).astype(np.uint8))
    return np.asarray(gray.resize((28, 28), Image.Resampling.BILINEAR))


def _mixed_instance() -> bytes:
    """Four CT frames around a held-out chest frame in the middle (the frame the instance's
    first model call predicts)."""
    chest = np.load(NPZ)["val_images"][VAL + 2]
    ct = _ct_frame()
    return _multiframe([ct, ct, chest, ct, ct])


def test_every_frame_of_a_multiframe_instance_is_scored(flagging: Node) -> None:
    """The middle frame is a chest X-ray, the other four a CT slice: judged by its middle
    frame alone (as before), the instance passed as in distribution."""
    threshold = flagging.client.get("/v1/models").json()["models"][0]["ood"]["threshold"]
    data = _mixed_instance()
    response = flagging.post(data)
    assert response.status_code == 201, response.text
    body = response.json()
    result = body["frame_result"]
    assert result["frames"] == [0, 1, 2, 3, 4]
    scores = result["ood_scores"]
    assert len(scores) == 5
    assert scores[2] <= threshold < min(scores[i] for i in (0, 1, 3, 4)), scores
    assert result["ood_frames"] == 4 and result["in_distribution"] is False
    assert body["in_distribution"] is False
    key = result["frames"].index(result["key_frame"])
    assert body["ood_score"] == pytest.approx(scores[key])  # the key frame's
    stored = flagging.client.get(f"/v1/predictions/{body['id']}").json()
    assert stored["frame_result"]["ood_scores"] == scores and stored["in_distribution"] is False


def test_a_multiframe_instance_of_chest_frames_is_in_distribution(flagging: Node) -> None:
    val = np.load(NPZ)["val_images"]
    response = flagging.post(_multiframe([val[VAL + i] for i in (3, 4, 5, 6)]))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["frame_result"]["ood_frames"] == 0, body["frame_result"]
    assert body["in_distribution"] is True and body["frame_result"]["in_distribution"] is True


def test_refuse_refuses_a_multiframe_instance_by_its_frames(refusing: Node) -> None:
    before = refusing.count()
    data = _mixed_instance()
    body = assert_problem(refusing.post(data), 422, code="out-of-distribution")
    assert "threshold" in body["detail"], body
    assert refusing.count() == before


# --- the OpenVINO runtime: the same score as TensorFlow ----------------------------------------


@pytest.fixture(scope="session")  # converted once: see tests/app/conftest.py databases
def ood_openvino_store(ood_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``ood_store`` with the model converted to OpenVINO (its parity on 64 val
    images); served read-only, so one copy serves every backend."""
    import shutil

    from radlens.models.preprocessing import preprocess_array
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import add_openvino_runtime, openvino_version

    if openvino_version() is None:
        pytest.skip("openvino is not installed")
    store = tmp_path_factory.mktemp("ood-openvino") / "store"
    shutil.copytree(ood_store, store)
    data = np.load(NPZ)
    images = np.stack([preprocess_array(a, size=SIZE) for a in data["val_images"][:64]])
    add_openvino_runtime(
        ModelRegistry(store),
        "pneumonia:1",
        images=images[..., None].astype(np.float32),
        labels=data["val_labels"][:64].reshape(-1),
    )
    return store


@pytest.fixture(scope="module")
def openvino_node(databases: Databases, ood_openvino_store: Path) -> Iterator[Node]:
    """The same model and detector served through OpenVINO (RADLENS_RUNTIME=openvino): the
    classifier runs as the converted IR, the detector on the Keras model's features."""
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    settings = make_settings(
        url, ood_openvino_store, ood="flag", runtime="openvino", precision="fp32"
    )
    app = create_app(settings)
    with TestClient(app) as client:
        yield Node(client, app)


def test_openvino_records_the_tensorflow_ood_score(flagging: Node, openvino_node: Node) -> None:
    ready = openvino_node.client.get("/readyz").json()
    assert (ready["runtime"], ready["precision"]) == ("openvino", "fp32"), ready
    chest = _png(np.load(NPZ)["val_images"][VAL + 1])
    ct = _as_png(SHARED / "dicom" / "CT1_JLSN.dcm")
    for upload, in_distribution in ((chest, True), (ct, False)):
        served = openvino_node.post(upload)
        assert served.status_code == 201, served.text
        body = served.json()
        assert body["runtime"] == "openvino"
        reference = flagging.post(upload).json()
        assert reference["runtime"] == "tensorflow"
        assert body["ood_score"] == pytest.approx(reference["ood_score"], rel=1e-4)
        assert body["in_distribution"] is reference["in_distribution"] is in_distribution
        # the classifier's scores come from the IR: equal to TensorFlow's within fp32 parity
        for name, score in reference["scores"].items():
            assert body["scores"][name] == pytest.approx(score, abs=1e-3)

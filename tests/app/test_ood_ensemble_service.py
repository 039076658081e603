"""An ensemble's out-of-distribution score in the service (issue #17, models.ood
EnsembleOodDetector): three simple_cnn members cross-validated here on PneumoniaMNIST (3 folds
of 1200 training images, a test-time view), each member's detector calibrated on the fold it
did not train on. A CT slice and a hip radiograph sent as PNG are flagged; chest images of the
official validation split (which no member saw) are not; the served score is the numpy
reference's, through TensorFlow and through OpenVINO."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, make_settings
from tests.app.test_ood_service import _as_png, _png

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
NPZ = SHARED / "pneumoniamnist" / "pneumoniamnist_28_trainval.npz"
pytestmark = pytest.mark.skipif(
    not (NPZ.is_file() and (SHARED / "dicom").is_dir()),
    reason=f"the shared real-data folder {SHARED} (PneumoniaMNIST, dicom/) is absent",
)
SIZE = (32, 32)
TRAIN, FOLDS = 1200, 3


def _inputs(images: np.ndarray) -> np.ndarray:
    from radlens.models.preprocessing import preprocess_array

    return np.stack([preprocess_array(a, size=SIZE) for a in images])[..., None]


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def ensemble_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three members, one per fold (trained 3 epochs on the other two), as one ensemble."""
    import keras

    from radlens.models.architectures import build_model
    from radlens.models.ensemble import build_ensemble
    from radlens.models.registry import ModelRegistry
    from radlens.training.ood import attach_cross_fitted_detector
    from radlens.training.recipe import stratified_folds

    data = np.load(NPZ)
    x, y = _inputs(data["train_images"][:TRAIN]), data["train_labels"][:TRAIN, 0]
    folds = stratified_folds(y, FOLDS, seed=0)
    members = []
    for fold in range(FOLDS):
        keras.utils.set_random_seed(fold)
        member = build_model("simple_cnn", input_shape=(*SIZE, 1), num_classes=2)
        member.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        member.fit(x[folds != fold], y[folds != fold], epochs=3, batch_size=64, verbose=0)
        members.append(member)
    model = build_ensemble(members, offsets=[(0, 0), (1, 0)])
    store = tmp_path_factory.mktemp("ood-ensemble") / "store"
    registry = ModelRegistry(store)
    registry.save(
        model,
        name="ens",
        architecture="simple_cnn",
        class_names=["normal", "pneumonia"],
        threshold=0.5,
        window=None,
        filters=[],
        metrics={},
        training_config={"note": "tests/app/test_ood_ensemble_service.py", "members": FOLDS},
        data_fingerprint=None,
    )
    attach_cross_fitted_detector(registry, "ens:1", model, x, y, [folds == f for f in range(FOLDS)])
    return store


class Node:
    def __init__(self, client: TestClient) -> None:
        self.client = client

    def post(self, data: bytes) -> Any:
        response = self.client.post("/v1/predictions", files={"file": ("x.png", data, "image/png")})
        assert response.status_code in (200, 201), response.text  # 200: a repeated upload
        return response.json()


def _node(databases: Databases, store: Path, **settings: Any) -> Iterator[Node]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    with TestClient(create_app(make_settings(url, store, ood="flag", **settings))) as client:
        yield Node(client)


@pytest.fixture(scope="module")
def flagging(databases: Databases, ensemble_store: Path) -> Iterator[Node]:
    yield from _node(databases, ensemble_store)


def _reference(store: Path, upload: bytes) -> float:
    """The numpy reference: the stored detector's scores of the ensemble's own features."""
    from radlens.models.ood import feature_model, load_detector
    from radlens.models.preprocessing import preprocess
    from radlens.models.registry import ModelRegistry

    registry = ModelRegistry(store)
    loaded = registry.load("ens:1")
    detector = load_detector(registry.ood_detector_file(loaded.manifest))  # type: ignore[arg-type]
    x = preprocess(upload, size=SIZE).model_input()[np.newaxis]
    _, features = feature_model(loaded.model)(x, training=False)
    return float(detector.scores(np.asarray(features))[0])


def test_the_manifest_describes_a_cross_fitted_ensemble_detector(flagging: Node) -> None:
    (model,) = flagging.client.get("/v1/models").json()["models"]
    ood = model["ood"]
    assert ood["method"] == "ensemble" and ood["members"] == FOLDS
    # every member calibrated on its own held-out fold: together, every training image once
    assert sum(ood["calibration_images"]) == TRAIN == ood["fitted_on"]["val_images"]
    assert ood["fitted_on"]["train_images"] == [TRAIN - n for n in ood["calibration_images"]]
    assert ood["nominal_flag_rate"] <= 0.01


@pytest.mark.parametrize("name", ["CT1_JLSN.dcm", "RG2_JLSL.dcm"])
def test_ct_and_hip_pixels_as_png_are_flagged(
    flagging: Node, ensemble_store: Path, name: str
) -> None:
    upload = _as_png(SHARED / "dicom" / name)
    body = flagging.post(upload)
    assert body["in_distribution"] is False, body
    threshold = flagging.client.get("/v1/models").json()["models"][0]["ood"]["threshold"]
    assert body["ood_score"] > threshold
    assert body["ood_score"] == pytest.approx(_reference(ensemble_store, upload), abs=1e-6)
    stored = flagging.client.get(f"/v1/predictions/{body['id']}").json()
    assert stored["in_distribution"] is False and stored["ood_score"] == body["ood_score"]


def test_validation_chest_images_pass_with_the_reference_score(
    flagging: Node, ensemble_store: Path
) -> None:
    data = np.load(NPZ)
    verdicts = []
    for image in data["val_images"][:20]:  # the official val split: no member trained on it
        upload = _png(image)
        body = flagging.post(upload)
        verdicts.append(body["in_distribution"])
        assert body["ood_score"] == pytest.approx(_reference(ensemble_store, upload), abs=1e-6)
    assert verdicts.count(False) <= 1, verdicts  # nominally 1% are flagged


@pytest.fixture(scope="session")  # converted once: see tests/app/conftest.py databases
def ensemble_openvino_store(ensemble_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``ensemble_store`` with the ensemble converted to OpenVINO (its parity on 64
    val images); served read-only, so one copy serves every backend."""
    import shutil

    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import add_openvino_runtime, openvino_version

    if openvino_version() is None:
        pytest.skip("openvino is not installed")
    store = tmp_path_factory.mktemp("ood-ensemble-openvino") / "store"
    shutil.copytree(ensemble_store, store)
    data = np.load(NPZ)
    add_openvino_runtime(
        ModelRegistry(store),
        "ens:1",
        images=_inputs(data["val_images"][:64]).astype(np.float32),
        labels=data["val_labels"][:64].reshape(-1),
    )
    return store


@pytest.fixture(scope="module")
def openvino_node(databases: Databases, ensemble_openvino_store: Path) -> Iterator[Node]:
    """The ensemble served through OpenVINO: the classifier as the converted IR, the detector
    on the Keras ensemble's features."""
    yield from _node(databases, ensemble_openvino_store, runtime="openvino", precision="fp32")


def test_openvino_serves_the_same_ood_score(flagging: Node, openvino_node: Node) -> None:
    ready = openvino_node.client.get("/readyz").json()
    assert (ready["runtime"], ready["precision"]) == ("openvino", "fp32"), ready
    chest = _png(np.load(NPZ)["val_images"][30])
    ct = _as_png(SHARED / "dicom" / "CT1_JLSN.dcm")
    for upload, in_distribution in ((chest, True), (ct, False)):
        body = openvino_node.post(upload)
        reference = flagging.post(upload)
        assert (body["runtime"], reference["runtime"]) == ("openvino", "tensorflow")
        assert body["ood_score"] == reference["ood_score"]
        assert body["in_distribution"] is reference["in_distribution"] is in_distribution
        for name, score in reference["scores"].items():
            assert body["scores"][name] == pytest.approx(score, abs=1e-3)

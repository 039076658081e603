"""A multi-label findings model served through OpenVINO: parity per finding recorded at
conversion, the served findings equal TensorFlow's, Grad-CAM still runs (on the Keras model).

The model is a tiny sigmoid simple_cnn with random weights; its per-finding thresholds are the
medians of its own scores on the parity images, so about half of every finding's decisions sit
on each side of the threshold and a drifting runtime would flip some.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.models.runtime import (
    Tolerance,
    bf16_supported,
    openvino_version,
    recorded_parity,
)
from tests.app.conftest import TestClient, make_settings, png_bytes
from tests.app.test_findings_api import save_multilabel

pytestmark = pytest.mark.skipif(openvino_version() is None, reason="openvino not installed")

FINDINGS = ["Effusion", "Infiltration", "Nodule"]
COMBOS = [(), ("Effusion",), ("Infiltration",), ("Nodule",), ("Effusion", "Nodule")]


def parity_set(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Generated 32 px images, a bright quarter per finding, and their multi-hot targets."""
    from tests.training.data_fixtures import finding_image

    rng = np.random.default_rng(11)
    combos = [COMBOS[i % len(COMBOS)] for i in range(n)]
    images = np.stack([finding_image(rng, c) for c in combos]).astype(np.float32) / 255.0
    targets = np.asarray([[int(f in c) for f in FINDINGS] for c in combos], dtype=np.int64)
    return images[..., None], targets


def save_model(store: Path) -> Any:
    import keras

    from radlens.models.architectures import build_model

    keras.utils.set_random_seed(5)
    model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=3, multi_label=True)
    images, _ = parity_set()
    scores = np.asarray(model.predict(images, verbose=0))
    thresholds = {f: float(np.median(scores[:, j])) for j, f in enumerate(FINDINGS)}
    return save_multilabel(store, model, "ml", thresholds)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import add_openvino_runtime

    store = tmp_path_factory.mktemp("findings-openvino")
    save_model(store)
    images, targets = parity_set()
    add_openvino_runtime(
        ModelRegistry(store), "ml:1", images=images, labels=targets, data_note="generated"
    )
    return store


def test_parity_is_recorded_per_finding(converted: Path) -> None:
    from radlens.models.registry import ModelRegistry

    manifest = ModelRegistry(converted).verify("ml", 1)  # the seal covers the new entry
    fp32 = recorded_parity(manifest, "fp32")
    assert fp32 is not None and fp32.per_finding is not None
    assert list(fp32.per_finding) == FINDINGS
    assert fp32.n == 60 and fp32.threshold is None
    for name, entry in fp32.per_finding.items():
        assert entry["threshold"] == manifest.finding_thresholds[name]
        assert entry["auc_difference"] is not None and entry["auc_difference"] < 1e-4
        assert entry["flips"] == 0
    assert fp32.max_score_difference < 1e-4 and fp32.flip_fraction == 0.0
    assert Tolerance().allows(fp32)
    assert "(image, finding) decisions flipped" in fp32.summary()
    assert "0/180" in fp32.summary()
    bf16 = recorded_parity(manifest, "bf16")
    if bf16_supported():  # measured only where the CPU runs bf16 for real
        assert bf16 is not None and bf16.per_finding is not None
        assert bf16.max_score_difference > 0.0  # bf16 rounds: not the fp32 figures again
    else:
        assert bf16 is None


def test_served_findings_equal_tensorflow_in_fp32(converted: Path, tmp_path: Path) -> None:
    from radlens.app.main import create_app

    bodies = {}
    for runtime in ("tensorflow", "openvino"):
        settings = make_settings(
            f"sqlite:///{tmp_path / runtime / 'radlens.db'}",
            converted,
            runtime=runtime,
            precision="fp32",
        )
        with TestClient(create_app(settings)) as client:
            ready = client.get("/readyz").json()
            assert (ready["runtime"], ready["precision"]) == (runtime, "fp32")
            created = client.post(
                "/v1/predictions",
                files={"file": ("a.png", png_bytes(seed=9))},
                params={"explain": "true"},
            )
            assert created.status_code == 201, created.text
            body = created.json()
            assert (body["runtime"], body["precision"]) == (runtime, "fp32")
            heatmap = client.get(f"/v1/predictions/{body['id']}/heatmap")
            assert heatmap.status_code == 200  # Grad-CAM runs on the Keras model
            assert heatmap.headers["content-type"] == "image/png"
            bodies[runtime] = body
    tf_body, ov_body = bodies["tensorflow"], bodies["openvino"]
    assert ov_body["label_mode"] == "multi-label"
    assert [f["name"] for f in ov_body["findings"]] == FINDINGS
    for ours, theirs in zip(ov_body["findings"], tf_body["findings"], strict=True):
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)
        assert ours["threshold"] == theirs["threshold"]
        assert ours["positive"] == theirs["positive"]
    assert ov_body["label"] == tf_body["label"]


def test_auto_serves_openvino_within_tolerance(converted: Path, tmp_path: Path) -> None:
    from radlens.app.main import create_app
    from radlens.models.registry import ModelRegistry

    manifest = ModelRegistry(converted).read_manifest("ml", 1)
    bf16 = recorded_parity(manifest, "bf16")
    expected = "bf16" if bf16_supported() and bf16 and Tolerance().allows(bf16) else "fp32"
    settings = make_settings(f"sqlite:///{tmp_path / 'radlens.db'}", converted)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert (ready["runtime"], ready["precision"]) == ("openvino", expected)
        assert ready["parity"]["per_finding"] is not None
        body = client.post("/v1/predictions", files={"file": ("b.png", png_bytes(seed=4))})
        assert body.status_code == 201, body.text
        assert [f["name"] for f in body.json()["findings"]] == FINDINGS

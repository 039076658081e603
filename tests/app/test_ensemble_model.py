"""The service serves an ensemble (models.ensemble) as one model: it loads from the store,
predicts the members' mean, and ?explain=true gives the members' averaged Grad-CAM (SQLite,
tiny random members built as the recipe's are, filter front-end and CenterImage: the test
checks the plumbing, not diagnostic quality)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import CLASS_NAMES, make_settings, png_bytes

FILTERS = ("sobel_h", "sobel_v", "blur", "outline")


@pytest.fixture(scope="module")
def ensemble_app(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from radlens.models.architectures import build_model
    from radlens.models.ensemble import build_ensemble
    from radlens.models.registry import ModelRegistry

    tmp = tmp_path_factory.mktemp("ensemble-app")
    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        # as the served recipe's members: the filter front-end behind an exposure-blind centre
        members.append(
            build_model(
                "simple_cnn", input_shape=(32, 32, 1), num_classes=2, filters=FILTERS, center=True
            )
        )
    model = build_ensemble(members, offsets=[(0, 0), (1, 0)])
    ModelRegistry(tmp / "store").save(
        model,
        name="ens",
        architecture="simple_cnn",
        class_names=CLASS_NAMES,
        threshold=0.5,
        window=None,
        filters=list(FILTERS),
        metrics={"val": {"auc": 0.5}},
        training_config={"note": "test fixture", "members": 2},
        data_fingerprint=None,
    )
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    upgrade(url)
    app = create_app(make_settings(url, Path(tmp / "store")))
    with TestClient(app) as client:
        yield client, model


def test_prediction_is_the_members_mean(ensemble_app) -> None:  # type: ignore[no-untyped-def]
    from radlens.models.ensemble import ensemble_members
    from radlens.models.layers import ShiftView
    from radlens.models.preprocessing import preprocess

    client, model = ensemble_app
    data = png_bytes(seed=3, size=(32, 32))
    response = client.post("/v1/predictions", files={"file": ("x.png", data, "image/png")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["model"]["name"] == "ens"
    served = np.array([body["scores"][name] for name in CLASS_NAMES])
    x = preprocess(data, size=(32, 32)).model_input()[np.newaxis]
    views = [x, np.asarray(ShiftView(1, 0)(x))]
    expected = np.mean(
        [np.asarray(m(v, training=False))[0] for v in views for m in ensemble_members(model)],
        axis=0,
    )
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_explain_averages_the_members_maps(ensemble_app) -> None:  # type: ignore[no-untyped-def]
    client, _ = ensemble_app
    response = client.post(
        "/v1/predictions",
        files={"file": ("x.png", png_bytes(seed=4, size=(32, 32)), "image/png")},
        params={"explain": "true"},
    )
    assert response.status_code == 201, response.text
    heatmap = client.get(f"/v1/predictions/{response.json()['id']}/heatmap")
    assert heatmap.status_code == 200, heatmap.text
    assert heatmap.headers["content-type"] == "image/png"
    assert heatmap.headers["x-radlens-explained-layer"] == "mean of 2 members' conv4"

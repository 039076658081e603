"""GET /v1/models shows a multi-label model's calibration (QA round 21).

A multi-label run fits one temperature per finding and records it under the manifest's
``metrics["calibration"]`` (training.run), not in the manifest's ``calibration`` field that
single-label runs fill. GET /v1/models answered ``"calibration": null`` for such a model -- an
integrator checking whether the scores are calibrated read "no" -- while train.log, the
manifest and the /ui model page said "temperature scaling per finding".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.app.conftest import make_settings
from tests.app.test_findings_api import (
    BIASES,
    THRESHOLDS,
    constant_findings_model,
    save_multilabel,
)

RECORD: dict[str, Any] = {
    "method": "temperature scaling per finding (sigmoid)",
    "temperatures": {"Effusion": 0.85, "Infiltration": 1.0, "Nodule": 0.95},
    "fitted_on": "val",
    "not_calibrated": ["Infiltration"],
    "min_calibration_positives": 10,
}


def _store(root: Path, metrics: dict[str, Any]) -> Path:
    save_multilabel(root, constant_findings_model(BIASES), "findings", THRESHOLDS, metrics=metrics)
    return root


def _models(tmp_path: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    from radlens.app.main import create_app

    store = _store(tmp_path / "store", metrics)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with TestClient(create_app(make_settings(url, store, model="findings"))) as client:
        response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    model: dict[str, Any] = response.json()["models"][0]
    return model


def test_a_multi_label_models_calibration_is_shown(tmp_path: Path) -> None:
    model = _models(tmp_path, {"val": {"auc": 0.5}, "calibration": RECORD})
    assert model["label_mode"] == "multi-label"
    assert model["calibration"] == RECORD


def test_an_uncalibrated_model_still_says_null(tmp_path: Path) -> None:
    assert _models(tmp_path, {"val": {"auc": 0.5}})["calibration"] is None

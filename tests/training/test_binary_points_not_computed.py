"""A binary model's operating points are recorded only where its validation positives can choose
them, as each finding's are: sens90/95/99 need 10/20/100 positives (fewer, and every target
gives the lowest positive's score). The others are listed with why in
``metrics["operating_points_not_computed"]``, named when RADLENS_OPERATING_POINT asks for one,
and shown on /ui/model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.training.metrics import recorded_operating_points


def _scores(positives: int, negatives: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(positives)
    labels = np.array([1] * positives + [0] * negatives)
    scores = np.clip(labels * 0.4 + rng.random(labels.size) * 0.6, 0, 1)
    return labels, scores


class TestRecordedOperatingPoints:
    def test_few_positives_leave_the_high_targets_out(self) -> None:
        y, s = _scores(12)
        table, missing = recorded_operating_points(y, s, y, s, 0.5, "youden")
        assert set(table) == {"chosen", "youden", "sens90"}
        assert missing == {
            "sens95": "12 validation positives, at least 20 needed",
            "sens99": "12 validation positives, at least 100 needed",
        }
        assert table["youden"]["rule"] == "youden"  # the rule names the model's threshold
        assert table["youden"]["threshold"] == table["chosen"]["threshold"] == 0.5

    def test_enough_positives_keep_every_point(self) -> None:
        y, s = _scores(120)
        table, missing = recorded_operating_points(y, s, y, s, 0.5, "balanced")
        assert set(table) == {"chosen", "youden", "sens90", "sens95", "sens99", "balanced"}
        assert missing == {}
        # sens99 is chosen for its target: not the lowest positive's score any more
        assert table["sens99"]["threshold"] > float(s[y == 1].min())

    def test_no_rule_adds_no_name(self) -> None:
        y, s = _scores(30)
        table, _ = recorded_operating_points(y, s, y, s, 0.5, None)
        assert set(table) == {"chosen", "youden", "sens90", "sens95"}


POINT = {"threshold": 0.3, "sensitivity": 0.9, "specificity": 0.6}
METRICS = {
    "val": {"auc": 0.9},
    "operating_points": {"chosen": {**POINT, "threshold": 0.5}, "youden": POINT, "sens90": POINT},
    "operating_points_not_computed": {
        "sens95": "12 validation positives, at least 20 needed",
        "sens99": "12 validation positives, at least 100 needed",
    },
}


def test_asking_for_a_point_not_computed_says_why() -> None:
    from radlens.models.decision import operating_point, points_not_computed
    from radlens.models.errors import ConfigurationError
    from radlens.models.manifest import ModelManifest
    from tests.models.test_registry import valid_manifest_dict

    manifest = ModelManifest.from_dict(
        valid_manifest_dict() | {"class_names": ["normal", "abnormal"], "metrics": METRICS}
    )
    assert operating_point(manifest, "sens90").threshold == 0.3
    with pytest.raises(ConfigurationError) as info:
        operating_point(manifest, "sens99")
    said = str(info.value)
    assert "training could not choose it: 12 validation positives, at least 100 needed" in said
    assert "its operating points are chosen, youden, sens90" in said
    assert points_not_computed({"operating_points_not_computed": ["sens99"]}) == {}


def test_the_model_page_lists_them(tmp_path: Path) -> None:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from tests.app.conftest import TestClient, create_api_key, make_settings, save_tiny_model
    from tests.app.test_ui import login

    store = tmp_path / "store"
    save_tiny_model(store, name="few", metrics=METRICS)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    key = create_api_key(url)
    with TestClient(create_app(make_settings(url, store, auth="enabled"))) as client:
        login(client, key)
        page: Any = client.get("/ui/model")
    assert page.status_code == 200
    assert (
        "Not computed: sens95 (12 validation positives, at least 20 needed); "
        "sens99 (12 validation positives, at least 100 needed)."
    ) in page.text

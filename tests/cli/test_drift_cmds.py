"""`radlens drift --since 7d`: a model's stored scores against the reference its manifest
carries; stable for scores like the reference, drift (naming the class score) for shifted
ones; a model without a reference, or a bad --since, is one line and exit 2."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from tests.app.conftest import prediction_row, save_tiny_model

CLASSES = ["normal", "abnormal"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RADLENS_"):
            monkeypatch.delenv(key)


def _scores(rng: np.random.Generator, n: int, a: float) -> np.ndarray:
    p = rng.beta(a, 5.0, size=n)
    return np.stack([1 - p, p], axis=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.models.drift import build_reference

    root = tmp_path_factory.mktemp("drift-store")
    reference = build_reference(
        _scores(np.random.default_rng(0), 500, 2.0), np.full((500, 4, 4), 0.5), CLASSES, 0.5
    )
    save_tiny_model(root, name="watched", metrics={"val": {}, "drift_reference": reference})
    save_tiny_model(root, name="old")
    return root


def _database(
    tmp_path: Path, scores: np.ndarray, days_ago: float = 1.0, input_mean: float | None = None
) -> str:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            for row_scores in scores:
                row = prediction_row(f"sha256:{uuid.uuid4().hex}")
                row.model_name = "watched"
                row.scores = {"normal": float(row_scores[0]), "abnormal": float(row_scores[1])}
                row.label = "abnormal" if row_scores[1] >= 0.5 else "normal"
                row.created_at = datetime.now(UTC) - timedelta(days=days_ago)
                row.input_mean_intensity = input_mean  # (0014) None: stored before it
                session.add(row)
            session.commit()
    finally:
        engine.dispose()
    return url


def _run(store: Path, url: str, *args: str) -> int:
    return main(["drift", "--model", "watched", "--database-url", url, *args])


def test_scores_like_the_reference_are_stable(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
    url = _database(tmp_path, _scores(np.random.default_rng(1), 200, 2.0))
    assert _run(store, url, "--since", "7d") == 0
    out = capsys.readouterr().out
    assert "200 prediction(s)" in out and out.strip().endswith("every PSI below 0.2)")
    assert "score:abnormal" in out and "DRIFTED" not in out


def test_shifted_scores_are_drift(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
    url = _database(tmp_path, _scores(np.random.default_rng(2), 200, 6.0))
    assert _run(store, url, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "drift"
    assert "score:abnormal" in summary["drifted"]
    assert {f["feature"] for f in summary["features"]} == {"score:normal", "score:abnormal"}


def test_since_leaves_older_predictions_out(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
    url = _database(tmp_path, _scores(np.random.default_rng(3), 50, 6.0), days_ago=10)
    assert _run(store, url, "--since", "7d", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 0 and summary["status"] == "collecting"


def test_refusals_are_one_line(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
    url = _database(tmp_path, np.zeros((0, 2)))
    assert main(["drift", "--model", "old", "--database-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no drift reference" in err and len(err.splitlines()) == 1
    assert _run(store, url, "--since", "last week") == 2
    err = capsys.readouterr().err.strip()
    assert "--since must be a duration" in err and "'last week'" in err


def test_stored_input_statistics_are_compared(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scores like the reference but inputs far brighter than its (all 0.5) images: the
    input statistic stored with each prediction (0014) is what says drift."""
    monkeypatch.setenv("RADLENS_MODEL_STORE", str(store))
    url = _database(tmp_path, _scores(np.random.default_rng(4), 200, 2.0), input_mean=0.95)
    assert _run(store, url, "--since", "7d") == 0
    out = capsys.readouterr().out
    assert "input:mean_intensity" in out
    assert "drift: input:mean_intensity changed" in out

"""evaluate(): a stored model on a data split, preprocessed as its manifest says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlens.models.errors import ConfigurationError, ModelNotFoundError
from radlens.models.registry import ModelRegistry
from radlens.training.evaluate import evaluate, open_data
from radlens.training.run import RunResult


def test_val_split_reproduces_the_manifest_metrics(
    tiny_run: RunResult, tiny_demo_data: Path
) -> None:
    manifest = ModelRegistry(tiny_run.store).load(tiny_run.model_ref).manifest
    metrics = evaluate(tiny_run.model_ref, tiny_demo_data, split="val", store=tiny_run.store)
    assert metrics["threshold"] == manifest.threshold  # the saved threshold, not 0.5
    assert metrics["n"] == manifest.metrics["val"]["n"]
    assert metrics["confusion_matrix"] == manifest.metrics["val"]["confusion_matrix"]
    assert metrics["auc"] == pytest.approx(manifest.metrics["val"]["auc"], abs=1e-6)
    assert metrics["model"] == tiny_run.model_ref and metrics["split"] == "val"


def test_test_split_with_report_files(
    tiny_run: RunResult, tiny_demo_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    metrics = evaluate(tiny_run.model_ref, tiny_demo_data, store=tiny_run.store, out=out)
    assert metrics["n"] == tiny_run.split_sizes["test"]
    assert metrics["confusion_matrix"] == tiny_run.test_metrics["confusion_matrix"]  # type: ignore[index]
    for key in ("auc", "accuracy", "sensitivity", "specificity", "precision"):
        assert key in metrics
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for name in ("roc_curve.png", "confusion_matrix.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_all_split_counts_every_image(tiny_run: RunResult, tiny_demo_data: Path) -> None:
    metrics = evaluate(None, tiny_demo_data, split="all", store=tiny_run.store)
    assert metrics["n"] == sum(tiny_run.split_sizes.values())


def test_unknown_model(tiny_run: RunResult, tiny_demo_data: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        evaluate("nope:9", tiny_demo_data, store=tiny_run.store)


def test_data_with_other_classes(tiny_run: RunResult, tmp_path: Path) -> None:
    from tests.training.data_fixtures import png_folder

    data = png_folder(tmp_path / "d", classes=("cat", "dog"))
    with pytest.raises(ConfigurationError, match=r"cat"):
        evaluate(tiny_run.model_ref, data, store=tiny_run.store)


def test_bad_split_name(tiny_run: RunResult, tiny_demo_data: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"split must be one of .*got 'holdout'"):
        evaluate(tiny_run.model_ref, tiny_demo_data, split="holdout", store=tiny_run.store)


def test_open_data_prefers_labels_csv(tiny_demo_data: Path) -> None:
    source = open_data(tiny_demo_data)
    assert source.kind == "csv" and source.class_names == ["normal", "abnormal"]
    assert all(e.patient_id for e in source.examples)

"""evaluate(): a stored model on a data split, preprocessed as its manifest says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def test_an_older_model_is_evaluated_with_its_own_preprocessing_version(
    tiny_run: RunResult, tiny_demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model of preprocessing version 1 is fed as the service feeds it (version 1, the full
    decode), not with this radlens's current version."""
    import shutil

    from radlens.training.data.sources import DataSource

    store = tmp_path / "store"
    shutil.copytree(tiny_run.store, store)
    registry = ModelRegistry(store)
    name, version = registry.resolve(tiny_run.model_ref)
    path = store / name / str(version) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["preprocessing_version"] = "1"
    path.write_text(json.dumps(manifest))
    registry.seal(tiny_run.model_ref)  # the deliberate, logged step for an edited manifest

    seen: set[str | None] = set()
    load_pixels = DataSource.load_pixels

    def spy(self: DataSource, example, *, size, window=None, version=None):  # type: ignore[no-untyped-def]
        seen.add(version)
        return load_pixels(self, example, size=size, window=window, version=version)

    monkeypatch.setattr(DataSource, "load_pixels", spy)
    evaluate(tiny_run.model_ref, tiny_demo_data, split="val", store=store)
    assert seen == {"1"}


def test_load_pixels_reproduces_the_requested_preprocessing_version(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from radlens.models.preprocessing import preprocess

    data = Path(str(get_testdata_file("RG1_J2KR.dcm"))).read_bytes()  # JPEG 2000 chest CR
    for cls in ("normal", "abnormal"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "cr.dcm").write_bytes(data)
    source = open_data(tmp_path)
    example = next(e for e in source.examples if "normal" in e.key)
    for version in ("1", "2"):
        want = preprocess(data, size=(64, 64), version=version).model_input()
        got = source.load_pixels(example, size=64, version=version)
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(
        source.load_pixels(example, size=64, version="1"),
        source.load_pixels(example, size=64, version="2"),
    )

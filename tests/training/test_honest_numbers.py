"""A training run on real DICOM series: patient-level splits, no raw identifier anywhere, the
reported figures computed on test examples no selection step touched, calibrated scores served.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.registry import ModelRegistry
from radlens.training import metrics as metrics_module
from radlens.training.data import pipeline as pipeline_module
from radlens.training.metrics import apply_temperature
from radlens.training.run import RunResult, train

from .conftest import tiny_config
from .data_fixtures import write_npz
from .test_patients import _leaky_csv, series_folder


@pytest.fixture(scope="module")
def series_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny run on a folder of DICOM series, every selection step and decode recorded."""
    tmp = tmp_path_factory.mktemp("series-run")
    data = tmp / "data"
    series = series_folder(data, per_class=8, slices=3)
    events: list[tuple[str, Any]] = []
    mp = pytest.MonkeyPatch()

    def spy(module: Any, name: str, record: Any) -> None:
        original = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            events.append(record(*args, **kwargs))
            return original(*args, **kwargs)

        mp.setattr(module, name, wrapped)

    spy(pipeline_module, "load_examples", lambda source, ex, **kw: ("load", [e.key for e in ex]))
    spy(metrics_module, "fit_temperature", lambda y, p: ("select:temperature", len(y)))
    spy(metrics_module, "decision_threshold", lambda r, y, s: ("select:threshold", len(y)))
    spy(
        metrics_module,
        "operating_points",
        lambda vy, vs, ey, es, chosen: ("select:operating_points", len(vy)),
    )
    try:
        config = tiny_config(
            data,
            tmp,
            name="series",
            epochs_head=2,
            val_fraction=0.25,
            test_fraction=0.25,
            min_calibration_positives=2,
        )
        result = train(config, verbose=0)
    finally:
        mp.undo()
    return {"result": result, "series": series, "events": events, "data": data}


def test_split_is_by_patient_and_recorded(series_run: dict[str, Any]) -> None:
    result: RunResult = series_run["result"]
    record = json.loads((result.run_dir / "config.json").read_text())["split"]
    assert record["method"] == "by patient"
    assert record["patient_source"] == "PatientID/StudyInstanceUID"
    assert record["leakage_check"] == {"passed": True, "patients_in_two_splits": 0}
    assert record["test_split"] is True
    manifest = ModelRegistry(result.store).load(result.model_ref).manifest
    # dedicated manifest fields: how the split was made, and the leakage check's result
    assert manifest.data_split == {k: v for k, v in record.items() if k != "leakage_check"}
    assert manifest.leakage_check == record["leakage_check"]
    assert "split" not in manifest.metrics
    with (result.run_dir / "splits.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(result.split_sizes.values())
    assert all(r["patient"].startswith("p-") for r in rows)
    split_of_patient: dict[str, set[str]] = {}
    for r in rows:
        split_of_patient.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_patient.values())
    assert manifest.training_config["split"] == record


def _split_keys(result: RunResult) -> dict[str, set[str]]:
    """Each split's example keys, as the run's splits.csv records them."""
    keys: dict[str, set[str]] = {}
    with (result.run_dir / "splits.csv").open() as fh:
        for row in csv.DictReader(fh):
            keys.setdefault(row["split"], set()).add(row["key"])
    return keys


def test_no_slice_of_a_series_reaches_two_splits(series_run: dict[str, Any]) -> None:
    events = series_run["events"]
    split_keys = _split_keys(series_run["result"])
    loaded = set().union(*(set(keys) for kind, keys in events if kind == "load"))
    assert loaded == set().union(*split_keys.values())  # splits.csv is what was loaded
    train_keys, val_keys = split_keys["train"], split_keys["val"]
    test_keys = split_keys["test"]
    for name, files in series_run["series"].items():
        if name == "_raw":
            continue
        inside = [bool(set(files) & part) for part in (val_keys, test_keys)]
        if any(inside):
            assert set(files) <= (val_keys if inside[0] else test_keys), name
    assert not val_keys & test_keys and not train_keys & (val_keys | test_keys)


def test_reported_figures_come_from_examples_no_selection_touched(
    series_run: dict[str, Any],
) -> None:
    result: RunResult = series_run["result"]
    events = series_run["events"]
    # after the report, the OOD detector is fitted on training and validation examples
    # (training/ood.py): the test split is the one in splits.csv, not the last load
    test_keys = _split_keys(result)["test"]
    (test_load,) = [
        i for i, (kind, keys) in enumerate(events) if kind == "load" and set(keys) & test_keys
    ]
    assert set(events[test_load][1]) == test_keys
    selections = [(i, n) for i, (kind, n) in enumerate(events) if kind.startswith("select:")]
    assert {kind for kind, _ in events if kind.startswith("select:")} == {
        "select:temperature",
        "select:threshold",
        "select:operating_points",
    }
    # every selection step ran on validation, and only on it
    assert all(n == result.split_sizes["val"] for _, n in selections)
    # the test examples were decoded once, for the report, and never before
    assert sum(1 for kind, keys in events if kind == "load" and set(keys) & test_keys) == 1
    assert result.reported["split"] == "test"
    assert result.reported["label"].startswith("held-out test split")
    assert result.reported["n"] == result.split_sizes["test"] == len(test_keys)
    # and they are what `radlens evaluate --split test` measures on the stored model
    from radlens.training.evaluate import evaluate

    again = evaluate(result.model_ref, series_run["data"], split="test", store=result.store)
    assert again["n"] == result.reported["n"]
    assert again["confusion_matrix"] == result.reported["confusion_matrix"]
    assert again["auc"] == pytest.approx(result.reported["auc"])


def test_no_raw_patient_identifier_under_the_run_or_the_store(
    series_run: dict[str, Any],
) -> None:
    result: RunResult = series_run["result"]
    raw = [v.encode() for v in series_run["series"]["_raw"]]
    assert raw and any(v.startswith(b"RAWPID") for v in raw)
    name, version = result.model_ref.split(":")
    roots = [result.run_dir, result.store / name / version]
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files)
    assert any(p.name == "splits.csv" for p in files)  # it holds a patient per example
    assert any("tfevents" in p.name for p in files)
    for path in files:
        content = path.read_bytes()
        found = [v for v in raw if v in content]
        assert not found, (path, found[:2])


def test_served_scores_are_the_calibrated_ones(series_run: dict[str, Any]) -> None:
    import keras

    result: RunResult = series_run["result"]
    loaded = ModelRegistry(result.store).load(result.model_ref)
    calibration = loaded.manifest.calibration
    assert calibration is not None and "calibration" not in loaded.manifest.metrics
    temperature = calibration["temperature"]
    assert temperature > 0 and temperature != pytest.approx(1.0, abs=1e-3)
    assert calibration["fitted_on"] == "val" and calibration["evaluated_on"] == "test"
    assert 0 <= calibration["ece_after"] <= 1 and 0 <= calibration["ece_before"] <= 1
    uncalibrated = keras.models.clone_model(loaded.model)
    uncalibrated.load_weights(result.run_dir / "checkpoints" / "best.weights.h5")
    x = np.random.default_rng(0).random((5, 32, 32, 1), dtype=np.float32)
    served = loaded.model.predict(x, verbose=0)
    np.testing.assert_allclose(
        served, apply_temperature(uncalibrated.predict(x, verbose=0), temperature), atol=1e-5
    )


def test_operating_points_in_the_manifest(series_run: dict[str, Any]) -> None:
    result: RunResult = series_run["result"]
    metrics = ModelRegistry(result.store).load(result.model_ref).manifest.metrics
    points = metrics["operating_points"]
    # a sensitivity point needs ceil(1 / (1 - target)) validation positives; the others are
    # listed with why (training.metrics.recorded_operating_points)
    positives = int(metrics["val"]["n_positive"])
    needed = {"sens90": 10, "sens95": 20, "sens99": 100}
    missing = metrics.get("operating_points_not_computed", {})
    assert {"chosen", "youden"} <= set(points)
    assert {p for p in needed if p in points} == {p for p, n in needed.items() if positives >= n}
    assert set(missing) == {p for p, n in needed.items() if positives < n}
    assert all(f"{positives} validation positive" in why for why in missing.values())
    assert result.operating_points_not_computed == missing
    assert points["chosen"]["threshold"] == pytest.approx(result.threshold)
    for figures in points.values():
        assert figures["tp"] + figures["fn"] == result.reported["n_positive"]
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            if figures[key] is not None:
                low, high = figures[f"{key}_ci95"]
                assert low <= figures[key] <= high


def test_tensorboard_shows_the_reliability_diagram(series_run: dict[str, Any]) -> None:
    import tensorflow as tf

    result: RunResult = series_run["result"]
    tags = set()
    # a tag in the validation run (no sub-run of its own: training.callbacks)
    for path in (result.run_dir / "tensorboard" / "validation").glob("events*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    assert "calibration/reliability_test" in tags


def test_evaluate_a_test_only_npz(
    series_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result: RunResult = series_run["result"]
    npz = write_npz(tmp_path / "test_only.npz", n={"test": 10})
    args = ["evaluate", "--model", result.model_ref, "--store", str(result.store)]
    code = main([*args, "--data", str(npz), "--split", "test", "--json", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(out)["n"] == 10 and "ece" in json.loads(out)
    assert (tmp_path / "reliability.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "roc_curve.png").is_file()


def _train_args(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--arch",
        "simple_cnn",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--store",
        str(tmp_path / "store"),
        "--runs-dir",
        str(tmp_path / "runs"),
        *extra,
    ]


def test_cli_refuses_a_leaking_split_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _leaky_csv(tmp_path / "d")
    assert main(_train_args(csv_path, tmp_path)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("radlens: error: ")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "2 patient(s) have images in more than one split (train+val: 2)" in lines[0]
    assert "--resplit" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store").exists()


def test_cli_refuses_data_too_small_to_calibrate(
    tiny_demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_train_args(tiny_demo_data, tmp_path)) == 2  # default: 10 val positives
    err = capsys.readouterr().err
    assert "too small to calibrate" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store").exists()


def test_cli_resplit_trains_on_a_patient_level_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _leaky_csv(tmp_path / "d", n_patients=16)
    extra = ["--resplit", "--val-fraction", "0.3", "--test-fraction", "0.3"]
    code = main(_train_args(csv_path, tmp_path, *extra, "--min-calibration-positives", "1"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "split: by patient (--resplit: the given split was redone); leakage check passed" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / "config.json").read_text())
    assert record["resplit"] is True and record["split"]["leakage_check"]["passed"]
    with (run_dir / "splits.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    splits_of: dict[str, set[str]] = {}
    for r in rows:
        splits_of.setdefault(r["patient"], set()).add(r["split"])
    assert len(splits_of) == 16 and all(len(s) == 1 for s in splits_of.values())


def test_evaluate_refuses_another_patient_key(
    series_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.models.errors import ConfigurationError
    from radlens.training.evaluate import evaluate

    result: RunResult = series_run["result"]
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "not-the-training-key")
    with pytest.raises(ConfigurationError, match="patient-hash key differs"):
        evaluate(result.model_ref, series_run["data"], split="test", store=result.store)

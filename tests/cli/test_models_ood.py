"""`radlens models ood NAME --data PATH`: add an OOD detector to a model saved without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.ood import OodDetector
from radlens.models.registry import ModelRegistry
from tests.app.conftest import save_tiny_model
from tests.cli.test_models_cmds import one_error_line


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.training.data.demo import write_demo_dataset

    out = tmp_path_factory.mktemp("ood-demo") / "data"
    write_demo_dataset(out, n_per_class=12, size=32, seed=0, val_fraction=0.15, test_fraction=0.15)
    return out


def test_adds_a_sealed_detector_and_replaces_it(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    save_tiny_model(store)
    registry = ModelRegistry(store)
    assert registry.verify("tiny", 1).ood is None

    assert main(["models", "ood", "tiny", "--data", str(demo_data), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added an OOD detector to tiny:1: mahalanobis, threshold")
    assert "of new in-distribution images (under " in out  # the conformal expectation
    first = registry.verify("tiny", 1)  # sealed again: the seal covers the new field
    assert first.ood is not None
    first_file = registry.ood_detector_file(first)
    assert first_file is not None and OodDetector.load(first_file).dimension == 64

    args = ["models", "ood", "tiny:1", "--data", str(demo_data), "--store", str(store)]
    assert main([*args, "--method", "knn", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["method"] == "knn" and entry["fitted_on"]["val_images"] >= 1
    n = entry["fitted_on"]["val_images"]  # split conformal: ceil((n + 1) 0.99)-th of n
    assert entry["expected_flag_rate"] == pytest.approx(
        (n + 1 - min(n, -(-(n + 1) * 99 // 100))) / (n + 1)
    )
    second = registry.verify("tiny", 1)
    assert second.model_sha256 == first.model_sha256 and second.created_at == first.created_at
    assert not first_file.exists()  # the replaced detector's file is gone
    assert registry.ood_detector_file(second) is not None


def test_bad_method_is_one_line(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    save_tiny_model(store)
    args = ["models", "ood", "tiny", "--data", str(demo_data), "--store", str(store)]
    assert main([*args, "--method", "forest"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--method must be one of mahalanobis, knn. Received: 'forest'" in line
    assert ModelRegistry(store).verify("tiny", 1).ood is None


def test_an_ensemble_trained_on_the_train_split_gets_one_detector_per_member(
    tmp_path: Path, demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.models.ensemble import build_ensemble
    from radlens.models.ood import EnsembleOodDetector, load_detector
    from tests.app.conftest import CLASS_NAMES, build_tiny_model

    store = tmp_path / "store"
    registry = ModelRegistry(store)
    registry.save(
        build_ensemble([build_tiny_model(), build_tiny_model()]),
        name="ens",
        architecture="simple_cnn",
        class_names=CLASS_NAMES,
        threshold=0.5,
        window=None,
        filters=[],
        metrics={},
        training_config={"note": "two members trained on one train split", "members": 2},
        data_fingerprint=None,
    )
    assert main(["models", "ood", "ens:1", "--data", str(demo_data), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added an OOD detector to ens:1: ensemble, threshold")
    assert "2 member detectors; nominally flags" in out
    ood = registry.verify("ens", 1).ood
    assert ood is not None and ood["members"] == 2
    n = ood["fitted_on"]["val_images"]  # every member calibrated on the same val split
    assert ood["calibration_images"] == [n, n] and 0 <= ood["val_flagged_fraction"] <= 1
    detector = load_detector(registry.ood_detector_file(registry.verify("ens", 1)))  # type: ignore[arg-type]
    assert isinstance(detector, EnsembleOodDetector) and detector.dimension == 128


@pytest.fixture(scope="module")
def findings_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """A multi-label model trained as the README's example: its own label column and
    separator, an ignored finding, --resplit; exported without a detector (ood_method none)."""
    from radlens.training.run import train
    from tests.training.conftest import TEST_PATIENT_KEY, tiny_config
    from tests.training.data_fixtures import multilabel_csv

    tmp = tmp_path_factory.mktemp("ood-findings")
    mp = pytest.MonkeyPatch()
    mp.setenv("RADLENS_PATIENT_HASH_KEY", TEST_PATIENT_KEY)
    try:
        data = multilabel_csv(tmp / "data", n=60, column="nih", separator=";")
        _add_binary_label_column(data, "nih")  # as NIH's labels.csv: label 0/1 beside it
        config = tiny_config(
            data,
            tmp,
            multi_label=True,
            label_column="nih",
            label_separator=";",
            ignore_findings=["Nodule"],
            resplit=True,
            epochs_head=1,
            ood_method="none",
            openvino=False,
            tensorboard_samples=0,
            histogram_freq=0,
        )
        result = train(config, verbose=0)
    finally:
        mp.undo()
    return result.model_ref, result.store, data


def test_a_multi_label_model_gets_a_detector_on_its_training_split(
    findings_model: tuple[str, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`models ood` reads the data as the run did (findings column, separator, ignored
    findings, --resplit), so it rebuilds the run's split rather than refusing another one."""
    from tests.training.conftest import TEST_PATIENT_KEY

    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", TEST_PATIENT_KEY)
    ref, store, data = findings_model
    registry = ModelRegistry(store)
    name, version = ref.split(":")
    before = registry.verify(name, int(version))
    assert before.ood is None and before.multi_label
    sizes = before.training_config["split_sizes"]
    args = ["models", "ood", ref, "--data", str(data), "--store", str(store), "--json"]
    assert main(args) == 0, capsys.readouterr().err
    entry = json.loads(capsys.readouterr().out)
    assert entry["fitted_on"]["train_images"] == sizes["train"]
    assert entry["fitted_on"]["val_images"] == sizes["val"]
    after = registry.verify(name, int(version))
    assert after.ood is not None and after.model_sha256 == before.model_sha256
    detector = OodDetector.load(registry.ood_detector_file(after))  # type: ignore[arg-type]
    # Effusion, Infiltration (Nodule ignored) and the images without a finding
    assert detector.arrays["means"].shape[0] == 3


def _add_binary_label_column(csv_path: Path, findings_column: str) -> None:
    """A ``label`` column, 0 for no finding and 1 otherwise (the NIH sample's labels.csv has
    one beside ``nih_finding_labels``): a reader that ignores the training run's findings
    options reads it instead, and rebuilds another split."""
    import csv

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["label"] = "0" if row[findings_column] == "No Finding" else "1"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

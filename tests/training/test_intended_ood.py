"""Training records the intended use and fits the OOD detector (issue #17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError, ModelCorruptError, ModelTamperedError
from radlens.models.ood import OodDetector
from radlens.models.registry import ModelRegistry
from tests.training.conftest import tiny_config


def _ref(ref: str) -> tuple[str, int]:
    name, version = ref.split(":")
    return name, int(version)


def test_run_records_what_the_dicom_headers_show(tiny_run) -> None:  # type: ignore[no-untyped-def]
    manifest = ModelRegistry(tiny_run.store).read_manifest(*_ref(tiny_run.model_ref))
    record = manifest.intended_use
    assert record is not None
    observed = record["observed"]
    assert observed["formats"] == {"dicom": observed["images"]}
    assert observed["images"] == tiny_run.split_sizes["train"]
    assert observed["modalities"] == {"CR": observed["images"]}
    assert observed["body_parts"] == {"CHEST": observed["images"]}
    assert observed["rows"][0] >= 1 and observed["columns"][0] >= 1
    assert record["stated"] is None and record["source"] == "training data"
    assert record["accepts"] == {
        "modalities": ["CR"],
        "body_parts": ["CHEST"],
        "view_positions": ["FRONTAL"],  # the demo data's PA films
    }


def test_run_stores_a_sealed_ood_detector(tiny_run) -> None:  # type: ignore[no-untyped-def]
    registry = ModelRegistry(tiny_run.store)
    name, version = tiny_run.model_ref.split(":")
    manifest = registry.verify(name, int(version))
    assert manifest.ood is not None and manifest.ood["method"] == "mahalanobis"
    path = registry.ood_detector_file(manifest)
    assert path is not None
    detector = OodDetector.load(path)
    assert detector.threshold == pytest.approx(manifest.ood["threshold"])
    assert detector.dimension == manifest.ood["dimension"] == 64  # simple_cnn's conv4, pooled
    assert 0.0 <= manifest.ood["val_flagged_fraction"] <= 0.5


def test_an_altered_detector_file_is_refused(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny_run.store, store)
    registry = ModelRegistry(store)
    name, version = tiny_run.model_ref.split(":")
    manifest = registry.verify(name, int(version))
    path = registry.ood_detector_file(manifest)
    assert path is not None
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelCorruptError, match=r"sha256 of .*ood-"):
        registry.ood_detector_file(manifest)
    # and the manifest's description of it is under the seal
    text = (path.parent / "manifest.json").read_text()
    (path.parent / "manifest.json").write_text(text.replace('"mahalanobis"', '"knn"'))
    with pytest.raises(ModelTamperedError, match="'ood' changed"):
        registry.verify(name, int(version))


def test_a_stated_intended_use_wins(tiny_demo_data: Path, tmp_path: Path) -> None:
    from radlens.training.run import train

    config = tiny_config(
        tiny_demo_data,
        tmp_path,
        epochs_head=1,
        intended_modalities=["dr", "CR"],
        intended_body_parts="thorax",
        intended_view_positions="PA,AP",  # tests/training/test_intended_views.py
        ood_method="knn",
        openvino=False,
        histogram_freq=0,  # the manifest is checked, not TensorBoard
        tensorboard_samples=0,
    )
    result = train(config, verbose=0)
    manifest = ModelRegistry(result.store).read_manifest(*_ref(result.model_ref))
    assert manifest.intended_use is not None
    assert manifest.intended_use["stated"] == {
        "modalities": ["CR", "DX"],
        "body_parts": ["CHEST"],
        "view_positions": ["FRONTAL"],
    }
    assert manifest.intended_use["accepts"]["modalities"] == ["CR", "DX"]
    assert manifest.intended_use["accepts"]["view_positions"] == ["FRONTAL"]
    assert manifest.ood is not None and manifest.ood["method"] == "knn"


def test_a_stated_use_that_excludes_every_training_image_is_refused_before_training(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    """Chest CR films with --intended-modalities MR: the service's gate would refuse every
    image like them, so no run starts (QA round 16: 2,346 MR images trained for a CR/DX model,
    said only in train.log). One image inside the statement is enough to train."""
    from radlens.training.run import train

    config = tiny_config(tiny_demo_data, tmp_path, intended_modalities=["MR"], openvino=False)
    with pytest.raises(ConfigurationError) as info:
        train(config, verbose=0)
    message = str(info.value)
    assert "the stated intended use (modalities MR) excludes all " in message, message
    assert "'CR'" in message and "--intended-modalities" in message, message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_an_unknown_stated_value_is_refused_at_start(tiny_demo_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"'banana' is not a known body part"):
        tiny_config(tiny_demo_data, tmp_path, intended_body_parts=["banana"])
    with pytest.raises(ConfigurationError, match="ood_method must be one of"):
        tiny_config(tiny_demo_data, tmp_path, ood_method="isolation-forest")


def test_detector_separates_far_features(tmp_path: Path) -> None:
    from radlens.models.ood import fit_detector

    # ReLU-like features: training images light up the first 8 units, the far ones the last 8
    rng = np.random.default_rng(0)
    scale = np.array([1.0] * 8 + [0.05] * 8)

    def features(n: int, scale: np.ndarray) -> np.ndarray:
        return np.abs(rng.normal(size=(n, 16))) * scale

    train = features(400, scale)
    labels = (train[:, 0] > 0.7).astype(int)
    val = features(200, scale)
    far = features(50, scale[::-1])
    for method in ("mahalanobis", "knn"):
        detector = fit_detector(train, labels, val, method=method)  # type: ignore[arg-type]
        assert np.mean(detector.scores(val) > detector.threshold) <= 0.02
        assert np.all(detector.scores(far) > detector.threshold)
        detector.save(tmp_path / f"{method}.npz")
        loaded = OodDetector.load(tmp_path / f"{method}.npz")
        assert loaded.threshold == detector.threshold
        np.testing.assert_allclose(loaded.scores(far), detector.scores(far), rtol=1e-6)
        # the serving graph's TensorFlow ops give the same scores (app/predictor.py)
        in_graph = np.asarray(detector.tf_scorer()(far.astype(np.float32)))
        np.testing.assert_allclose(in_graph, detector.scores(far), rtol=1e-4, atol=1e-5)


def test_in_graph_mahalanobis_matches_numpy_when_the_covariance_is_nearly_singular() -> None:
    """Features that all point almost the same way leave unit-length vectors a tiny
    within-class covariance, so even the shrunk one has precision entries of 1e6 and more
    (2e8 for the small CNN of tests/app/test_ood_service.py). The expanded form
    x'Px - 2x'Pm + m'Pm cancelled in float32 there and served scores off by tens around the
    threshold; the centred form agrees with the numpy scores the threshold was set with."""
    from radlens.models.ood import fit_detector

    rng = np.random.default_rng(1)
    direction = np.abs(rng.normal(size=64))

    def features(n: int) -> np.ndarray:
        return direction + 1e-3 * np.abs(rng.normal(size=(n, 64)))

    train, val = features(600), features(200)
    detector = fit_detector(train, (train[:, 0] > np.median(train[:, 0])).astype(int), val)
    assert np.abs(detector.arrays["precision"]).max() > 1e6  # the ill-conditioned case
    expected = detector.scores(val)
    in_graph = np.asarray(detector.tf_scorer()(val.astype(np.float32)))
    np.testing.assert_allclose(in_graph, expected, rtol=1e-3, atol=1e-3 * detector.threshold)


def test_conformal_threshold_flags_at_most_the_target_of_new_images() -> None:
    """The detector never sees the validation features, so they are a calibration set: over
    many draws of 262 calibration and 2000 new in-distribution images, the stored threshold
    flags at most 1% of the new ones on average (the conformal guarantee). numpy's
    interpolated 99th percentile, the threshold before, flagged ~1.4% in expectation (one
    262-image draw of the PneumoniaMNIST bench flagged 2.3%, docs/benchmarks/ood.md)."""
    from radlens.models.ood import conformal_threshold, expected_flag_rate, fit_detector

    rng = np.random.default_rng(3)
    train = rng.normal(size=(400, 6))
    labels = (train[:, 0] > 0).astype(int)
    rates = []
    for _ in range(150):
        val, new = rng.normal(size=(262, 6)), rng.normal(size=(2000, 6))
        detector = fit_detector(train, labels, val)
        scores = detector.scores(val)
        assert detector.threshold == conformal_threshold(scores, 0.99)
        assert detector.threshold == np.sort(scores)[260]  # ceil(263 * 0.99) = 261st smallest
        rates.append(np.mean(detector.scores(new) > detector.threshold))
    expected = expected_flag_rate(262, 0.99)
    assert expected["expected"] == pytest.approx(2 / 263)
    assert 0.005 < np.mean(rates) <= 0.0095, np.mean(rates)
    assert np.mean(np.array(rates) > expected["upper_95"]) < 0.1
    assert conformal_threshold(np.arange(10.0), 0.99) == 9.0  # too few: the largest


@pytest.mark.parametrize("train_images", [20, 600])  # rank 18 of D=64, and full rank
def test_served_mahalanobis_is_the_numpy_score(train_images: int, tmp_path: Path) -> None:
    """The served score (a projection on the directions above the shrinkage floor plus an
    isotropic residual, or a full whitening) equals the numpy reference on the precision
    matrix, for a detector file with the decomposition and for one saved before it."""
    from radlens.models.ood import fit_detector

    rng = np.random.default_rng(4)
    direction = np.abs(rng.normal(size=64))

    def features(n: int, spread: float = 1e-2) -> np.ndarray:
        return direction + spread * np.abs(rng.normal(size=(n, 64)))

    train = features(train_images)
    detector = fit_detector(train, (train[:, 0] > np.median(train[:, 0])).astype(int), features(50))
    rank = detector.arrays["basis"].shape[1]
    assert (rank < 32) == (train_images < 64), rank  # the cheap path is the one tested
    probe = np.r_[features(30), features(10, 0.3), np.abs(rng.normal(size=(10, 64)))]
    expected = detector.scores(probe)
    rtol, atol = 1e-3, 1e-3 * detector.threshold
    np.testing.assert_allclose(
        np.asarray(detector.tf_scorer()(probe)), expected, rtol=rtol, atol=atol
    )
    legacy = OodDetector(
        "mahalanobis",
        detector.threshold,
        detector.quantile,
        {k: detector.arrays[k] for k in ("means", "precision")},
    )
    legacy.save(tmp_path / "legacy.npz")
    loaded = OodDetector.load(tmp_path / "legacy.npz")
    assert "basis" not in loaded.arrays
    np.testing.assert_allclose(
        np.asarray(loaded.tf_scorer()(probe)), expected, rtol=rtol, atol=atol
    )
    detector.save(tmp_path / "new.npz")
    assert OodDetector.load(tmp_path / "new.npz").arrays["basis"].shape == (64, rank)

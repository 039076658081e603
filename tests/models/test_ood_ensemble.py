"""models.ood for ensembles: the ensemble's features (models.ensemble), the pooled-rank
detector (EnsembleOodDetector) against the single-model conformal rule, its served form against
numpy, its file, and its false-flag rate on new in-distribution points (synthetic features,
random tiny members: seconds)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from radlens.models.architectures import build_model
from radlens.models.ensemble import build_ensemble
from radlens.models.errors import ConfigurationError, ModelCorruptError
from radlens.models.ood import (
    EnsembleOodDetector,
    extract_features,
    feature_model,
    fit_detector,
    fit_ensemble_detector,
    load_detector,
)


def _gaussian(rng: np.random.Generator, n: int, dim: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of correlated Gaussian features, (n, dim), with labels."""
    labels = rng.integers(0, 2, n)
    mix = np.linspace(0.2, 1.5, dim * dim).reshape(dim, dim)
    x = rng.standard_normal((n, dim)) @ mix + 3.0 * labels[:, None] + 5.0
    return x.astype(np.float32), labels


def _members(rng: np.random.Generator, features: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` different views of the same images (as different networks would give)."""
    dim = features.shape[1]
    return [features @ (np.eye(dim) + 0.3 * rng.standard_normal((dim, dim))) for _ in range(count)]


class TestFeatures:
    def test_scores_are_the_ensembles_and_features_the_members_concatenated(self) -> None:
        members = []
        for seed in (1, 2):
            keras.utils.set_random_seed(seed)
            members.append(build_model("simple_cnn", input_shape=(24, 24, 1), num_classes=2))
        model = build_ensemble(members, offsets=[(0, 0), (1, -1)])
        x = np.random.default_rng(0).random((5, 24, 24, 1), dtype=np.float32)
        scores, features = feature_model(model)(x, training=False)
        np.testing.assert_allclose(scores, model(x, training=False), atol=1e-6)
        expected = np.concatenate([extract_features(m, x) for m in members], axis=1)
        np.testing.assert_allclose(features, expected, atol=1e-6)
        assert features.shape == (5, 128)


class TestPooledRank:
    def test_one_member_calibrated_on_val_is_the_single_models_conformal_rule(self) -> None:
        rng = np.random.default_rng(3)
        train, labels = _gaussian(rng, 400)
        val, _ = _gaussian(rng, 150)
        new = np.concatenate([_gaussian(rng, 3000)[0], 1.8 * _gaussian(rng, 300)[0]])
        single = fit_detector(train, labels, val)
        ensemble = fit_ensemble_detector([(train, labels, val)])
        assert ensemble.calibration_size == 150
        flagged_single = single.scores(new) > single.threshold
        flagged_ensemble = ensemble.scores(new) > ensemble.threshold
        np.testing.assert_array_equal(flagged_single, flagged_ensemble)
        assert 0 < flagged_single.sum() < len(new)

    def test_false_flag_rate_of_new_in_distribution_points(self) -> None:
        rng = np.random.default_rng(4)
        images, labels = _gaussian(rng, 3000)
        new, _ = _gaussian(rng, 20000)
        folds = np.arange(len(images)) % 3
        projections = [np.eye(12) + 0.3 * rng.standard_normal((12, 12)) for _ in range(3)]
        fits = [
            (images[folds != f] @ p, labels[folds != f], images[folds == f] @ p)
            for f, p in enumerate(projections)
        ]
        detector = fit_ensemble_detector(fits)
        assert detector.calibration_size == 3000 and detector.entry()["nominal_flag_rate"] < 0.01
        features = np.concatenate([new @ p for p in projections], axis=1)
        rate = float(np.mean(detector.scores(features) > detector.threshold))
        assert 0.003 < rate < 0.02  # nominal 1%; the cross-conformal bound is 2%
        flipped = new[:500] * np.where(np.arange(12) % 2 == 0, 1.0, -1.0)  # another direction
        far = np.concatenate([flipped @ p for p in projections], axis=1)
        assert np.mean(detector.scores(far) > detector.threshold) > 0.5

    def test_served_scores_equal_numpy(self) -> None:
        rng = np.random.default_rng(5)
        images, labels = _gaussian(rng, 600)
        members = _members(rng, images, 3)
        fits = [(m[:400], labels[:400], m[400:]) for m in members]
        detector = fit_ensemble_detector(fits)
        new = np.concatenate(_members(rng, _gaussian(rng, 300)[0], 3), axis=1)
        new = np.concatenate([new, 1.5 * new[:50]])
        served = np.asarray(detector.tf_scorer()(new))
        np.testing.assert_array_equal(served, detector.scores(new))
        assert served.min() >= 0.0 and served.max() == 1.0

    def test_refuses_mismatched_members_and_features(self) -> None:
        rng = np.random.default_rng(6)
        x, y = _gaussian(rng, 50)
        detector = fit_ensemble_detector([(x, y, x[:10]), (x, y, x[:10])])
        with pytest.raises(ValueError, match=r"fitted on 24-d features \(12 \+ 12\)"):
            detector.scores(x)
        with pytest.raises(ConfigurationError, match="one calibration set per member"):
            EnsembleOodDetector(detector.members, detector.calibration[:1])
        with pytest.raises(ConfigurationError, match=">= 1 member"):
            fit_ensemble_detector([])


class TestFile:
    def test_round_trip_and_a_damaged_file(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(7)
        images, labels = _gaussian(rng, 300)
        members = _members(rng, images, 2)
        detector = fit_ensemble_detector([(m[:200], labels[:200], m[200:]) for m in members])
        path = tmp_path / "ood.npz"
        detector.save(path)
        again = load_detector(path)
        assert isinstance(again, EnsembleOodDetector)
        features = np.concatenate(members, axis=1)
        np.testing.assert_array_equal(again.scores(features), detector.scores(features))
        assert again.threshold == detector.threshold and again.entry() == detector.entry()
        # a single model's detector file still loads as before
        single = fit_detector(images[:200], labels[:200], images[200:])
        single.save(tmp_path / "single.npz")
        assert load_detector(tmp_path / "single.npz").threshold == single.threshold
        path.write_bytes(path.read_bytes()[:200])
        with pytest.raises(ModelCorruptError, match="is not an OOD detector file"):
            load_detector(path)


def test_truncated_single_detector_file_is_corrupt(tmp_path: Path) -> None:
    """OodDetector.load (the single-model reader) names a truncated file as corrupt too,
    rather than letting zipfile's BadZipFile out."""
    from radlens.models.ood import OodDetector

    rng = np.random.default_rng(0)
    images = rng.normal(size=(240, 8)).astype(np.float32)
    labels = (np.arange(240) % 2).astype(np.int64)
    path = tmp_path / "ood.npz"
    fit_detector(images[:200], labels[:200], images[200:]).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelCorruptError, match="is not an OOD detector file"):
        OodDetector.load(path)

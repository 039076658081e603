"""Drift statistics (models.drift): the reference written at export, PSI and binned KS; a
shifted stream moves them, an unshifted one does not."""

from __future__ import annotations

import numpy as np
import pytest

from radlens.models.drift import (
    PSI_DRIFT,
    binned_ks,
    build_reference,
    compare,
    histogram,
    input_features,
    population_stability_index,
)

CLASSES = ["normal", "abnormal"]


def _stream(rng: np.random.Generator, n: int, *, brightness: float = 0.0, positive: float = 2.0):
    """n model inputs (32x32 in [0, 1]) and 2-class scores; ``brightness`` shifts the
    inputs, ``positive`` the positive-class score distribution (Beta(positive, 5))."""
    base = rng.beta(2.0, 3.0, size=(n, 1, 1)) * 0.6 + 0.1
    pixels = np.clip(base + rng.normal(0, 0.08, size=(n, 32, 32)) + brightness, 0.0, 1.0)
    p = rng.beta(positive, 5.0, size=n)
    return pixels.astype(np.float32), np.stack([1 - p, p], axis=1)


@pytest.fixture(scope="module")
def reference() -> dict:
    pixels, scores = _stream(np.random.default_rng(0), 600)
    return build_reference(scores, pixels[..., np.newaxis], CLASSES, 0.5)


class TestStatistics:
    def test_identical_distributions_score_zero(self) -> None:
        counts = [5, 10, 20, 10, 5]
        assert population_stability_index(counts, counts) == pytest.approx(0.0)
        assert binned_ks(counts, counts) == pytest.approx(0.0)

    def test_disjoint_distributions_score_high(self) -> None:
        assert population_stability_index([10, 0, 0], [0, 0, 10]) > 5
        assert binned_ks([10, 0, 0], [0, 0, 10]) == pytest.approx(1.0)

    def test_psi_is_symmetric_and_finite_with_empty_bins(self) -> None:
        a, b = [8, 2, 0], [2, 2, 6]
        assert population_stability_index(a, b) == pytest.approx(population_stability_index(b, a))
        assert np.isfinite(population_stability_index(a, b))

    def test_bins_must_match(self) -> None:
        with pytest.raises(ValueError, match="bins differ"):
            population_stability_index([1, 2], [1, 2, 3])

    def test_histogram_clips_to_the_end_bins(self) -> None:
        assert histogram([-1.0, 0.05, 0.95, 2.0], [0.0, 0.5, 1.0]).tolist() == [2, 2]

    def test_input_features(self) -> None:
        features = input_features(np.full((4, 4, 1), 0.25, dtype=np.float32))
        assert features == {"mean_intensity": 0.25, "std_intensity": 0.0}


class TestReference:
    def test_shape(self, reference: dict) -> None:
        assert reference["split_size"] == 600
        assert list(reference["scores"]) == CLASSES
        for fractions in reference["scores"].values():
            assert len(fractions) == 10 and sum(fractions) == pytest.approx(1.0, abs=1e-5)
        rates = reference["label_rates"]
        assert rates["normal"] + rates["abnormal"] == pytest.approx(1.0)
        assert set(reference["inputs"]) == {"mean_intensity", "std_intensity"}

    def test_bad_shapes(self) -> None:
        with pytest.raises(ValueError, match="scores must be"):
            build_reference(np.zeros((3, 3)), np.zeros((3, 4, 4)), CLASSES, 0.5)
        with pytest.raises(ValueError, match="2 images for 3"):
            build_reference(np.zeros((3, 2)), np.zeros((2, 4, 4)), CLASSES, 0.5)


class TestCompare:
    def _psi(self, reference: dict, pixels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        features = [input_features(p) for p in pixels]
        return {c.feature: c.psi for c in compare(reference, scores, features)}

    def test_an_unshifted_stream_stays_below_the_threshold(self, reference: dict) -> None:
        pixels, scores = _stream(np.random.default_rng(1), 300)
        psi = self._psi(reference, pixels, scores)
        assert set(psi) == {
            "score:normal",
            "score:abnormal",
            "input:mean_intensity",
            "input:std_intensity",
        }
        assert max(psi.values()) < 0.1, psi

    def test_brighter_inputs_move_the_input_statistic(self, reference: dict) -> None:
        pixels, scores = _stream(np.random.default_rng(2), 300, brightness=0.25)
        psi = self._psi(reference, pixels, scores)
        assert psi["input:mean_intensity"] > PSI_DRIFT, psi
        assert psi["score:abnormal"] < 0.1  # the scores did not move

    def test_shifted_scores_move_the_score_statistic(self, reference: dict) -> None:
        pixels, scores = _stream(np.random.default_rng(3), 300, positive=5.0)
        comparisons = {
            c.feature: c for c in compare(reference, scores, [input_features(p) for p in pixels])
        }
        assert comparisons["score:abnormal"].drifted
        assert comparisons["score:abnormal"].ks > 0.3
        assert not comparisons["input:mean_intensity"].drifted

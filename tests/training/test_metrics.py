"""Metrics and the documented decision-threshold rule (Youden's J, ties -> closest to 0.5)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radlens.training.metrics import (
    binary_metrics,
    choose_threshold,
    classification_metrics,
    decision_threshold,
    multiclass_metrics,
    roc_auc,
    roc_curve_points,
)


def test_threshold_rules() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.35, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99])
    assert decision_threshold("youden", labels, scores) == choose_threshold(labels, scores)
    t = decision_threshold("balanced", labels, scores)
    predicted = scores >= t
    sensitivity = predicted[labels == 1].mean()
    specificity = (~predicted[labels == 0]).mean()
    assert sensitivity == specificity == 0.75  # the rule's defining property here
    assert 0.5 < t < 0.6
    assert decision_threshold("balanced", np.ones(3), np.array([0.2, 0.5, 0.9])) == 0.5


def test_unknown_threshold_rule() -> None:
    with pytest.raises(ValueError, match=r"youden, balanced. Received: 'median'"):
        decision_threshold("median", np.array([0, 1]), np.array([0.2, 0.8]))


class TestChooseThreshold:
    def test_perfect_separation_picks_the_gap_closest_to_half(self) -> None:
        labels = np.array([0, 0, 0, 1, 1, 1])
        scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
        # every threshold in (0.3, 0.7] gives J = 1; 0.5 itself is a candidate and closest
        assert choose_threshold(labels, scores) == 0.5

    def test_separation_away_from_half_picks_the_midpoint(self) -> None:
        labels = np.array([0, 0, 1, 1])
        scores = np.array([0.05, 0.10, 0.20, 0.30])
        assert choose_threshold(labels, scores) == pytest.approx(0.15)

    def test_maximises_youden_j(self) -> None:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 200)
        scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 200), 0, 1)
        t = choose_threshold(labels, scores)
        j_best = _youden(labels, scores, t)
        for other in np.linspace(0, 1, 101):
            assert _youden(labels, scores, other) <= j_best + 1e-12

    def test_ties_go_to_the_candidate_closest_to_half(self) -> None:
        # J = 0.5 at both midpoints 0.25 and 0.65; 0.65 is closer to 0.5
        labels = np.array([0, 1, 0, 1])
        scores = np.array([0.2, 0.3, 0.6, 0.7])
        assert choose_threshold(labels, scores) == pytest.approx(0.65)

    def test_single_class_gives_default(self) -> None:
        assert choose_threshold(np.array([1, 1, 1]), np.array([0.2, 0.4, 0.9])) == 0.5

    def test_constant_scores_give_default(self) -> None:
        assert choose_threshold(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == 0.5

    def test_length_mismatch(self) -> None:
        with pytest.raises(ValueError, match="differ in length: 2 vs 3"):
            choose_threshold(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def _youden(labels: np.ndarray, scores: np.ndarray, t: float) -> float:
    pred = scores >= t
    sens = (pred & (labels == 1)).sum() / (labels == 1).sum()
    spec = (~pred & (labels == 0)).sum() / (labels == 0).sum()
    return float(sens + spec - 1)


class TestBinaryMetrics:
    def test_known_values(self) -> None:
        labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
        scores = np.array([0.1, 0.4, 0.6, 0.2, 0.8, 0.3, 0.9, 0.7])
        m = binary_metrics(labels, scores, threshold=0.5)
        assert m["confusion_matrix"] == [[3, 1], [1, 3]]
        assert m["accuracy"] == 0.75
        assert m["sensitivity"] == 0.75
        assert m["specificity"] == 0.75
        assert m["precision"] == 0.75
        assert m["n"] == 8 and m["n_positive"] == 4
        assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))

    def test_threshold_changes_decisions(self) -> None:
        labels = np.array([0, 1])
        scores = np.array([0.3, 0.4])
        assert binary_metrics(labels, scores, 0.5)["sensitivity"] == 0.0
        assert binary_metrics(labels, scores, 0.35)["accuracy"] == 1.0

    def test_auc_matches_sklearn_with_ties(self) -> None:
        rng = np.random.default_rng(3)
        labels = rng.integers(0, 2, 300)
        scores = np.round(rng.random(300), 1)  # many ties
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))

    def test_single_class_auc_is_none(self) -> None:
        m = binary_metrics(np.zeros(3), np.array([0.1, 0.2, 0.9]))
        assert m["auc"] is None and m["sensitivity"] is None and m["specificity"] == 2 / 3

    def test_roc_points_run_from_origin_to_one(self) -> None:
        fpr, tpr = roc_curve_points(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.35]))
        assert (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_multiclass_per_class() -> None:
    labels = np.array([0, 1, 2, 2])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]], dtype=np.float32
    )
    m = multiclass_metrics(labels, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert m["accuracy"] == 0.75
    assert m["per_class"]["c"]["sensitivity"] == 0.5
    assert m["per_class"]["a"]["precision"] == 0.5
    assert m["per_class"]["a"]["specificity"] == 2 / 3
    assert m["threshold"] is None
    assert classification_metrics(labels, probs, ["a", "b", "c"]) == m


def test_multiclass_shape_error() -> None:
    with pytest.raises(ValueError, match=r"must be \(N=2, C=3\); received \(2, 2\)"):
        multiclass_metrics(np.array([0, 1]), np.zeros((2, 2)), ["a", "b", "c"])


# --- calibration, operating points, linear memory ----------------------------------------


class TestThresholdMemory:
    def test_choose_threshold_is_linear_in_memory(self) -> None:
        import tracemalloc

        from radlens.training.metrics import choose_threshold, decision_threshold, roc_curve_points

        n = 200_000  # a (candidates x examples) matrix would need ~40 GB here
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, n)
        scores = np.clip(rng.random(n) * 0.6 + labels * 0.4, 0, 1)
        tracemalloc.start()
        try:
            choose_threshold(labels, scores)
            decision_threshold("balanced", labels, scores)
            fpr, tpr = roc_curve_points(labels, scores)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 40 * n * 8, peak  # a few arrays of n float64, never n * n
        assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0

    def test_same_choice_as_brute_force(self) -> None:
        from radlens.models.decision import is_positive
        from radlens.training.metrics import choose_threshold

        rng = np.random.default_rng(3)
        for _ in range(50):
            n = int(rng.integers(4, 40))
            y = rng.integers(0, 2, n)
            s = np.round(rng.random(n), 1)
            if y.min() == y.max():
                continue
            distinct = np.unique(s)
            cands = np.concatenate([[0.5], (distinct[:-1] + distinct[1:]) / 2])
            j = np.array(
                [
                    (is_positive(s, t) & (y == 1)).sum() / (y == 1).sum()
                    - (is_positive(s, t) & (y == 0)).sum() / (y == 0).sum()
                    for t in cands
                ]
            )
            best = cands[np.isclose(j, j.max(), rtol=0, atol=1e-12)]
            expected = sorted(best, key=lambda t: (abs(t - 0.5), t))[0]
            assert choose_threshold(y, s) == pytest.approx(expected)


class TestCalibration:
    def test_fit_temperature_recovers_a_known_temperature(self) -> None:
        from radlens.training.metrics import apply_temperature, fit_temperature

        rng = np.random.default_rng(0)
        logits = rng.normal(0, 3, (20_000, 2))
        true_t = 2.5
        calibrated = apply_temperature(
            np.exp(logits) / np.exp(logits).sum(1, keepdims=True), true_t
        )
        labels = (rng.random(20_000) < calibrated[:, 1]).astype(np.int64)
        overconfident = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        assert fit_temperature(labels, overconfident) == pytest.approx(true_t, rel=0.08)

    def test_ece_of_known_bins(self) -> None:
        from radlens.training.metrics import expected_calibration_error

        # 4 at confidence 0.9 (3 right), 4 at 0.6 (all right): (4*0.15 + 4*0.4) / 8
        p1 = np.array([0.9, 0.9, 0.9, 0.9, 0.6, 0.6, 0.6, 0.6])
        probs = np.stack([1 - p1, p1], axis=1)
        labels = np.array([1, 1, 1, 0, 1, 1, 1, 1])
        assert expected_calibration_error(labels, probs) == pytest.approx(0.275)

    def test_temperature_lowers_ece_of_an_overconfident_model(self) -> None:
        from radlens.training.metrics import (
            apply_temperature,
            expected_calibration_error,
            fit_temperature,
        )

        rng = np.random.default_rng(1)
        z = rng.normal(0, 1.5, 5000)
        labels = (rng.random(5000) < 1 / (1 + np.exp(-z))).astype(np.int64)
        sharp = 1 / (1 + np.exp(-3 * z))  # three times too confident
        probs = np.stack([1 - sharp, sharp], axis=1)
        t = fit_temperature(labels, probs)
        assert t == pytest.approx(3.0, rel=0.15)
        after = expected_calibration_error(labels, apply_temperature(probs, t))
        assert after < expected_calibration_error(labels, probs) / 3


class TestOperatingPoints:
    def test_wilson_interval_known_value(self) -> None:
        from radlens.training.metrics import wilson_interval

        low, high = wilson_interval(8, 10)  # type: ignore[misc]
        assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
        assert wilson_interval(0, 0) is None

    def test_wilson_interval_holds_the_estimate_at_the_ends(self) -> None:
        from radlens.training.metrics import wilson_interval

        for n in range(1, 400):  # rounding left the upper end a few ulps under 1.0 for some n
            assert wilson_interval(n, n)[1] == 1.0  # type: ignore[index]
            assert wilson_interval(0, n)[0] == 0.0  # type: ignore[index]
            for k in (1, n // 3, n - 1):
                if 0 < k < n:
                    low, high = wilson_interval(k, n)  # type: ignore[misc]
                    assert low <= k / n <= high

    def test_points_chosen_on_val_measured_on_eval(self) -> None:
        from radlens.training.metrics import operating_points

        val_y = np.array([0] * 10 + [1] * 10)
        val_s = np.concatenate([np.linspace(0.0, 0.5, 10), np.linspace(0.3, 1.0, 10)])
        eval_y = np.array([0, 0, 1, 1])
        eval_s = np.array([0.1, 0.9, 0.35, 0.95])
        points = operating_points(val_y, val_s, eval_y, eval_s, chosen=0.5)
        assert set(points) == {"chosen", "youden", "sens90", "sens95", "sens99"}
        # 90% of 10 val positives: the 9th highest positive score
        assert points["sens90"]["threshold"] == pytest.approx(np.linspace(0.3, 1.0, 10)[1])
        assert points["sens99"]["threshold"] == pytest.approx(0.3)
        chosen = points["chosen"]
        assert (chosen["tp"], chosen["fp"], chosen["tn"], chosen["fn"]) == (1, 1, 1, 1)
        assert chosen["sensitivity"] == 0.5 and len(chosen["sensitivity_ci95"]) == 2

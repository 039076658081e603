"""The k-fold recipe (training.recipe): folds, the OOF figures, MixUp, EMA, the exported
ensemble (stored, evaluated, explained), and ``evaluate`` on a file holding only a test split.
Tiny generated npz data and 16 px simple_cnns: seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from radlens.cli.main import main
from radlens.models.ensemble import ensemble_members
from radlens.models.errors import ConfigurationError
from radlens.models.gradcam import gradcam_explain
from radlens.models.registry import ModelRegistry
from radlens.training.data.pipeline import load_examples
from radlens.training.data.sources import open_data
from radlens.training.evaluate import select_split
from radlens.training.recipe import (
    HOLDOUTS,
    MemberRecipe,
    WeightAverage,
    cluster_folds,
    cross_validate,
    cutmix_batch,
    export_ensemble,
    fold_figures,
    make_folds,
    member_dataset,
    mixup_batch,
    paired_fold_differences,
    prior_matched_accuracy,
    stratified_folds,
    train_member,
)

from .data_fixtures import write_npz

TINY = MemberRecipe(image_size=16, epochs=1, batch_size=16)


class TestFolds:
    def test_stratified_deterministic_and_balanced(self):
        labels = np.array([0] * 13 + [1] * 37)
        folds = stratified_folds(labels, 5, seed=3)
        np.testing.assert_array_equal(folds, stratified_folds(labels, 5, seed=3))
        assert not np.array_equal(folds, stratified_folds(labels, 5, seed=4))
        for f in range(5):
            held = labels[folds == f]
            assert (held == 0).sum() in (2, 3) and (held == 1).sum() in (7, 8)

    def test_refuses_too_few(self):
        with pytest.raises(ConfigurationError, match="k >= 2"):
            stratified_folds(np.array([0, 1]), 1, seed=0)
        with pytest.raises(ConfigurationError, match="fewer than k=5"):
            stratified_folds(np.array([0, 0, 1, 1, 1, 1, 1]), 5, seed=0)


class TestFigures:
    def test_prior_matched_accuracy(self):
        # the official test split: 234 normal, 390 pneumonia
        assert prior_matched_accuracy(1.0, 0.0) == pytest.approx(390 / 624)
        assert prior_matched_accuracy(0.9, 0.8) == pytest.approx((0.8 * 234 + 0.9 * 390) / 624)

    def test_fold_figures_known_values(self):
        labels = np.array([0, 0, 1, 1, 0, 1, 1, 1])
        scores = np.array([0.1, 0.6, 0.7, 0.9, 0.2, 0.4, 0.8, 0.3])
        folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
        fig = fold_figures(labels, scores, folds, 0.5)
        # fold 0: all four right but the 0.6 normal -> acc .75, AUC 1.0; fold 1: acc .5
        assert fig["accuracy"]["folds"] == [0.75, 0.5]
        assert fig["auc"]["folds"][0] == 1.0
        assert fig["accuracy"]["mean"] == pytest.approx(0.625)
        assert fig["accuracy"]["sd"] == pytest.approx(np.std([0.75, 0.5], ddof=1))
        assert fig["pooled"]["sensitivity"] == pytest.approx(3 / 5)


class TestMixUp:
    def test_convex_mix_of_a_batch_partner(self):
        images = tf.constant(np.stack([np.full((4, 4, 1), v, np.float32) for v in (0, 1, 2, 3)]))
        targets = tf.constant(np.eye(2, dtype=np.float32)[[0, 1, 1, 0]])
        weights = tf.constant([1.0, 2.0, 3.0, 4.0])
        seed = tf.constant([7, 9])
        x, y, _ = (np.asarray(t) for t in mixup_batch(images, targets, weights, 0.4, seed))
        again = mixup_batch(images, targets, weights, 0.4, seed)
        np.testing.assert_array_equal(x, np.asarray(again[0]))
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
        for i in range(4):
            # x_i = lam * i + (1 - lam) * j for one partner j, lam >= 0.5
            value = float(x[i].mean())
            lam = [
                (value - j) / (i - j) if i != j else 1.0
                for j in range(4)
                if (i == j and value == i) or (i != j and 0.5 <= (value - j) / (i - j) <= 1.0)
            ]
            assert lam, f"image {i} ({value}) is not a mix with lambda >= 0.5"

    def test_pipeline_with_mixup_gives_soft_targets_and_class_weights(self):
        rng = np.random.default_rng(0)
        images = rng.random((32, 16, 16, 1), dtype=np.float32)
        labels = np.array([0] * 8 + [1] * 24)
        plain = next(iter(member_dataset(images, labels, TINY.replace(augment=None), seed=1)))
        assert set(np.unique(plain[1])) == {0.0, 1.0}
        assert sorted(set(np.round(np.asarray(plain[2]), 4))) == [0.6667, 2.0]
        mixed = next(iter(member_dataset(images, labels, TINY.replace(mixup_alpha=0.4), seed=1)))
        soft = np.asarray(mixed[1])
        assert np.any((soft > 0.01) & (soft < 0.99))
        np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)


class TestCutMix:
    def test_a_pasted_box_and_targets_mixed_by_its_area(self):
        # image i is all i: a pixel's value says which image it came from
        images = tf.constant(np.stack([np.full((10, 12, 1), v, np.float32) for v in range(8)]))
        targets = tf.constant(np.eye(2, dtype=np.float32)[[0, 1] * 4])
        weights = tf.constant(np.arange(1, 9, dtype=np.float32))
        seed = tf.constant([3, 4])
        x, y, w = (np.asarray(t) for t in cutmix_batch(images, targets, weights, 1.0, seed))
        again = cutmix_batch(images, targets, weights, 1.0, seed)
        np.testing.assert_array_equal(x, np.asarray(again[0]))
        assert not np.array_equal(
            x, np.asarray(cutmix_batch(images, targets, weights, 1.0, tf.constant([3, 5]))[0])
        )
        pasted_any = False
        for i in range(8):
            values = set(np.unique(x[i]).tolist())
            assert i in values and len(values) <= 2  # the image and at most one partner
            pasted = x[i, ..., 0] != i
            kept = 1.0 - pasted.mean()
            assert kept >= 0.5 - 1e-6  # the original shows at least half
            if pasted.any():
                pasted_any = True
                rows, cols = np.nonzero(pasted)  # one axis-aligned box
                box = pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
                assert box.all()
                j = int(next(iter(values - {i})))
                expected = kept * np.eye(2)[i % 2] + (1 - kept) * np.eye(2)[j % 2]
                np.testing.assert_allclose(y[i], expected, atol=1e-6)
                np.testing.assert_allclose(w[i], kept * (i + 1) + (1 - kept) * (j + 1), rtol=1e-6)
            else:
                np.testing.assert_allclose(y[i], np.eye(2)[i % 2], atol=1e-6)
        assert pasted_any

    def test_pipeline_with_cutmix_gives_soft_targets(self):
        rng = np.random.default_rng(0)
        images = rng.random((32, 16, 16, 1), dtype=np.float32)
        labels = np.array([0] * 8 + [1] * 24)
        mixed = next(iter(member_dataset(images, labels, TINY.replace(cutmix_alpha=1.0), seed=1)))
        soft = np.asarray(mixed[1])
        assert np.any((soft > 0.01) & (soft < 0.99))
        np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"mixup_alpha": 0.2, "cutmix_alpha": 1.0}, "mixup_alpha and cutmix_alpha"),
        ({"ema_momentum": 0.99, "swa_epochs": 2}, "ema_momentum and swa_epochs"),
        ({"swa_epochs": 2, "batchnorm": True}, "swa_epochs and batchnorm"),
        ({"swa_epochs": 9, "epochs": 8}, "swa_epochs is out of range"),
        ({"cutmix_alpha": -1.0}, "cutmix_alpha is out of range"),
        ({"swa_learning_rate": 1e-4}, "needs 0 < swa_epochs < epochs"),
        ({"swa_learning_rate": 1e-4, "swa_epochs": 8, "epochs": 8}, "0 < swa_epochs < epochs"),
        ({"swa_learning_rate": 0.01, "swa_epochs": 2}, "swa_learning_rate is out of range"),
        ({"snapshots": 3, "swa_epochs": 2}, "snapshots and a weight average"),
        ({"snapshots": 3, "ema_momentum": 0.9}, "snapshots and a weight average"),
        ({"snapshots": 3, "epochs": 8}, "epochs must be a multiple of snapshots"),
        ({"snapshots": 9, "epochs": 8}, "snapshots is out of range"),
    ],
)
def test_recipe_refuses_clashing_methods(changes, match):
    with pytest.raises(ConfigurationError, match=match):
        MemberRecipe(**changes)


def test_swa_learning_rate_is_a_cosine_then_a_constant_tail():
    from radlens.training.recipe import member_learning_rate

    recipe = MemberRecipe(epochs=12, swa_epochs=6, swa_learning_rate=2e-4)
    schedule = member_learning_rate(recipe, steps=1200)
    rate = [float(schedule(step)) for step in (0, 300, 599, 600, 900, 1199)]
    assert rate[0] == pytest.approx(1e-3)
    assert rate[1] == pytest.approx(2e-4 + (1e-3 - 2e-4) * 0.5, rel=1e-4)  # cosine halfway
    for r in rate[3:]:  # the averaged epochs (7-12) all run at the SWA rate
        assert r == pytest.approx(2e-4, rel=1e-5)
    plain = member_learning_rate(MemberRecipe(epochs=12), steps=1200)
    assert float(plain(900)) < 2e-4 and float(plain(1200)) == pytest.approx(0.0, abs=1e-9)


def test_snapshot_learning_rate_restarts_at_every_cycle():
    from radlens.training.recipe import member_learning_rate

    schedule = member_learning_rate(MemberRecipe(epochs=12, snapshots=3), steps=1200)
    for start in (0, 400, 800):  # three cycles of 400 steps, each a whole cosine
        assert float(schedule(start)) == pytest.approx(1e-3)
        assert float(schedule(start + 200)) == pytest.approx(5e-4, rel=1e-4)
        assert float(schedule(start + 399)) < 1e-7
    assert float(member_learning_rate(MemberRecipe(epochs=12), steps=1200)(400)) < 1e-3 * 0.8


def test_snapshots_are_the_networks_at_each_cycles_end(monkeypatch: pytest.MonkeyPatch) -> None:
    import radlens.training.recipe as recipe_module
    from radlens.training.recipe import train_member_models

    rng = np.random.default_rng(6)
    images = rng.random((48, 16, 16, 1), dtype=np.float32)
    labels = np.arange(48) % 2
    seen: list[list[np.ndarray]] = []

    class Recorder(recipe_module.SnapshotWeights):  # every epoch's weights, for comparison
        def on_epoch_end(self, epoch, logs=None):
            seen.append([np.asarray(w).copy() for w in self.model.get_weights()])
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(recipe_module, "SnapshotWeights", Recorder)
    models = train_member_models(images, labels, TINY.replace(epochs=4, snapshots=2), seed=7)
    assert len(models) == 2 and len(seen) == 4
    for model, epoch in zip(models, (1, 3), strict=True):  # the ends of epochs 2 and 4
        for got, want in zip(model.get_weights(), seen[epoch], strict=True):
            np.testing.assert_array_equal(got, want)
    assert not np.allclose(models[0].get_weights()[0], models[1].get_weights()[0])
    plain = train_member_models(images, labels, TINY.replace(epochs=2), seed=7)
    assert len(plain) == 1


def test_snapshot_members_score_as_their_mean_and_export_one_by_one(tmp_path: Path) -> None:
    from radlens.training.recipe import predict_positive

    npz = write_npz(tmp_path / "tv.npz", n={"train": 40, "val": 20})
    source = open_data(npz, ["normal", "pneumonia"])
    examples = list(source.examples)
    images, labels = load_examples(source, examples, size=(16, 16), window=None)
    folds = stratified_folds(labels, 2, seed=0)
    recipe = TINY.replace(epochs=2, snapshots=2)
    run = cross_validate(images, labels, folds, recipe, seed=3, keep_models=True)
    assert len(run.models) == 4  # 2 folds x 2 snapshots, by fold
    for fold in (0, 1):
        held = folds == fold
        pair = run.models[2 * fold : 2 * fold + 2]
        expected = np.mean([predict_positive(m, images[held]) for m in pair], axis=0)
        np.testing.assert_allclose(run.scores[held], expected, rtol=1e-5, atol=1e-6)
    manifest = export_ensemble(
        [run],
        labels,
        images,
        source=source,
        examples=examples,
        store=tmp_path / "store",
        name="tiny-snapshots",
    )
    loaded = ModelRegistry(tmp_path / "store").load(manifest.ref)
    assert len(ensemble_members(loaded.model)) == 4
    assert loaded.manifest.training_config["recipe"]["snapshots"] == 2
    ood = loaded.manifest.ood
    sizes = [int((folds == f).sum()) for f in (0, 1)]
    # each snapshot is calibrated on its own fold's held-out images, which it never saw
    assert ood is not None and ood["calibration_images"] == [sizes[0]] * 2 + [sizes[1]] * 2


def test_swa_ends_with_the_mean_of_the_last_epochs_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import radlens.training.recipe as recipe_module

    rng = np.random.default_rng(2)
    images = rng.random((48, 16, 16, 1), dtype=np.float32)
    labels = np.arange(48) % 2
    seen: list[list[np.ndarray]] = []

    class Snapshot(WeightAverage):  # records what the average is taken over
        def on_epoch_end(self, epoch, logs=None):
            if epoch >= self.first_epoch:
                seen.append([np.asarray(w).copy() for w in self.model.get_weights()])
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(recipe_module, "WeightAverage", Snapshot)
    model = train_member(images, labels, TINY.replace(epochs=3, swa_epochs=2), seed=4)
    assert len(seen) == 2  # epochs 2 and 3 of 3
    assert not all(np.allclose(a, b) for a, b in zip(*seen, strict=True))
    for final, first, last in zip(model.get_weights(), *seen, strict=True):
        np.testing.assert_allclose(final, (first + last) / 2, rtol=1e-5, atol=1e-7)


def test_ema_weights_are_the_models_after_training():
    rng = np.random.default_rng(1)
    images = rng.random((48, 16, 16, 1), dtype=np.float32)
    labels = np.arange(48) % 2
    model = train_member(images, labels, TINY.replace(ema_momentum=0.9, epochs=2), seed=5)
    optimizer = model.optimizer
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.9)
    # Keras keeps the average in the optimizer and copies it into the model when fit ends
    averages = {
        id(v): a
        for v, a in zip(
            optimizer._trainable_variables, optimizer._model_variables_moving_average, strict=True
        )
    }
    for variable in model.trainable_variables:
        np.testing.assert_allclose(np.asarray(variable), np.asarray(averages[id(variable)]))


def test_centered_batchnorm_members_train_and_serve_as_an_ensemble():
    from radlens.models.ensemble import build_ensemble
    from radlens.models.ood import feature_model

    rng = np.random.default_rng(3)
    images = rng.random((48, 16, 16, 1), dtype=np.float32) * 0.6
    labels = np.arange(48) % 2
    images[labels == 1, 4:12, 4:12] += 0.3  # a learnable "opacity"
    recipe = TINY.replace(center=True, batchnorm=True, filters=("blur",), epochs=2)
    members = [train_member(images, labels, recipe, seed=s) for s in (1, 2)]
    for member in members:
        assert member.get_layer("center") and member.get_layer("bn4")
        assert float(np.abs(member.get_layer("bn1").moving_mean).max()) > 0  # trained stats
    ensemble = build_ensemble(members)
    x = images[:3]
    scores = np.asarray(ensemble(x, training=False))
    np.testing.assert_allclose(np.asarray(ensemble(x + 0.1, training=False)), scores, atol=1e-5)
    result = gradcam_explain(ensemble, x, class_index=1)
    assert result.heatmaps.shape == (3, 16, 16) and np.isfinite(result.heatmaps).all()
    assert result.layer.startswith("mean of 2 members")
    assert np.asarray(feature_model(ensemble)(x, training=False)[1]).shape[0] == 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("recipe")
    npz = write_npz(tmp / "tv.npz", n={"train": 40, "val": 20})
    source = open_data(npz, ["normal", "pneumonia"])
    examples = list(source.examples)
    images, labels = load_examples(source, examples, size=(16, 16), window=None)
    folds = stratified_folds(labels, 2, seed=0)
    runs = [
        cross_validate(images, labels, folds, TINY, seed=s, tta_shift=1, keep_models=True)
        for s in (1, 2)
    ]
    manifest = export_ensemble(
        runs,
        labels,
        images,
        source=source,
        examples=examples,
        store=tmp / "store",
        name="tiny-ensemble",
        tta_shift=1,
    )
    return {"tmp": tmp, "runs": runs, "labels": labels, "manifest": manifest}


def test_oof_scores_cover_every_image_once(exported: dict[str, object]) -> None:
    runs = exported["runs"]
    for run in runs:  # type: ignore[attr-defined]
        assert len(run.models) == 2
        assert np.isfinite(run.scores).all() and np.isfinite(run.scores_tta).all()
        assert run.cpu_seconds > 0


def test_exported_ensemble_is_one_model_with_oof_threshold(exported: dict[str, object]) -> None:
    tmp = Path(exported["tmp"])  # type: ignore[arg-type]
    manifest = exported["manifest"]
    loaded = ModelRegistry(tmp / "store").load(f"{manifest.name}:{manifest.version}")  # type: ignore[attr-defined]
    assert len(ensemble_members(loaded.model)) == 4  # 2 folds x 2 seeds
    points = loaded.manifest.metrics["operating_points"]
    assert {"chosen", "youden", "sens90", "sens95", "sens99", "balanced"} <= set(points)
    assert points["chosen"]["threshold"] == pytest.approx(loaded.manifest.threshold)
    assert loaded.manifest.metrics["reported"]["split"] == "oof"
    assert loaded.manifest.training_config["members"] == 4
    x = np.random.default_rng(2).random((2, 16, 16, 1), dtype=np.float32)
    result = gradcam_explain(loaded.model, x, class_index=1)
    assert result.heatmaps.shape == (2, 16, 16) and result.layer.startswith("mean of 4 members")


def test_exported_ensemble_has_a_cross_fitted_ood_detector(
    exported: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.models.ood import EnsembleOodDetector, feature_model, load_detector

    tmp = Path(exported["tmp"])  # type: ignore[arg-type]
    registry = ModelRegistry(tmp / "store")
    manifest = exported["manifest"]
    loaded = registry.load(manifest.ref)  # type: ignore[attr-defined]
    ood = loaded.manifest.ood
    assert ood is not None and ood["method"] == "ensemble" and ood["members"] == 4
    # member (seed, fold) is calibrated on its own held-out fold: each image once per seed
    folds = exported["runs"][0].folds  # type: ignore[index]
    sizes = [int((folds == f).sum()) for f in (0, 1)]
    assert ood["calibration_images"] == sizes * 2
    assert ood["fitted_on"]["train_images"] == [60 - n for n in sizes] * 2
    detector = load_detector(registry.ood_detector_file(loaded.manifest))  # type: ignore[arg-type]
    assert isinstance(detector, EnsembleOodDetector)
    x = np.random.default_rng(5).random((3, 16, 16, 1), dtype=np.float32)
    _, features = feature_model(loaded.model)(x, training=False)
    assert detector.scores(np.asarray(features)).shape == (3,)
    # `radlens models ood` cannot refit it: every member trained on the validation split
    args = ["models", "ood", "tiny-ensemble", "--data", str(tmp / "tv.npz")]
    assert main([*args, "--store", str(tmp / "store")]) == 2
    err = capsys.readouterr().err
    assert "cross-validated ensemble" in err and len(err.strip().splitlines()) == 1


def test_radlens_evaluate_runs_on_the_ensemble(
    exported: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = Path(exported["tmp"])  # type: ignore[arg-type]
    args = ["evaluate", "--model", "tiny-ensemble", "--store", str(tmp / "store")]
    assert main([*args, "--data", str(tmp / "tv.npz"), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 20


# --- evaluate on a file that holds only the test split -------------------------------------


def test_test_only_file_is_the_whole_test_split_even_for_a_resplit_model(tmp_path: Path) -> None:
    source = open_data(write_npz(tmp_path / "t.npz", n={"test": 40}), ["normal", "pneumonia"])
    for config in ({}, {"resplit": True, "seed": 3}):
        assert len(select_split(source, "test", config)) == 40


def test_absent_split_is_named(tmp_path: Path) -> None:
    source = open_data(write_npz(tmp_path / "t.npz", n={"test": 10}), ["normal", "pneumonia"])
    with pytest.raises(ConfigurationError, match=r"the 'val' split of this data set is empty"):
        select_split(source, "val", {})


class TestPairedDifferences:
    LABELS = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    FOLDS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # fold AUCs: reference .75 / 1.0, candidate 1.0 / .75
    REFERENCE = np.array([0.1, 0.6, 0.5, 0.9, 0.2, 0.3, 0.4, 0.8])
    CANDIDATE = np.array([0.1, 0.2, 0.5, 0.9, 0.2, 0.3, 0.25, 0.8])

    def test_known_values_fold_by_fold(self):
        d = paired_fold_differences(self.LABELS, self.REFERENCE, self.CANDIDATE, self.FOLDS)
        assert d["auc"]["folds"] == pytest.approx([0.25, -0.25])
        assert d["auc"]["mean"] == pytest.approx(0.0)
        assert d["auc"]["sd"] == pytest.approx(np.std([0.25, -0.25], ddof=1))
        assert d["auc"]["better"] == 1
        back = paired_fold_differences(self.LABELS, self.CANDIDATE, self.REFERENCE, self.FOLDS)
        for key in ("auc", "accuracy_at_test_prior"):
            assert back[key]["folds"] == pytest.approx([-x for x in d[key]["folds"]])

    def test_identical_scores_differ_by_nothing(self):
        d = paired_fold_differences(self.LABELS, self.REFERENCE, self.REFERENCE, self.FOLDS)
        for key in ("auc", "accuracy_at_test_prior"):
            assert d[key]["folds"] == [0.0, 0.0] and d[key]["better"] == 0

    def test_refuses_mismatched_lengths(self):
        with pytest.raises(ConfigurationError, match="one score per example"):
            paired_fold_differences(self.LABELS, self.REFERENCE[:-1], self.CANDIDATE, self.FOLDS)


def _cv_runs(tmp_path: Path, names: tuple[str, ...]) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """A tiny npz and a bench.recipe_cv --out folder ``tmp_path/cv`` holding seeds 1 and 2 of
    each configuration in ``names`` (random OOF scores that lean towards the label), as
    ``recipe_cv.main`` writes them. Returns the npz, labels, folds and the scores by run key."""
    from bench import recipe_cv

    npz = write_npz(tmp_path / "d.npz", n={"train": 40, "val": 10})
    _, labels = recipe_cv.load(str(npz), 32)
    folds = stratified_folds(labels, 5, 0)
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "cv"
    run_dir.mkdir()
    runs, scores = {}, {}
    for name in names:
        for seed in (1, 2):
            key = f"{name}_s{seed}"
            scores[key] = np.clip(labels * 0.3 + rng.uniform(0, 0.7, len(labels)), 0, 1)
            np.save(run_dir / f"oof_{key}.npy", scores[key])
            runs[key] = {
                "config": name,
                "seed": seed,
                "plain": recipe_cv.summarise(labels, scores[key], folds),
            }
    (run_dir / "cv.json").write_text(json.dumps({"runs": runs}))
    return npz, labels, folds, scores


def test_cv_summary_pairs_each_config_with_the_reference_at_its_seed(tmp_path: Path) -> None:
    from bench import recipe_cv

    # "ref_strong" starts like "ref_s<seed>"
    npz, labels, folds, scores = _cv_runs(tmp_path, ("ref", "cand", "ref_strong"))
    run_dir = tmp_path / "cv"
    runs = json.loads((run_dir / "cv.json").read_text())["runs"]
    again = tmp_path / "again"  # seed 1 of the reference recorded a second time elsewhere
    again.mkdir()
    np.save(again / "oof_ref_s1.npy", scores["ref_s1"])
    (again / "cv.json").write_text(json.dumps({"runs": {"ref_s1": runs["ref_s1"]}}))
    out = tmp_path / "sum"
    folders = f"{run_dir},{again}"
    argv = ["--summary", folders, "--against", "ref", "--data", str(npz), "--out", str(out)]
    assert recipe_cv.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    # not "ref x3" (seed 1 twice) nor "ref x4" (ref_strong's files taken for ref's)
    assert sorted(summary["ensembles"]) == ["cand x2 seeds", "ref x2 seeds", "ref_strong x2 seeds"]
    mean = np.mean([scores["ref_s1"], scores["ref_s2"]], axis=0)
    assert summary["ensembles"]["ref x2 seeds"] == recipe_cv.summarise(labels, mean, folds)
    paired = summary["paired"]
    # the reference is not paired with itself
    assert sorted(paired) == ["cand_s1", "cand_s2", "ref_strong_s1", "ref_strong_s2"]
    for seed in (1, 2):
        expected = paired_fold_differences(
            labels, scores[f"ref_s{seed}"], scores[f"cand_s{seed}"], folds
        )
        assert paired[f"cand_s{seed}"]["auc"]["folds"] == pytest.approx(expected["auc"]["folds"])


def _npz_with_copies(tmp_path: Path) -> tuple[Path, np.ndarray, list[str]]:
    """A tiny npz whose val images 0-3 are copies of train images 10-13 (same labels), with
    its train+val labels and copy keys as bench.recipe_cv reads them."""
    from bench import recipe_cv

    npz = write_npz(tmp_path / "d.npz", n={"train": 40, "val": 10})
    with np.load(npz) as data:
        arrays = dict(data)
    for i in range(4):
        arrays["val_images"][i] = arrays["train_images"][10 + i]
    np.savez(npz, **arrays)
    _, labels = recipe_cv.load(str(npz), 32)
    return npz, labels, recipe_cv.copy_keys(str(npz))


@pytest.mark.parametrize("apart", [False, True])
def test_cv_summary_rebuilds_the_folds_its_runs_used(tmp_path: Path, apart: bool) -> None:
    """A folder recorded with copies apart ("random (copies apart)") is summarised on those
    folds, one without on the folds that keep copies together (the summary read the recorded
    kind as a hold-out name and stopped: "unknown hold-out")."""
    from bench import recipe_cv

    npz, labels, keys = _npz_with_copies(tmp_path)
    folds = make_folds("random", None, labels, 5, 0, None if apart else keys)
    assert not np.array_equal(
        folds, make_folds("random", None, labels, 5, 0, keys if apart else None)
    )
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "cv"
    run_dir.mkdir()
    runs, scores = {}, {}
    for seed in (1, 2):
        scores[seed] = np.clip(labels * 0.3 + rng.uniform(0, 0.7, len(labels)), 0, 1)
        np.save(run_dir / f"oof_m_s{seed}.npy", scores[seed])
        runs[f"m_s{seed}"] = {
            "config": "m",
            "seed": seed,
            "plain": recipe_cv.summarise(labels, scores[seed], folds),
        }
    kind = "random (copies apart)" if apart else "random"
    (run_dir / "cv.json").write_text(json.dumps({"runs": runs, "holdout": kind}))
    out = tmp_path / "sum"
    assert recipe_cv.main(["--summary", str(run_dir), "--data", str(npz), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    mean = np.mean([scores[1], scores[2]], axis=0)
    assert summary["holdout"] == kind
    assert summary["ensembles"]["m x2 seeds"] == recipe_cv.summarise(labels, mean, folds)


def test_cv_configs_for_input_size_and_length_build_on_the_filter_recipe() -> None:
    from bench import recipe_cv

    table = recipe_cv.configs()
    for name, size, epochs in (("filters48", 48, 8), ("filters64", 64, 8), ("filters_e12", 32, 12)):
        assert table[name] == table["filters"].replace(image_size=size, epochs=epochs), name
    member = table["filters_e12_intensity_ls"]
    assert table["filters_e12_intensity_ls_center"] == member.replace(center=True)
    assert table["filters_e12_intensity_ls_bn"] == member.replace(batchnorm=True)
    centred = table["filters_e12_intensity_ls_center"]
    assert table["filters_e12_intensity_ls_center_cutmix"] == centred.replace(cutmix_alpha=1.0)
    assert table["filters_e12_intensity_ls_center_swa"] == centred.replace(swa_epochs=6)
    assert table["filters_e12_intensity_ls_center_swa_const"] == centred.replace(
        swa_epochs=6, swa_learning_rate=2e-4
    )
    assert table["filters_e12_intensity_ls_center_w2"] == centred.replace(width_multiplier=2)


def test_cv_ensemble_member_is_the_centred_filter_recipe() -> None:
    from bench import pneumonia, recipe_cv

    recipe = recipe_cv.configs()[pneumonia.ENSEMBLE_MEMBER]
    assert recipe.center and not recipe.batchnorm and recipe.filters == recipe_cv.FILTER_BANK
    assert (recipe.epochs, recipe.label_smoothing, recipe.augment.contrast) == (12, 0.1, 0.3)


@pytest.mark.parametrize("holdout", ["random", "cluster"])
def test_final_run_records_the_same_oof_scores_as_the_cv_bench(tmp_path: Path, holdout) -> None:
    """bench.pneumonia --oof-out: the final ensemble run is a run of the CV summary (same
    folds, seed and recipe give the same OOF scores), keyed by what it trained; under either
    hold-out, which the stored model's training config names."""
    from bench import pneumonia, recipe_cv

    npz = write_npz(tmp_path / "d.npz", n={"train": 24, "val": 8})
    common = ["--data", str(npz), "--seeds", "1", "--epochs", "1", "--folds", "2"]
    common += ["--holdout", holdout]
    final = [*common, "--arch", "cv-ensemble", "--member", "filters"]
    final += ["--store", str(tmp_path / "store")]
    final += ["--out", str(tmp_path / "f.json"), "--oof-out", str(tmp_path / "final")]
    assert pneumonia.main(final) == 0
    assert recipe_cv.main([*common, "--configs", "filters", "--out", str(tmp_path / "cv")]) == 0
    runs = json.loads((tmp_path / "final" / "cv.json").read_text())["runs"]
    assert list(runs) == ["filters_32px_e1_s1"]  # --epochs 1 is not the named configuration
    assert runs["filters_32px_e1_s1"]["recipe"]["epochs"] == 1
    np.testing.assert_allclose(
        np.load(tmp_path / "final" / "oof_filters_32px_e1_s1.npy"),
        np.load(tmp_path / "cv" / "oof_filters_s1.npy"),
        atol=1e-6,
    )
    (manifest,) = ModelRegistry(tmp_path / "store").list()
    assert manifest.training_config["holdout"] == holdout
    _, labels = recipe_cv.load(str(npz), 28)
    expected = recipe_cv.folds_for(str(npz), holdout, labels, 2, 0)
    assert manifest.training_config["folds"] == 2
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["holdout"] == holdout
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["holdout"] == holdout
    oof = np.load(tmp_path / "final" / "oof_filters_32px_e1_s1.npy")
    again = fold_figures(labels, oof, expected, figures["threshold"])  # the hold-out's folds
    assert figures["oof"]["accuracy"]["folds"] == again["accuracy"]["folds"]


def test_cv_ensemble_budget_keeps_only_the_seeds_that_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a CPU too slow for the budget, the first seed is trained whole and a seed predicted
    to overrun is not begun: the stored ensemble is that seed's folds, its threshold from
    their OOF scores."""
    from bench import pneumonia

    npz = write_npz(tmp_path / "d.npz", n={"train": 24, "val": 8})
    args = ["--data", str(npz), "--seeds", "1,2", "--epochs", "1", "--folds", "2"]
    args += ["--arch", "cv-ensemble", "--member", "filters", "--time-budget-minutes", "0.001"]
    args += ["--store", str(tmp_path / "store"), "--out", str(tmp_path / "f.json")]
    assert pneumonia.main(args) == 0
    assert "time budget: stopping before seed 2" in capsys.readouterr().out
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["seeds_kept"] == [1] and figures["members"] == 2
    assert figures["training_wall_seconds"] > figures["budget_seconds_wall"] == 0.06
    loaded = ModelRegistry(tmp_path / "store").load("pneumonia-cv-ensemble")
    assert len(ensemble_members(loaded.model)) == 2
    assert loaded.manifest.training_config["seeds"] == [1]


def test_cv_ensemble_member_keeps_its_own_epochs_and_names_overrides() -> None:
    from bench import pneumonia, recipe_cv

    table = recipe_cv.configs()
    recipe, key = pneumonia.ensemble_recipe(table, "filters")
    assert (recipe.epochs, recipe.image_size, key) == (pneumonia.ENSEMBLE_EPOCHS, 32, "filters")
    recipe, key = pneumonia.ensemble_recipe(table, "filters_e12")
    assert (recipe.epochs, key) == (12, "filters_e12")
    assert recipe == table["filters"].replace(epochs=12)
    recipe, key = pneumonia.ensemble_recipe(table, "filters_e12", epochs=6)
    assert (recipe.epochs, key) == (6, "filters_e12_32px_e6")
    recipe, key = pneumonia.ensemble_recipe(table, "filters", image_size=48)
    assert (recipe.image_size, key) == (48, "filters_48px_e6")
    assert pneumonia.ensemble_recipe(table, "filters", epochs=pneumonia.ENSEMBLE_EPOCHS)[1] == (
        "filters"
    )


def _modes(per_class: int = 10, per_mode: int = 12, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Images in look-alike groups: per class ``per_class`` random templates ("modes"), each
    copied ``per_mode`` times with a little noise. Returns images, labels, mode of each."""
    rng = np.random.default_rng(seed)
    images, labels, modes = [], [], []
    for label in (0, 1):
        for m in range(per_class):
            template = rng.uniform(0, 1, (28, 28))
            for _ in range(per_mode):
                images.append(template + rng.normal(0, 0.02, (28, 28)))
                labels.append(label)
                modes.append(label * per_class + m)
    return np.array(images), np.array(labels), np.array(modes)


class TestClusterFolds:
    """The leave-modes-out hold-out (``cluster_folds``): whole look-alike groups are held out."""

    def test_holds_out_whole_groups_and_keeps_the_class_balance(self):
        images, labels, modes = _modes()
        folds = cluster_folds(images, labels, 5, seed=0)
        np.testing.assert_array_equal(folds, cluster_folds(images, labels, 5, seed=0))
        for m in np.unique(modes):  # a group never straddles folds
            assert len(np.unique(folds[modes == m])) == 1, m
        for f in range(5):  # two groups of 12 per class in every fold
            held = labels[folds == f]
            assert (held == 0).sum() == 24 and (held == 1).sum() == 24
        # the random hold-out spreads every group over the folds: the contrast that makes this
        # one harder (a held-out image's look-alikes are in training there)
        random = stratified_folds(labels, 5, seed=0)
        assert all(len(np.unique(random[modes == m])) > 1 for m in np.unique(modes))

    def test_make_folds_names_every_holdout(self):
        images, labels, _ = _modes()
        np.testing.assert_array_equal(
            make_folds("random", None, labels, 5, 3), stratified_folds(labels, 5, 3)
        )
        np.testing.assert_array_equal(
            make_folds("cluster", images, labels, 5, 0), cluster_folds(images, labels, 5, seed=0)
        )
        np.testing.assert_array_equal(
            make_folds("shape", images, labels, 5, 0),
            cluster_folds(images, labels, 5, seed=0, standardize=True),
        )
        for holdout in ("cluster", "shape"):
            with pytest.raises(ConfigurationError, match=f"the {holdout} hold-out groups images"):
                make_folds(holdout, None, labels, 5, 0)
        with pytest.raises(ConfigurationError, match="unknown hold-out 'patient'"):
            make_folds("patient", images, labels, 5, 0)

    def test_shape_holdout_groups_by_layout_not_by_exposure_or_contrast(self):
        """Each image given its own exposure and contrast (x * a + b): the shape hold-out cuts
        the same folds, whole groups still together; the pixel one is led by the exposures."""
        images, labels, modes = _modes()
        rng = np.random.default_rng(1)
        gain = rng.uniform(0.5, 2.0, (len(labels), 1, 1))
        offset = rng.uniform(-1.0, 1.0, (len(labels), 1, 1))
        exposed = images * gain + offset
        shape = cluster_folds(exposed, labels, 5, seed=0, standardize=True)
        np.testing.assert_array_equal(
            shape, cluster_folds(images, labels, 5, seed=0, standardize=True)
        )
        assert all(len(np.unique(shape[modes == m])) == 1 for m in np.unique(modes))
        pixels = cluster_folds(exposed, labels, 5, seed=0)
        assert sum(len(np.unique(pixels[modes == m])) > 1 for m in np.unique(modes)) >= 10
        flat = np.concatenate([images, np.full((1, 28, 28), 0.5)])  # a uniform image is kept
        folds = cluster_folds(flat, np.append(labels, 0), 5, seed=0, standardize=True)
        assert folds.shape == (len(labels) + 1,) and set(folds) == set(range(5))

    def test_refusals(self):
        images, labels, _ = _modes()
        with pytest.raises(ConfigurationError, match="k >= 2"):
            cluster_folds(images, labels, 1)
        with pytest.raises(ConfigurationError, match="clusters_per_class=4, k=5"):
            cluster_folds(images, labels, 5, clusters_per_class=4)
        few = np.array([0] * 9 + [1] * 20)
        with pytest.raises(ConfigurationError, match="class 0 has 9 examples"):
            cluster_folds(np.zeros((29, 4, 4)) + np.arange(29)[:, None, None], few, 5)


def test_cv_summary_applies_a_runs_operating_points_to_the_oof_scores(tmp_path: Path) -> None:
    """--apply-thresholds: a cv-ensemble run's thresholds on the seed-averaged OOF scores of its
    member here (sensitivity/specificity pooled and of the worst fold recomputed by hand); no
    such scores: exit 2."""
    from bench import recipe_cv

    npz, labels, folds, scores = _cv_runs(tmp_path, ("member", "member_x"))  # member_x: not ours
    run_dir = tmp_path / "cv"
    figures = tmp_path / "f.json"
    points = {"chosen": {"threshold": 0.5}, "sens95": {"threshold": 0.3}}
    figures.write_text(
        json.dumps({"model": "m:1", "member_config": "member", "operating_points": points})
    )
    argv = ["--summary", str(run_dir), "--data", str(npz), "--out", str(tmp_path / "s")]
    assert recipe_cv.main([*argv, "--apply-thresholds", str(figures)]) == 0
    applied = json.loads((tmp_path / "s" / "summary.json").read_text())["thresholds_applied"]
    mean = np.mean([scores["member_s1"], scores["member_s2"]], axis=0)
    for name, threshold in (("chosen", 0.5), ("sens95", 0.3)):
        predicted = mean >= threshold
        point = applied["points"][name]
        assert point["sensitivity"] == pytest.approx(np.mean(predicted[labels == 1]))
        assert point["specificity"] == pytest.approx(np.mean(~predicted[labels == 0]))
        for rate, wanted, hit in (("sensitivity", 1, True), ("specificity", 0, False)):
            per_fold = [
                np.mean(predicted[(folds == f) & (labels == wanted)] == hit) for f in range(5)
            ]
            worst = point["worst_fold"][rate]
            assert worst["value"] == pytest.approx(min(per_fold), abs=1e-4)  # rounded to 4
            assert per_fold[worst["fold"]] == pytest.approx(min(per_fold), abs=1e-4)
    figures.write_text(
        json.dumps({"model": "m:1", "member_config": "other", "operating_points": points})
    )
    assert recipe_cv.main([*argv, "--apply-thresholds", str(figures)]) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot read"),
        ('{"model": "m:1", "operating_points": {}}', "lacks ['member_config']"),
        ('["a list"]', "lacks ['model', 'member_config', 'operating_points']"),
        (
            '{"model": "m:1", "member_config": "filters", "operating_points": {"x": {}}}',
            "numeric threshold",
        ),
    ],
)
def test_cv_bench_refuses_malformed_files_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    from bench import recipe_cv

    npz, *_ = _cv_runs(tmp_path, ("filters",))
    folder = tmp_path / "cv"
    figures = tmp_path / "figures.json"
    figures.write_text(text)
    argv = ["--data", str(npz), "--summary", str(folder), "--out", str(tmp_path / "s")]
    assert recipe_cv.main([*argv, "--apply-thresholds", str(figures)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    (folder / "cv.json").write_text("{}")  # a folder that is not a CV run's
    assert recipe_cv.main(argv) == 2
    assert "lacks ['runs']" in capsys.readouterr().err


def test_cv_bench_names_too_small_data_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import recipe_cv

    npz = write_npz(tmp_path / "tiny.npz", n={"train": 8, "val": 4})
    assert recipe_cv.main(["--data", str(npz), "--probe", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench.recipe_cv: ") and "class 0 has 6 examples" in err
    assert len(err.splitlines()) == 1


def test_cv_bench_epochs_leave_a_configuration_with_its_own_length() -> None:
    from bench import recipe_cv

    table = recipe_cv.configs()
    assert recipe_cv.with_epochs(table["filters"], 6).epochs == 6
    assert recipe_cv.with_epochs(table["filters_e12"], 6).epochs == 12
    assert recipe_cv.with_epochs(table["filters"], None) == table["filters"]


def test_cv_bench_cluster_holdout_probe_and_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--probe scores a pixel logistic regression under both hold-outs; a folder of one
    hold-out's runs refuses the other's (before any training) and a summary refuses to mix."""
    from bench import recipe_cv

    npz = write_npz(tmp_path / "d.npz", n={"train": 60, "val": 20})
    common = ["--data", str(npz), "--folds", "2"]
    assert recipe_cv.main([*common, "--probe", "--out", str(tmp_path / "p")]) == 0
    probe = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert sorted(probe) == ["cluster", "random", "shape"]
    assert sum(probe["cluster"]["fold_sizes"]) == 80
    _, labels = recipe_cv.load(str(npz), 28)
    images = recipe_cv.load(str(npz), 28)[0]
    expected = cluster_folds(images, labels, 2, seed=0)
    assert probe["cluster"]["fold_sizes"] == np.bincount(expected).tolist()
    expected = cluster_folds(images, labels, 2, seed=0, standardize=True)
    assert probe["shape"]["fold_sizes"] == np.bincount(expected).tolist()
    assert recipe_cv.HOLDOUT_CHOICES == HOLDOUTS  # --help's choices without TensorFlow

    random_dir = tmp_path / "random"
    random_dir.mkdir()
    (random_dir / "cv.json").write_text(json.dumps({"runs": {"x_s1": {}}}))  # pre-option file
    argv = [*common, "--holdout", "cluster", "--configs", "filters", "--out", str(random_dir)]
    assert recipe_cv.main(argv) == 2
    assert "holds random-hold-out runs" in capsys.readouterr().err
    cluster_dir = tmp_path / "cluster"
    cluster_dir.mkdir()
    (cluster_dir / "cv.json").write_text(json.dumps({"holdout": "cluster", "runs": {}}))
    argv = [*common, "--summary", f"{random_dir},{cluster_dir}", "--out", str(tmp_path / "s")]
    assert recipe_cv.main(argv) == 2
    assert "mix hold-outs ['cluster', 'random']" in capsys.readouterr().err


def test_copies_effect_counts_the_copies_scored_after_training_on_their_twin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import copies_effect

    npz, labels, keys = _npz_with_copies(tmp_path)
    apart = make_folds("random", None, labels, 5, 0)
    leaked = sum(apart[40 + i] != apart[10 + i] for i in range(4))
    assert leaked  # the random folds put some copies apart from their twins
    for name in ("apart", "together"):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "oof_m_s1.npy", np.full(len(labels), 0.5))
    argv = [
        str(tmp_path / "apart"),
        str(tmp_path / "together"),
        "--config",
        "m",
        "--data",
        str(npz),
    ]
    assert copies_effect.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"copies 8 (scored after training on the twin: {2 * leaked})" in out[0]
    assert "copies 8 (scored after training on the twin: 0)" in out[1]
    assert len(keys) == 50
    assert copies_effect.main([*argv[:2], "--config", "missing", "--data", str(npz)]) == 2

"""Multi-label findings training: sigmoid head, per-finding loss/metrics/thresholds, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from radlens.models.architectures import build_model
from radlens.models.decision import decide, decide_findings
from radlens.models.errors import ConfigurationError
from radlens.models.manifest import ModelManifest
from radlens.models.registry import ModelRegistry
from radlens.models.runtime import openvino_version
from radlens.training import findings
from radlens.training.run import RunResult, train
from tests.training.data_fixtures import multilabel_csv

from .conftest import tiny_config

NAMES = ["Effusion", "Infiltration", "Nodule"]


def findings_config(data: Path, tmp: Path, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "multi_label": True,
        "label_column": "findings",
        "positive_weights": "auto",
        "tensorboard_samples": 2,
    }
    values.update(changes)
    return tiny_config(data, tmp, **values)


@pytest.fixture(scope="module")
def findings_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    tmp = tmp_path_factory.mktemp("findings-run")
    csv_path = multilabel_csv(tmp / "data")
    config = findings_config(
        csv_path, tmp, intended_modalities=["CR", "DX"], intended_body_parts=["chest"]
    )
    return train(config, verbose=0)


class TestLossAndWeights:
    def test_positive_weights_are_neg_over_pos(self) -> None:
        y = np.array([[1, 0], [0, 0], [0, 1], [0, 1]], dtype=np.float32)
        assert findings.positive_weights(y, "auto").tolist() == [3.0, 1.0]
        assert findings.positive_weights(y, "none") is None

    def test_loss_is_mean_bce_and_weights_positives(self) -> None:
        y = np.array([[1.0, 0.0]], dtype=np.float32)
        p = np.array([[0.8, 0.3]], dtype=np.float32)
        plain = float(findings.make_loss()(y, p)[0])
        expected = -(np.log(0.8) + np.log(0.7)) / 2
        assert plain == pytest.approx(expected, rel=1e-5)
        weighted = float(findings.make_loss(np.array([3.0, 1.0]))(y, p)[0])
        assert weighted == pytest.approx(-(3 * np.log(0.8) + np.log(0.7)) / 2, rel=1e-5)


class TestFindingMetrics:
    def test_auc_summary_macro_and_micro(self) -> None:
        y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
        s = np.array([[0.9, 0.2], [0.1, 0.8], [0.8, 0.3], [0.2, 0.4]])
        summary = findings.auc_summary(y, s, ["a", "b"])
        assert summary["per_finding"] == {"a": 1.0, "b": 0.75}
        assert summary["macro_auc"] == 0.875
        assert summary["micro_auc"] == pytest.approx(15 / 16)  # all (image, finding) pairs

    def test_one_class_finding_has_no_auc_and_keeps_half(self) -> None:
        y = np.array([[1, 0], [0, 0], [1, 0]])
        s = np.array([[0.9, 0.2], [0.1, 0.8], [0.8, 0.3]])
        assert findings.auc_summary(y, s, ["a", "b"])["findings_without_auc"] == ["b"]
        cuts, undecided = findings.choose_thresholds("youden", y, s, ["a", "b"])
        assert undecided == ["b"] and cuts["b"] == 0.5
        assert 0.1 < cuts["a"] <= 0.8

    def test_metrics_at_each_threshold(self) -> None:
        y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
        s = np.array([[0.9, 0.2], [0.1, 0.8], [0.8, 0.3], [0.2, 0.4]])
        m = findings.finding_metrics(y, s, ["a", "b"], {"a": 0.5, "b": 0.25})
        assert m["per_finding"]["a"]["sensitivity"] == 1.0
        assert m["per_finding"]["b"]["confusion_matrix"] == [[1, 1], [0, 2]]
        assert m["exact_match"] == 0.75
        table = findings.format_table(m)
        assert table[1].startswith("a ") and "macro AUC 0.875" in table[-1]


class TestTemperatures:
    def test_folded_model_equals_scaled_scores(self) -> None:
        keras.utils.set_random_seed(0)
        model = build_model("simple_cnn", input_shape=(16, 16, 1), num_classes=3, multi_label=True)
        x = np.random.default_rng(0).random((5, 16, 16, 1), dtype=np.float32)
        before = np.asarray(model.predict(x, verbose=0), dtype=np.float64)
        assert not np.allclose(before.sum(axis=1), 1.0)  # independent, not a softmax
        t = np.array([0.5, 1.0, 2.0])
        findings.fold_temperatures(model, t)
        after = np.asarray(model.predict(x, verbose=0), dtype=np.float64)
        np.testing.assert_allclose(after, findings.apply_temperatures(before, t), atol=1e-5)

    def test_fit_skips_findings_with_too_few_positives(self) -> None:
        rng = np.random.default_rng(1)
        y = np.zeros((40, 2), dtype=np.int64)
        y[:20, 0] = 1
        y[0, 1] = 1
        s = np.clip(y * 0.6 + rng.random((40, 2)) * 0.4, 0.01, 0.99)
        t, skipped = findings.fit_temperatures(y, s, ["a", "b"], min_positives=5)
        assert skipped == ["b"] and t[1] == 1.0 and t[0] != 1.0

    def test_softmax_model_is_refused(self) -> None:
        model = build_model("simple_cnn", input_shape=(16, 16, 1), num_classes=2)
        with pytest.raises(ValueError, match="sigmoid Dense"):
            findings.fold_temperatures(model, np.ones(2))


def _ref(run: RunResult) -> tuple[str, int]:
    name, version = run.model_ref.split(":")
    return name, int(version)


class TestFindingsRun:
    def test_manifest_carries_findings_and_thresholds(self, findings_run: RunResult) -> None:
        registry = ModelRegistry(findings_run.store)
        name, version = findings_run.model_ref.split(":")
        manifest = registry.verify(name, int(version))
        assert manifest.multi_label and manifest.threshold is None
        assert manifest.class_names == NAMES
        assert list(manifest.finding_thresholds) == NAMES
        assert manifest.findings is not None
        assert manifest.findings["scores"] == "independent"
        assert manifest.findings["none_name"] == "No Finding"
        assert "findings" in manifest.to_dict()["integrity"]["fields"]  # sealed like the rest
        val = manifest.metrics["val"]
        assert set(val["per_finding"]) == set(NAMES)
        assert "macro_auc" in val and "micro_auc" in val
        assert manifest.metrics["reported"]["split"] == "test"
        assert set(manifest.metrics["calibration"]["temperatures"]) == set(NAMES)

    def test_exported_model_is_sigmoid(self, findings_run: RunResult) -> None:
        loaded = ModelRegistry(findings_run.store).load(findings_run.model_ref)
        layer = loaded.model.get_layer("predictions")
        assert layer.activation.__name__ == "sigmoid"
        x = np.zeros((1, 32, 32, 1), dtype=np.float32)
        scores = np.asarray(loaded.model.predict(x, verbose=0))[0]
        decisions = decide_findings(scores, loaded.manifest)
        assert [d.name for d in decisions] == NAMES
        label = decide(scores, loaded.manifest)
        positives = [d.name for d in decisions if d.positive]
        assert label == ("|".join(positives) if positives else "No Finding")

    def test_train_log_and_tensorboard_have_per_finding_auc(self, findings_run: RunResult) -> None:
        from tests.training.test_tensorboard import read_events

        log = (findings_run.run_dir / "train.log").read_text()
        assert "epoch 2 findings: macro AUC" in log and "Nodule" in log
        assert "test: macro AUC" in log
        scalars = read_events(findings_run.run_dir / "tensorboard")["scalars"]
        assert "validation/findings/macro_auc" in scalars
        assert "validation/findings/micro_auc" in scalars
        assert "validation/findings/auc/Effusion" in scalars
        assert "validation/epoch_auc" in scalars  # exact macro AUC (QA 95): picks the best
        assert not any(key.startswith("findings/") for key in scalars)  # tags, not a sub-run
        assert "positive weights (n_neg / n_pos on train)" in log

    def test_tensorboard_has_only_the_train_and_validation_sub_runs(
        self, findings_run: RunResult
    ) -> None:
        """As a single-label run (README, TensorBoard): two entries in the run selector; the
        graph, hparams and sample images are tags in the validation run."""
        from tests.training.test_tensorboard import read_events

        log_dir = findings_run.run_dir / "tensorboard"
        folders = {p.parent.relative_to(log_dir) for p in log_dir.rglob("events.out.tfevents.*")}
        assert folders == {Path("train"), Path("validation")}
        found = read_events(log_dir)
        assert "validation" in found["graph"]  # the op graph of the forward pass
        assert found["hparams"] and all(t.startswith("validation/") for t in found["hparams"])
        assert "validation/inputs/as_model_sees_them" in found["images"]
        assert "validation/filters/sobel_h" in found["images"]

    def test_the_hparams_table_lists_scalars_the_run_writes(self, findings_run: RunResult) -> None:
        """It listed epoch_accuracy, which a multi-label run never writes (its accuracy is
        Keras' binary_accuracy): the column stayed empty (QA round 12)."""
        import tensorflow as tf
        from tensorboard.plugins.hparams import plugin_data_pb2

        from tests.training.test_tensorboard import read_events

        validation = findings_run.run_dir / "tensorboard" / "validation"
        listed: list[str] = []
        for path in validation.glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    if value.tag == "_hparams_/experiment":
                        data = plugin_data_pb2.HParamsPluginData.FromString(
                            value.metadata.plugin_data.content
                        )
                        listed += [m.name.tag for m in data.experiment.metric_infos]
        assert listed == ["epoch_auc", "epoch_binary_accuracy", "epoch_loss"]
        scalars = read_events(findings_run.run_dir / "tensorboard")["scalars"]
        assert all(f"validation/{tag}" in scalars for tag in listed), sorted(scalars)

    def test_result_json(self, findings_run: RunResult) -> None:
        result = json.loads((findings_run.run_dir / "result.json").read_text())
        assert result["findings"]["label_mode"] == "multi-label"
        assert result["threshold"] is None


class TestFindingsExportMonitoring:
    """A multi-label export carries an out-of-distribution detector and a drift reference,
    as a single-label one does (QA: neither was written, and nothing said so)."""

    def _manifest(self, run: RunResult) -> ModelManifest:
        return ModelRegistry(run.store).verify(*_ref(run))

    def test_an_ood_detector_is_fitted_and_sealed(self, findings_run: RunResult) -> None:
        from radlens.models.ood import load_detector

        manifest = self._manifest(findings_run)
        assert manifest.ood is not None and manifest.ood["method"] == "mahalanobis"
        assert manifest.ood["fitted_on"]["train_images"] == findings_run.split_sizes["train"]
        assert manifest.ood["fitted_on"]["val_images"] == findings_run.split_sizes["val"]
        assert "one per finding" in manifest.ood["class_means"]
        assert "ood" in manifest.to_dict()["integrity"]["fields"]
        path = ModelRegistry(findings_run.store).ood_detector_file(manifest)
        assert path is not None
        detector = load_detector(path)
        # a mean per finding with a positive training image, and one for images without any
        assert detector.arrays["means"].shape == (len(NAMES) + 1, 64)
        log = (findings_run.run_dir / "train.log").read_text()
        assert f"{findings_run.model_ref}: OOD detector mahalanobis, threshold" in log

    def test_the_intended_use_and_the_split_are_recorded(self, findings_run: RunResult) -> None:
        """Neither was written for a multi-label model: the gate accepted every modality."""
        from radlens.models.intended_use import from_record

        manifest = self._manifest(findings_run)
        assert manifest.intended_use is not None
        assert manifest.intended_use["stated"] == {
            "modalities": ["CR", "DX"],
            "body_parts": ["CHEST"],
        }
        gate = from_record(manifest.intended_use)
        assert gate.modalities == ("CR", "DX") and gate.body_parts == ("CHEST",)
        assert manifest.leakage_check is not None and manifest.data_split is not None

    def test_a_drift_reference_per_finding_the_service_reads(self, findings_run: RunResult) -> None:
        from radlens.app.drift import reference_of

        manifest = self._manifest(findings_run)
        reference = reference_of(manifest)  # the service's check: keyed by the class names
        assert reference is not None
        assert list(reference["scores"]) == NAMES and list(reference["label_rates"]) == NAMES
        assert reference["label_mode"] == "multi-label"
        assert reference["split_size"] == findings_run.split_sizes["val"]
        for fractions in reference["scores"].values():
            assert len(fractions) == 10 and sum(fractions) == pytest.approx(1.0, abs=1e-5)
        assert set(reference["inputs"]) == {"mean_intensity", "std_intensity"}
        log = (findings_run.run_dir / "train.log").read_text()
        assert f"{findings_run.model_ref}: drift reference written (validation split" in log

    def test_radlens_drift_finds_the_reference(
        self,
        findings_run: RunResult,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        from radlens.app.migrate import upgrade
        from radlens.cli.main import main

        url = f"sqlite:///{tmp_path / 'p.db'}"
        upgrade(url)
        monkeypatch.setenv("RADLENS_MODEL_STORE", str(findings_run.store))
        args = ["drift", "--model", findings_run.model_ref, "--database-url", url, "--json"]
        assert main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["reference"]["split_size"] == findings_run.split_sizes["val"]
        assert summary["status"] == "collecting" and set(summary["label_rates"]) == set(NAMES)


def test_drift_reference_label_rates_are_per_finding_at_its_threshold() -> None:
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4], [0.5, 0.1]])
    pixels = np.full((4, 8, 8, 1), 0.5, dtype=np.float32)
    reference = findings.drift_reference(scores, pixels, ["a", "b"], {"a": 0.5, "b": 0.4})
    # a: 0.9, 0.6, 0.5 >= 0.5; b: 0.7, 0.4 >= 0.4 -- an image counts for every finding it has
    assert reference["label_rates"] == {"a": 0.75, "b": 0.5}
    assert reference["scores"]["a"][9] == 0.25 and reference["split_size"] == 4


def test_ood_detector_fits_multi_hot_targets() -> None:
    from radlens.models.ood import finding_groups, fit_detector

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = np.zeros((40, 3), dtype=np.float32)
    y[:10, 0] = 1
    y[5:20, 1] = 1  # 5 images with findings 0 and 1
    rows, groups = finding_groups(x, y)
    assert len(rows) == 10 + 15 + 20 and np.bincount(groups).tolist() == [10, 15, 0, 20]
    detector = fit_detector(x, y, rng.normal(size=(10, 6)))
    assert detector.arrays["means"].shape == (3, 6)  # findings 0, 1 and "none" (2 has none)
    knn = fit_detector(x, y, rng.normal(size=(10, 6)), method="knn")
    assert knn.arrays["bank"].shape == (40, 6)  # one row per image, not per finding


class TestManifestFindings:
    def _data(self, findings_run: RunResult) -> dict[str, Any]:
        path = findings_run.store / "tiny" / findings_run.model_ref.split(":")[1]
        return json.loads((path / "manifest.json").read_text())

    def test_thresholds_must_match_the_class_names(self, findings_run: RunResult) -> None:
        data = self._data(findings_run)
        data["findings"]["thresholds"] = {"Effusion": 0.5}
        with pytest.raises(Exception, match="exactly the class names"):
            ModelManifest.from_dict(data)

    def test_threshold_must_be_null(self, findings_run: RunResult) -> None:
        data = self._data(findings_run)
        data["threshold"] = 0.4
        with pytest.raises(Exception, match="null 'threshold'"):
            ModelManifest.from_dict(data)

    def test_single_label_manifest_has_no_findings_key(self, tiny_run: RunResult) -> None:
        manifest = ModelRegistry(tiny_run.store).load(tiny_run.model_ref).manifest
        assert not manifest.multi_label and "findings" not in manifest.to_dict()


def test_unknown_finding_in_the_csv_stops_training(tmp_path: Path) -> None:
    csv_path = multilabel_csv(tmp_path / "data", n=12)
    config = findings_config(csv_path, tmp_path, findings=["Effusion", "Infiltration"])
    with pytest.raises(ConfigurationError, match=r"\['Nodule'\] .* not in the finding list"):
        train(config, verbose=0)


class TestEvaluate:
    def _data(self, run: RunResult) -> str:
        return str(json.loads((run.run_dir / "config.json").read_text())["data"])

    def test_per_finding_table_and_roc_curves(
        self, findings_run: RunResult, tmp_path: Path
    ) -> None:
        from radlens.training.evaluate import evaluate

        out = tmp_path / "eval"
        metrics = evaluate(
            findings_run.model_ref,
            self._data(findings_run),
            split="test",
            store=findings_run.store,
            out=out,
        )
        assert metrics["label_mode"] == "multi-label" and metrics["n"] == 6
        assert list(metrics["per_finding"]) == NAMES
        manifest = ModelRegistry(findings_run.store).load(findings_run.model_ref).manifest
        for name in NAMES:  # each finding measured at its own saved threshold
            assert metrics["per_finding"][name]["threshold"] == manifest.finding_thresholds[name]
        assert sorted(p.name for p in (out / "roc").iterdir()) == [
            "roc_Effusion.png",
            "roc_Infiltration.png",
            "roc_Nodule.png",
        ]
        assert (out / "findings.txt").read_text().startswith("finding")

    def test_out_holds_this_evaluations_report_only(
        self, findings_run: RunResult, tiny_run: RunResult, tmp_path: Path
    ) -> None:
        """An earlier single-label evaluation's figures in --out are removed (only radlens'
        own report names); files radlens did not write are kept."""
        from radlens.training.evaluate import evaluate

        out = tmp_path / "eval"
        (out / "roc").mkdir(parents=True)
        for name in ("confusion_matrix.png", "roc_curve.png", "reliability.png"):
            (out / name).write_bytes(b"an earlier single-label evaluation")
        (out / "roc" / "roc_Mass.png").write_bytes(b"another model's finding")
        (out / "notes.txt").write_text("mine")
        (out / "roc" / "mine.png").write_bytes(b"mine")
        evaluate(
            findings_run.model_ref, self._data(findings_run), store=findings_run.store, out=out
        )
        assert sorted(p.name for p in out.iterdir()) == [
            "findings.txt",
            "metrics.json",
            "notes.txt",
            "roc",
        ]
        assert sorted(p.name for p in (out / "roc").iterdir()) == [
            "mine.png",
            "roc_Effusion.png",
            "roc_Infiltration.png",
            "roc_Nodule.png",
        ]
        # and back: a single-label evaluation leaves no findings table or per-finding curves
        evaluate(tiny_run.model_ref, self._data(tiny_run), store=tiny_run.store, out=out)
        assert sorted(p.name for p in out.iterdir()) == [
            "confusion_matrix.png",
            "metrics.json",
            "notes.txt",
            "reliability.png",
            "roc",
            "roc_curve.png",
        ]
        assert [p.name for p in (out / "roc").iterdir()] == ["mine.png"]
        (out / "roc" / "mine.png").unlink()
        evaluate(tiny_run.model_ref, self._data(tiny_run), store=tiny_run.store, out=out)
        assert not (out / "roc").exists()  # radlens' own folder, left empty: removed

    def test_cli_prints_the_table(
        self, findings_run: RunResult, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from radlens.cli.main import main

        args = ["evaluate", "--data", self._data(findings_run), "--model", findings_run.model_ref]
        assert main([*args, "--store", str(findings_run.store)]) == 0
        out = capsys.readouterr().out
        assert "(multi-label)" in out and "Infiltration" in out and "macro AUC" in out

    def test_data_with_a_finding_the_model_lacks_is_refused(
        self, findings_run: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from radlens.cli.main import main

        csv_path = multilabel_csv(tmp_path / "other", n=12)
        csv_path.write_text(csv_path.read_text().replace("Nodule", "Mass"))
        args = ["evaluate", "--data", str(csv_path), "--model", findings_run.model_ref]
        assert main([*args, "--store", str(findings_run.store), "--split", "all"]) == 2
        err = capsys.readouterr().err
        assert "['Mass']" in err and "not in the finding list" in err and "Traceback" not in err


def test_cli_train_multi_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from radlens.cli.main import main

    csv_path = multilabel_csv(tmp_path / "data", n=48, column="nih", separator=";")
    args = [
        "train", "--data", str(csv_path), "--arch", "simple_cnn", "--image-size", "32",
        "--epochs", "1", "--batch-size", "12", "--multi-label", "--label-column", "nih",
        "--label-separator", ";", "--positive-weights", "auto", "--no-openvino",
        "--min-calibration-positives", "2", "--store", str(tmp_path / "store"),
        "--runs-dir", str(tmp_path / "runs"), "--name", "ml",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "model: ml:1" in out and "temperature per finding" in out and "macro AUC" in out
    manifest = ModelRegistry(tmp_path / "store").load("ml:1").manifest
    assert manifest.class_names == NAMES and manifest.training_config["label_separator"] == ";"


def test_models_show_lists_the_thresholds(
    findings_run: RunResult, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.cli.main import main

    args = ["models", "show", findings_run.model_ref, "--store", str(findings_run.store)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "findings (multi-label, independent scores): thresholds Effusion" in out


@pytest.mark.skipif(openvino_version() is None, reason="openvino not installed")
class TestOpenVINO:
    def test_export_stores_openvino_with_parity_per_finding(self, findings_run: RunResult) -> None:
        manifest = ModelRegistry(findings_run.store).load(findings_run.model_ref).manifest
        fp32 = manifest.runtimes["openvino"]["parity"]["fp32"]
        assert fp32["data"].startswith("validation split")
        assert list(fp32["per_finding"]) == NAMES
        for name in NAMES:  # decided at each finding's own threshold
            assert fp32["per_finding"][name]["threshold"] == manifest.finding_thresholds[name]
        assert fp32["max_score_difference"] < 1e-4 and fp32["flips"] == 0

    def test_models_convert_measures_parity_per_finding(
        self, findings_run: RunResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        import shutil

        from radlens.cli.main import main

        store = tmp_path / "store"
        shutil.copytree(findings_run.store, store)
        data = json.loads((findings_run.run_dir / "config.json").read_text())["data"]
        args = ["models", "convert", findings_run.model_ref, "--store", str(store)]
        assert main([*args, "--data", data, "--split", "test", "--json"]) == 0
        entry = json.loads(capsys.readouterr().out)
        fp32 = entry["parity"]["fp32"]
        assert fp32["n"] == 6 and "(test, 6 images)" in fp32["data"]
        assert list(fp32["per_finding"]) == NAMES and fp32["threshold"] is None
        assert main(args) == 0  # without --data: converted, no parity
        assert "fp32 parity: not measured" in capsys.readouterr().out


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption after epoch 1")


def test_an_interrupted_multi_label_run_resumes(tmp_path: Path) -> None:
    from radlens.training.run import resume

    csv_path = multilabel_csv(tmp_path / "data")
    config = findings_config(csv_path, tmp_path, epochs_head=2, histogram_freq=0)
    started: list[Path] = []
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_StopAfterFirstEpoch()], verbose=0, on_start=started.append)
    result = resume(started[0], verbose=0)
    assert result.epochs_run == 2 and result.threshold is None
    manifest = ModelRegistry(result.store).load(result.model_ref).manifest
    assert manifest.multi_label and list(manifest.finding_thresholds) == NAMES

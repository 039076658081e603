"""training.series and the series-labelled run end to end: slice scores aggregated per series
with the service's own function; series AUC in train.log, TensorBoard, the manifest, evaluate."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.models.aggregation import AGGREGATIONS, aggregate
from radlens.training.series import aggregate_series, series_metrics, series_rows
from tests.training.conftest import tiny_config
from tests.training.series_fixtures import read_rows, series_dataset, write_rows


class TestOneAggregationForServiceAndTraining:
    def test_the_service_imports_the_shared_function(self) -> None:
        from radlens.app import series as service_series

        assert service_series.aggregate is aggregate
        assert service_series.AGGREGATIONS == AGGREGATIONS

    @pytest.mark.parametrize("method", AGGREGATIONS)
    def test_series_scores_are_the_aggregate_of_their_slices(self, method: str) -> None:
        series_of = ["a", "b", "a", "c", "b", "a"]
        scores = np.asarray(
            [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3], [0.5, 0.5], [0.6, 0.4]]
        )
        grouped = aggregate_series(series_of, np.zeros(6, np.int64), scores, method=method, k=2)
        assert grouped.series == ["a", "b", "c"]
        assert grouped.slices.tolist() == [3, 2, 1]
        assert grouped.scores[0, 1] == pytest.approx(aggregate([0.1, 0.8, 0.4], method, 2))
        assert grouped.scores[1, 1] == pytest.approx(aggregate([0.6, 0.5], method, 2))
        assert grouped.scores[2, 1] == pytest.approx(0.3)

    def test_series_auc_differs_from_slice_auc(self) -> None:
        # two positive series with one telling slice each; the negatives' slices are middling
        series_of = ["p1", "p1", "p1", "p2", "p2", "n1", "n1", "n2", "n2"]
        y = np.asarray([1, 1, 1, 1, 1, 0, 0, 0, 0])
        positive = np.asarray([0.9, 0.1, 0.1, 0.8, 0.2, 0.5, 0.4, 0.6, 0.3])
        scores = np.stack([1 - positive, positive], axis=1)
        figures = series_metrics(
            series_of, y, scores, ["normal", "nodule"], method="max", k=3, threshold=0.7
        )
        assert figures["auc"] == 1.0  # max: 0.9, 0.8 against 0.5, 0.6
        assert figures["slice_auc"] == pytest.approx(0.4)  # 8 of 20 slice pairs ordered right
        assert figures["n_series"] == 4 and figures["n_slices"] == 9
        assert figures["confusion_matrix"] == [[2, 0], [0, 2]]  # decided at the threshold
        noisy = series_metrics(
            series_of, y, scores, ["normal", "nodule"], method="noisy_or", k=3, threshold=0.7
        )
        assert noisy["aggregation"] == "noisy_or" and noisy["auc"] == 1.0
        assert noisy["confusion_matrix"] == [[0, 2], [0, 2]]  # n1 1 - .5 * .6 = .7, n2 .72
        rows = series_rows(
            series_of, y, scores, ["normal", "nodule"], method="max", k=3, threshold=0.55
        )
        assert [(r["series"], r["truth"], r["predicted"]) for r in rows] == [
            ("p1", "nodule", "nodule"),
            ("p2", "nodule", "nodule"),
            ("n1", "normal", "normal"),
            ("n2", "normal", "nodule"),  # 0.6 >= 0.55
        ]

    def test_multi_class_and_multi_label(self) -> None:
        series_of = ["a", "a", "b", "b", "c"]
        probs = np.asarray(
            [[0.8, 0.1, 0.1], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1]]
        )
        figures = series_metrics(
            series_of, np.asarray([2, 2, 0, 0, 1]), probs, ["x", "y", "z"], method="max", k=1
        )
        assert figures["accuracy"] == pytest.approx(2 / 3)  # a: x (max 0.8) beats its z (0.7)
        rows = series_rows(
            series_of, np.asarray([2, 2, 0, 0, 1]), probs, ["x", "y", "z"], method="max", k=1
        )
        assert [r["predicted"] for r in rows] == ["x", "x", "y"]
        hot = np.asarray([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]], dtype=np.float32)
        scores = np.asarray([[0.2, 0.1], [0.9, 0.2], [0.1, 0.7], [0.3, 0.6], [0.4, 0.3]])
        multi = series_metrics(
            series_of,
            hot,
            scores,
            ["Effusion", "Nodule"],
            method="max",
            k=1,
            thresholds={"Effusion": 0.5, "Nodule": 0.5},
            multi_label=True,
        )
        assert multi["n_series"] == 3 and multi["per_finding"]["Effusion"]["auc"] == 1.0

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="one row per slice"):
            aggregate_series(["a"], np.zeros(2), np.zeros((2, 2)), method="max", k=1)
        with pytest.raises(ValueError, match="Received: 'median'"):
            aggregate_series(["a"], np.zeros(1), np.zeros((1, 2)), method="median", k=1)


# --- a tiny series-labelled run, end to end ------------------------------------------------


@pytest.fixture(scope="module")
def series_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """simple_cnn, 32 px, 4 epochs on 12 series x 4 slices of 6 patients (a few seconds)."""
    from radlens.training.run import train

    tmp = tmp_path_factory.mktemp("series-run")
    csv_path = series_dataset(tmp / "ds")
    config = tiny_config(
        csv_path,
        tmp,
        epochs_head=4,
        val_fraction=0.34,  # 2 patients: 4 series in validation, 1 patient (2 series) in test
        test_fraction=0.17,
        seed=0,
        deterministic=True,
        openvino=False,
        ood_method="none",
        name="series",
    )
    return train(config, verbose=0), csv_path


def _scalar_tags(directory: Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for path in directory.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    return tags


class TestSeriesRun:
    def test_series_figures_in_the_result_and_manifest(self, series_run: tuple[Any, Path]) -> None:
        from radlens.models.registry import ModelRegistry

        result, _ = series_run
        val, test = result.val_metrics["series"], result.test_metrics["series"]
        assert (val["n_series"], val["n_slices"]) == (4, 16)
        assert (test["n_series"], test["n_slices"]) == (2, 8)
        assert val["aggregation"] == "max" and val["top_k"] == 3
        assert val["auc"] is not None and val["slice_auc"] is not None
        assert result.reported["series"] == test
        manifest = ModelRegistry(result.store).load(result.model_ref).manifest
        # series decided at the series threshold chosen on the validation series, as the
        # service decides them (its aggregation is the run's: max)
        chosen = manifest.metrics["series_threshold"]
        assert val["threshold"] == test["threshold"] == chosen["threshold"]
        assert (chosen["aggregation"], chosen["top_k"], chosen["rule"]) == ("max", 3, "youden")
        assert (chosen["n_series"], chosen["n_positive"], chosen["fitted_on"]) == (4, 2, "val")
        assert manifest.metrics["val"]["selected_by"] == "auc"  # the default
        assert manifest.metrics["val"]["series"] == val
        assert manifest.metrics["test"]["series"] == test
        assert manifest.training_config["series_aggregation"] == "max"
        split = manifest.training_config["split"]["series"]
        assert {k: v["series"] for k, v in split.items()} == {"train": 6, "val": 4, "test": 2}
        assert {k: v["patients"] for k, v in split.items()} == {"train": 3, "val": 2, "test": 1}
        assert manifest.leakage_check == {"passed": True, "patients_in_two_splits": 0}

    def test_learnable_labels_are_learned(self, series_run: tuple[Any, Path]) -> None:
        result, _ = series_run
        # a bright disc on 3 of 4 slices of each positive series: the tiny CNN separates
        # the series; slices without the disc keep the slice AUC lower
        assert result.val_metrics["series"]["auc"] == 1.0
        assert result.val_metrics["series"]["slice_auc"] <= result.val_metrics["series"]["auc"]

    def test_train_log_history_and_tensorboard(self, series_run: tuple[Any, Path]) -> None:
        result, _ = series_run
        log_text = (result.run_dir / "train.log").read_text()
        assert log_text.count(" series: AUC ") == result.epochs_run == 4
        assert "val series-level: AUC" in log_text and "test series-level: AUC" in log_text
        with (result.run_dir / "history.csv").open() as fh:
            history = list(csv.DictReader(fh))
        assert len(history) == 4 and all(row["val_series_auc"] for row in history)
        assert {"series/auc", "series/slice_auc"} <= _scalar_tags(
            result.run_dir / "tensorboard" / "validation"
        )
        # tags in Keras' validation sub-run: the run still adds two entries to TensorBoard
        assert sorted(p.name for p in (result.run_dir / "tensorboard").iterdir() if p.is_dir()) == [
            "train",
            "validation",
        ]
        with (result.run_dir / "splits.csv").open() as fh:
            assigned = list(csv.DictReader(fh))
        assert len(assigned) == 48  # every slice recorded with its split, as for any source
        assert all(row["patient"].startswith("p-") for row in assigned)  # keyed hashes only
        assert "SYN0" not in log_text

    def test_evaluate_aggregates_as_the_service(self, series_run: tuple[Any, Path]) -> None:
        from radlens.app.series import aggregate as service_aggregate
        from radlens.models.registry import ModelRegistry
        from radlens.training.data.pipeline import load_examples
        from radlens.training.data.sources import open_data
        from radlens.training.evaluate import evaluate, select_split

        result, csv_path = series_run
        got = evaluate(
            result.model_ref,
            csv_path,
            split="test",
            store=result.store,
            series_aggregation="mean_top_k",
            series_top_k=2,
        )
        assert got["series"]["aggregation"] == "mean_top_k" and got["series"]["n_series"] == 2
        assert got["series"]["threshold"] == result.threshold
        # the same slices scored independently, then aggregated by the service's function
        loaded = ModelRegistry(result.store).load(result.model_ref)
        source = open_data(csv_path, loaded.manifest.class_names)
        examples = select_split(source, "test", loaded.manifest.training_config)
        x, _ = load_examples(
            source, examples, size=loaded.manifest.input_size, window=None, batch_size=8
        )
        probs = np.asarray(loaded.model.predict(x, verbose=0))
        for row in got["series_table"]:
            mine = [p[1] for p, e in zip(probs, examples, strict=True) if e.series == row["series"]]
            assert row["slices"] == len(mine) == 4
            assert row["score"] == pytest.approx(service_aggregate(mine, "mean_top_k", 2), abs=1e-6)
        # without options: the model's training config (max)
        default = evaluate(result.model_ref, csv_path, split="test", store=result.store)
        assert default["series"] == result.test_metrics["series"] | {
            "auc": default["series"]["auc"]
        }
        assert default["series"]["aggregation"] == "max"


class TestSeriesThreshold:
    def test_chosen_on_series_scores_not_slice_scores(self) -> None:
        from radlens.training.metrics import decision_threshold
        from radlens.training.series import choose_series_threshold

        # 2 slices per series; one negative series has one bright slice (0.75): on slices
        # Youden cuts below the positives' weaker slices, on series maxima above that 0.75
        series_of = ["p1", "p1", "p2", "p2", "n1", "n1", "n2", "n2"]
        y = np.asarray([1, 1, 1, 1, 0, 0, 0, 0])
        p = np.asarray([0.9, 0.6, 0.8, 0.55, 0.75, 0.1, 0.3, 0.2])
        scores = np.stack([1 - p, p], axis=1)
        record = choose_series_threshold("youden", series_of, y, scores, method="max", k=3)
        assert record is not None
        maxima = np.array([0.9, 0.8, 0.75, 0.3])
        assert record["threshold"] == decision_threshold("youden", np.array([1, 1, 0, 0]), maxima)
        assert 0.75 < record["threshold"] <= 0.8  # every series decided right at it
        assert decision_threshold("youden", y, p) <= 0.55  # the slice threshold: far lower
        assert (record["n_series"], record["n_positive"], record["aggregation"]) == (4, 2, "max")
        mean = choose_series_threshold("youden", series_of, y, scores, method="mean_top_k", k=2)
        assert mean is not None and mean["top_k"] == 2 and mean["threshold"] != record["threshold"]

    def test_one_class_series_give_none(self) -> None:
        from radlens.training.series import choose_series_threshold

        scores = np.asarray([[0.2, 0.8], [0.4, 0.6]])
        assert (
            choose_series_threshold(
                "youden", ["a", "b"], np.asarray([1, 1]), scores, method="max", k=1
            )
            is None
        )

    def test_recorded_threshold_recomputed_from_the_exported_model(
        self, series_run: tuple[Any, Path]
    ) -> None:
        from radlens.models.registry import ModelRegistry
        from radlens.training.data.pipeline import load_examples
        from radlens.training.data.sources import open_data
        from radlens.training.evaluate import select_split
        from radlens.training.series import choose_series_threshold

        result, csv_path = series_run
        loaded = ModelRegistry(result.store).load(result.model_ref)
        source = open_data(csv_path, loaded.manifest.class_names)
        examples = select_split(source, "val", loaded.manifest.training_config)
        x, y = load_examples(
            source, examples, size=loaded.manifest.input_size, window=None, batch_size=8
        )
        probs = np.asarray(loaded.model.predict(x, verbose=0))
        again = choose_series_threshold(
            "youden", [e.series for e in examples], y, probs, method="max", k=3
        )
        assert again is not None
        recorded = loaded.manifest.metrics["series_threshold"]
        assert again["threshold"] == pytest.approx(recorded["threshold"], abs=1e-5)
        log_text = (result.run_dir / "train.log").read_text()
        assert "series threshold " in log_text and "on 4 validation series" in log_text


class TestSelectBySeriesAuc:
    def test_best_checkpoint_follows_the_monitor(self, tmp_path: Path) -> None:
        import keras

        from radlens.training.callbacks import BestCheckpoint

        (tmp_path / "checkpoints").mkdir()
        network = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        epochs = [  # the slice AUC peaks at epoch 1, the series AUC at epoch 2
            {"val_auc": 0.9, "val_series_auc": 0.7},
            {"val_auc": 0.8, "val_series_auc": 0.95},
            {"val_auc": 0.85, "val_series_auc": 0.9},
        ]
        picked = {}
        for monitor in ("val_auc", "val_series_auc"):
            state: dict[str, Any] = {}
            callback = BestCheckpoint(tmp_path, state, network, monitor=monitor)
            for epoch, logs in enumerate(epochs):
                callback.on_epoch_end(epoch, dict(logs))
            picked[monitor] = state["best_epoch"]
            assert state[f"best_{monitor}"] == max(e[monitor] for e in epochs)
        assert picked == {"val_auc": 1, "val_series_auc": 2}

    def test_equal_series_aucs_are_decided_by_the_slice_auc(self, tmp_path: Path) -> None:
        import keras

        from radlens.training.callbacks import BestCheckpoint

        (tmp_path / "checkpoints").mkdir()
        network = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        epochs = [  # the series AUC saturates at 1.0 from epoch 1; the slice AUC goes on
            {"val_auc": 0.7, "val_series_auc": 1.0},
            {"val_auc": 0.9, "val_series_auc": 1.0},
            {"val_auc": 0.8, "val_series_auc": 1.0},
        ]
        for tie_break, expected in ((None, 1), ("val_auc", 2)):
            state: dict[str, Any] = {}
            callback = BestCheckpoint(
                tmp_path, state, network, monitor="val_series_auc", tie_break=tie_break
            )
            for epoch, logs in enumerate(epochs):
                callback.on_epoch_end(epoch, dict(logs))
            assert state["best_epoch"] == expected

    def test_a_run_picks_the_epoch_of_the_best_series_auc(self, tmp_path: Path) -> None:
        import json

        from radlens.models.registry import ModelRegistry
        from radlens.training.run import train

        csv_path = series_dataset(tmp_path / "ds")
        config = tiny_config(
            csv_path,
            tmp_path,
            epochs_head=3,
            val_fraction=0.34,
            test_fraction=0.17,
            seed=0,
            openvino=False,
            ood_method="none",
            histogram_freq=0,
            tensorboard_samples=0,
            select_by="series-auc",
            name="by-series",
        )
        result = train(config, verbose=0)
        with (result.run_dir / "history.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        history = [(float(r["val_series_auc"]), float(r["val_auc"])) for r in rows]
        assert len(history) == 3
        # the best series AUC; among equal ones the best slice AUC; then the first
        best = max(range(3), key=lambda i: (history[i][0], history[i][1], -i))
        assert result.best_epoch == best + 1
        state = json.loads((result.run_dir / "state.json").read_text())
        assert state["best_val_series_auc"] == pytest.approx(history[best][0])
        assert "best_val_auc" not in state
        manifest = ModelRegistry(result.store).load(result.model_ref).manifest
        assert manifest.metrics["val"]["selected_by"] == "series-auc"
        assert manifest.training_config["select_by"] == "series-auc"
        log_text = (result.run_dir / "train.log").read_text()
        assert "by validation series AUC" in log_text

    def test_refused_on_data_without_series(self, tiny_demo_data: Path, tmp_path: Path) -> None:
        from radlens.models.errors import ConfigurationError
        from radlens.training.run import train

        config = tiny_config(tiny_demo_data, tmp_path, select_by="series-auc")
        with pytest.raises(ConfigurationError, match="not series-labelled"):
            train(config, verbose=0)
        assert not (tmp_path / "runs").exists()  # refused before the run directory

    def test_unknown_value_is_refused(self) -> None:
        from radlens.models.errors import ConfigurationError
        from radlens.training.config import TrainConfig

        with pytest.raises(ConfigurationError, match="select_by must be one of auc, series-auc"):
            TrainConfig.from_dict({"select_by": "series_auc"})


class TestSeriesCli:
    def _run(self, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        from radlens.cli.main import main

        code = main(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def test_evaluate_prints_a_series_table(
        self, series_run: tuple[Any, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        result, csv_path = series_run
        code, out, err = self._run(
            [
                "evaluate",
                "--data",
                str(csv_path),
                "--model",
                result.model_ref,
                "--store",
                str(result.store),
                "--split",
                "val",
            ],
            capsys,
        )
        assert code == 0, err
        assert "series-level: 4 series, max (k=3); auc=" in out
        assert "slice_auc=" in out
        table = [line for line in out.splitlines() if line.strip().startswith("series.csv:")]
        assert len(table) == 4 and all(" 4 " in line for line in table)
        assert "series AUC" in out and "over 16 slices" in out

    def test_evaluate_refuses_labels_the_model_does_not_know(
        self, series_run: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        result, csv_path = series_run
        rows = read_rows(csv_path)
        rows[1]["label"] = "pneumonia"
        for row in rows:
            row["series_path"] = str(csv_path.parent / row["series_path"])
        bad = write_rows(tmp_path / "bad.csv", rows)
        code, _, err = self._run(
            [
                "evaluate",
                "--data",
                str(bad),
                "--model",
                result.model_ref,
                "--store",
                str(result.store),
                "--split",
                "all",
            ],
            capsys,
        )
        assert code == 2
        lines = [line for line in err.splitlines() if line.startswith("radlens: error: ")]
        assert len(lines) == 1 and "Traceback" not in err
        assert "unknown label 'pneumonia' at bad.csv line 3" in lines[0]

    def test_data_check_counts_series_slices_patients(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        csv_path = series_dataset(tmp_path / "ds", by="uid")
        code, out, err = self._run(
            ["data-check", str(csv_path), "--val-fraction", "0.34", "--test-fraction", "0.17"],
            capsys,
        )
        assert code == 0, err
        assert (
            "series (all): 12 series, 48 slices, 6 patients (normal 6 series / 24 slices / "
            "6 patients; nodule 6 series / 24 slices / 6 patients)" in out
        )
        assert "series (val): 4 series, 16 slices, 2 patients" in out
        assert "series (test): 2 series, 8 slices, 1 patients" in out
        assert "leakage: none" in out

    def test_data_check_refuses_a_leaky_given_split(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=4)
        rows = read_rows(csv_path)
        rows[0]["split"], rows[1]["split"] = "train", "test"
        code, out, err = self._run(["data-check", str(write_rows(csv_path, rows))], capsys)
        assert code == 2
        assert "leakage: 1 patient(s) in more than one split" in out
        assert "radlens: error: 1 patient(s) have series in more than one given split" in err
        code, out, _ = self._run(["data-check", str(csv_path), "--resplit"], capsys)
        assert code == 0 and "leakage: none" in out

    @pytest.mark.parametrize("case", ["no slices", "two folders", "modality"])
    def test_bad_series_csv_is_one_line_exit_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
    ) -> None:
        import shutil

        from tests.training.series_fixtures import slice_pixels, write_slice

        csv_path = series_dataset(
            tmp_path / "ds", patients=2, by="uid" if case == "two folders" else "path"
        )
        dicom = tmp_path / "ds" / "dicom"
        if case == "no slices":
            (dicom / "SYN000" / "series1").joinpath("slice00.dcm").write_bytes(b"junk")
            for f in (dicom / "SYN000" / "series1").glob("slice0[123].dcm"):
                f.unlink()
            match = "line 3 (folder 'dicom/SYN000/series1') has no readable DICOM slice"
        elif case == "two folders":
            shutil.copytree(dicom / "SYN001" / "series0", dicom / "copy")
            match = "series_uid at series.csv line 4 is found in 2 folders"
        else:
            import pydicom

            folder = dicom / "SYN001" / "series1"
            write_slice(
                folder / "zz.dcm",
                slice_pixels(np.random.default_rng(0), True),
                patient_id="SYN001",
                series_uid=pydicom.dcmread(folder / "slice00.dcm").SeriesInstanceUID,
                instance=5,
                modality="MR",
            )
            match = "series at series.csv line 5 disagree on Modality"
        for args in (
            ["data-check", str(csv_path)],
            [
                "train",
                "--data",
                str(csv_path),
                "--runs-dir",
                str(tmp_path / "runs"),
                "--arch",
                "simple_cnn",
            ],
        ):
            code, _, err = self._run(args, capsys)
            assert code == 2, err
            lines = [line for line in err.splitlines() if line.startswith("radlens: error: ")]
            assert len(lines) == 1 and "Traceback" not in err
            assert match in lines[0]
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_multi_label_series_run_and_evaluate(tmp_path: Path) -> None:
    """Findings per series: slices inherit the set; val/test and evaluate report per series."""
    from radlens.models.registry import ModelRegistry
    from radlens.training.evaluate import evaluate
    from radlens.training.run import train
    from tests.training.series_fixtures import uid, write_series

    rng = np.random.default_rng(0)
    rows = []
    for p in range(6):
        for s, label in enumerate(["Nodule", "No Finding", "Nodule|Effusion", "Effusion"]):
            folder = tmp_path / "ds" / f"p{p}s{s}"
            write_series(
                folder,
                patient_id=f"P{p}",
                series_uid=uid("ml", p, s),
                positive="Nodule" in label,
                slices=2,
                rng=rng,
            )
            rows.append({"series_path": folder.name, "findings": label, "patient_id": f"P{p}"})
    csv_path = write_rows(tmp_path / "ds" / "findings.csv", rows)
    config = tiny_config(
        csv_path,
        tmp_path,
        multi_label=True,
        label_column="findings",
        epochs_head=1,
        val_fraction=0.34,
        test_fraction=0.17,
        openvino=False,
        ood_method="none",
        name="series-findings",
    )
    result = train(config, verbose=0)
    val = result.val_metrics["series"]
    assert (val["n_series"], val["n_slices"]) == (8, 16)
    assert val["label_mode"] == "multi-label" and set(val["per_finding"]) == {"Effusion", "Nodule"}
    assert result.test_metrics["series"]["n_series"] == 4
    manifest = ModelRegistry(result.store).load(result.model_ref).manifest
    assert manifest.metrics["val"]["series"]["aggregation"] == "max"
    got = evaluate(result.model_ref, csv_path, split="test", store=result.store)
    assert got["series"]["n_series"] == 4 and len(got["series_table"]) == 4
    truths = {r["truth"] for r in got["series_table"]}
    assert truths == {"Nodule", "-", "Effusion|Nodule", "Effusion"}

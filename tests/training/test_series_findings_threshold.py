"""A multi-label model's series threshold per finding (training.series.
choose_finding_series_thresholds): chosen on the validation series aggregates by the run's
threshold rule, a finding whose validation series are of one class keeping its instance
threshold; recorded in the manifest (``metrics["series_threshold"]["thresholds"]``), logged,
and the threshold the series figures (run and ``radlens evaluate``) are measured at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.models import aggregation
from radlens.models.aggregation import recorded_series_threshold
from radlens.training import series as training_series
from radlens.training.series import format_series_table, series_metrics
from tests.training.conftest import tiny_config
from tests.training.series_fixtures import uid, write_rows, write_series

NAMES = ["Nodule", "Effusion"]


# looked up on their modules at call time: on code without them each test fails on its own
# instead of the module failing to import


def choose_finding_series_thresholds(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return training_series.choose_finding_series_thresholds(*args, **kwargs)


def finding_series_cuts(*args: Any) -> tuple[dict[str, float], dict[str, str]]:
    return training_series.finding_series_cuts(*args)


def recorded_finding_series_thresholds(*args: Any) -> dict[str, float]:
    return aggregation.recorded_finding_series_thresholds(*args)


def _slices() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Four validation series of five slices. Nodule: positive in p1, p2 (max 0.9, 0.8); the
    negative series n1, n2 each hold one noisy slice (0.6, 0.7) over the 0.5 a slice would be
    decided at. Effusion: no positive series at all."""
    nodule = {
        "p1": [0.9, 0.2, 0.1, 0.3, 0.2],
        "p2": [0.1, 0.8, 0.2, 0.1, 0.3],
        "n1": [0.1, 0.2, 0.6, 0.1, 0.2],
        "n2": [0.3, 0.1, 0.2, 0.7, 0.1],
    }
    series_of, targets, scores = [], [], []
    for sid, values in nodule.items():
        for v in values:
            series_of.append(sid)
            targets.append([int(sid.startswith("p")), 0])
            scores.append([v, 0.2])
    return series_of, np.asarray(targets), np.asarray(scores)


class TestChooseFindingSeriesThresholds:
    def test_chosen_on_series_aggregates_above_the_slice_cut(self) -> None:
        series_of, targets, scores = _slices()
        record = choose_finding_series_thresholds(
            "youden", series_of, targets, scores, NAMES, method="max", k=3
        )
        # max separates the series between 0.7 (n2) and 0.8 (p2); 0.5 would call n1, n2
        # positive: every negative series holds one slice over it
        assert 0.7 < record["thresholds"]["Nodule"] <= 0.8
        assert list(record["thresholds"]) == ["Nodule"]
        assert record["instance_threshold_kept"] == ["Effusion"]
        assert record["n_positive"] == {"Nodule": 2, "Effusion": 0}
        assert record["label_mode"] == "multi-label"
        assert (record["rule"], record["aggregation"], record["top_k"]) == ("youden", "max", 3)
        assert (record["fitted_on"], record["n_series"]) == ("val", 4)

    def test_aggregation_and_k_are_those_it_was_chosen_on(self) -> None:
        series_of, targets, scores = _slices()
        record = choose_finding_series_thresholds(
            "youden", series_of, targets, scores, NAMES, method="mean_top_k", k=2
        )
        # mean of the 2 highest: p1 0.6, p2 0.55, n1 0.4, n2 0.5
        assert 0.5 < record["thresholds"]["Nodule"] <= 0.55
        assert (record["aggregation"], record["top_k"]) == ("mean_top_k", 2)

    def test_a_finding_positive_in_every_series_keeps_its_instance_threshold(self) -> None:
        series_of, targets, scores = _slices()
        targets[:, 1] = 1  # Effusion in every validation series: nothing to choose on
        record = choose_finding_series_thresholds(
            "balanced", series_of, targets, scores, NAMES, method="max", k=3
        )
        assert record["instance_threshold_kept"] == ["Effusion"]
        assert record["n_positive"]["Effusion"] == 4 and "Effusion" not in record["thresholds"]
        assert record["rule"] == "balanced"

    def test_no_finding_decidable_gives_an_empty_mapping(self) -> None:
        series_of, targets, scores = _slices()
        record = choose_finding_series_thresholds(
            "youden", series_of, np.zeros_like(targets), scores, NAMES, method="max", k=3
        )
        assert record["thresholds"] == {} and record["instance_threshold_kept"] == NAMES
        assert recorded_finding_series_thresholds({"series_threshold": record}, "max", 3) == {}

    def test_one_series_only(self) -> None:
        record = choose_finding_series_thresholds(
            "youden",
            ["a", "a"],
            np.asarray([[1, 0], [1, 0]]),
            np.full((2, 2), 0.4),
            NAMES,
            method="max",
            k=3,
        )
        assert record["thresholds"] == {} and record["n_series"] == 1

    def test_single_label_targets_are_refused(self) -> None:
        series_of, _, scores = _slices()
        with pytest.raises(ValueError, match=r"multi-hot targets of shape \(slices, 2\)"):
            choose_finding_series_thresholds(
                "youden", series_of, np.zeros(len(series_of)), scores, NAMES, method="max", k=3
            )
        with pytest.raises(ValueError, match="method should be one of"):
            choose_finding_series_thresholds("youden", *_slices(), NAMES, method="median", k=3)


RECORD: dict[str, Any] = {
    "label_mode": "multi-label",
    "thresholds": {"Nodule": 0.75, "Effusion": 0.9},
    "instance_threshold_kept": [],
    "rule": "youden",
    "aggregation": "max",
    "top_k": 3,
}


class TestRecordedFindingSeriesThresholds:
    def test_for_the_aggregation_it_was_chosen_for(self) -> None:
        metrics = {"series_threshold": RECORD}
        assert recorded_finding_series_thresholds(metrics, "max", 5) == {
            "Nodule": 0.75,
            "Effusion": 0.9,
        }
        assert recorded_finding_series_thresholds(metrics, "noisy_or", 3) == {}
        top_k = {"series_threshold": {**RECORD, "aggregation": "mean_top_k", "top_k": 2}}
        assert recorded_finding_series_thresholds(top_k, "mean_top_k", 2)["Nodule"] == 0.75
        assert recorded_finding_series_thresholds(top_k, "mean_top_k", 3) == {}

    def test_a_binary_record_is_not_read_as_findings_and_vice_versa(self) -> None:
        binary = {"threshold": 0.3, "rule": "youden", "aggregation": "max", "top_k": 3}
        assert recorded_finding_series_thresholds({"series_threshold": binary}, "max", 3) == {}
        assert recorded_series_threshold({"series_threshold": RECORD}, "max", 3) is None

    def test_old_manifests_and_malformed_values(self) -> None:
        assert recorded_finding_series_thresholds({}, "max", 3) == {}  # before the record
        bad = {**RECORD, "thresholds": {"Nodule": "0.7", "Effusion": True, "X": 1.5, "Y": 0}}
        assert recorded_finding_series_thresholds({"series_threshold": bad}, "max", 3) == {"Y": 0.0}
        for record in (None, [], {**RECORD, "thresholds": [0.7]}):
            assert recorded_finding_series_thresholds({"series_threshold": record}, "max", 3) == {}


class TestFiguresAtTheSeriesThreshold:
    def test_cuts_and_sources(self) -> None:
        cuts, sources = finding_series_cuts({"Nodule": 0.5, "Effusion": 0.4}, {"Nodule": 0.75})
        assert cuts == {"Nodule": 0.75, "Effusion": 0.4}
        assert sources == {"Nodule": "series", "Effusion": "model"}

    def test_series_figures_and_table_say_which_threshold(self) -> None:
        series_of, targets, scores = _slices()
        cuts, sources = finding_series_cuts({"Nodule": 0.5, "Effusion": 0.5}, {"Nodule": 0.75})
        figures = series_metrics(
            series_of,
            targets,
            scores,
            NAMES,
            method="max",
            k=3,
            thresholds=cuts,
            multi_label=True,
            threshold_sources=sources,
        )
        nodule = figures["per_finding"]["Nodule"]
        assert (nodule["threshold"], nodule["threshold_source"]) == (0.75, "series")
        assert (nodule["sensitivity"], nodule["specificity"]) == (1.0, 1.0)
        assert figures["per_finding"]["Effusion"]["threshold_source"] == "model"
        at_instance = series_metrics(
            series_of,
            targets,
            scores,
            NAMES,
            method="max",
            k=3,
            thresholds={"Nodule": 0.5, "Effusion": 0.5},
            multi_label=True,
        )
        assert at_instance["per_finding"]["Nodule"]["specificity"] == 0.0  # n1, n2 over 0.5
        lines = format_series_table([], figures)
        assert any(
            line.strip().startswith("Nodule: threshold 0.7500 (series), sensitivity 1.0000")
            for line in lines
        )
        assert any("Effusion: threshold 0.5000 (model)" in line for line in lines)


def _findings_data(root: Path) -> Path:
    """Series-labelled findings with a given split: validation (patient P4) holds Nodule
    positive and negative series but no Effusion, so Effusion keeps its instance threshold."""
    rng = np.random.default_rng(3)
    rows = []
    kinds = {
        "train": ["Nodule", "No Finding", "Nodule|Effusion", "Effusion"],
        "val": ["Nodule", "No Finding", "Nodule", "No Finding"],
        "test": ["Nodule", "No Finding", "Nodule|Effusion", "Effusion"],
    }
    patients = [("train", p) for p in range(4)] + [("val", 4), ("val", 5), ("test", 6)]
    for split, p in patients:
        for s, label in enumerate(kinds[split]):
            folder = root / f"p{p}s{s}"
            write_series(
                folder,
                patient_id=f"P{p}",
                series_uid=uid("mlthr", p, s),
                positive="Nodule" in label,
                slices=3,
                rng=rng,
            )
            rows.append(
                {
                    "series_path": folder.name,
                    "findings": label,
                    "patient_id": f"P{p}",
                    "split": split,
                }
            )
    return write_rows(root / "findings.csv", rows)


@pytest.fixture(scope="module")
def findings_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One tiny multi-label run on series-labelled data (about 15 s on 2 cores)."""
    from radlens.training.run import train

    tmp = tmp_path_factory.mktemp("series-findings-threshold")
    csv_path = _findings_data(tmp / "ds")
    config = tiny_config(
        csv_path,
        tmp,
        multi_label=True,
        label_column="findings",
        epochs_head=1,
        openvino=False,
        ood_method="none",
        name="series-findings-threshold",
        threshold_rule="youden",
    )
    return train(config, verbose=0), csv_path


class TestRun:
    def test_manifest_records_a_series_threshold_per_finding(
        self, findings_run: tuple[Any, Path]
    ) -> None:
        from radlens.models.registry import ModelRegistry

        result, _ = findings_run
        manifest = ModelRegistry(result.store).load(result.model_ref).manifest
        record = manifest.metrics["series_threshold"]
        assert record["label_mode"] == "multi-label"
        assert list(record["thresholds"]) == ["Nodule"]
        assert 0.0 <= record["thresholds"]["Nodule"] <= 1.0
        assert record["instance_threshold_kept"] == ["Effusion"]
        assert record["n_positive"] == {"Nodule": 4, "Effusion": 0}
        assert (record["aggregation"], record["top_k"], record["n_series"]) == ("max", 3, 8)
        assert (record["rule"], record["fitted_on"]) == ("youden", "val")
        # the service's reader finds it; a binary reader does not read it as one threshold
        assert recorded_finding_series_thresholds(manifest.metrics, "max", 3) == {
            "Nodule": record["thresholds"]["Nodule"]
        }
        assert recorded_series_threshold(manifest.metrics, "max", 3) is None
        # the findings record (instance thresholds) is as before
        assert set(manifest.finding_thresholds) == {"Nodule", "Effusion"}

    def test_series_figures_are_measured_at_it(self, findings_run: tuple[Any, Path]) -> None:
        from radlens.models.registry import ModelRegistry

        result, _ = findings_run
        manifest = ModelRegistry(result.store).load(result.model_ref).manifest
        chosen = manifest.metrics["series_threshold"]["thresholds"]["Nodule"]
        for figures in (result.val_metrics["series"], result.test_metrics["series"]):
            nodule, effusion = figures["per_finding"]["Nodule"], figures["per_finding"]["Effusion"]
            assert (nodule["threshold"], nodule["threshold_source"]) == (chosen, "series")
            assert effusion["threshold"] == manifest.finding_thresholds["Effusion"]
            assert effusion["threshold_source"] == "model"
        assert manifest.metrics["val"]["series"]["per_finding"]["Nodule"]["threshold"] == chosen

    def test_train_log_says_so(self, findings_run: tuple[Any, Path]) -> None:
        result, _ = findings_run
        text = (result.run_dir / "train.log").read_text()
        assert "series threshold Nodule " in text and "instance threshold" in text
        assert "finding(s) ['Effusion'] have no validation series positive" in text
        assert "val series-level Nodule: threshold" in text and "(series)" in text

    def test_evaluate_decides_findings_as_the_service(self, findings_run: tuple[Any, Path]) -> None:
        from radlens.models.registry import ModelRegistry
        from radlens.training.evaluate import evaluate

        result, csv_path = findings_run
        manifest = ModelRegistry(result.store).load(result.model_ref).manifest
        chosen = manifest.metrics["series_threshold"]["thresholds"]["Nodule"]
        got = evaluate(result.model_ref, csv_path, split="val", store=result.store)
        nodule = got["series"]["per_finding"]["Nodule"]
        assert (nodule["threshold"], nodule["threshold_source"]) == (chosen, "series")
        assert got["series"]["per_finding"]["Effusion"]["threshold_source"] == "model"
        # the table decides at the same (series) threshold as the figures count
        matrix = nodule["confusion_matrix"]  # [[TN, FP], [FN, TP]]
        decided = matrix[0][1] + matrix[1][1]
        assert sum("Nodule" in r["predicted"] for r in got["series_table"]) == decided
        lines = format_series_table(got["series_table"], got["series"])
        assert any(f"Nodule: threshold {chosen:.4f} (series)" in line for line in lines)
        # another aggregation: the record does not hold for it, instance thresholds apply
        other = evaluate(
            result.model_ref,
            csv_path,
            split="val",
            store=result.store,
            series_aggregation="noisy_or",
        )
        nodule = other["series"]["per_finding"]["Nodule"]
        assert nodule["threshold"] == manifest.finding_thresholds["Nodule"]
        assert nodule["threshold_source"] == "model"

"""Operating points per finding: a multi-label run records, for each finding, the table a
binary run records (training.metrics.operating_points: chosen, youden, sens90/95/99 and the
threshold rule; thresholds on validation, figures with Wilson intervals on the reported
split), leaves out a point its validation positives cannot choose and says why -- in the
manifest (``metrics["operating_points_per_finding"]``), train.log, result.json and
``radlens evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.models.decision import finding_point_tables
from radlens.models.registry import ModelRegistry
from radlens.training import findings
from radlens.training.metrics import operating_points, required_positives, unsupported_points
from radlens.training.run import RunResult, train
from tests.training.data_fixtures import multilabel_csv
from tests.training.test_findings_training import findings_config

NAMES = ["Effusion", "Infiltration", "Nodule"]


def _data(n: int, positives: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images, finding j positive on its first ``positives[j]``; positives score
    higher on average, with overlap."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, len(positives)), dtype=np.int64)
    for j, count in enumerate(positives):
        y[:count, j] = 1
    scores = np.clip(0.25 + 0.35 * y + rng.normal(0.0, 0.15, y.shape), 0.001, 0.999)
    return y, scores


class TestTable:
    def test_required_positives_per_sensitivity_target(self) -> None:
        assert [required_positives(t) for t in (0.90, 0.95, 0.99)] == [10, 20, 100]

    def test_unsupported_points_say_why(self) -> None:
        assert unsupported_points(np.array([1] * 25 + [0] * 40)) == {
            "sens99": "25 validation positives, at least 100 needed"
        }
        assert unsupported_points(np.array([1] + [0] * 40)) == {
            "sens90": "1 validation positive, at least 10 needed",
            "sens95": "1 validation positive, at least 20 needed",
            "sens99": "1 validation positive, at least 100 needed",
        }
        assert unsupported_points(np.zeros(20))["youden"] == (
            "no validation positive: Youden's J is undefined"
        )

    def test_each_finding_gets_the_binary_table_on_its_own_column(self) -> None:
        """Effusion (25 validation positives): every point but sens99; Infiltration (12):
        sens90 but not sens95; Nodule (none): only its own threshold, no rule alias."""
        yv, sv = _data(80, [25, 12, 0], seed=1)
        ye, se = _data(60, [20, 10, 5], seed=2)
        cuts = {"Effusion": 0.45, "Infiltration": 0.4, "Nodule": 0.5}
        record = findings.finding_operating_points(
            yv, sv, ye, se, NAMES, cuts, rule="balanced", undecided=["Nodule"], evaluated_on="test"
        )
        assert (record["fitted_on"], record["evaluated_on"]) == ("val", "test")
        tables = record["per_finding"]
        assert list(tables["Effusion"]) == [
            "chosen",
            "youden",
            "sens90",
            "sens95",
            "balanced",
        ]
        assert list(tables["Infiltration"]) == ["chosen", "youden", "sens90", "balanced"]
        assert list(tables["Nodule"]) == ["chosen"]
        for j, name in enumerate(NAMES):  # what a binary run computes on that column
            binary = operating_points(yv[:, j], sv[:, j], ye[:, j], se[:, j], cuts[name])
            for point, figures in tables[name].items():
                if point == "balanced":
                    assert figures == {**binary["chosen"], "rule": "balanced"}
                else:
                    assert figures == binary[point]
        sens95 = tables["Effusion"]["sens95"]
        assert sens95["tp"] + sens95["fn"] == 20  # figures on the evaluation split
        assert len(sens95["sensitivity_ci95"]) == 2 and sens95["ppv"] is not None
        assert record["not_computed"] == {
            "Effusion": {"sens99": "25 validation positives, at least 100 needed"},
            "Infiltration": {
                "sens95": "12 validation positives, at least 20 needed",
                "sens99": "12 validation positives, at least 100 needed",
            },
            "Nodule": {
                "youden": "no validation positive: Youden's J is undefined",
                "sens90": "0 validation positives, at least 10 needed",
                "sens95": "0 validation positives, at least 20 needed",
                "sens99": "0 validation positives, at least 100 needed",
            },
        }

    def test_the_text_table_names_what_is_missing(self) -> None:
        yv, sv = _data(40, [12, 3, 5], seed=3)
        record = findings.finding_operating_points(
            yv, sv, yv, sv, NAMES, dict.fromkeys(NAMES, 0.5), rule="youden"
        )
        lines = findings.format_points_table(record)
        assert lines[0].split()[:4] == ["finding", "point", "thr", "sens"]
        assert any(line.startswith("Effusion                 sens90 ") for line in lines)
        assert (
            "Infiltration: no sens90, sens95, sens99 (sens90: 3 validation positives, at least "
            "10 needed; sens95: 3 validation positives, at least 20 needed; sens99: 3 "
            "validation positives, at least 100 needed)"
        ) in lines


@pytest.fixture(scope="module")
def points_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """144 images: validation holds 8 Effusion, 12 Infiltration and 8 Nodule positives, so
    Infiltration alone reaches sens90 (10 needed)."""
    tmp = tmp_path_factory.mktemp("findings-points-run")
    csv_path = multilabel_csv(tmp / "data", n=144)
    return train(findings_config(csv_path, tmp, openvino=False), verbose=0)


class TestRun:
    def _manifest(self, run: RunResult) -> Any:
        return ModelRegistry(run.store).load(run.model_ref).manifest

    def test_the_manifest_records_the_table_per_finding(self, points_run: RunResult) -> None:
        manifest = self._manifest(points_run)  # loads: the seal covers the new record
        record = manifest.metrics["operating_points_per_finding"]
        assert (record["fitted_on"], record["evaluated_on"]) == ("val", "test")
        assert list(record["per_finding"]) == NAMES
        for name in NAMES:  # chosen is the finding's own threshold, as served unset
            chosen = record["per_finding"][name]["chosen"]
            assert chosen["threshold"] == manifest.finding_thresholds[name]
            assert chosen["tp"] + chosen["fn"] == (12 if name == "Infiltration" else 8)
        assert "sens90" in record["per_finding"]["Infiltration"]
        assert "sens95" not in record["per_finding"]["Infiltration"]
        for name in ("Effusion", "Nodule"):
            assert not {"sens90", "sens95", "sens99"} & set(record["per_finding"][name])
            assert record["not_computed"][name]["sens90"] == (
                "8 validation positives, at least 10 needed"
            )
        assert record["not_computed"]["Infiltration"] == {
            "sens95": "12 validation positives, at least 20 needed",
            "sens99": "12 validation positives, at least 100 needed",
        }
        # what the service resolves RADLENS_OPERATING_POINT against
        assert set(finding_point_tables(manifest)["Infiltration"]) == {
            "chosen",
            "youden",
            "sens90",
        }

    def test_train_log_and_result_json(self, points_run: RunResult) -> None:
        log_text = (points_run.run_dir / "train.log").read_text()
        assert "operating points per finding (thresholds chosen on validation" in log_text
        assert "Infiltration             sens90 " in log_text
        assert (
            "WARNING" in log_text
            and "finding Effusion has no operating point sens90, sens95, sens99 (sens90: 8 "
            "validation positives, at least 10 needed"
            in log_text
        )
        result = json.loads((points_run.run_dir / "result.json").read_text())
        assert result["operating_points_per_finding"]["per_finding"]["Infiltration"]["sens90"]

    def test_evaluate_measures_each_point_on_the_data(
        self, points_run: RunResult, tmp_path: Path
    ) -> None:
        from radlens.training.evaluate import evaluate

        data = json.loads((points_run.run_dir / "config.json").read_text())["data"]
        out = tmp_path / "eval"
        metrics = evaluate(
            points_run.model_ref, data, split="test", store=points_run.store, out=out
        )
        manifest = self._manifest(points_run)
        trained = manifest.metrics["operating_points_per_finding"]
        evaluated = metrics["operating_points_per_finding"]
        assert evaluated["evaluated_on"] == "test"
        assert evaluated["not_computed"] == trained["not_computed"]
        for name, table in trained["per_finding"].items():
            for point, figures in table.items():
                again = evaluated["per_finding"][name][point]
                assert again["threshold"] == figures["threshold"]
                # the run's figures were measured on the same test split
                assert (again["tp"], again["fn"], again["fp"]) == (
                    figures["tp"],
                    figures["fn"],
                    figures["fp"],
                )
        text = (out / "findings.txt").read_text()
        assert "operating points per finding" in text and "Effusion: no sens90" in text

    def test_evaluate_of_a_model_without_the_table(
        self, points_run: RunResult, tmp_path: Path
    ) -> None:
        """A manifest written before the table (the record removed, resealed) evaluates as
        before: no operating-point lines."""
        from radlens.models.manifest import ModelManifest
        from radlens.training.evaluate import evaluate

        manifest = self._manifest(points_run)
        data = manifest.to_dict()
        del data["metrics"]["operating_points_per_finding"]
        old = ModelManifest.from_dict(data)
        assert finding_point_tables(old) == {}
        store = tmp_path / "store"
        ModelRegistry(store).save(
            ModelRegistry(points_run.store).load(points_run.model_ref).model,
            name="old",
            architecture=old.architecture,
            class_names=old.class_names,
            threshold=None,
            window=old.window,
            filters=old.filters,
            metrics=data["metrics"],
            training_config=old.training_config,
            data_fingerprint=None,
            findings=old.findings,
        )
        config = json.loads((points_run.run_dir / "config.json").read_text())
        metrics = evaluate("old:1", config["data"], split="test", store=store)
        assert "operating_points_per_finding" not in metrics
        assert not any("operating points" in line for line in metrics["table"])

"""Multi-label findings data: CSV and folder layouts, data-check's counts and co-occurrence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.training.config import TrainConfig
from radlens.training.data.sources import (
    MultiLabelSpec,
    check_splits,
    data_fingerprint,
    finding_cooccurrence,
    open_data,
    open_source,
    split_source,
)
from tests.conftest import shared_data_path
from tests.training.data_fixtures import multilabel_csv, random_gray, write_csv, write_png

SPEC = MultiLabelSpec(column="findings")


class TestMultiLabelSpec:
    def test_parse(self) -> None:
        assert SPEC.parse("Effusion|Infiltration", where="x") == ["Effusion", "Infiltration"]
        assert SPEC.parse(" No Finding ", where="x") == []
        assert SPEC.parse("Effusion| Effusion |", where="x") == ["Effusion"]

    def test_none_joined_to_findings_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="'No Finding' is joined to findings at x"):
            SPEC.parse("No Finding|Effusion", where="x")

    def test_empty_cell_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="empty finding label at line 3"):
            SPEC.parse("  ", where="line 3")

    def test_bad_separator(self) -> None:
        with pytest.raises(ConfigurationError, match="separator"):
            MultiLabelSpec(separator=" ")


class TestMultiLabelCsv:
    def test_findings_counts_and_targets(self, tmp_path: Path) -> None:
        csv_path = multilabel_csv(tmp_path, n=12)
        source = open_source(csv_path, multi_label=SPEC)
        assert source.multi_label and source.kind == "csv"
        assert source.class_names == ["Effusion", "Infiltration", "Nodule"]
        # combos cycle: none, E, I, N, E+I, I+N (twice in 12 images)
        assert source.class_counts() == {"Effusion": 4, "Infiltration": 6, "Nodule": 4}
        first = source.examples[:6]
        assert [e.findings for e in first] == [(), (0,), (1,), (2,), (0, 1), (1, 2)]
        assert [e.label for e in first] == [0, 1, 1, 1, 1, 1]  # any finding
        hot = source.targets(first)
        assert hot.dtype == np.float32 and hot.shape == (6, 3)
        assert hot[4].tolist() == [1.0, 1.0, 0.0]
        assert source.patient_source == "patient_id column"

    def test_cooccurrence(self, tmp_path: Path) -> None:
        source = open_source(multilabel_csv(tmp_path, n=12), multi_label=SPEC)
        matrix = finding_cooccurrence(source)
        assert matrix.tolist() == [[4, 2, 0], [2, 6, 2], [0, 2, 4]]

    def test_configurable_separator_and_none_name(self, tmp_path: Path) -> None:
        csv_path = multilabel_csv(tmp_path, n=12, column="label", separator=";", none_name="-")
        source = open_source(csv_path, multi_label=MultiLabelSpec(separator=";", none_name="-"))
        assert source.class_counts() == {"Effusion": 4, "Infiltration": 6, "Nodule": 4}

    def test_finding_list_fixes_the_order(self, tmp_path: Path) -> None:
        spec = MultiLabelSpec(column="findings", findings=("Nodule", "Effusion", "Infiltration"))
        source = open_source(multilabel_csv(tmp_path, n=12), multi_label=spec)
        assert source.class_names == ["Nodule", "Effusion", "Infiltration"]
        assert source.examples[4].findings == (1, 2)

    def test_unknown_finding_name_is_refused(self, tmp_path: Path) -> None:
        spec = MultiLabelSpec(column="findings", findings=("Effusion", "Infiltration"))
        with pytest.raises(ConfigurationError, match=r"finding\(s\) \['Nodule'\] .* not in"):
            open_source(multilabel_csv(tmp_path, n=12), multi_label=spec)

    def test_missing_column_names_it(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigurationError, match="has no 'nih_finding_labels' column"):
            open_source(
                multilabel_csv(tmp_path, n=6), multi_label=MultiLabelSpec("nih_finding_labels")
            )

    def test_single_finding_is_refused(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        rows = [
            {
                "path": write_png(tmp_path / f"{i}.png", random_gray(rng)).name,
                "label": "Effusion" if i % 2 else "No Finding",
            }
            for i in range(4)
        ]
        with pytest.raises(ConfigurationError, match="at least 2 finding names"):
            open_source(write_csv(tmp_path / "l.csv", rows), multi_label=MultiLabelSpec())

    def test_single_label_reading_is_unchanged(self, tmp_path: Path) -> None:
        csv_path = multilabel_csv(tmp_path, n=12, column="label")
        source = open_source(csv_path)  # the label cells read as class names, as before
        assert not source.multi_label
        assert "Effusion|Infiltration" in source.class_names
        assert all(e.findings is None for e in source.examples)

    def test_fingerprint_sees_the_findings(self, tmp_path: Path) -> None:
        csv_path = multilabel_csv(tmp_path, n=12)
        source = open_source(csv_path, multi_label=SPEC)
        splits = split_source(source)
        before = data_fingerprint(source, splits)
        rows = (csv_path.read_text().replace("Infiltration|Nodule", "Nodule"),)
        csv_path.write_text(rows[0])
        changed = open_source(csv_path, multi_label=SPEC)
        assert data_fingerprint(changed, split_source(changed)) != before

    def test_ignored_findings_leave_the_labels(self, tmp_path: Path) -> None:
        spec = MultiLabelSpec(column="findings", ignore=("Nodule",))
        source = open_source(multilabel_csv(tmp_path, n=12), multi_label=spec)
        assert source.class_names == ["Effusion", "Infiltration"]
        # none, E, I, N (-> none), E+I, I+N (-> I)
        assert [e.findings for e in source.examples[:6]] == [(), (0,), (1,), (), (0, 1), (1,)]

    def test_ignore_and_findings_overlap_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="ignore_findings must be names not in"):
            TrainConfig.from_dict({"multi_label": True, "findings": "A,B", "ignore_findings": "B"})


class TestMultiLabelFolder:
    def test_folder_names_are_finding_sets(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(1)
        for name in ("none", "Effusion", "Effusion+Nodule", "Nodule"):
            for i in range(2):
                write_png(tmp_path / "ds" / name / f"{i}.png", random_gray(rng))
        spec = MultiLabelSpec(separator="+", none_name="none")
        source = open_source(tmp_path / "ds", multi_label=spec)
        assert source.kind == "folder"
        assert source.class_names == ["Effusion", "Nodule"]
        assert source.class_counts() == {"Effusion": 4, "Nodule": 4}
        assert sum(not e.findings for e in source.examples) == 2


class TestFindingSplits:
    def test_given_splits_pass(self, tmp_path: Path) -> None:
        source = open_data(multilabel_csv(tmp_path), multi_label=SPEC)
        splits = split_source(source)
        check_splits(source, splits)
        assert [len(splits[s]) for s in ("train", "val", "test")] == [36, 6, 6]

    def test_finding_without_training_image_is_refused(self, tmp_path: Path) -> None:
        source = open_data(multilabel_csv(tmp_path), multi_label=SPEC)
        splits = split_source(source)
        splits["train"] = [e for e in splits["train"] if 2 not in (e.findings or ())]
        with pytest.raises(ConfigurationError, match=r"finding\(s\) \['Nodule'\] have no train"):
            check_splits(source, splits)

    def test_validation_without_contrast_is_refused(self, tmp_path: Path) -> None:
        source = open_data(multilabel_csv(tmp_path), multi_label=SPEC)
        splits = split_source(source)
        splits["val"] = [e for e in splits["val"] if not e.findings]
        with pytest.raises(ConfigurationError, match="with and without at least one finding"):
            check_splits(source, splits)


class TestConfig:
    def test_multi_label_options(self) -> None:
        cfg = TrainConfig.from_dict(
            {"multi_label": "true", "label_column": "f", "findings": "A, B", "label_separator": ";"}
        )
        spec = cfg.multi_label_spec()
        assert spec == MultiLabelSpec(column="f", separator=";", findings=("A", "B"))
        assert TrainConfig().multi_label_spec() is None

    def test_findings_without_multi_label_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="apply to multi-label training only"):
            TrainConfig.from_dict({"findings": ["A", "B"]})

    def test_bad_positive_weights(self) -> None:
        with pytest.raises(ConfigurationError, match="positive_weights must be 'auto' or 'none'"):
            TrainConfig.from_dict({"multi_label": True, "positive_weights": "yes"})

    def test_distributed_multi_label_is_accepted(self) -> None:
        # the custom loop keeps multi-hot labels (tests/training/test_findings_distributed.py)
        cfg = TrainConfig.from_dict({"multi_label": True, "strategy": "mirrored"})
        assert cfg.multi_label and cfg.strategy == "mirrored"


class TestDataCheck:
    def test_reports_findings_and_cooccurrence(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        csv_path = multilabel_csv(tmp_path, n=12)
        code = main(["data-check", str(csv_path), "--multi-label", "--label-column", "findings"])
        out = capsys.readouterr().out
        assert code == 0
        assert "finding Infiltration: 6" in out
        assert "No Finding: 2" in out
        assert "Effusion + Infiltration: 2" in out
        assert "Effusion + Nodule" not in out  # never seen together

    def test_bad_column_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        csv_path = multilabel_csv(tmp_path, n=6)
        code = main(["data-check", str(csv_path), "--multi-label", "--label-column", "nope"])
        err = capsys.readouterr().err
        assert code == 2
        assert "has no 'nope' column" in err and "Traceback" not in err

    def test_nih1000(self, capsys: pytest.CaptureFixture[str]) -> None:
        labels = shared_data_path("nih1000", "labels.csv")  # skips when absent
        args = ["data-check", str(labels), "--multi-label", "--label-column", "nih_finding_labels"]
        assert main(args) == 2  # its given split puts 30 patients in two splits, train refuses it
        assert "30 patient(s) have images in more than one given split" in capsys.readouterr().err
        assert main([*args, "--resplit"]) == 0  # the README's command
        out = capsys.readouterr().out
        assert "findings: 14 (multi-label" in out
        assert "finding Effusion: 170" in out
        assert "No Finding: 499" in out
        assert "Effusion + Infiltration: 46" in out


def _rare_and_common(tmp_path: Path) -> Path:
    """80 one-patient images: 10 with Rare (+Common), 50 with Common only, 20 with none."""
    rng = np.random.default_rng(2)
    rows = []
    for i in range(80):
        label = "Rare|Common" if i < 10 else "Common" if i < 60 else "No Finding"
        path = write_png(tmp_path / f"{i:02d}.png", random_gray(rng))
        rows.append({"path": path.name, "label": label, "patient_id": f"P{i}"})
    return write_csv(tmp_path / "labels.csv", rows)


def test_splits_spread_the_rarest_finding(tmp_path: Path) -> None:
    source = open_source(_rare_and_common(tmp_path), multi_label=MultiLabelSpec())
    for seed in range(5):
        splits = split_source(source, val_fraction=0.2, test_fraction=0.2, seed=seed)
        rare = {name: source.class_counts(items)["Rare"] for name, items in splits.items()}
        assert rare == {"train": 6, "val": 2, "test": 2}, (seed, rare)

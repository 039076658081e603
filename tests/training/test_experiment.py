"""The filter experiment: choices, seeds, the paired noise test, the ranked table, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.models.ops import FILTER_NAMES
from radlens.training.config import TrainConfig
from radlens.training.experiment import (
    FILTER_CHOICES,
    ExperimentResult,
    RunRecord,
    filters_of,
    markdown_table,
    parse_choices,
    rank,
    run_filter_experiment,
    text_table,
    within_noise,
)


def _record(choice: str, seed: int, auc: float, seconds: float = 10.0) -> RunRecord:
    metrics: dict[str, float | None] = {
        "auc": auc,
        "accuracy": 0.9,
        "sensitivity": 0.9,
        "specificity": 0.8,
        "loss": 0.3,
        "seconds": seconds,
    }
    return RunRecord(choice, seed, f"m-{choice}:{seed}", f"/runs/{choice}-{seed}", metrics)


class TestChoices:
    def test_every_choice_maps_to_filters(self) -> None:
        assert FILTER_CHOICES == ("none", "sobel_h", "sobel_v", "blur", "outline", "all")
        assert filters_of("none") == ()
        assert filters_of("sobel_v") == ("sobel_v",)
        assert filters_of("all") == tuple(FILTER_NAMES) and len(FILTER_NAMES) == 4

    def test_parse(self) -> None:
        assert parse_choices(None) == FILTER_CHOICES
        assert parse_choices(" none, blur ") == ("none", "blur")

    @pytest.mark.parametrize(
        ("text", "match"),
        [
            ("none,emboss", r"unknown filter choice 'emboss'; choose from none, sobel_h"),
            ("blur,blur", r"must not repeat; received 'blur,blur'"),
            (" , ", r"no filter choice given; received ' , '"),
        ],
    )
    def test_bad(self, text: str, match: str) -> None:
        with pytest.raises(ConfigurationError, match=match):
            parse_choices(text)


class TestWithinNoise:
    def test_consistent_small_gap_is_a_real_difference(self) -> None:
        # b is below a by 0.002 on every seed: tiny, but the seeds agree
        a = {1: 0.990, 2: 0.994, 3: 0.992}
        b = {1: 0.988, 2: 0.992, 3: 0.990}
        assert not within_noise(a, b)

    def test_gap_smaller_than_the_seed_scatter_is_noise(self) -> None:
        a = {1: 0.990, 2: 0.980, 3: 0.995}
        b = {1: 0.985, 2: 0.990, 3: 0.987}
        assert within_noise(a, b)

    def test_one_seed_cannot_tell(self) -> None:
        assert within_noise({1: 0.99}, {1: 0.5})

    def test_identical(self) -> None:
        assert within_noise({1: 0.9, 2: 0.9}, {1: 0.9, 2: 0.9})


class TestRanking:
    def test_ranked_by_mean_with_spread_and_noise_groups(self) -> None:
        records = [
            *(_record("none", s, a) for s, a in [(1, 0.990), (2, 0.994), (3, 0.992)]),
            *(_record("blur", s, a) for s, a in [(1, 0.960), (2, 0.962), (3, 0.958)]),
            *(_record("outline", s, a) for s, a in [(1, 0.992), (2, 0.984), (3, 0.994)]),
        ]
        summaries = rank(records, ["none", "blur", "outline"])
        assert [s.choice for s in summaries] == ["none", "outline", "blur"]
        assert [s.rank for s in summaries] == [1, 2, 3]
        best = summaries[0]
        assert best.mean["auc"] == pytest.approx(0.992)
        assert best.sd["auc"] == pytest.approx(0.002)
        assert best.within_noise_of == ["outline"]
        assert summaries[2].within_noise_of == []  # blur is clearly worse
        result = ExperimentResult(Path("/exp"), summaries, records, [1, 2, 3], "note")
        table = text_table(result)
        assert "0.9920 ± 0.0020" in table and "outline" in table
        md = markdown_table(result)
        assert md.splitlines()[2].startswith("| rank | filters | val AUC |")
        assert "| 1 | none | 0.9920 ± 0.0020 |" in md


def test_bad_arguments(tmp_path: Path) -> None:
    base = TrainConfig(data=str(tmp_path), architecture="simple_cnn")
    with pytest.raises(ConfigurationError, match="seeds must be from 1 to 20; received 0"):
        run_filter_experiment(base, seeds=0, out_dir=tmp_path / "e")
    with pytest.raises(ConfigurationError, match="no data given"):
        run_filter_experiment(TrainConfig(), out_dir=tmp_path / "e")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigurationError, match="experiment directory is not empty"):
        run_filter_experiment(base, out_dir=tmp_path / "full")


@pytest.mark.slow
def test_cli_runs_every_choice_and_seed_and_writes_the_table(
    tiny_demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "experiment"
    # the cheapest runs: no histograms, no sample images, no OpenVINO conversion at export
    config = tmp_path / "base.yaml"
    # min_calibration_positives: the tiny demo's validation holds 3 positives
    config.write_text(
        "histogram_freq: 0\ntensorboard_samples: 0\nname: tiny\nmin_calibration_positives: 2\n"
        "openvino: false\n"
    )
    status = main(
        [
            "experiment",
            "filters",
            "--config",
            str(config),
            "--data",
            str(tiny_demo_data),
            "--arch",
            "simple_cnn",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--choices",
            "none,all",
            "--seeds",
            "2",
            "--seed",
            "5",
            "--out",
            str(out),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "[4/4] filters=all seed=6" in captured.err
    result = json.loads(captured.out)
    assert result["seeds"] == [5, 6]
    assert sorted((r["choice"], r["seed"]) for r in result["runs"]) == [
        ("all", 5),
        ("all", 6),
        ("none", 5),
        ("none", 6),
    ]
    ranking = result["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2]
    assert ranking[0]["mean"]["auc"] >= ranking[1]["mean"]["auc"]
    for row in ranking:
        runs = [r for r in result["runs"] if r["choice"] == row["choice"]]
        assert row["mean"]["auc"] == pytest.approx(sum(r["auc"] for r in runs) / 2)
        assert row["sd"]["auc"] is not None and row["mean"]["seconds"] > 0
        assert row["mean"]["loss"] is not None
    # one TensorBoard run per training run, all under one directory so they overlay
    run_dirs = sorted(p for p in (out / "runs").iterdir())
    assert len(run_dirs) == 4
    assert all((p / "tensorboard" / "validation").is_dir() for p in run_dirs)
    # every run of a seed used the same split: only the seed of the model changed
    configs = [json.loads((p / "config.json").read_text()) for p in run_dirs]
    assert {c["split_seed"] for c in configs} == {5}
    assert {tuple(c["filters"]) for c in configs} == {(), tuple(FILTER_NAMES)}
    md = (out / "results.md").read_text()
    assert "| rank | filters |" in md and "2 seeds per choice" in md
    assert json.loads((out / "results.json").read_text())["ranking"] == ranking


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--choices", "emboss"], "unknown filter choice 'emboss'"),
        (["--seeds", "0"], "--seeds must be from 1 to 20; received 0"),
        (["--arch", "vgg"], "architecture must be one of resnet50, simple_cnn; received 'vgg'"),
    ],
)
def test_cli_bad_options_exit_2(
    tiny_demo_data: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["experiment", "filters", "--data", str(tiny_demo_data), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "filters", "--data", str(tmp_path / "nope")]) == 2
    assert "data path does not exist" in capsys.readouterr().err

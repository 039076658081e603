"""The filter experiment: which classic filter front-end works best, with seeds and noise.

``run_filter_experiment(base, seeds=3)`` trains one run per filter choice and seed:

    none, sobel_h, sobel_v, blur, outline, all (the four stacked)

Every run is an ordinary ``training.run.train`` run of ``base`` with ``filters`` and ``seed``
changed (the data split stays the same: ``split_seed`` is fixed to the base seed, so the
choices are compared on the same validation images). The runs live under
``<experiment dir>/runs/`` and export to ``<experiment dir>/store/``, so
``tensorboard --logdir <experiment dir>/runs`` overlays them (one TensorBoard run each).

Ranking. On an easy data set every choice reaches about the same validation AUC, so one run
per choice cannot rank them: the table ranks choices by the MEAN validation AUC over the seeds,
shows its spread (sample standard deviation), and says which choices are within noise of
each other. Seed ``k`` is the same for every choice, so two choices are compared by their
paired per-seed differences: they are "within noise" when the mean difference is smaller than
what a two-sided paired t-test at 95 % would call significant (with one seed nothing can be
told apart, and the table says so). Accuracy, sensitivity and specificity are at each run's
own threshold chosen on validation (the same rule for every choice, so they compare, but they
are optimistic); loss is the validation cross-entropy of the best epoch.

Outputs in the experiment directory: ``results.json`` (every run and the summary),
``results.md`` (the ranked table) and ``experiment.json`` (what was asked).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from radlens.models.errors import ConfigurationError
from radlens.training.config import TrainConfig

log = logging.getLogger(__name__)

ALL_STACKED = "all"
FILTER_CHOICES = ("none", "sobel_h", "sobel_v", "blur", "outline", ALL_STACKED)
METRICS = ("auc", "accuracy", "sensitivity", "specificity", "loss", "seconds")
MAX_SEEDS = 20
# two-sided 95 % critical values of Student's t by degrees of freedom (n seeds - 1)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
_T95_LARGE = 2.262  # df >= 9 (conservative: t(9))


def filters_of(choice: str) -> tuple[str, ...]:
    """The ``filters`` tuple of a choice: ``none`` -> (), ``all`` -> every classic filter."""
    from radlens.models.ops import FILTER_NAMES

    if choice == "none":
        return ()
    if choice == ALL_STACKED:
        return tuple(FILTER_NAMES)
    if choice in FILTER_NAMES:
        return (choice,)
    raise ConfigurationError(
        f"unknown filter choice {choice!r}; choose from {', '.join(FILTER_CHOICES)}"
    )


def parse_choices(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"none,sobel_h"`` or a list -> validated choices in the given order (None = all six)."""
    if text is None:
        return FILTER_CHOICES
    items = [c.strip() for c in text.split(",")] if isinstance(text, str) else list(text)
    items = [c for c in items if c]
    if not items:
        raise ConfigurationError(f"no filter choice given; received {text!r}")
    for item in items:
        filters_of(item)
    if len(set(items)) != len(items):
        raise ConfigurationError(f"filter choices must not repeat; received {text!r}")
    return tuple(items)


@dataclass
class RunRecord:
    """One finished run of the experiment."""

    choice: str
    seed: int
    model_ref: str
    run_dir: str
    metrics: dict[str, float | None]  # METRICS

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice,
            "seed": self.seed,
            "model": self.model_ref,
            "run_dir": self.run_dir,
            **self.metrics,
        }


@dataclass
class ChoiceSummary:
    """Mean and spread of one choice over its seeds, its rank and its noise neighbours."""

    choice: str
    filters: tuple[str, ...]
    runs: int
    mean: dict[str, float | None]
    sd: dict[str, float | None]
    rank: int = 0
    within_noise_of: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "choice": self.choice,
            "filters": list(self.filters),
            "runs": self.runs,
            "mean": self.mean,
            "sd": self.sd,
            "within_noise_of": self.within_noise_of,
        }


@dataclass
class ExperimentResult:
    """The ranked summary, every run, and where the files are."""

    directory: Path
    summaries: list[ChoiceSummary]  # ranked, best first
    runs: list[RunRecord]
    seeds: list[int]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "seeds": self.seeds,
            "ranking": [s.to_dict() for s in self.summaries],
            "runs": [r.to_dict() for r in self.runs],
            "note": self.note,
        }


def run_filter_experiment(
    base: TrainConfig,
    *,
    choices: Sequence[str] = FILTER_CHOICES,
    seeds: int = 3,
    out_dir: Path | None = None,
    train_fn: Callable[..., Any] | None = None,
    on_run: Callable[[str, int, int, int], None] | None = None,
) -> ExperimentResult:
    """Train every (choice, seed), then rank the choices (see the module docstring).

    Args:
        base: the run every choice starts from (data, architecture, epochs, ...); its
            ``filters`` are replaced, its ``seed`` is the first seed and the split's seed.
        choices: filter choices from :data:`FILTER_CHOICES`.
        seeds: runs per choice (seeds ``base.seed``, ``base.seed + 1``, ...), 1 to 20.
        out_dir: the experiment directory (default ``<runs_dir>/filters-<UTC timestamp>``).
        train_fn: ``training.run.train`` (default); tests may pass a wrapper.
        on_run: called as ``on_run(choice, seed, index, total)`` before each run.

    Raises:
        models.errors.ConfigurationError: no data, an unknown choice, a bad seed count, an
            out_dir that holds files already; and whatever a run raises.
    """
    if base.data is None:
        raise ConfigurationError("no data given; pass --data PATH (or set data: in the config)")
    choices = parse_choices(list(choices))
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise ConfigurationError(f"seeds must be from 1 to {MAX_SEEDS}; received {seeds!r}")
    if train_fn is None:
        from radlens.training.run import train

        train_fn = train
    directory = Path(out_dir) if out_dir is not None else _new_dir(base)
    if directory.exists() and any(directory.iterdir()):
        raise ConfigurationError(f"experiment directory is not empty: {str(directory)!r}")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    seed_list = [base.seed + k for k in range(seeds)]
    split_seed = base.split_seed if base.split_seed is not None else base.seed
    (directory / "experiment.json").write_text(
        json.dumps(
            {
                "kind": "filters",
                "choices": list(choices),
                "seeds": seed_list,
                "split_seed": split_seed,
                "base_config": base.to_dict(),
            },
            indent=2,
        )
        + "\n"
    )
    records: list[RunRecord] = []
    total = len(choices) * len(seed_list)
    index = 0
    for seed in seed_list:  # seed-major: a stopped experiment still has every choice once
        for choice in choices:
            index += 1
            if on_run is not None:
                on_run(choice, seed, index, total)
            config = base.with_overrides(
                {
                    "filters": list(filters_of(choice)),
                    "seed": seed,
                    "split_seed": split_seed,
                    "name": f"{base.name}-{choice.replace('_', '-')}-s{seed}",
                    "runs_dir": str(directory / "runs"),
                    "store": str(directory / "store"),
                }
            )
            try:
                result = train_fn(config, verbose=0)
            except ConfigurationError:
                if not records:  # refused before any run: leave no experiment behind
                    _remove_unstarted(directory, created=created)
                raise
            records.append(_record(choice, seed, result))
            log.info("run %d/%d %s seed %d: %s", index, total, choice, seed, records[-1].metrics)
    summaries = rank(records, choices)
    note = _note(len(seed_list))
    result = ExperimentResult(directory, summaries, records, seed_list, note)
    (directory / "results.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    (directory / "results.md").write_text(markdown_table(result, base) + "\n")
    return result


def _remove_unstarted(directory: Path, *, created: bool) -> None:
    """Remove what an experiment whose first run was refused (a split too small to calibrate,
    ...) wrote, so that the same ``--out`` takes the corrected options: its experiment.json,
    and the folders it made while they are empty. A run refuses before writing its folder."""
    for sub in (directory / "runs", directory / "store"):
        if sub.is_dir() and any(sub.iterdir()):
            return
    for sub in (directory / "runs", directory / "store"):
        if sub.is_dir():
            sub.rmdir()
    (directory / "experiment.json").unlink(missing_ok=True)
    if created and not any(directory.iterdir()):
        directory.rmdir()


def _record(choice: str, seed: int, result: Any) -> RunRecord:
    val = result.val_metrics
    metrics: dict[str, float | None] = {
        key: _float(val.get(key)) for key in ("auc", "accuracy", "sensitivity", "specificity")
    }
    metrics["loss"] = _best_epoch_loss(Path(result.run_dir), result.best_epoch)
    metrics["seconds"] = round(float(result.seconds), 1)
    return RunRecord(choice, seed, result.model_ref, str(result.run_dir), metrics)


def _best_epoch_loss(run_dir: Path, best_epoch: int | None) -> float | None:
    """The validation loss of the best epoch (1-based), from the run's history.csv."""
    path = run_dir / "history.csv"
    if best_epoch is None or not path.is_file():
        return None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("epoch") == str(best_epoch - 1):
                return _float(row.get("val_loss"))
    return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def rank(records: Sequence[RunRecord], choices: Sequence[str]) -> list[ChoiceSummary]:
    """Summaries ranked by mean validation AUC (best first), with their noise neighbours."""
    by_choice: dict[str, list[RunRecord]] = {c: [] for c in choices}
    for record in records:
        by_choice.setdefault(record.choice, []).append(record)
    summaries = []
    for choice, runs in by_choice.items():
        if not runs:
            continue
        mean: dict[str, float | None] = {}
        sd: dict[str, float | None] = {}
        for key in METRICS:
            values = [v for v in (r.metrics.get(key) for r in runs) if v is not None]
            mean[key] = statistics.fmean(values) if values else None
            sd[key] = statistics.stdev(values) if len(values) > 1 else None
        summaries.append(ChoiceSummary(choice, filters_of(choice), len(runs), mean, sd))
    summaries.sort(key=lambda s: -(s.mean["auc"] if s.mean["auc"] is not None else -1.0))
    for position, summary in enumerate(summaries, start=1):
        summary.rank = position
    aucs = {c: {r.seed: r.metrics.get("auc") for r in runs} for c, runs in by_choice.items()}
    for summary in summaries:
        summary.within_noise_of = [
            other.choice
            for other in summaries
            if other is not summary and within_noise(aucs[summary.choice], aucs[other.choice])
        ]
    return summaries


def within_noise(a: dict[int, float | None], b: dict[int, float | None]) -> bool:
    """Whether two choices' AUCs differ by less than seed noise (paired t-test, 95 %).

    ``a`` and ``b`` map seed -> AUC. Pairs are the seeds both have. With fewer than two pairs
    there is no estimate of the noise and the answer is True (cannot be told apart).
    """
    diffs = [
        float(a[s]) - float(b[s])  # type: ignore[arg-type]
        for s in a
        if s in b and a[s] is not None and b[s] is not None
    ]
    if len(diffs) < 2:
        return True
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs)
    if sd == 0.0:
        return mean == 0.0
    t = abs(mean) / (sd / math.sqrt(len(diffs)))
    return t < _T95.get(len(diffs) - 1, _T95_LARGE)


def _note(seeds: int) -> str:
    if seeds < 2:
        return (
            "one seed per choice: the spread is unknown, so no difference can be told from "
            "noise; run with --seeds 3 or more to rank"
        )
    return (
        f"{seeds} seeds per choice; ranked by mean validation AUC; 'within noise of' lists "
        "choices whose paired per-seed AUC difference is not significant (two-sided paired "
        "t-test, 95 %)"
    )


def _fmt(mean: float | None, sd: float | None, digits: int = 4) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table_rows(result: ExperimentResult) -> list[list[str]]:
    """Header and one row per choice, best first (shared by the text and markdown tables)."""
    rows = [
        [
            "rank",
            "filters",
            "val AUC",
            "accuracy",
            "sensitivity",
            "specificity",
            "val loss",
            "time (s)",
            "runs",
            "within noise of",
        ]
    ]
    for s in result.summaries:
        rows.append(
            [
                str(s.rank),
                s.choice,
                _fmt(s.mean["auc"], s.sd["auc"]),
                _fmt(s.mean["accuracy"], s.sd["accuracy"], 3),
                _fmt(s.mean["sensitivity"], s.sd["sensitivity"], 3),
                _fmt(s.mean["specificity"], s.sd["specificity"], 3),
                _fmt(s.mean["loss"], s.sd["loss"], 3),
                _fmt(s.mean["seconds"], None, 0),
                str(s.runs),
                ", ".join(s.within_noise_of) or "-",
            ]
        )
    return rows


def text_table(result: ExperimentResult) -> str:
    """The ranked table for a terminal (aligned columns)."""
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, "", result.note])


def markdown_table(result: ExperimentResult, base: TrainConfig | None = None) -> str:
    """results.md: what was run, the ranked table, the note."""
    rows = table_rows(result)
    out = ["# Filter experiment", ""]
    if base is not None:
        out.append(
            f"Data `{base.data}`, {base.architecture} at {base.image_size} px, "
            f"{base.epochs_head} epoch(s), batch {base.batch_size}; seeds "
            f"{', '.join(str(s) for s in result.seeds)}; TensorBoard: "
            f"`tensorboard --logdir {result.directory / 'runs'}`."
        )
        out.append("")
    out.append("| " + " | ".join(rows[0]) + " |")
    out.append("|" + "|".join("---" for _ in rows[0]) + "|")
    out.extend("| " + " | ".join(row) + " |" for row in rows[1:])
    out.extend(["", result.note + "."])
    return "\n".join(out)


def _new_dir(base: TrainConfig) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = Path(base.runs_dir) / f"filters-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path(base.runs_dir) / f"filters-{stamp}-{n}"
    return path

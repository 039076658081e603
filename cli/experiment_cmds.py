"""Experiment commands: ``radlens experiment filters``.

Only typer and the standard library are imported here; ``training`` (and so TensorFlow) is
imported inside the command body, once the options are known to be sound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from radlens.cli import training_options as shared
from radlens.cli.common import fail

experiment_app = typer.Typer(
    help="Experiments that compare training choices over several seeds.",
    no_args_is_help=True,
)


def filters(
    data: shared.DataOption = None,
    config: shared.ConfigOption = None,
    arch: shared.ArchOption = None,
    choices: Annotated[
        str | None,
        typer.Option(
            "--choices",
            help="Comma-separated subset of none,sobel_h,sobel_v,blur,outline,all (default all).",
        ),
    ] = None,
    seeds: Annotated[
        int, typer.Option("--seeds", help="Runs per choice (seeds SEED, SEED+1, ...).")
    ] = 3,
    image_size: shared.ImageSizeOption = None,
    epochs: shared.EpochsOption = None,
    batch_size: shared.BatchSizeOption = None,
    learning_rate: shared.LearningRateOption = None,
    augment: shared.AugmentOption = None,
    seed: shared.SeedOption = None,
    name: shared.NameOption = None,
    runs_dir: shared.RunsDirOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Experiment directory (default RUNS_DIR/filters-<time>)."),
    ] = None,
    json_out: shared.JsonOption = False,
) -> None:
    """Train one run per filter choice and seed, then rank the choices by mean val AUC."""
    params = dict(locals())  # the options as given, before any other name is bound
    overrides = shared.overrides(params)
    from radlens.training.experiment import MAX_SEEDS, parse_choices  # no TensorFlow

    base = shared.base_config(config, overrides, name="filters")
    if not 1 <= seeds <= MAX_SEEDS:
        fail(f"--seeds must be from 1 to {MAX_SEEDS}; received {seeds}")
    if base.filters:
        fail(f"the experiment chooses the filters; remove filters={list(base.filters)!r}")
    chosen = parse_choices(choices)
    if out is not None and out.exists() and any(out.iterdir()):
        fail(f"--out directory is not empty: {str(out)!r}")

    from radlens.training.experiment import run_filter_experiment, text_table

    def progress(choice: str, run_seed: int, index: int, total: int) -> None:
        typer.echo(f"[{index}/{total}] filters={choice} seed={run_seed}", err=json_out)

    result = run_filter_experiment(base, choices=chosen, seeds=seeds, out_dir=out, on_run=progress)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(text_table(result))
    typer.echo(f"\ntable: {result.directory / 'results.md'}  runs: {result.directory / 'runs'}")
    typer.echo(f"tensorboard --logdir {result.directory / 'runs'}")


def register(app: typer.Typer) -> None:
    """Add ``experiment filters`` to the radlens CLI."""
    experiment_app.command("filters")(filters)
    app.add_typer(experiment_app, name="experiment")

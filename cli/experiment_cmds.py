"""Experiment commands: ``radlens experiment filters``.

Only typer and the standard library are imported here; ``training`` (and so TensorFlow) is
imported inside the command body, once the options are known to be sound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import fail

experiment_app = typer.Typer(
    help="Experiments that compare training choices over several seeds.",
    no_args_is_help=True,
)


def filters(
    data: Annotated[
        str | None,
        typer.Option("--data", help="Folder of class sub-folders (or with labels.csv), .csv, .npz"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML or JSON training config every run starts from."),
    ] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="resnet50 or simple_cnn.")] = None,
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
    image_size: Annotated[int | None, typer.Option("--image-size")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs per run.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="First seed (and the split's).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Prefix of the run names.")] = None,
    runs_dir: Annotated[
        str | None, typer.Option("--runs-dir", help="Where the experiment directory goes.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Experiment directory (default RUNS_DIR/filters-<time>)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train one run per filter choice and seed, then rank the choices by mean val AUC."""
    overrides: dict[str, Any] = {
        "data": data,
        "architecture": arch,
        "image_size": image_size,
        "epochs_head": epochs,
        "batch_size": batch_size,
        "learning_rate_head": learning_rate,
        "augment": augment,
        "seed": seed,
        "name": name,
        "runs_dir": runs_dir,
    }
    from training.config import TrainConfig  # no TensorFlow
    from training.experiment import MAX_SEEDS, parse_choices

    base = (
        TrainConfig.load(config, overrides)
        if config is not None
        else TrainConfig(name="filters").with_overrides(overrides)
    )
    if base.data is None:
        fail("no data: pass --data PATH (or set data: in the config file)")
    if not Path(base.data).exists():
        fail(f"data path does not exist: {base.data!r}")
    if not 1 <= seeds <= MAX_SEEDS:
        fail(f"--seeds must be from 1 to {MAX_SEEDS}; received {seeds}")
    if base.filters:
        fail(f"the experiment chooses the filters; remove filters={list(base.filters)!r}")
    chosen = parse_choices(choices)
    if out is not None and out.exists() and any(out.iterdir()):
        fail(f"--out directory is not empty: {str(out)!r}")

    from training.experiment import run_filter_experiment, text_table

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

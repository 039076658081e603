"""QA round 32: `--help` says what every option does, and what it says agrees with the
service's settings (a new user reads the help before the docs)."""

from __future__ import annotations

import re
from typing import Any

import typer

from radlens.app.settings import Settings
from radlens.cli.main import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [(path, command)]
    found: list[tuple[tuple[str, ...], Any]] = []
    for name, sub in subcommands.items():
        found.extend(_commands(sub, (*path, name)))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_option_of_every_command_has_a_help_text() -> None:
    assert len(COMMANDS) > 20  # every leaf command, not one group
    missing = [
        f"radlens {' '.join(path)} {'/'.join(param.opts)}"
        for path, command in COMMANDS
        for param in command.params
        if getattr(param, "param_type_name", "") == "option" and not param.help
    ]
    assert missing == []


def test_keys_revoke_help_gives_the_delay_the_auth_cache_allows() -> None:
    # `radlens keys revoke` said "requests with it get 401 from the next request on", but each
    # service process keeps a verified key for RADLENS_AUTH_CACHE_TTL_S (default 5 s): a
    # request right after the revoke still got 200 (QA round 32).
    revoke = dict(COMMANDS)[("keys", "revoke")]
    text = " ".join(revoke.help.split())
    ttl = Settings.model_fields["auth_cache_ttl_s"].default
    assert "RADLENS_AUTH_CACHE_TTL_S" in text
    assert re.search(rf"\b{ttl:g} s\b", text), text
    assert not text.startswith("Revoke a key: requests with it get 401 from the next request")


# `radlens train` option -> the TrainConfig field it sets; without --config the field's
# default is what a run uses, so the help must say it (a bare `radlens train --data DIR` is a
# ResNet50 from scratch at 224 px for 5 epochs, which the help did not say: QA round 32)
TRAIN_OPTION_FIELDS = {
    "--arch": "architecture",
    "--filters": "filters",
    "--weights": "weights",
    "--image-size": "image_size",
    "--window": "window",
    "--epochs": "epochs_head",
    "--finetune-epochs": "epochs_finetune",
    "--unfreeze-blocks": "unfreeze_blocks",
    "--batch-size": "batch_size",
    "--learning-rate": "learning_rate_head",
    "--finetune-learning-rate": "learning_rate_finetune",
    "--class-weights": "class_weights",
    "--patience": "early_stopping_patience",
    "--val-fraction": "val_fraction",
    "--test-fraction": "test_fraction",
    "--min-calibration-positives": "min_calibration_positives",
    "--openvino": "openvino",
    "--ood-method": "ood_method",
    "--augment": "augment",
    "--deterministic": "deterministic",
    "--seed": "seed",
    "--lr-schedule": "lr_schedule",
    "--weight-decay": "weight_decay",
    "--label-smoothing": "label_smoothing",
    "--threshold-rule": "threshold_rule",
    "--strategy": "strategy",
    "--mixed-precision": "mixed_precision",
    "--label-column": "label_column",
    "--label-separator": "label_separator",
    "--no-finding": "no_finding",
    "--positive-weights": "positive_weights",
    "--series-aggregation": "series_aggregation",
    "--series-top-k": "series_top_k",
    "--select-by": "select_by",
    "--name": "name",
    "--runs-dir": "runs_dir",
}


def _spelled(value: Any) -> str:
    if value in (None, (), ""):
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _help_of(path: tuple[str, ...], option: str) -> str:
    command = dict(COMMANDS)[path]
    [param] = [p for p in command.params if option in getattr(p, "opts", [])]
    return " ".join((param.help or "").split())


def test_train_help_states_each_default_a_run_uses() -> None:
    from radlens.training.config import TrainConfig

    defaults = TrainConfig()  # what a run without --config starts from
    wrong = []
    for option, field in TRAIN_OPTION_FIELDS.items():
        text = _help_of(("train",), option)
        value = re.escape(_spelled(getattr(defaults, field)))
        said = rf"default:? {value}(?=[\s).;:,/]|$)|\b{value} \(?[a-z ,]*the default"
        if not re.search(said, text, re.IGNORECASE):
            wrong.append(f"{option}: {text!r} does not say the default {value}")
    assert wrong == []


def test_evaluate_help_says_series_options_default_to_the_training_run() -> None:
    # evaluate aggregates as the model's training did (training.evaluate), where the shared
    # help said "(max)", "(default 3)" and "the CSV's folder" for evaluate too (QA round 32)
    for option in ("--series-aggregation", "--series-top-k", "--dicom-root"):
        assert "evaluate: " in _help_of(("evaluate",), option), option


def _all_commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found.extend(_all_commands(sub, (*path, name)))
    return found


def test_each_command_summary_is_one_line_in_the_command_list() -> None:
    # `radlens --help` lists each command by its help's first paragraph with its line breaks:
    # data-check's and drift's ran over three ragged lines (QA round 32)
    ragged = [
        " ".join(path)
        for path, command in _all_commands(typer.main.get_command(app))
        if "\n" in (command.help or "").strip().split("\n\n")[0]
    ]
    assert ragged == []

"""The run directory: one folder per training run, what it holds, and resuming from it.

``<runs_dir>/<name>-<UTC timestamp>/`` holds::

    config.json        the TrainConfig (what ``radlens train --resume RUN_DIR`` reads), and
                       under "split" how the split was made and the leakage check's result
    splits.csv         which example went to which split, with its hashed patient id
    train.log          the run's log: data summary, skipped files, one line per epoch, result
    history.csv        every epoch's train/validation metrics (appended across resumes)
    state.json         phase progress and the best epoch so far (for resuming)
    checkpoints/       best.weights.h5 (best epoch by validation AUC), phase1.weights.h5
    backup/phase<N>/   keras.callbacks.BackupAndRestore state while a phase is running
    tensorboard/       the TensorBoard callbacks' log directory (see training.callbacks):
                       train/ and validation/ only, every other summary a tag in them
    result.json        the exported model ref, metrics and counts, once the run has finished

Under a multi-worker strategy a worker that is not the chief keeps its files in
``<run dir>.<task>`` (the chief's are the run's).

Resume. Interrupted runs continue from their directory: BackupAndRestore restores the running
phase's weights, optimizer and epoch; a finished phase 1 is reloaded from
``checkpoints/phase1.weights.h5``; the best-so-far AUC is read from ``state.json`` so the best
checkpoint is only replaced by a better epoch. (Early-stopping patience restarts on resume.)
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from radlens.models.errors import ConfigurationError
from radlens.training.config import TrainConfig, read_config_file

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SPLIT_KEY = "split"  # config.json's record of how the split was made
SPLITS_FILE = "splits.csv"
STATE_FILE = "state.json"
RESULT_FILE = "result.json"
HISTORY_FILE = "history.csv"
LOG_FILE = "train.log"
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "best.weights.h5"
PHASE1_WEIGHTS = "phase1.weights.h5"
TENSORBOARD = "tensorboard"
# The only two sub-runs a run adds to TensorBoard's run selector: Keras' own pair. Every other
# summary (op graph, sample images, figures, Grad-CAM, hparams, calibration) is a tag in one of
# them, so many runs stay comparable at a glance (training.callbacks).
TENSORBOARD_TRAIN = "train"
TENSORBOARD_VALIDATION = "validation"
PACKAGE_LOGGER = __name__.rpartition(".")[0]  # "radlens.training": train.log records the package


def config_for_resume(run_dir: str | Path) -> TrainConfig:
    """The config of an interrupted run in ``run_dir``.

    Raises:
        ConfigurationError: not a run directory (no config.json), or the run has finished.
    """
    run_path = Path(run_dir)
    config_path = run_path / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigurationError(
            f"not a radlens run directory (no {CONFIG_FILE}): {str(run_path)!r}"
        )
    if (run_path / RESULT_FILE).is_file():
        model = finished_model(run_path)
        produced = f": it produced model {model}" if model else ""
        raise ConfigurationError(f"the run in {str(run_path)!r} has finished already{produced}")
    values = read_config_file(config_path)
    values.pop(SPLIT_KEY, None)  # how the split was made: a record, not an option
    return TrainConfig.from_dict(values, source=str(config_path))


def record_split(
    run_path: Path, split: dict[str, Any], assignment: Iterable[tuple[str, str, int, str | None]]
) -> None:
    """Add how the split was made (and the leakage check's result) to config.json, and write
    splits.csv: one row per example (split, key, label, hashed patient id or empty)."""
    config_path = run_path / CONFIG_FILE
    values = json.loads(config_path.read_text())
    values[SPLIT_KEY] = split
    config_path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    with (run_path / SPLITS_FILE).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "key", "label", "patient"])
        for name, key, label, patient in assignment:
            writer.writerow([name, key, label, patient or ""])


def check_resumed_split(run_path: Path, splits: Mapping[str, Iterable[Any]]) -> None:
    """Refuse to resume a run whose data now splits otherwise than its ``splits.csv`` says
    (files added, removed or read differently since it started, or a radlens that splits
    differently): the resumed part would train on images the first part held out, and the
    run's test figures would count them. Nothing to compare when the run wrote no split.

    Raises:
        ConfigurationError: how many images moved, appeared or went, one named, and what to do.
    """
    recorded_path = Path(run_path) / SPLITS_FILE
    if not recorded_path.is_file():
        return
    with recorded_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # class indices first: a radlens that orders the classes otherwise (a run started before
    # QA 37's class-order rules) also stratifies them into other splits, and the cause is
    # what the operator must be told
    _check_resumed_labels(run_path, rows, splits)
    recorded = {row["key"]: row["split"] for row in rows}
    now = {example.key: name for name, items in splits.items() for example in items}
    moved = sorted(k for k in now.keys() & recorded.keys() if now[k] != recorded[k])
    added = sorted(now.keys() - recorded.keys())
    gone = sorted(recorded.keys() - now.keys())
    if not (moved or added or gone):
        return
    if moved:
        named = f"e.g. {moved[0]}: {recorded[moved[0]]} then, {now[moved[0]]} now"
    else:
        named = f"e.g. {(added or gone)[0]} {'new' if added else 'gone'}"
    raise ConfigurationError(
        f"cannot resume {str(run_path)!r}: its data, or how this radlens reads and splits it, "
        f"changed since the run started ({len(moved)} image(s) in another split, "
        f"{len(added)} new, {len(gone)} gone; {named}), so the resumed part would train on "
        "images the first part held out; start a new run"
    )


def _check_resumed_labels(
    run_path: Path, rows: Sequence[Mapping[str, str]], splits: Mapping[str, Iterable[Any]]
) -> None:
    """Refuse to resume a run whose images now read with other class indices than its
    ``splits.csv`` records (a label edited, or a radlens that orders the classes otherwise):
    the checkpoint learnt the recorded ones, and the resumed part would train it on others.

    Raises:
        ConfigurationError: how many images changed class index, one named, what to do.
    """
    recorded = {row["key"]: row.get("label", "") for row in rows}
    now = {e.key: str(e.label) for items in splits.values() for e in items}
    changed = sorted(k for k in now if recorded.get(k, now[k]) not in ("", now[k]))
    if changed:
        raise ConfigurationError(
            f"cannot resume {str(run_path)!r}: {len(changed)} image(s) now read with another "
            f"class index than the run started with (e.g. {changed[0]}: "
            f"{recorded[changed[0]]} then, {now[changed[0]]} now: a label changed, or the "
            "order of the classes), so the resumed part would train the checkpoint on other "
            "labels; start a new run"
        )


def open_run_dir(
    config: TrainConfig, run_dir: Path | None, *, chief: bool = True, task: str = "chief"
) -> Path:
    """The run's directory, created with ``checkpoints/``; a new run also gets config.json.

    Args:
        config: the run's configuration (``runs_dir`` and ``name`` place a new run).
        run_dir: an existing run directory to resume, or None for a new one.
        chief: False on a multi-worker worker that is not the chief: its files go apart.
        task: that worker's task name (``worker1``), the suffix of its directory.
    """
    suffix = "" if chief else f".{task}"
    if run_dir is not None:
        path = Path(f"{run_dir}{suffix}")
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = _new_run_dir(config, suffix)
        config.write_json(path / CONFIG_FILE)
    (path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    return path


def _new_run_dir(config: TrainConfig, suffix: str = "") -> Path:
    root = Path(config.runs_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = root / f"{config.name}-{stamp}{f'-{n}' if n > 1 else ''}{suffix}"
        try:
            # mkdir itself decides, not an exists() check before it: two runs of one name
            # started in the same second (a job array, two terminals) both saw the name free,
            # and the second stopped with "file exists" (QA round 102)
            path.mkdir()
        except FileExistsError:
            n += 1
            continue
        return path


RUN_LOCK_FILE = ".run.lock"


@contextmanager
def held(run_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the run's ``.run.lock`` while this process trains it.

    A second ``radlens train --resume`` of a run that is still training (a scheduler's retry,
    a second terminal) trained beside it: both appended the same epochs to history.csv, wrote
    the one checkpoint and backup, and one failed at the end on the other's backup (QA round
    102). It is now refused at once. The lock goes with the process (a killed run's is free);
    a file system without flock (some network mounts) trains unlocked, as before.
    """
    fd = os.open(run_path / RUN_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                log.debug("run %s not locked: %s", run_path, exc)
            else:
                raise ConfigurationError(
                    f"the run in '{run_path}' is being trained by another radlens process "
                    "right now; wait for it to end (or stop it), then --resume it if it did "
                    "not finish"
                ) from None
        yield
    finally:
        os.close(fd)


def read_state(run_path: Path) -> dict[str, Any]:
    """state.json: ``phase_done``, ``last_epoch``, ``best_epoch``, ``best_val_auc`` ({} if new)."""
    path = run_path / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"the run's {STATE_FILE} is unreadable: {exc}") from exc
    return state if isinstance(state, dict) else {}


def write_state(run_path: Path, state: dict[str, Any]) -> None:
    """Replace state.json in one rename (never half-written)."""
    tmp = run_path / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(run_path / STATE_FILE)


def finished_model(run_path: Path) -> str | None:
    """The model ``name:version`` a finished run's result.json records (None: no result, an
    unreadable one, or a worker's run that exported nothing)."""
    try:
        result = json.loads((run_path / RESULT_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    model = result.get("model") if isinstance(result, dict) else None
    return model if isinstance(model, str) and model else None


def write_result(run_path: Path, result: dict[str, Any]) -> None:
    """result.json: written last, it marks the run finished (no resume after it)."""
    (run_path / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")


@contextmanager
def run_log(run_path: Path) -> Iterator[Path]:
    """Record the ``training`` package's INFO log in ``train.log`` while the block runs."""
    path = run_path / LOG_FILE
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()


def read_history(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's history.csv (one per epoch, across resumes)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))

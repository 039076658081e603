"""The training run's configuration: a frozen dataclass, from YAML/JSON, overridden by flags.

Precedence, lowest to highest: the dataclass defaults, the config file (``--config``), the CLI
flags. Every value is validated before any work starts; a bad value raises
``models.errors.ConfigurationError`` with one line that names the field and quotes what was
received, so ``radlens train`` stops at start-up with exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radlens.models.errors import ConfigurationError
from radlens.models.manifest import NAME_PATTERN
from radlens.training.distribute import (  # no TensorFlow at import
    MIXED_PRECISION_MODES,
    STRATEGY_NAMES,
)
from radlens.training.metrics import THRESHOLD_RULES

ARCHITECTURE_NAMES = ("resnet50", "simple_cnn")
CLASS_WEIGHT_MODES = ("auto", "none")
LR_SCHEDULES = ("constant", "cosine")
OOD_METHODS = ("mahalanobis", "knn", "none")
SELECT_BY = ("auc", "series-auc")  # the validation figure that picks the best epoch
MAX_BATCH_SIZE = 65_536  # images per step; far beyond any GPU's memory at 32 px
MAX_SEED = 2**32 - 1  # keras.utils.set_random_seed (numpy's legacy seeding) takes no larger


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; written to ``<run dir>/config.json``.

    Epochs: ``epochs_head`` is phase 1 (pretrained ResNet50: the head with the backbone
    frozen; simple_cnn and ResNet50 from scratch (``weights=None``): the whole network,
    BatchNorm included, its only phase); ``epochs_finetune`` is phase 2 (pretrained ResNet50
    only: the top ``unfreeze_blocks`` residual blocks unfrozen at ``learning_rate_finetune``).

    Distribution: ``strategy`` names a ``training.distribute`` strategy (``auto`` is the
    default strategy on a machine with fewer than two GPUs, where ``model.fit`` runs);
    ``mixed_precision`` is ``off``, ``on`` (GPU only) or ``auto``.
    """

    data: str | None = None  # folder (a labels.csv inside is used when present), .csv or .npz
    class_names: tuple[str, ...] = ()  # CSV/npz label order (index 1 = positive); () = from data
    architecture: str = "resnet50"
    filters: tuple[str, ...] = ()
    # simple_cnn only (models.architectures.build_model): subtract each image's mean inside
    # the model (blind to a film's overall exposure; the PneumoniaMNIST recipe's member), and
    # a BatchNormalization after each convolution
    center: bool = False
    batchnorm: bool = False
    weights: str | None = None  # "imagenet", a local .h5/.weights.h5 path, or None
    image_size: int = 224
    window: str | None = None  # a models.preprocessing WINDOW_PRESETS name, or None
    batch_size: int = 32
    epochs_head: int = 5
    epochs_finetune: int = 5
    unfreeze_blocks: int | str = 3  # ResNet50 blocks (1..16, from the top) or "all"
    learning_rate_head: float = 1e-3
    learning_rate_finetune: float = 1e-5
    dropout: float = 0.3
    class_weights: str = "auto"  # "auto": inverse class frequency; "none"
    early_stopping_patience: int = 5  # epochs without a val AUC gain; 0 turns it off
    seed: int = 1234
    split_seed: int | None = None  # the train/val/test split's seed; None = seed
    deterministic: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    runs_dir: str = "runs"
    name: str = "radlens"
    store: str | None = None  # None: models.registry.default_store_path()
    description: str = ""
    augment: bool = True
    cache: bool = True
    histogram_freq: int = 1
    tensorboard_samples: int = 4  # sample inputs (and their filter responses) logged as images
    strategy: str = "auto"  # training.distribute: auto, mirrored, multiworker, default
    mixed_precision: str = "off"  # off, on (GPU only), auto (mixed_float16 when a GPU is seen)
    threshold_rule: str = "youden"  # youden: max sens+spec on val; balanced: sens = spec on val
    lr_schedule: str = "constant"  # constant, or cosine decay to 0 over each phase
    weight_decay: float = 0.0  # > 0: AdamW with this decoupled weight decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0 = off)
    resplit: bool = False  # redo a given (CSV/npz) split at patient level
    min_calibration_positives: int = 10  # temperature scaling needs this many val positives
    # also store an OpenVINO IR of the exported model with its parity on val (models.runtime);
    # skipped with a warning when OpenVINO is not installed
    openvino: bool = True
    # multi-label findings (training.data.sources.MultiLabelSpec): a sigmoid head, one
    # binary cross-entropy per finding and a threshold per finding chosen on validation
    multi_label: bool = False
    label_column: str = "label"  # the CSV column holding the findings
    label_separator: str = "|"  # joins several findings in one cell
    no_finding: str = "No Finding"  # the cell of an image without any finding
    findings: tuple[str, ...] = ()  # the finding list, in output order; () = from the data
    positive_weights: str = "none"  # "auto": each finding's positives weighted n_neg / n_pos
    ignore_findings: tuple[str, ...] = ()  # findings dropped from the labels (too rare, ...)
    # intended use (models/intended_use.py): stated modalities and body parts, recorded in the
    # manifest and enforced by the service's metadata gate; () = what the training DICOM
    # headers show (nothing for PNG/JPEG/npz data)
    intended_modalities: tuple[str, ...] = ()
    intended_body_parts: tuple[str, ...] = ()
    # stated view positions (PA, AP, FRONTAL, LATERAL, ...): PNG/JPEG films carry no
    # ViewPosition to survey, so only a statement lets the gate refuse a lateral DICOM
    intended_view_positions: tuple[str, ...] = ()
    # the out-of-distribution detector fitted on the penultimate features (models/ood.py):
    # mahalanobis, knn, or none
    ood_method: str = "mahalanobis"
    # series-labelled CSVs (training.data.series, training.series): where series_uid values
    # are looked up (None: the CSV's folder), and how slice scores combine into the series
    # score validation and test report -- models.aggregation, the service's own function
    dicom_root: str | None = None
    series_aggregation: str = "max"  # max, mean_top_k, noisy_or (RADLENS_SERIES_AGGREGATION)
    series_top_k: int = 3  # k of mean_top_k (RADLENS_SERIES_TOP_K)
    # which validation figure picks the best epoch (and stops early): "auc", the slice (image)
    # AUC as always, or "series-auc", the AUC of the series scores aggregated as above
    # (series-labelled data only; training.series, docs/series-training.md)
    select_by: str = "auc"

    def __post_init__(self) -> None:
        _validate(self)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from a mapping; unknown keys and bad values raise ConfigurationError."""
        if not isinstance(values, Mapping):
            raise ConfigurationError(
                f"{source} must be a mapping of option names to values; "
                f"received {type(values).__name__}: {values!r:.80}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            hints = [h for h in (_spelling_hint(k, known) for k in unknown) if h]
            raise ConfigurationError(
                f"unknown option(s) in {source}: {', '.join(unknown)}"
                + (f" ({'; '.join(hints)})" if hints else "")
                + f" (known: {', '.join(sorted(known))})"
            )
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                kwargs[f.name] = _coerce(f.name, values[f.name], source)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """Read a YAML or JSON config file, then apply ``overrides`` (``None`` values ignored)."""
        values = read_config_file(path)
        return cls.from_dict(values, source=str(path)).with_overrides(overrides or {})

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """A copy with the given fields replaced; ``None`` means "not given" and is skipped."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        merged = self.to_dict()
        merged.update(given)
        return type(self).from_dict(merged, source="options")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def write_json(self, path: Path) -> None:
        """Write the config as ``config.json`` (what ``radlens train --resume`` reads)."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model input (H, W, 1)."""
        return (self.image_size, self.image_size, 1)

    @property
    def two_phase(self) -> bool:
        """Pretrained ResNet50 is fine-tuned in two phases; simple_cnn and ResNet50 from
        scratch (``weights=None``: a frozen random backbone teaches nothing) train in one."""
        return self.architecture == "resnet50" and self.weights is not None

    def multi_label_spec(self) -> Any:
        """The data's :class:`~training.data.sources.MultiLabelSpec`, or None (single-label)."""
        if not self.multi_label:
            return None
        from radlens.training.data.sources import MultiLabelSpec

        return MultiLabelSpec(
            column=self.label_column,
            separator=self.label_separator,
            none_name=self.no_finding,
            findings=self.findings or None,
            ignore=self.ignore_findings,
        )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a ``.yaml``/``.yml``/``.json`` file into a dict, with typed errors."""
    p = Path(path)
    if p.is_dir():  # it exists: "not found" sent the user looking for a typo
        raise ConfigurationError(
            f"config file '{p}' is a folder; give a .yaml or .json file (training/configs/ "
            "has examples)"
        )
    if not p.is_file():
        raise ConfigurationError(f"config file not found: '{p}'")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"config file '{p}' is not UTF-8 text (at byte {exc.start}); give a YAML or JSON "
            "file of options (see training/configs/)"
        ) from exc
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            values = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            raise ConfigurationError(
                f"config file must end in .yaml, .yml or .json; received '{p.name}'"
            )
    except (json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"config file '{p}' is not valid JSON: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigurationError(
            f"config file '{p}' could not be parsed: {' '.join(str(exc).split())}"
        ) from exc
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigurationError(
            f"config file '{p}' must hold a mapping of options; received {type(values).__name__}"
        )
    return values


# --- coercion and validation ----------------------------------------------------------------

_INT_FIELDS = {
    "image_size",
    "batch_size",
    "epochs_head",
    "epochs_finetune",
    "early_stopping_patience",
    "seed",
    "histogram_freq",
    "tensorboard_samples",
    "min_calibration_positives",
    "series_top_k",
}
_FLOAT_FIELDS = {
    "learning_rate_head",
    "learning_rate_finetune",
    "dropout",
    "val_fraction",
    "test_fraction",
    "weight_decay",
    "label_smoothing",
}
_BOOL_FIELDS = {
    "center",
    "batchnorm",
    "deterministic",
    "augment",
    "cache",
    "resplit",
    "openvino",
    "multi_label",
}
_OPTIONAL_STR_FIELDS = {"data", "weights", "window", "store", "dicom_root"}
_OPTIONAL_INT_FIELDS = {"split_seed"}
_STR_FIELDS = {
    "architecture",
    "class_weights",
    "runs_dir",
    "name",
    "description",
    "strategy",
    "mixed_precision",
    "threshold_rule",
    "lr_schedule",
    "label_column",
    "label_separator",
    "no_finding",
    "positive_weights",
    "ood_method",
    "series_aggregation",
    "select_by",
}


def _spelling_hint(key: str, known: set[str]) -> str:
    """'write X for Y' for an unknown config key that is a flag's name or a near miss: a
    config file written from the command line (`arch: simple_cnn`, `epochs: 1`) was refused
    with only the list of the 60 known keys to search (QA round 102)."""
    import difflib

    plain = key.strip().lstrip("-").replace("-", "_").lower()
    if plain in _FLAG_KEYS:
        return f"write {_FLAG_KEYS[plain]}: for {key}: (the flag --{plain.replace('_', '-')})"
    if plain in known:
        return f"write {plain}: for {key}:"
    close = difflib.get_close_matches(plain, [*known, *_FLAG_KEYS], n=1, cutoff=0.8)
    if close:
        return f"write {_FLAG_KEYS.get(close[0], close[0])}: for {key}:"
    return ""


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a file/CLI value into the field's type, or raise quoting it."""

    def bad(expected: str) -> ConfigurationError:
        return ConfigurationError(f"{name} must be {expected}; received {value!r} (in {source})")

    if name == "unfreeze_blocks" and isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    if name in _INT_FIELDS or name == "unfreeze_blocks":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise bad("an integer")
        try:
            return int(value)
        except ValueError:
            raise bad("an integer") from None
    if name in _OPTIONAL_INT_FIELDS:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise bad("an integer or null")
        try:
            return int(value)
        except ValueError:
            raise bad("an integer or null") from None
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad("a number")
        try:
            number = float(value)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if name in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad("true or false")
    if name in _OPTIONAL_STR_FIELDS:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise bad("a string or null")
        if "\x00" in value:  # no path or name holds one (os calls raise ValueError)
            raise bad("a string without NUL characters")
        return value
    if name in _STR_FIELDS:
        if not isinstance(value, str):
            raise bad("a string")
        if "\x00" in value:
            raise bad("a string without NUL characters")
        return value
    if name in (
        "filters",
        "class_names",
        "findings",
        "ignore_findings",
        "intended_modalities",
        "intended_body_parts",
        "intended_view_positions",
    ):
        if value is None:
            return ()
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise bad("a list of names or a comma-separated string")
        if not all(isinstance(v, str) for v in items):
            raise bad("a list of names")
        return tuple(items)
    raise ConfigurationError(f"unknown option {name!r} (in {source})")  # pragma: no cover


# config fields whose `radlens train` option is spelled otherwise (another name, or hyphens
# for underscores): a refusal names both (QA rounds 57, 66). Fields without an option
# (dropout, split_seed, histogram_freq, ...) are set in a --config file only.
_OPTION_OF_FIELD = {
    "architecture": "--arch",
    "epochs_head": "--epochs",
    "epochs_finetune": "--finetune-epochs",
    "learning_rate_head": "--learning-rate",
    "learning_rate_finetune": "--finetune-learning-rate",
    "early_stopping_patience": "--patience",
    **{
        name: "--" + name.replace("_", "-")
        for name in (
            "image_size",
            "batch_size",
            "unfreeze_blocks",
            "class_weights",
            "val_fraction",
            "test_fraction",
            "min_calibration_positives",
            "intended_modalities",
            "intended_body_parts",
            "intended_view_positions",
            "ood_method",
            "lr_schedule",
            "weight_decay",
            "label_smoothing",
            "threshold_rule",
            "mixed_precision",
            "multi_label",
            "label_column",
            "label_separator",
            "no_finding",
            "positive_weights",
            "ignore_findings",
            "dicom_root",
            "series_aggregation",
            "series_top_k",
            "select_by",
            "runs_dir",
        )
    },
}


# `radlens train` flags whose config key is spelt otherwise (flag as a key -> the key)
_FLAG_KEYS = {
    option[2:].replace("-", "_"): name
    for name, option in _OPTION_OF_FIELD.items()
    if option[2:].replace("-", "_") != name
}


def _validate(cfg: TrainConfig) -> None:
    def bad(field_name: str, expected: str) -> ConfigurationError:
        option = _OPTION_OF_FIELD.get(field_name)
        return ConfigurationError(
            f"{field_name} must be {expected}; received {getattr(cfg, field_name)!r}"
            + (f" (option {option})" if option else "")
        )

    if cfg.architecture not in ARCHITECTURE_NAMES:
        raise bad("architecture", f"one of {', '.join(ARCHITECTURE_NAMES)}")
    from radlens.models.ops import FILTER_NAMES  # numpy only

    unknown = [f for f in cfg.filters if f not in FILTER_NAMES]
    if unknown:
        raise ConfigurationError(
            f"unknown filter(s) {', '.join(repr(u) for u in unknown)}; "
            f"known: {', '.join(FILTER_NAMES)}; received filters={list(cfg.filters)!r}"
        )
    if len(set(cfg.filters)) != len(cfg.filters):
        raise bad("filters", "a list without repeats")
    for name in ("center", "batchnorm"):
        if getattr(cfg, name) and cfg.architecture != "simple_cnn":
            raise ConfigurationError(
                f"{name} applies to simple_cnn only (ResNet50 has its own batch normalisation "
                f"and input stem); received {name}=true with architecture={cfg.architecture!r} "
                "(option --arch)"
            )
    if len(set(cfg.class_names)) != len(cfg.class_names) or len(cfg.class_names) == 1:
        raise bad("class_names", "empty (from the data) or at least 2 distinct names")
    if cfg.weights is not None:
        if cfg.architecture != "resnet50":
            raise ConfigurationError(
                f"weights apply to resnet50 only; received weights={cfg.weights!r} "
                f"with architecture={cfg.architecture!r} (option --arch)"
            )
        if cfg.weights != "imagenet" and not cfg.weights.endswith(".h5"):
            raise bad("weights", "'imagenet', a path to a .h5/.weights.h5 file, or none")
        if cfg.weights != "imagenet" and not Path(cfg.weights).is_file():
            raise ConfigurationError(f"weights file not found; received weights={cfg.weights!r}")
    if not 32 <= cfg.image_size <= 1024:
        raise bad("image_size", "an integer from 32 to 1024 (pixels per side)")
    if cfg.batch_size < 1:
        raise bad("batch_size", "a positive integer")
    if cfg.batch_size > MAX_BATCH_SIZE:  # beyond it TensorFlow fails mid-run
        raise bad("batch_size", f"at most {MAX_BATCH_SIZE}")
    for name in ("epochs_head", "epochs_finetune"):
        if getattr(cfg, name) < 0:
            raise bad(name, "0 or more")
    if cfg.epochs_head + (cfg.epochs_finetune if cfg.two_phase else 0) < 1:
        if cfg.two_phase:
            one_phase, what = "", "epochs_head (--epochs) or epochs_finetune (--finetune-epochs)"
        else:
            one_phase = (
                " (one phase: epochs_finetune, --finetune-epochs, applies to a pretrained "
                "ResNet50 only)"
            )
            what = "epochs_head (--epochs)"
        raise ConfigurationError(
            f"the run would train for no epoch; received epochs_head={cfg.epochs_head}, "
            f"epochs_finetune={cfg.epochs_finetune}, architecture={cfg.architecture!r}"
            f"{one_phase}; set {what} to 1 or more"
        )
    if cfg.unfreeze_blocks != "all" and not (
        isinstance(cfg.unfreeze_blocks, int) and 0 <= cfg.unfreeze_blocks <= 16
    ):
        raise bad("unfreeze_blocks", "from 0 to 16 (ResNet50 has 16 residual blocks) or 'all'")
    for name in ("learning_rate_head", "learning_rate_finetune"):
        value = getattr(cfg, name)
        if not 0 < value < 1:
            raise bad(name, "a number between 0 and 1 (exclusive)")
    if not 0 <= cfg.dropout < 1:
        raise bad("dropout", "from 0 up to (not including) 1")
    if cfg.class_weights not in CLASS_WEIGHT_MODES:
        raise bad("class_weights", "'auto' or 'none'")
    if cfg.early_stopping_patience < 0:
        raise bad("early_stopping_patience", "0 (off) or more")
    if cfg.seed < 0:
        raise bad("seed", "0 or more")
    if cfg.seed > MAX_SEED:  # keras.utils.set_random_seed's range
        raise bad("seed", f"at most {MAX_SEED}")
    if cfg.split_seed is not None and not 0 <= cfg.split_seed <= MAX_SEED:
        raise bad("split_seed", f"from 0 to {MAX_SEED}, or null (= seed)")
    for name in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(cfg, name) < 1:
            raise bad(name, "from 0 up to (not including) 1")
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise ConfigurationError(
            "val_fraction + test_fraction must leave data to train on; received "
            f"val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction} "
            "(options --val-fraction, --test-fraction)"
        )
    # the model store's own rule (models.manifest.NAME_PATTERN), checked before training: a
    # name such as '..', '.hidden', 'chestü' or of 65 characters passed here and was refused
    # only by the export after the whole run, leaving a hidden run directory (QA round 102)
    if not NAME_PATTERN.match(cfg.name):
        raise bad(
            "name",
            "1-64 letters, digits, '-', '_' or '.' (ASCII), starting with a letter or digit "
            "(it names the run and the model)",
        )
    if not cfg.runs_dir:
        raise bad("runs_dir", "a directory path")
    if cfg.histogram_freq < 0:
        raise bad("histogram_freq", "0 (off) or more")
    if not 0 <= cfg.tensorboard_samples <= 64:
        raise bad("tensorboard_samples", "from 0 to 64")
    if cfg.window is not None:
        _validate_window(cfg.window)
    if cfg.strategy not in STRATEGY_NAMES:
        raise bad("strategy", f"one of {', '.join(STRATEGY_NAMES)}")
    if cfg.mixed_precision not in MIXED_PRECISION_MODES:
        raise bad("mixed_precision", f"one of {', '.join(MIXED_PRECISION_MODES)}")
    if cfg.threshold_rule not in THRESHOLD_RULES:
        raise bad("threshold_rule", f"one of {', '.join(THRESHOLD_RULES)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise bad("lr_schedule", f"one of {', '.join(LR_SCHEDULES)}")
    if not 0 <= cfg.weight_decay < 1:
        raise bad("weight_decay", "from 0 up to (not including) 1")
    if cfg.min_calibration_positives < 1:
        raise bad("min_calibration_positives", "1 or more")
    if not 0 <= cfg.label_smoothing < 0.5:
        raise bad("label_smoothing", "from 0 up to (not including) 0.5")
    if cfg.ood_method not in OOD_METHODS:
        raise bad("ood_method", f"one of {', '.join(OOD_METHODS)}")
    from radlens.models.aggregation import AGGREGATIONS

    if cfg.series_aggregation not in AGGREGATIONS:
        raise bad("series_aggregation", f"one of {', '.join(AGGREGATIONS)}")
    if cfg.series_top_k < 1:
        raise bad("series_top_k", "an integer >= 1")
    if cfg.select_by not in SELECT_BY:
        raise bad("select_by", f"one of {', '.join(SELECT_BY)}")
    from radlens.models.intended_use import check_stated  # pure, no I/O

    try:
        check_stated(cfg.intended_modalities, cfg.intended_body_parts, cfg.intended_view_positions)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    _validate_multi_label(cfg, bad)


POSITIVE_WEIGHT_MODES = ("auto", "none")


def _validate_multi_label(cfg: TrainConfig, bad: Any) -> None:
    if cfg.positive_weights not in POSITIVE_WEIGHT_MODES:
        raise bad("positive_weights", "'auto' or 'none'")
    if len(set(cfg.findings)) != len(cfg.findings) or len(cfg.findings) == 1:
        raise bad("findings", "empty (from the data) or at least 2 distinct names")
    overlap = sorted(set(cfg.findings) & set(cfg.ignore_findings))
    if overlap:
        raise bad("ignore_findings", f"names not in findings (both have {overlap!r})")
    if not cfg.multi_label:
        if cfg.findings or cfg.ignore_findings or cfg.positive_weights != "none":
            raise ConfigurationError(
                "findings, ignore_findings and positive_weights apply to multi-label training "
                "only; set "
                f"multi_label (--multi-label); received findings={list(cfg.findings)!r}, "
                f"positive_weights={cfg.positive_weights!r}"
            )
        return
    if cfg.class_names:
        raise ConfigurationError(
            "a multi-label run names its outputs with findings (--findings), not "
            f"class_names; received class_names={list(cfg.class_names)!r}"
        )
    if cfg.label_smoothing:
        raise bad("label_smoothing", "0 for multi-label training")
    for name in ("label_column", "label_separator", "no_finding"):
        if not str(getattr(cfg, name)).strip():
            raise bad(name, "a non-empty string")
    if cfg.label_separator.strip() != cfg.label_separator:
        raise bad("label_separator", "a separator without spaces")


def _validate_window(window: str) -> None:
    """Check the window preset against models.preprocessing once that module is present."""
    try:
        from radlens.models.preprocessing import WINDOW_PRESETS
    except ModuleNotFoundError as exc:  # preprocessing not installed yet: nothing to check
        if exc.name != "radlens.models.preprocessing":
            raise
        return
    if window not in WINDOW_PRESETS:
        raise ConfigurationError(
            f"window must be one of {', '.join(sorted(WINDOW_PRESETS))} or none; "
            f"received {window!r}"
        )

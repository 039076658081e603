"""Setting up tf.distribute for a run: the strategy, the cluster, the precision.

:func:`set_up` is what the trainer calls, first thing: it resolves ``config.strategy`` once,
builds the strategy and sets the dtype policy, and returns a :class:`Distribution` (the
strategy, its concrete name, whether this process is the chief). The pieces:

1. :func:`make_strategy` picks and builds a ``tf.distribute.Strategy``: ``"auto"`` (a
   ``MirroredStrategy`` when more than one GPU is visible, else the default strategy),
   ``"mirrored"`` (one host, several GPUs, the devices given, or the logical CPUs when the
   CPU was split with :func:`split_cpu`), ``"multiworker"`` (``MultiWorkerMirroredStrategy``
   across hosts, configured by ``TF_CONFIG``, validated first by :func:`parse_tf_config`) or
   ``"default"`` (no distribution).
2. :func:`configure_mixed_precision` sets the Keras ``mixed_float16`` policy on a GPU and
   refuses it (``"on"``) or falls back to float32 with a warning (``"auto"``) on a CPU.

The loop that trains under a strategy is in ``training.loop`` (which also says why
``model.fit`` is kept beside it).

Order matters. Build the strategy at program start, before any other TensorFlow op: the
multi-worker strategy configures the collective runtime of the process and TensorFlow cannot
change that once the eager context is initialised, and logical devices (several "CPUs" for
tests) can only be configured before that too. Then set the mixed-precision policy, then build
the model and optimizer inside ``strategy.scope()``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from radlens.models.errors import ConfigurationError

log = logging.getLogger(__name__)

STRATEGY_NAMES = ("auto", "mirrored", "multiworker", "default")
MIXED_PRECISION_MODES = ("off", "on", "auto")
MIXED_POLICY = "mixed_float16"
FLOAT_POLICY = "float32"
# Roles MultiWorkerMirroredStrategy trains with. "ps" belongs to ParameterServerStrategy and
# "evaluator" to a side-car evaluation job, neither of which radlens runs.
TF_CONFIG_ROLES = ("chief", "worker")

StrategyName = Literal["auto", "mirrored", "multiworker", "default"]


# --- TF_CONFIG ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TFConfig:
    """A validated ``TF_CONFIG``: the cluster, and which task this process is."""

    cluster: dict[str, list[str]]  # role -> ["host:port", ...]
    task_type: str  # "chief" | "worker"
    task_index: int

    @property
    def num_workers(self) -> int:
        """Every process that trains (chief included)."""
        return sum(len(self.cluster.get(role, [])) for role in TF_CONFIG_ROLES)

    @property
    def is_chief(self) -> bool:
        """The chief, or worker 0 when the cluster has no chief: the one process that exports."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def address(self) -> str:
        """This task's own ``host:port``."""
        return self.cluster[self.task_type][self.task_index]

    def to_json(self) -> str:
        """The ``TF_CONFIG`` value for this task."""
        return json.dumps(
            {"cluster": self.cluster, "task": {"type": self.task_type, "index": self.task_index}}
        )


def _quote(raw: str, limit: int = 200) -> str:
    text = " ".join(raw.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_tf_config(raw: str | None) -> TFConfig:
    """Validate a ``TF_CONFIG`` value for ``MultiWorkerMirroredStrategy``.

    Args:
        raw: the JSON text of the ``TF_CONFIG`` environment variable (``None`` when unset), e.g.
            ``{"cluster": {"worker": ["host1:12345", "host2:12345"]},
            "task": {"type": "worker", "index": 0}}``.

    Returns:
        The cluster and this process's task.

    Raises:
        ConfigurationError: unset, not JSON, not an object, no ``cluster``/``task``, a role other
            than chief/worker, an address that is not ``host:port``, a duplicated address, more
            than one chief, or a task that is not in the cluster. The message is one line and
            quotes what was received.
    """
    if raw is None or not raw.strip():
        raise ConfigurationError(
            "the multiworker strategy needs TF_CONFIG set to the cluster and this task, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}. '
            f"Received: TF_CONFIG={'unset' if raw is None else repr(raw)}"
        )
    received = f"Received: TF_CONFIG={_quote(raw)}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"TF_CONFIG is not valid JSON ({exc.msg}). {received}") from exc
    if not isinstance(value, dict):
        raise ConfigurationError(f"TF_CONFIG must be a JSON object. {received}")
    unknown = sorted(set(value) - {"cluster", "task", "rpc_layer", "environment"})
    if unknown:
        raise ConfigurationError(f"TF_CONFIG has unknown key(s) {', '.join(unknown)}. {received}")
    cluster = value.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise ConfigurationError(
            "TF_CONFIG needs a non-empty 'cluster' object mapping roles to lists of "
            f"'host:port'. {received}"
        )
    parsed: dict[str, list[str]] = {}
    seen: set[str] = set()
    for role, addresses in cluster.items():
        if role not in TF_CONFIG_ROLES:
            raise ConfigurationError(
                f"TF_CONFIG cluster role {role!r} is not supported by the multiworker strategy "
                f"(use {' / '.join(TF_CONFIG_ROLES)}). {received}"
            )
        if not isinstance(addresses, list) or not addresses:
            raise ConfigurationError(
                f"TF_CONFIG cluster role {role!r} needs a non-empty list of 'host:port'. {received}"
            )
        for address in addresses:
            _check_address(address, role, received)
            if address in seen:
                raise ConfigurationError(
                    f"TF_CONFIG lists {address!r} twice; every task needs its own "
                    f"host:port. {received}"
                )
            seen.add(address)
        parsed[str(role)] = [str(a) for a in addresses]
    if len(parsed.get("chief", [])) > 1:
        raise ConfigurationError(f"TF_CONFIG may list at most one chief. {received}")

    task = value.get("task")
    if not isinstance(task, dict):
        raise ConfigurationError(
            "TF_CONFIG needs a 'task' object naming this process, e.g. "
            f'{{"type": "worker", "index": 0}}. {received}'
        )
    task_type = task.get("type")
    task_index = task.get("index", 0)
    if task_type not in parsed:
        raise ConfigurationError(
            f"TF_CONFIG task type {task_type!r} is not a role of the cluster "
            f"({', '.join(parsed)}). {received}"
        )
    if not isinstance(task_index, int) or isinstance(task_index, bool):
        raise ConfigurationError(
            f"TF_CONFIG task index must be an integer; got {task_index!r}. {received}"
        )
    if not 0 <= task_index < len(parsed[task_type]):
        raise ConfigurationError(
            f"TF_CONFIG task index {task_index} is out of range for role {task_type!r} "
            f"({len(parsed[task_type])} task(s)). {received}"
        )
    return TFConfig(cluster=parsed, task_type=task_type, task_index=task_index)


def _check_address(address: Any, role: str, received: str) -> None:
    if isinstance(address, str):
        host, sep, port = address.rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return
    raise ConfigurationError(
        f"TF_CONFIG cluster role {role!r} has {address!r}, which is not 'host:port' "
        f"(port 1-65535). {received}"
    )


# --- strategy selection ------------------------------------------------------------------


def _default_tf_config() -> Any:
    import tensorflow as tf

    return tf.config


def resolve_strategy_name(name: str, *, gpu_count: int) -> str:
    """The concrete strategy for a requested name: "auto" becomes "mirrored" or "default".

    Pure logic, no TensorFlow: ``"auto"`` is ``"mirrored"`` when more than one GPU is visible
    and ``"default"`` otherwise (one GPU or a CPU gain nothing from mirroring); the others are
    returned as given. An unknown name raises ``ConfigurationError`` quoting it.
    """
    if name not in STRATEGY_NAMES:
        raise ConfigurationError(
            f"strategy should be one of {', '.join(STRATEGY_NAMES)}. Received: strategy={name!r}"
        )
    if name == "auto":
        return "mirrored" if gpu_count > 1 else "default"
    return name


def make_strategy(
    name: str = "auto",
    *,
    devices: Sequence[str] | None = None,
    tf_config: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Build the ``tf.distribute.Strategy`` for ``name``; call it first thing in the program.

    Args:
        name: ``"auto"`` (``MirroredStrategy`` over the GPUs when more than one is visible,
            else the default strategy), ``"mirrored"`` (``MirroredStrategy`` over every
            visible GPU, or over ``devices``; without a GPU and without ``devices``, over the
            logical CPUs when :func:`split_cpu` made several), ``"multiworker"``
            (``MultiWorkerMirroredStrategy``; the cluster comes from ``TF_CONFIG``, validated
            by :func:`parse_tf_config`) or ``"default"`` (``tf.distribute.get_strategy()``, no
            distribution).
        devices: for ``"mirrored"`` only, the devices to mirror over, e.g.
            ``["/cpu:0", "/cpu:1"]`` after splitting the CPU into two logical devices.
        tf_config: the ``tf.config`` module (default) or a fake exposing
            ``list_physical_devices``; used to count GPUs for ``"auto"``.
        environ: where ``TF_CONFIG`` is read (default ``os.environ``). The strategy itself
            reads ``os.environ``, so a different mapping is for validation tests only.

    Returns:
        The strategy. Build the model and optimizer inside ``strategy.scope()``.

    Raises:
        ConfigurationError: unknown name, ``devices`` given for a strategy that takes none or
            not a non-empty list of device strings, or a missing or malformed ``TF_CONFIG`` for
            ``"multiworker"``; or TensorFlow refused to build the strategy (e.g. it was
            created after other TensorFlow ops ran, or this task's port is taken).
    """
    return _build_strategy(name, devices=devices, tf_config=tf_config, environ=environ)[1]


def _build_strategy(
    name: str,
    *,
    devices: Sequence[str] | None,
    tf_config: Any,
    environ: Mapping[str, str] | None,
) -> tuple[str, Any]:
    """(the concrete strategy name, the strategy): :func:`make_strategy`'s work."""
    if name not in STRATEGY_NAMES:
        raise ConfigurationError(
            f"strategy should be one of {', '.join(STRATEGY_NAMES)}. Received: strategy={name!r}"
        )
    if devices is not None:
        if name != "mirrored":
            raise ConfigurationError(
                f"devices can only be given to the mirrored strategy. Received: strategy={name!r}"
                f", devices={devices!r}"
            )
        if (
            isinstance(devices, str)
            or not devices
            or not all(isinstance(d, str) and d for d in devices)
        ):
            raise ConfigurationError(
                "devices should be a non-empty list of device names such as '/gpu:0'. "
                f"Received: devices={devices!r}"
            )
    env = os.environ if environ is None else environ
    parsed: TFConfig | None = None
    if name == "multiworker":
        parsed = parse_tf_config(env.get("TF_CONFIG"))
    elif env.get("TF_CONFIG"):
        log.warning(
            "TF_CONFIG is set but strategy=%r trains on this host only; "
            "ask for strategy='multiworker' to train across hosts",
            name,
        )
    config = _default_tf_config() if tf_config is None else tf_config
    gpus = len(config.list_physical_devices("GPU")) if name in ("auto", "mirrored") else 0
    concrete = resolve_strategy_name(name, gpu_count=gpus)  # the one place "auto" is resolved

    import tensorflow as tf

    if concrete == "mirrored" and devices is None and gpus == 0:
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        devices = cpus if len(cpus) > 1 else None  # the CPU was split (split_cpu)
    try:
        if concrete == "default":
            strategy = tf.distribute.get_strategy()
        elif concrete == "mirrored":
            strategy = tf.distribute.MirroredStrategy(
                devices=list(devices) if devices is not None else None
            )
        else:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as exc:
        if parsed is None:
            raise
        # The multi-worker strategy starts this task's gRPC server on its TF_CONFIG address.
        raise ConfigurationError(
            f"the multiworker strategy could not start this task's server at {parsed.address} "
            f"({' '.join(str(exc).split())}); check that the port is free and that the address "
            f"is this host. Received: TF_CONFIG={_quote(parsed.to_json())}"
        ) from exc
    except (RuntimeError, ValueError) as exc:
        raise ConfigurationError(
            f"TensorFlow could not build the {concrete} strategy ({' '.join(str(exc).split())}); "
            "check the devices given, and create the strategy at program start, before any "
            "other TensorFlow op"
        ) from exc
    if parsed is not None:
        log.info(
            "multiworker strategy: task %s:%d of %d worker(s), %d replica(s) in sync",
            parsed.task_type,
            parsed.task_index,
            parsed.num_workers,
            strategy.num_replicas_in_sync,
        )
    else:
        log.info(
            "%s strategy (%s): %d replica(s) in sync",
            concrete,
            type(strategy).__name__,
            strategy.num_replicas_in_sync,
        )
    return concrete, strategy


def is_chief(strategy: Any) -> bool:
    """Whether this process should write shared outputs (model export, TensorBoard, run dir).

    True for the default and Mirrored strategies (one process). Under
    ``MultiWorkerMirroredStrategy`` only the chief (or worker 0 when the cluster has no chief)
    is; the other workers must train but not write to the shared model store.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    if task_type is None:
        return True
    cluster = resolver.cluster_spec().as_dict() if hasattr(resolver, "cluster_spec") else {}
    if "chief" in cluster:
        return bool(task_type == "chief")
    return bool(task_type == "worker" and (task_id or 0) == 0)


@dataclass(frozen=True)
class Distribution:
    """How this process trains: the strategy, its concrete name, and its part in the cluster."""

    strategy: Any  # a tf.distribute.Strategy (the default one when not distributed)
    name: str  # "default" | "mirrored" | "multiworker" ("auto" resolved)
    chief: bool  # this process writes the shared outputs (TensorBoard, the exported model)
    task: str = "chief"  # "chief", or e.g. "worker1" for a multi-worker task

    @property
    def distributed(self) -> bool:
        """Trained by ``training.loop``'s custom loop rather than ``model.fit``."""
        return self.name != "default"


def set_up(strategy: str = "auto", mixed_precision: str = "off") -> Distribution:
    """Build the strategy and set the dtype policy for a run; call it before any other TF op.

    Args:
        strategy: a :data:`STRATEGY_NAMES` name (see :func:`make_strategy`).
        mixed_precision: a :data:`MIXED_PRECISION_MODES` mode (see
            :func:`configure_mixed_precision`).

    Raises:
        ConfigurationError: as :func:`make_strategy` and :func:`mixed_precision_policy`.
    """
    name, built = _build_strategy(strategy, devices=None, tf_config=None, environ=None)
    configure_mixed_precision(mixed_precision)
    task = "chief"
    resolver = getattr(built, "cluster_resolver", None)
    if name == "multiworker" and resolver is not None:
        task = f"{resolver.task_type}{resolver.task_id}"
    return Distribution(strategy=built, name=name, chief=is_chief(built), task=task)


def split_cpu(count: int, *, tf_config: Any = None) -> list[str]:
    """Split the first physical CPU into ``count`` logical devices; returns their names.

    For running ``MirroredStrategy`` without GPUs (tests, a smoke check of the loop). Must run
    before TensorFlow initialises its devices (before any op), like :func:`make_strategy`.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigurationError(
            f"logical CPU count should be a positive integer. Received: {count!r}"
        )
    import tensorflow as tf

    config = tf.config if tf_config is None else tf_config
    cpus = config.list_physical_devices("CPU")
    try:
        config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as exc:
        raise ConfigurationError(
            "the CPU can only be split into logical devices before TensorFlow initialises "
            f"them (before any op). Received: {' '.join(str(exc).split())}"
        ) from exc
    return [f"/cpu:{i}" for i in range(count)]


# --- mixed precision ---------------------------------------------------------------------


def mixed_precision_policy(mode: str, *, gpu_count: int) -> str:
    """The Keras dtype policy for a mixed-precision mode on a machine with ``gpu_count`` GPUs.

    Pure logic: ``"off"`` -> ``"float32"``; ``"on"`` -> ``"mixed_float16"`` with a GPU, and a
    ``ConfigurationError`` without one (float16 on a CPU is slower than float32 and gains no
    memory that matters); ``"auto"`` -> ``"mixed_float16"`` with a GPU, else ``"float32"``.
    """
    if mode not in MIXED_PRECISION_MODES:
        raise ConfigurationError(
            f"mixed precision should be one of {', '.join(MIXED_PRECISION_MODES)}. "
            f"Received: mixed_precision={mode!r}"
        )
    if mode == "off":
        return FLOAT_POLICY
    if gpu_count > 0:
        return MIXED_POLICY
    if mode == "on":
        raise ConfigurationError(
            "mixed precision (mixed_float16) needs a GPU and none is visible; use "
            "mixed_precision='auto' or 'off' on a CPU. Received: mixed_precision='on', 0 GPUs"
        )
    return FLOAT_POLICY


def configure_mixed_precision(
    mode: str,
    *,
    tf_config: Any = None,
    set_global_policy: Callable[[str], None] | None = None,
) -> str:
    """Set the global Keras dtype policy for ``mode`` (see :func:`mixed_precision_policy`).

    Call it after :func:`make_strategy` and before building the model. ``"auto"`` on a machine
    without a GPU logs a warning and keeps float32. The policy is set in every case (float32
    for "off"), so a previous mixed policy does not leak into this run.

    Args:
        mode: ``"off"``, ``"on"`` or ``"auto"``.
        tf_config: ``tf.config`` (default) or a fake with ``list_physical_devices``.
        set_global_policy: ``keras.mixed_precision.set_global_policy`` (default) or a fake.

    Returns:
        The policy name set: ``"mixed_float16"`` or ``"float32"``.
    """
    config = _default_tf_config() if tf_config is None else tf_config
    gpu_count = len(config.list_physical_devices("GPU"))
    policy = mixed_precision_policy(mode, gpu_count=gpu_count)
    if mode == "auto" and policy == FLOAT_POLICY:
        log.warning("mixed precision 'auto': no GPU visible, training in float32")
    if set_global_policy is None:
        import keras

        set_global_policy = keras.mixed_precision.set_global_policy
    set_global_policy(policy)
    log.info("Keras dtype policy: %s (%d GPU(s) visible)", policy, gpu_count)
    return policy


def wrap_optimizer(optimizer: Any) -> Any:
    """Wrap ``optimizer`` in a ``LossScaleOptimizer`` when the global policy is mixed_float16.

    ``model.compile`` does this by itself; a custom loop has to, or float16 gradients
    underflow. Already wrapped optimizers, and every optimizer under float32, are returned as is.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    if policy.compute_dtype != "float16":
        return optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)

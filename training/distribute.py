"""Distributed training on TensorFlow's own engine: tf.distribute strategies and one training loop.

Three pieces, used together by the trainer when a strategy is asked for:

1. :func:`make_strategy` picks and builds a ``tf.distribute.Strategy``: ``"auto"`` (a
   ``MirroredStrategy`` when more than one GPU is visible, else the default strategy),
   ``"mirrored"`` (one host, several GPUs or the devices given), ``"multiworker"``
   (``MultiWorkerMirroredStrategy`` across hosts, configured by ``TF_CONFIG``, validated first
   by :func:`parse_tf_config`) or ``"default"`` (no distribution).
2. :func:`configure_mixed_precision` sets the Keras ``mixed_float16`` policy on a GPU and
   refuses it (``"on"``) or falls back to float32 with a warning (``"auto"``) on a CPU.
3. :func:`distributed_train` is a custom training loop (``strategy.run`` over
   ``strategy.experimental_distribute_dataset``), because Keras 3's ``model.fit`` fails under
   ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585). It runs unchanged under the
   default, Mirrored and MultiWorkerMirrored strategies, so the trainer has one code path.

Order matters. Build the strategy at program start, before any other TensorFlow op: the
multi-worker strategy configures the collective runtime of the process and TensorFlow cannot
change that once the eager context is initialised, and logical devices (several "CPUs" for
tests) can only be configured before that too. Then set the mixed-precision policy, then build
the model and optimizer inside ``strategy.scope()`` (``distributed_train`` does that by calling
``model_fn`` and ``optimizer_fn`` inside the scope).

Loss scaling: each replica's loss is divided by the GLOBAL batch size
(``tf.nn.compute_average_loss(..., global_batch_size=...)``) and the gradients are summed over
replicas by the optimizer, so a step is the same update as one large batch on one device.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from models.errors import ConfigurationError

log = logging.getLogger(__name__)

STRATEGY_NAMES = ("auto", "mirrored", "multiworker", "default")
MIXED_PRECISION_MODES = ("off", "on", "auto")
MIXED_POLICY = "mixed_float16"
FLOAT_POLICY = "float32"
# Roles MultiWorkerMirroredStrategy trains with. "ps" belongs to ParameterServerStrategy and
# "evaluator" to a side-car evaluation job, neither of which radlens runs.
TF_CONFIG_ROLES = ("chief", "worker")
SHARD_POLICIES = ("data", "file", "auto", "off")

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
            visible GPU, or over ``devices``), ``"multiworker"``
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
    concrete = name
    if name == "auto":
        concrete = resolve_strategy_name(name, gpu_count=len(config.list_physical_devices("GPU")))

    import tensorflow as tf

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
    return strategy


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


# --- the training loop -------------------------------------------------------------------


@dataclass
class DistributedTrainResult:
    """What :func:`distributed_train` returns."""

    model: Any  # keras.Model; its variables live in the strategy
    optimizer: Any
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    num_replicas: int = 1
    is_chief: bool = True
    stopped_early: bool = False


def _shard_policy(name: str) -> Any:
    import tensorflow as tf

    policies = tf.data.experimental.AutoShardPolicy
    return {
        "data": policies.DATA,
        "file": policies.FILE,
        "auto": policies.AUTO,
        "off": policies.OFF,
    }[name]


def _per_example_loss(loss: Any) -> Callable[[Any, Any], Any]:
    """A callable returning one loss value per example (no reduction)."""
    import keras

    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError as exc:
            raise ConfigurationError(f"unknown loss. Received: loss={loss!r}") from exc
    if isinstance(loss, keras.losses.Loss):
        config = {**loss.get_config(), "reduction": None}
        return type(loss).from_config(config)
    if callable(loss):
        return loss
    raise ConfigurationError(
        "loss should be a Keras loss name, a keras.losses.Loss or a callable "
        f"(y_true, y_pred) -> per-example losses. Received: loss={loss!r}"
    )


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} should be a positive integer. Received: {name}={value!r}")


def distributed_train(
    model_fn: Callable[[], Any],
    dataset_fn: Callable[[], Any],
    *,
    strategy: Any,
    epochs: int,
    steps_per_epoch: int,
    global_batch_size: int,
    optimizer_fn: Callable[[], Any],
    loss: Any = "sparse_categorical_crossentropy",
    class_weight: Mapping[int, float] | None = None,
    shard_policy: str = "data",
    initial_epoch: int = 0,
    callbacks: Sequence[Any] = (),
    on_epoch_end: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> DistributedTrainResult:
    """Train a Keras model with a custom ``strategy.run`` loop; one code path for every strategy.

    Works under the default strategy, ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``
    (where Keras 3's ``model.fit`` fails, keras-team/keras#20585). Under the multi-worker
    strategy every worker runs this same call with the same arguments; the collective
    all-reduce in the optimizer keeps their variables identical.

    Args:
        model_fn: builds the model (called inside ``strategy.scope()``), or returns one built
            earlier inside the same scope (phase 2 of fine-tuning: the model of phase 1 with
            more layers trainable, and a fresh optimizer). With a mixed policy keep the last
            layer in float32 (``dtype="float32"``); outputs are cast to float32 anyway.
        dataset_fn: returns a ``tf.data.Dataset`` of ``(images, labels)`` (a third element,
            sample weights, is ignored) batched with the GLOBAL batch size, ideally with
            ``drop_remainder=True``. It is repeated here, so an epoch is exactly
            ``steps_per_epoch`` steps and short data never leaves one worker waiting for
            another. Every worker must build the same dataset (same seed): it is sharded
            across workers by ``shard_policy`` and split across replicas by
            ``strategy.experimental_distribute_dataset``.
        strategy: from :func:`make_strategy`.
        epochs, steps_per_epoch: how long to train. As in ``model.fit``, ``epochs`` is the
            index of the last epoch and ``initial_epoch`` the first (for a second phase that
            continues the epoch count of the first).
        global_batch_size: the batch size of ``dataset_fn``'s batches (all replicas together);
            each replica's loss is divided by it (``tf.nn.compute_average_loss``).
        optimizer_fn: builds the optimizer (inside the scope); wrapped in a
            ``LossScaleOptimizer`` when the global policy is mixed_float16.
        loss: a Keras loss name, a ``keras.losses.Loss`` (its reduction is turned off) or a
            callable ``(y_true, y_pred) -> per-example losses``. Labels are class indices and
            predictions softmax probabilities (a single sigmoid column also works for accuracy).
        class_weight: ``{class index: weight}``; each example's loss is multiplied by its
            class's weight (as ``model.fit(class_weight=...)`` does).
        shard_policy: how each worker takes its part of the data: ``"data"`` (every worker
            reads the whole dataset and keeps its share of the elements: right for in-memory
            arrays and lists of files), ``"file"``, ``"auto"`` or ``"off"``.
        callbacks: Keras callbacks, run at EPOCH level only (``on_train_begin/end``,
            ``on_epoch_begin/end``; no batch hooks): e.g. a callback that adds validation
            metrics to ``logs`` (see :func:`predict_local`), ``EarlyStopping`` (which sets
            ``model.stop_training``), ``CSVLogger``. They see the model and the same logs
            dict; entries they add are kept in the history. Under the multi-worker strategy
            give file-writing callbacks to the chief only (:func:`is_chief`), and make sure a
            stopping decision is the same on every worker (it is when it depends on reduced
            metrics or on validation computed from the identical weights), or the others hang.
        on_epoch_end: a plain function alternative, called as ``on_epoch_end(epoch, metrics)``
            after the callbacks (``epoch`` counts from 0); it may add entries to ``metrics``;
            returning True stops training (same rule as above).

    Returns:
        The model, the optimizer and one ``{"loss": ..., "accuracy": ...}`` per epoch, where
        loss is the mean of the global per-step losses and accuracy the fraction of all
        examples of the epoch (every worker, every replica) classified correctly.

    Raises:
        ConfigurationError: a non-positive epochs/steps/batch size, an unknown loss or shard
            policy, a class weight that is not a finite non-negative number, or a dataset that
            yields nothing.
    """
    _check_positive_int("epochs", epochs)
    _check_positive_int("steps_per_epoch", steps_per_epoch)
    _check_positive_int("global_batch_size", global_batch_size)
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int):
        raise ConfigurationError(
            f"initial_epoch should be an integer. Received: initial_epoch={initial_epoch!r}"
        )
    if not 0 <= initial_epoch < epochs:
        raise ConfigurationError(
            "initial_epoch should be >= 0 and below epochs (the index of the last epoch). "
            f"Received: initial_epoch={initial_epoch}, epochs={epochs}"
        )
    if shard_policy not in SHARD_POLICIES:
        raise ConfigurationError(
            f"shard_policy should be one of {', '.join(SHARD_POLICIES)}. "
            f"Received: shard_policy={shard_policy!r}"
        )
    if class_weight is not None:
        _class_weight_table(class_weight, num_classes=1)  # validate before building anything
    per_example_loss = _per_example_loss(loss)

    import tensorflow as tf

    with strategy.scope():
        model = model_fn()
        optimizer = wrap_optimizer(optimizer_fn())
        # Create the optimizer's slot variables now, inside the scope, so they are mirrored.
        optimizer.build(model.trainable_variables)
    weights_table: list[float] | None = None
    if class_weight is not None:
        weights_table = _class_weight_table(class_weight, num_classes=int(model.output_shape[-1]))

    dataset = dataset_fn()
    if not isinstance(dataset, tf.data.Dataset):
        raise ConfigurationError(
            f"dataset_fn should return a tf.data.Dataset. Received: {type(dataset).__name__}"
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = _shard_policy(shard_policy)
    dataset = dataset.repeat().with_options(options)
    distributed = strategy.experimental_distribute_dataset(dataset)
    iterator = iter(distributed)

    weights_const = (
        tf.constant(weights_table, dtype=tf.float32) if weights_table is not None else None
    )

    def step_fn(batch: Any) -> tuple[Any, Any, Any]:
        images, labels = batch[0], batch[1]
        labels = tf.reshape(labels, [-1])
        with tf.GradientTape() as tape:
            predictions = tf.cast(model(images, training=True), tf.float32)
            losses = tf.cast(per_example_loss(labels, predictions), tf.float32)
            if weights_const is not None:
                losses = losses * tf.gather(weights_const, tf.cast(labels, tf.int32))
            step_loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)
            if model.losses:
                step_loss += tf.nn.scale_regularization_loss(
                    tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
                )
            scaled_loss = optimizer.scale_loss(step_loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        # The Keras optimizer all-reduces (sums) the gradients over replicas and workers.
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        if predictions.shape[-1] == 1:
            predicted = tf.cast(tf.reshape(predictions, [-1]) >= 0.5, tf.int64)
        else:
            predicted = tf.argmax(predictions, axis=-1)
        correct = tf.reduce_sum(tf.cast(predicted == tf.cast(labels, tf.int64), tf.float32))
        count = tf.cast(tf.size(labels), tf.float32)
        return step_loss, correct, count

    @tf.function
    def train_step(it: Any) -> tuple[Any, Any, Any]:
        per_replica = strategy.run(step_fn, args=(next(it),))
        loss_sum, correct, count = (
            strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in per_replica
        )
        return loss_sum, correct, count

    chief = is_chief(strategy)
    result = DistributedTrainResult(
        model=model,
        optimizer=optimizer,
        num_replicas=int(strategy.num_replicas_in_sync),
        is_chief=chief,
    )
    # Called directly rather than through keras.callbacks.CallbackList, which hands each hook
    # a copy of the logs: here entries a callback adds (validation metrics) reach the history.
    callback_params = {"epochs": epochs, "steps": steps_per_epoch, "verbose": 0}
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params(callback_params)
    model.stop_training = False
    for callback in callbacks:
        callback.on_train_begin({})
    for epoch in range(initial_epoch, epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch, {})
        total_loss = 0.0
        total_correct = 0.0
        total_count = 0.0
        for _ in range(steps_per_epoch):
            try:
                step_loss, correct, count = train_step(iterator)
            except (StopIteration, tf.errors.OutOfRangeError) as exc:
                raise ConfigurationError(
                    "the training dataset yielded no batch; check dataset_fn (empty data, or "
                    "fewer examples than the global batch size with drop_remainder=True). "
                    f"Received: global_batch_size={global_batch_size}"
                ) from exc
            total_loss += float(step_loss)
            total_correct += float(correct)
            total_count += float(count)
        metrics: dict[str, float] = {
            "loss": total_loss / steps_per_epoch,
            "accuracy": total_correct / total_count if total_count else math.nan,
        }
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics)
        stop = bool(model.stop_training)
        if on_epoch_end is not None and on_epoch_end(epoch, metrics):
            stop = True
        result.history.append(metrics)
        log.info(
            "epoch %d/%d: %s",
            epoch + 1,
            epochs,
            ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()),
        )
        if stop:
            result.stopped_early = epoch + 1 < epochs
            break
    for callback in callbacks:
        callback.on_train_end(dict(result.history[-1]) if result.history else {})
    return result


def predict_local(model: Any, images: Any, *, batch_size: int = 32) -> Any:
    """Predict on this process only (no strategy, no collective): float32 numpy scores.

    For validation inside a distributed run: every worker holds identical weights, so every
    worker computes the same scores from the same validation arrays, and a decision taken from
    them (best epoch, early stopping) is the same everywhere. ``model.predict`` would try to
    distribute the work through the strategy the model was built in.
    """
    import numpy as np

    _check_positive_int("batch_size", batch_size)
    outputs = [
        np.asarray(model(images[start : start + batch_size], training=False), dtype=np.float32)
        for start in range(0, len(images), batch_size)
    ]
    if not outputs:
        raise ConfigurationError("predict_local needs at least one image. Received: 0 images")
    return np.concatenate(outputs, axis=0)


def _class_weight_table(class_weight: Mapping[int, float], *, num_classes: int) -> list[float]:
    """``{class: weight}`` -> a dense list indexed by class; classes not given weigh 1."""
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise ConfigurationError(
            "class_weight should be a non-empty mapping of class index to weight. "
            f"Received: class_weight={class_weight!r}"
        )
    for key, weight in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise ConfigurationError(
                f"class_weight keys should be class indices (integers >= 0). "
                f"Received: class_weight={dict(class_weight)!r}"
            )
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ConfigurationError(
                f"class_weight values should be finite numbers >= 0. "
                f"Received: class_weight={dict(class_weight)!r}"
            )
    table = [1.0] * max(max(class_weight) + 1, num_classes, 2)
    for key, weight in class_weight.items():
        table[key] = float(weight)
    return table

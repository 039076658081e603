"""tf.distribute: TF_CONFIG validation, strategy and mixed-precision selection, the training loop.

The real distributed runs happen in subprocesses (``python -m training.distribute_worker``), so
splitting the CPU into logical devices or starting a collective runtime never touches this
process's TensorFlow state: MirroredStrategy over two logical CPUs, and
MultiWorkerMirroredStrategy with two worker processes on localhost. All of them train the same
tiny model on the same data with the same global batch, so their final weights must match a
single-device run (that is what dividing the loss by the GLOBAL batch size buys). GPUs are a
boundary we do not own: the GPU-dependent choices are tested with a faked device list.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training import distribute, loop
from radlens.training.distribute import (
    TFConfig,
    configure_mixed_precision,
    is_chief,
    make_strategy,
    mixed_precision_policy,
    parse_tf_config,
    resolve_strategy_name,
)
from tests.conftest import REPO_ROOT
from tests.training.workers import collect_outputs, free_ports, worker_env

SUBPROCESS_TIMEOUT = 150  # seconds; a hung collective fails the test instead of freezing CI
# One training recipe for every run, so the runs are comparable.
RECIPE = ["--epochs", "4", "--steps", "4", "--global-batch-size", "8", "--learning-rate", "0.5"]


def tf_config_json(cluster: dict[str, Any], task_type: str = "worker", index: Any = 0) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


TWO_WORKERS = {"worker": ["host1:12345", "host2:12345"]}


# --- TF_CONFIG -----------------------------------------------------------------------------


class TestParseTfConfig:
    def test_two_workers(self) -> None:
        parsed = parse_tf_config(tf_config_json(TWO_WORKERS, "worker", 1))
        assert parsed == TFConfig(cluster=TWO_WORKERS, task_type="worker", task_index=1)
        assert parsed.num_workers == 2
        assert parsed.address == "host2:12345"
        assert not parsed.is_chief

    def test_worker_zero_is_chief_without_a_chief(self) -> None:
        assert parse_tf_config(tf_config_json(TWO_WORKERS, "worker", 0)).is_chief

    def test_chief_and_worker(self) -> None:
        cluster = {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222"]}
        chief = parse_tf_config(tf_config_json(cluster, "chief", 0))
        worker0 = parse_tf_config(tf_config_json(cluster, "worker", 0))
        assert chief.is_chief and chief.num_workers == 2
        assert not worker0.is_chief  # with a chief, worker 0 is an ordinary worker

    def test_index_defaults_to_zero_and_round_trips(self) -> None:
        raw = json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker"}})
        parsed = parse_tf_config(raw)
        assert parsed.task_index == 0
        assert parse_tf_config(parsed.to_json()) == parsed

    @pytest.mark.parametrize("raw", [None, "", "   "])
    def test_missing(self, raw: str | None) -> None:
        with pytest.raises(ConfigurationError, match=r"needs TF_CONFIG set .*Received: TF_CONFIG="):
            parse_tf_config(raw)

    def test_missing_says_unset(self) -> None:
        with pytest.raises(ConfigurationError, match="Received: TF_CONFIG=unset"):
            parse_tf_config(None)

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            ("{cluster: 1}", r"not valid JSON .*Received: TF_CONFIG='\{cluster: 1\}'"),
            ('["worker"]', r"must be a JSON object. Received: TF_CONFIG='\[\"worker\"\]'"),
            ('{"task": {"type": "worker", "index": 0}}', "non-empty 'cluster' object"),
            ('{"cluster": {}, "task": {}}', "non-empty 'cluster' object"),
            ('{"cluster": {"worker": ["a:1"]}, "tsak": {}}', "unknown key.*tsak"),
            ('{"cluster": {"worker": "a:1"}, "task": {}}', "'worker' needs a non-empty list"),
            ('{"cluster": {"worker": []}, "task": {}}', "'worker' needs a non-empty list"),
            ('{"cluster": {"ps": ["a:1"]}, "task": {}}', "role 'ps' is not supported"),
            ('{"cluster": {"worker": ["hostonly"]}, "task": {}}', "'hostonly', which is not"),
            ('{"cluster": {"worker": [":1"]}, "task": {}}', "':1', which is not 'host:port'"),
            ('{"cluster": {"worker": ["a:70000"]}, "task": {}}', "'a:70000', which is not"),
            ('{"cluster": {"worker": ["a:0"]}, "task": {}}', "'a:0', which is not"),
            ('{"cluster": {"worker": [12]}, "task": {}}', "has 12, which is not"),
            ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {}}', "lists 'a:1' twice"),
            (
                '{"cluster": {"chief": ["a:1", "b:1"], "worker": ["c:1"]}, "task": {}}',
                "at most one chief",
            ),
            ('{"cluster": {"worker": ["a:1"]}}', "needs a 'task' object"),
            ('{"cluster": {"worker": ["a:1"]}, "task": "worker"}', "needs a 'task' object"),
            (
                '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
                r"task type 'chief' is not a role of the cluster \(worker\)",
            ),
            (
                '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
                r"index 1 is out of range for role 'worker' \(1 task\(s\)\)",
            ),
            (
                '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": -1}}',
                "index -1 is out of range",
            ),
            (
                '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',
                "index must be an integer; got '0'",
            ),
            (
                '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": true}}',
                "index must be an integer; got True",
            ),
        ],
    )
    def test_malformed(self, raw: str, message: str) -> None:
        with pytest.raises(ConfigurationError, match=message) as info:
            parse_tf_config(raw)
        text = str(info.value)
        assert "\n" not in text
        assert text.startswith("Invalid configuration: ")
        assert "Received: TF_CONFIG=" in text

    def test_long_value_is_quoted_shortened(self) -> None:
        raw = '{"cluster": {"worker": ["' + "h" * 500 + '"]}, "task": {}}'
        with pytest.raises(ConfigurationError) as info:
            parse_tf_config(raw)
        assert "..." in str(info.value)
        assert len(str(info.value)) < 1400


# --- strategy selection --------------------------------------------------------------------


@dataclass
class FakeTfConfig:
    """tf.config with a chosen number of GPUs (no GPU on this machine)."""

    gpus: int
    listed: list[str] = field(default_factory=list)

    def list_physical_devices(self, device_type: str | None = None) -> list[str]:
        self.listed.append(str(device_type))
        if device_type == "GPU":
            return [f"/physical_device:GPU:{i}" for i in range(self.gpus)]
        return ["/physical_device:CPU:0"]


class TestResolveStrategyName:
    @pytest.mark.parametrize(
        ("name", "gpus", "expected"),
        [
            ("auto", 0, "default"),
            ("auto", 1, "default"),
            ("auto", 2, "mirrored"),
            ("auto", 8, "mirrored"),
            ("mirrored", 0, "mirrored"),
            ("multiworker", 0, "multiworker"),
            ("default", 4, "default"),
        ],
    )
    def test_table(self, name: str, gpus: int, expected: str) -> None:
        assert resolve_strategy_name(name, gpu_count=gpus) == expected

    def test_unknown(self) -> None:
        with pytest.raises(ConfigurationError, match="Received: strategy='horovod'"):
            resolve_strategy_name("horovod", gpu_count=0)


class TestMakeStrategy:
    def test_unknown_name(self) -> None:
        with pytest.raises(ConfigurationError, match=r"one of auto, mirrored.*'Mirrored'"):
            make_strategy("Mirrored")

    @pytest.mark.parametrize("name", ["auto", "default", "multiworker"])
    def test_devices_only_for_mirrored(self, name: str) -> None:
        with pytest.raises(ConfigurationError, match=f"Received: strategy='{name}', devices="):
            make_strategy(name, devices=["/cpu:0"], environ={})

    @pytest.mark.parametrize("devices", [[], "/cpu:0", ["/cpu:0", ""], [0, 1]])
    def test_bad_devices(self, devices: Any) -> None:
        with pytest.raises(ConfigurationError, match="non-empty list of device names"):
            make_strategy("mirrored", devices=devices)

    def test_multiworker_without_tf_config(self) -> None:
        with pytest.raises(ConfigurationError, match="Received: TF_CONFIG=unset"):
            make_strategy("multiworker", environ={})

    def test_multiworker_with_malformed_tf_config(self) -> None:
        with pytest.raises(ConfigurationError, match=r"not valid JSON.*TF_CONFIG='worker=a:1'"):
            make_strategy("multiworker", environ={"TF_CONFIG": "worker=a:1"})

    def test_multiworker_reads_os_environ_by_default(self, monkeypatch: Any) -> None:
        monkeypatch.setenv("TF_CONFIG", '{"cluster": {"ps": ["a:1"]}, "task": {}}')
        with pytest.raises(ConfigurationError, match="role 'ps' is not supported"):
            make_strategy("multiworker")

    def test_auto_without_gpus_is_the_default_strategy(self) -> None:
        import tensorflow as tf

        fake = FakeTfConfig(gpus=0)
        strategy = make_strategy("auto", tf_config=fake, environ={})
        assert strategy is tf.distribute.get_strategy()
        assert fake.listed == ["GPU"]
        assert strategy.num_replicas_in_sync == 1

    def test_auto_with_one_gpu_is_the_default_strategy(self) -> None:
        import tensorflow as tf

        strategy = make_strategy("auto", tf_config=FakeTfConfig(gpus=1), environ={})
        assert strategy is tf.distribute.get_strategy()

    def test_auto_with_two_gpus_is_mirrored(self) -> None:
        import tensorflow as tf

        # The fake says two GPUs; TensorFlow finds none, so it mirrors over the CPU alone.
        strategy = make_strategy("auto", tf_config=FakeTfConfig(gpus=2), environ={})
        assert isinstance(strategy, tf.distribute.MirroredStrategy)

    def test_tf_config_ignored_outside_multiworker_is_warned(self, caplog: Any) -> None:
        raw = tf_config_json(TWO_WORKERS)
        with caplog.at_level(logging.WARNING, logger="radlens.training.distribute"):
            make_strategy("default", environ={"TF_CONFIG": raw})
        assert "TF_CONFIG is set but strategy='default'" in caplog.text


class TestSetUp:
    """What the trainer calls first: the strategy, resolved once, and the dtype policy."""

    @pytest.mark.parametrize("name", ["auto", "default"])
    def test_on_this_cpu_it_is_the_default_strategy_trained_by_fit(self, name: str) -> None:
        import keras
        import tensorflow as tf

        dist = distribute.set_up(name, "auto")
        assert dist.strategy is tf.distribute.get_strategy()
        assert (dist.name, dist.distributed, dist.chief, dist.task) == (
            "default",
            False,
            True,
            "chief",
        )
        assert keras.mixed_precision.global_policy().name == "float32"

    def test_unknown_names_are_refused(self) -> None:
        with pytest.raises(ConfigurationError, match=r"Received: strategy='ring'"):
            distribute.set_up("ring")
        with pytest.raises(ConfigurationError, match=r"Received: mixed_precision='half'"):
            distribute.set_up("default", "half")


@dataclass
class FakeClusterSpec:
    cluster: dict[str, list[str]]

    def as_dict(self) -> dict[str, list[str]]:
        return self.cluster


@dataclass
class FakeResolver:
    cluster: dict[str, list[str]]
    task_type: str | None
    task_id: int | None

    def cluster_spec(self) -> FakeClusterSpec:
        return FakeClusterSpec(self.cluster)


@dataclass
class FakeStrategy:
    cluster_resolver: FakeResolver | None


class TestIsChief:
    def test_single_process_strategies(self) -> None:
        import tensorflow as tf

        assert is_chief(tf.distribute.get_strategy())
        assert is_chief(FakeStrategy(None))

    @pytest.mark.parametrize(
        ("cluster", "task_type", "task_id", "expected"),
        [
            (TWO_WORKERS, "worker", 0, True),
            (TWO_WORKERS, "worker", 1, False),
            ({"chief": ["c:1"], "worker": ["w:1"]}, "chief", 0, True),
            ({"chief": ["c:1"], "worker": ["w:1"]}, "worker", 0, False),
            ({}, None, None, True),  # a resolver without a task: local training
        ],
    )
    def test_multiworker_roles(
        self, cluster: dict[str, list[str]], task_type: str | None, task_id: Any, expected: bool
    ) -> None:
        assert is_chief(FakeStrategy(FakeResolver(cluster, task_type, task_id))) is expected


# --- mixed precision -----------------------------------------------------------------------


class TestMixedPrecisionPolicy:
    @pytest.mark.parametrize(
        ("mode", "gpus", "expected"),
        [
            ("off", 0, "float32"),
            ("off", 2, "float32"),
            ("on", 1, "mixed_float16"),
            ("auto", 1, "mixed_float16"),
            ("auto", 0, "float32"),
        ],
    )
    def test_table(self, mode: str, gpus: int, expected: str) -> None:
        assert mixed_precision_policy(mode, gpu_count=gpus) == expected

    def test_on_refuses_a_cpu(self) -> None:
        with pytest.raises(ConfigurationError, match="needs a GPU and none is visible"):
            mixed_precision_policy("on", gpu_count=0)

    def test_unknown_mode(self) -> None:
        with pytest.raises(ConfigurationError, match="Received: mixed_precision='fp16'"):
            mixed_precision_policy("fp16", gpu_count=1)


class TestConfigureMixedPrecision:
    def test_gpu_sets_mixed_float16(self) -> None:
        calls: list[str] = []
        policy = configure_mixed_precision(
            "on", tf_config=FakeTfConfig(gpus=1), set_global_policy=calls.append
        )
        assert policy == "mixed_float16"
        assert calls == ["mixed_float16"]

    def test_cpu_refuses_on_before_touching_the_policy(self) -> None:
        calls: list[str] = []
        with pytest.raises(ConfigurationError, match="mixed_precision='on', 0 GPUs"):
            configure_mixed_precision(
                "on", tf_config=FakeTfConfig(gpus=0), set_global_policy=calls.append
            )
        assert calls == []

    def test_cpu_auto_warns_and_keeps_float32(self, caplog: Any) -> None:
        calls: list[str] = []
        with caplog.at_level(logging.WARNING, logger="radlens.training.distribute"):
            policy = configure_mixed_precision(
                "auto", tf_config=FakeTfConfig(gpus=0), set_global_policy=calls.append
            )
        assert policy == "float32"
        assert calls == ["float32"]
        assert "no GPU visible, training in float32" in caplog.text

    def test_off_resets_a_previous_mixed_policy(self) -> None:
        calls: list[str] = []
        configure_mixed_precision(
            "off", tf_config=FakeTfConfig(gpus=2), set_global_policy=calls.append
        )
        assert calls == ["float32"]


@pytest.fixture
def mixed_policy() -> Iterator[None]:
    """The real Keras mixed_float16 policy for one test, float32 restored after it."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


class TestWrapOptimizer:
    def test_float32_is_left_alone(self) -> None:
        import keras

        optimizer = keras.optimizers.SGD(0.1)
        assert distribute.wrap_optimizer(optimizer) is optimizer

    def test_mixed_policy_wraps_once(self, mixed_policy: None) -> None:
        import keras

        wrapped = distribute.wrap_optimizer(keras.optimizers.SGD(0.1))
        assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
        assert distribute.wrap_optimizer(wrapped) is wrapped


# --- the training loop, in this process (default strategy) ---------------------------------


def tiny_dataset_fn(batch_size: int = 8, seed: int = 7) -> Any:
    import tensorflow as tf

    from radlens.training.distribute_worker import synthetic_data

    images, labels = synthetic_data(seed)
    return lambda: tf.data.Dataset.from_tensor_slices((images, labels)).batch(
        batch_size, drop_remainder=True
    )


def train_default(**overrides: Any) -> loop.DistributedTrainResult:
    import keras
    import tensorflow as tf

    from radlens.training.distribute_worker import build_tiny_model

    def model_fn() -> Any:
        keras.utils.set_random_seed(3)  # the same initial weights in every call
        return build_tiny_model()

    kwargs: dict[str, Any] = {
        "strategy": tf.distribute.get_strategy(),
        "epochs": 2,
        "steps_per_epoch": 2,
        "global_batch_size": 8,
        "optimizer_fn": lambda: keras.optimizers.SGD(learning_rate=0.1),
    }
    kwargs.update(overrides)
    dataset_fn = kwargs.pop("dataset_fn", tiny_dataset_fn())
    return loop.distributed_train(kwargs.pop("model_fn", model_fn), dataset_fn, **kwargs)


class TestDistributedTrainDefaultStrategy:
    def test_trains_and_reports_each_epoch(self) -> None:
        result = train_default(epochs=3)
        assert len(result.history) == 3
        for epoch in result.history:
            assert set(epoch) == {"loss", "accuracy"}
            assert math.isfinite(epoch["loss"]) and epoch["loss"] > 0
            assert 0.0 <= epoch["accuracy"] <= 1.0
        assert result.num_replicas == 1 and result.is_chief and not result.stopped_early

    def test_weights_change(self) -> None:
        before = train_default(epochs=1, optimizer_fn=_sgd(0.0)).model.get_weights()
        after = train_default(epochs=1).model.get_weights()
        assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))

    def test_loss_object_and_name_agree(self) -> None:
        import keras

        by_name = train_default(epochs=1)
        by_object = train_default(epochs=1, loss=keras.losses.SparseCategoricalCrossentropy())
        by_class_name = train_default(epochs=1, loss="SparseCategoricalCrossentropy")
        assert by_object.history[0]["loss"] == pytest.approx(by_name.history[0]["loss"], rel=1e-6)
        assert by_class_name.history == by_object.history

    def test_class_weight_scales_each_example(self) -> None:
        plain = train_default(epochs=1, steps_per_epoch=1)
        doubled = train_default(epochs=1, steps_per_epoch=1, class_weight={0: 2.0, 1: 2.0})
        assert doubled.history[0]["loss"] == pytest.approx(2 * plain.history[0]["loss"], rel=1e-5)

    def test_zero_class_weights_mean_no_update(self) -> None:
        frozen = train_default(epochs=1, optimizer_fn=_sgd(0.0)).model.get_weights()
        result = train_default(epochs=1, class_weight={0: 0.0, 1: 0.0})
        assert result.history[0]["loss"] == 0.0
        for a, b in zip(frozen, result.model.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_on_epoch_end_sees_metrics_and_can_stop(self) -> None:
        seen: list[tuple[int, dict[str, float]]] = []

        def hook(epoch: int, metrics: dict[str, float]) -> bool:
            seen.append((epoch, metrics))
            return epoch == 1

        result = train_default(epochs=5, on_epoch_end=hook)
        assert [e for e, _ in seen] == [0, 1]
        assert [m for _, m in seen] == result.history
        assert result.stopped_early

    def test_hook_can_add_metrics_to_the_history(self) -> None:
        def hook(epoch: int, metrics: dict[str, float]) -> None:
            metrics["epoch_seen"] = float(epoch)

        result = train_default(epochs=2, on_epoch_end=hook)
        assert [m["epoch_seen"] for m in result.history] == [0.0, 1.0]

    def test_initial_epoch_continues_the_count(self) -> None:
        seen: list[int] = []
        result = train_default(
            epochs=3, initial_epoch=1, on_epoch_end=lambda epoch, _: seen.append(epoch)
        )
        assert seen == [1, 2]
        assert len(result.history) == 2

    def test_keras_callbacks_at_epoch_level(self, tmp_path: Path) -> None:
        import keras

        class Validation(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.events: list[str] = []

            def on_train_begin(self, logs: Any = None) -> None:
                self.events.append("train_begin")

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.events.append(f"epoch_begin {epoch}")

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                scores = loop.predict_local(self.model, images)
                logs["val_accuracy"] = float(np.mean(scores.argmax(axis=1) == labels))
                self.events.append(f"epoch_end {epoch}")

            def on_train_end(self, logs: Any = None) -> None:
                self.events.append("train_end")

        from radlens.training.distribute_worker import synthetic_data

        images, labels = synthetic_data(7)
        validation = Validation()
        csv = tmp_path / "history.csv"
        # min_delta=10: the second epoch cannot "improve" the loss enough, so training stops.
        stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
        result = train_default(
            epochs=5, callbacks=[validation, stopper, keras.callbacks.CSVLogger(str(csv))]
        )
        assert validation.events == [
            "train_begin",
            "epoch_begin 0",
            "epoch_end 0",
            "epoch_begin 1",
            "epoch_end 1",
            "train_end",
        ]
        assert result.stopped_early and len(result.history) == 2
        assert all(0.0 <= m["val_accuracy"] <= 1.0 for m in result.history)
        rows = csv.read_text().splitlines()
        assert rows[0] == "epoch,accuracy,loss,val_accuracy"
        assert len(rows) == 3

    def test_mixed_float16_on_cpu_uses_a_loss_scale_optimizer(self, mixed_policy: None) -> None:
        import keras

        result = train_default(epochs=1)
        assert isinstance(result.optimizer, keras.optimizers.LossScaleOptimizer)
        assert result.model.layers[0].compute_dtype == "float16"
        assert result.model.layers[0].kernel.dtype == "float32"  # variables stay float32
        assert math.isfinite(result.history[0]["loss"])


class TestWithTheProjectsModels:
    def test_simple_cnn_with_filters_in_two_phases(self) -> None:
        """The trainer's two-phase pattern: phase 2 passes the phase-1 model back in."""
        import tensorflow as tf

        from radlens.models.architectures import build_model

        model = None
        conv1_built: list[np.ndarray] = []

        def phase1_model() -> Any:
            nonlocal model
            model = build_model(
                "simple_cnn", input_shape=(16, 16, 1), num_classes=2, filters=("sobel_h",)
            )
            model.get_layer("conv1").trainable = False
            conv1_built.extend(np.asarray(w) for w in model.get_layer("conv1").get_weights())
            return model

        common: dict[str, Any] = {
            "strategy": tf.distribute.get_strategy(),
            "steps_per_epoch": 2,
            "global_batch_size": 8,
            "optimizer_fn": _sgd(0.05),
            "class_weight": {0: 1.0, 1: 0.5},
        }
        first = loop.distributed_train(phase1_model, tiny_dataset_fn(), epochs=1, **common)
        assert model is not None
        conv1_start = [np.asarray(w) for w in model.get_layer("conv1").get_weights()]
        for built, after_phase1 in zip(conv1_built, conv1_start, strict=True):
            np.testing.assert_array_equal(built, after_phase1)  # frozen in phase 1
        dense1_start = np.asarray(model.get_layer("dense1").get_weights()[0]).copy()
        model.get_layer("conv1").trainable = True
        second = loop.distributed_train(
            lambda: model, tiny_dataset_fn(), epochs=2, initial_epoch=1, **common
        )
        assert second.model is first.model is model
        assert len(first.history) == len(second.history) == 1
        assert math.isfinite(second.history[0]["loss"])
        conv1_end = model.get_layer("conv1").get_weights()
        assert any(not np.array_equal(a, b) for a, b in zip(conv1_start, conv1_end, strict=True))
        assert not np.array_equal(dense1_start, model.get_layer("dense1").get_weights()[0])


def _sgd(learning_rate: float) -> Any:
    import keras

    return lambda: keras.optimizers.SGD(learning_rate=learning_rate)


class TestDistributedTrainValidation:
    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"epochs": 0}, "epochs should be a positive integer. Received: epochs=0"),
            ({"steps_per_epoch": True}, "Received: steps_per_epoch=True"),
            ({"global_batch_size": 2.5}, "Received: global_batch_size=2.5"),
            ({"shard_policy": "hash"}, "Received: shard_policy='hash'"),
            ({"loss": "no_such_loss"}, "unknown loss. Received: loss='no_such_loss'"),
            ({"loss": 3}, "Received: loss=3"),
            ({"class_weight": {}}, "non-empty mapping"),
            ({"class_weight": {0: -1.0}}, r"finite numbers >= 0. Received: class_weight=\{0: -1"),
            ({"class_weight": {0: float("nan")}}, "finite numbers >= 0"),
            ({"class_weight": {"0": 1.0}}, "class indices"),
            ({"initial_epoch": -1}, "Received: initial_epoch=-1, epochs=2"),
            ({"initial_epoch": 2}, "Received: initial_epoch=2, epochs=2"),
            ({"initial_epoch": True}, "Received: initial_epoch=True"),
        ],
    )
    def test_bad_arguments(self, overrides: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigurationError, match=message):
            train_default(**overrides)

    def test_dataset_fn_must_return_a_dataset(self) -> None:
        with pytest.raises(ConfigurationError, match="Received: list"):
            train_default(dataset_fn=lambda: [1, 2])

    def test_empty_dataset(self) -> None:
        # 64 examples never fill a batch of 100 with drop_remainder: no batch at all.
        with pytest.raises(ConfigurationError, match=r"yielded no batch.*global_batch_size=100"):
            train_default(dataset_fn=tiny_dataset_fn(batch_size=100), global_batch_size=100)


class TestPredictLocal:
    def test_matches_the_model_in_batches(self) -> None:
        from radlens.training.distribute_worker import build_tiny_model, synthetic_data

        images, _ = synthetic_data(7)
        model = build_tiny_model()
        scores = loop.predict_local(model, images, batch_size=10)  # 64 = 6 x 10 + 4
        assert scores.shape == (64, 2) and scores.dtype == np.float32
        np.testing.assert_allclose(scores, np.asarray(model(images)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)

    def test_bad_input(self) -> None:
        from radlens.training.distribute_worker import build_tiny_model

        model = build_tiny_model()
        with pytest.raises(ConfigurationError, match="Received: batch_size=0"):
            loop.predict_local(model, np.zeros((2, 16, 16, 1), np.float32), batch_size=0)
        with pytest.raises(ConfigurationError, match="Received: 0 images"):
            loop.predict_local(model, np.zeros((0, 16, 16, 1), np.float32))


class TestWorkerMain:
    def test_bad_tf_config_is_one_line_and_exit_2(
        self, tmp_path: Path, monkeypatch: Any, capsys: Any
    ) -> None:
        from radlens.training.distribute_worker import main

        monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost"]}}')
        status = main(["--strategy", "multiworker", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert status == 2
        assert err.count("\n") == 1
        assert err.startswith("distribute_worker: error: Invalid configuration: ")
        assert "'localhost', which is not 'host:port'" in err
        assert not (tmp_path / "out").exists()


# --- real distributed runs, in subprocesses ------------------------------------------------


@dataclass
class WorkerRun:
    report: dict[str, Any]
    initial: list[np.ndarray]
    weights: list[np.ndarray]


def start_worker(out: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radlens.training.distribute_worker",
            "--out",
            str(out),
            *args,
            *RECIPE,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes: dict[str, subprocess.Popen[str]]) -> None:
    """Wait for every worker (bounded); on a timeout or failure kill all and fail with stderr."""
    collect_outputs(processes, SUBPROCESS_TIMEOUT, json_out=False)


def load_run(out: Path) -> WorkerRun:
    def arrays(name: str) -> list[np.ndarray]:
        with np.load(out / name) as data:
            return [data[key] for key in sorted(data.files)]

    report = json.loads((out / "report.json").read_text())
    return WorkerRun(report, arrays("initial.npz"), arrays("weights.npz"))


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory: Any) -> dict[str, WorkerRun]:
    """Mirrored over two logical CPUs, and two multi-worker processes, started together."""
    root = tmp_path_factory.mktemp("distributed")
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = {
        "mirrored": start_worker(
            root / "mirrored", ["--strategy", "mirrored", "--logical-cpus", "2"], worker_env()
        ),
        **{
            f"worker{i}": start_worker(
                root / f"worker{i}",
                ["--strategy", "multiworker"],
                worker_env(tf_config_json(cluster, "worker", i)),
            )
            for i in range(2)
        },
    }
    finish(processes)
    return {name: load_run(root / name) for name in processes}


def single_device_reference(initial: list[np.ndarray]) -> list[np.ndarray]:
    """The same recipe on one device (default strategy, this process) from the same weights."""
    import tensorflow as tf

    from radlens.training.distribute_worker import build_tiny_model

    def model_fn() -> Any:
        model = build_tiny_model()
        model.set_weights(initial)
        return model

    options = dict(zip(RECIPE[::2], RECIPE[1::2], strict=True))
    result = loop.distributed_train(
        model_fn,
        tiny_dataset_fn(batch_size=int(options["--global-batch-size"])),
        strategy=tf.distribute.get_strategy(),
        epochs=int(options["--epochs"]),
        steps_per_epoch=int(options["--steps"]),
        global_batch_size=int(options["--global-batch-size"]),
        optimizer_fn=_sgd(float(options["--learning-rate"])),
    )
    assert result.num_replicas == 1
    return [np.asarray(w) for w in result.model.get_weights()]


def assert_same_update_as_one_device(run: WorkerRun) -> None:
    # Each replica sees its part of every global batch of 8; dividing its loss by the GLOBAL
    # batch size makes the all-reduced (summed) gradient equal to the single-device gradient
    # of the whole batch, so the weights follow the same path. Dividing by the per-replica
    # batch instead would double every step and fail this.
    reference = single_device_reference(run.initial)
    assert len(reference) == len(run.weights) == 6  # two conv layers and the head
    for expected, actual in zip(reference, run.weights, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)
    assert any(
        not np.allclose(a, b) for a, b in zip(run.initial, run.weights, strict=True)
    )  # and it did train


def assert_learned(run: WorkerRun) -> None:
    history = run.report["history"]
    losses = [epoch["loss"] for epoch in history]
    assert len(losses) == 4
    # validation from a callback (predict_local on this process) reached the history
    assert all(0.0 <= epoch["val_accuracy"] <= 1.0 for epoch in history)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_multiworker_port_taken_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"localhost:{taken.getsockname()[1]}"
        process = start_worker(
            tmp_path / "out",
            ["--strategy", "multiworker"],
            worker_env(tf_config_json({"worker": [address]})),
        )
        try:
            _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 2, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]  # TensorFlow logs its own errors above it
    assert last.startswith("distribute_worker: error: Invalid configuration: ")
    assert f"could not start this task's server at {address}" in last
    assert "check that the port is free" in last
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
class TestMirroredOverTwoLogicalCpus:
    def test_two_replicas_on_two_cpu_devices(self, distributed_runs: dict[str, WorkerRun]) -> None:
        report = distributed_runs["mirrored"].report
        assert report["strategy"] == "MirroredStrategy"
        assert report["num_replicas"] == 2
        assert [d.rsplit("/", 1)[-1] for d in report["replica_devices"]] == [
            "device:CPU:0",
            "device:CPU:1",
        ]

    def test_replicas_hold_identical_variables(
        self, distributed_runs: dict[str, WorkerRun]
    ) -> None:
        report = distributed_runs["mirrored"].report
        assert report["copies_per_variable"] == [2]  # each variable has a copy per CPU device
        assert report["replicas_identical"] is True

    def test_loss_is_finite_and_decreases(self, distributed_runs: dict[str, WorkerRun]) -> None:
        assert_learned(distributed_runs["mirrored"])

    def test_same_update_as_one_device(self, distributed_runs: dict[str, WorkerRun]) -> None:
        assert_same_update_as_one_device(distributed_runs["mirrored"])


@pytest.mark.slow
class TestMultiWorkerOnLocalhost:
    def test_two_workers_one_replica_each(self, distributed_runs: dict[str, WorkerRun]) -> None:
        first, second = distributed_runs["worker0"].report, distributed_runs["worker1"].report
        assert first["strategy"] == second["strategy"] == "CollectiveAllReduceStrategy"
        assert first["num_replicas"] == second["num_replicas"] == 2
        assert (first["task"], second["task"]) == ("worker:0", "worker:1")
        assert (first["is_chief"], second["is_chief"]) == (True, False)
        assert first["copies_per_variable"] == second["copies_per_variable"] == [1]

    def test_each_worker_trains_on_its_own_shard(
        self, distributed_runs: dict[str, WorkerRun]
    ) -> None:
        first, second = distributed_runs["worker0"].report, distributed_runs["worker1"].report
        assert first["first_batch_sha256"] != second["first_batch_sha256"]

    def test_workers_end_with_identical_weights(
        self, distributed_runs: dict[str, WorkerRun]
    ) -> None:
        first, second = distributed_runs["worker0"], distributed_runs["worker1"]
        assert len(first.weights) == len(second.weights) == 6
        for a, b in zip(first.initial, second.initial, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(first.weights, second.weights, strict=True):
            np.testing.assert_array_equal(a, b)
        assert first.report["history"] == second.report["history"]

    def test_loss_is_finite_and_decreases(self, distributed_runs: dict[str, WorkerRun]) -> None:
        assert_learned(distributed_runs["worker0"])

    def test_same_update_as_one_device(self, distributed_runs: dict[str, WorkerRun]) -> None:
        assert_same_update_as_one_device(distributed_runs["worker0"])

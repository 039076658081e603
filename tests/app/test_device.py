"""select_device against a faked tf.config (no GPU on this machine: a boundary we don't own)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from radlens.app.device import DeviceInfo, select_device
from radlens.models.errors import ConfigurationError


@dataclass(frozen=True)
class FakePhysicalDevice:
    name: str
    device_type: str = "GPU"


@dataclass
class FakeExperimental:
    owner: FakeConfig

    def set_memory_growth(self, device: FakePhysicalDevice, enable: bool) -> None:
        if self.owner.initialised:
            # The message TensorFlow raises in this case.
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.owner.memory_growth[device.name] = enable


@dataclass
class FakeConfig:
    gpus: list[FakePhysicalDevice]
    initialised: bool = False
    memory_growth: dict[str, bool] = field(default_factory=dict)
    visible: dict[str, list[Any]] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.experimental = FakeExperimental(self)

    def list_physical_devices(self, device_type: str | None = None) -> list[FakePhysicalDevice]:
        self.listed.append(str(device_type))
        return list(self.gpus) if device_type == "GPU" else []

    def set_visible_devices(self, devices: list[Any], device_type: str | None = None) -> None:
        if self.initialised:
            raise RuntimeError("Visible devices cannot be modified after being initialized")
        self.visible[str(device_type)] = list(devices)


def gpus(n: int) -> list[FakePhysicalDevice]:
    return [FakePhysicalDevice(f"/physical_device:GPU:{i}") for i in range(n)]


class TestSelectDevice:
    def test_no_gpu_auto_falls_back_to_cpu(self) -> None:
        config = FakeConfig(gpus=[])
        info = select_device("auto", tf_config=config)
        assert info == DeviceInfo("/CPU:0", "cpu", False, 0)
        assert config.listed == ["GPU"]
        assert config.memory_growth == {}

    def test_one_gpu_sets_memory_growth_and_picks_gpu0(self) -> None:
        config = FakeConfig(gpus=gpus(1))
        info = select_device(tf_config=config)
        assert info.name == "/GPU:0"
        assert info.kind == "gpu"
        assert info.memory_growth is True
        assert info.gpu_count == 1
        assert config.memory_growth == {"/physical_device:GPU:0": True}

    def test_two_gpus_memory_growth_on_each(self) -> None:
        config = FakeConfig(gpus=gpus(2))
        info = select_device("gpu", tf_config=config)
        assert (info.name, info.kind, info.memory_growth, info.gpu_count) == (
            "/GPU:0",
            "gpu",
            True,
            2,
        )
        assert config.memory_growth == {
            "/physical_device:GPU:0": True,
            "/physical_device:GPU:1": True,
        }

    def test_already_initialised_is_reported_not_raised(self, caplog: Any) -> None:
        config = FakeConfig(gpus=gpus(2), initialised=True)
        with caplog.at_level("WARNING", logger="radlens.app.device"):
            info = select_device("auto", tf_config=config)
        assert info.name == "/GPU:0"
        assert info.memory_growth is False
        assert "already initialised" in info.note
        assert "cannot be modified after being initialized" in info.note
        assert config.memory_growth == {}
        assert any("already initialised" in r.getMessage() for r in caplog.records)

    def test_cpu_preference_hides_gpus(self) -> None:
        config = FakeConfig(gpus=gpus(2))
        info = select_device("cpu", tf_config=config)
        assert info == DeviceInfo("/CPU:0", "cpu", False, 0)
        assert config.visible == {"GPU": []}
        assert config.memory_growth == {}

    def test_cpu_preference_without_gpus_touches_nothing(self) -> None:
        config = FakeConfig(gpus=[])
        assert select_device("cpu", tf_config=config).name == "/CPU:0"
        assert config.visible == {}

    def test_cpu_preference_after_initialisation_still_cpu(self) -> None:
        config = FakeConfig(gpus=gpus(1), initialised=True)
        info = select_device("cpu", tf_config=config)
        assert info.name == "/CPU:0"
        assert "already initialised" in info.note

    def test_gpu_preference_without_gpu_raises(self) -> None:
        with pytest.raises(ConfigurationError, match=r"device='gpu'.*returned \[\]"):
            select_device("gpu", tf_config=FakeConfig(gpus=[]))

    def test_unknown_preference_quotes_value(self) -> None:
        with pytest.raises(ConfigurationError, match=r"Received: device='tpu'"):
            select_device("tpu", tf_config=FakeConfig(gpus=[]))

    def test_real_tf_config_on_this_machine(self) -> None:
        # The default path uses tf.config itself; this machine has no GPU.
        import tensorflow as tf

        info = select_device("auto")
        expected = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
        assert info.name == expected

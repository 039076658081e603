"""Where the model runs: the GPU (with memory growth) when there is one, else the CPU.

Written to TensorFlow's documented GPU behaviour: memory growth must be set on every physical
GPU *before* any GPU is initialised, otherwise ``set_memory_growth`` raises ``RuntimeError``;
hiding GPUs with ``set_visible_devices([], "GPU")`` has the same constraint. ``tf_config`` is
the ``tf.config`` module by default and a fake in the tests (no GPU here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from radlens.models.errors import ConfigurationError

log = logging.getLogger(__name__)

PREFERENCES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class DeviceInfo:
    """The device the model is placed on."""

    name: str  # "/GPU:0" | "/CPU:0"
    kind: Literal["gpu", "cpu"]
    memory_growth: bool  # memory growth enabled on every visible GPU
    gpu_count: int = 0  # physical GPUs visible (0 on CPU)
    note: str = ""  # why memory growth could not be set, when it could not


def _default_tf_config() -> Any:
    import tensorflow as tf

    return tf.config


def select_device(preference: str = "auto", *, tf_config: Any = None) -> DeviceInfo:
    """Pick the device for inference and configure GPU memory growth.

    ``preference``: "auto" (GPU when visible, else CPU), "cpu" (hide every GPU) or "gpu"
    (raise ``ConfigurationError`` when none is visible). ``tf_config`` defaults to
    ``tf.config``.
    """
    if preference not in PREFERENCES:
        raise ConfigurationError(
            f"device should be one of {', '.join(PREFERENCES)}. Received: device={preference!r}"
        )
    config = _default_tf_config() if tf_config is None else tf_config
    gpus = list(config.list_physical_devices("GPU"))

    if preference == "cpu":
        if gpus:
            try:
                config.set_visible_devices([], "GPU")
            except RuntimeError as exc:
                # The GPUs are already initialised; ops can still be pinned to the CPU.
                log.warning("could not hide GPUs (already initialised): %s", exc)
                return DeviceInfo(
                    "/CPU:0", "cpu", False, 0, note=f"GPUs already initialised: {exc}"
                )
        return DeviceInfo("/CPU:0", "cpu", False, 0)

    if not gpus:
        if preference == "gpu":
            raise ConfigurationError(
                "device='gpu' was requested but TensorFlow sees no GPU "
                "(list_physical_devices('GPU') returned []); use device 'auto' or 'cpu'"
            )
        return DeviceInfo("/CPU:0", "cpu", False, 0)

    growth = True
    note = ""
    for gpu in gpus:
        try:
            config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:
            # TensorFlow raises this when the GPUs were initialised before we got here
            # (some op already ran): the allocator keeps its current policy.
            growth = False
            note = f"memory growth not set, GPUs already initialised: {exc}"
            log.warning("%s", note)
            break
    return DeviceInfo("/GPU:0", "gpu", growth, len(gpus), note=note)

"""OpenVINO serving with an OOD detector: per-batch CPU and wall time (QA 84). Not a test.

    .venv/bin/python -m bench.ood_openvino [--size 64] [--batch 8] [--rounds 30]

Builds ResNet50 (``weights=None``, ``--size`` px, 2 classes) in a temporary store, attaches
a Mahalanobis detector on its first and last stage (``models.ood.RESNET_LAYERS``, fitted on
random images: the cost, not the quality, is measured) and converts it with
``add_openvino_runtime`` (the detector's features become a second IR output). Then times
``Predictor._infer_scored`` on one batch, interleaved round by round (the machine is
shared), for: TensorFlow with the detector; OpenVINO without it; OpenVINO with it, features
from the IR (one call); the same with a scores-only IR (converted as before QA 84: the
features from the Keras model in a second forward pass); and OpenVINO without the detector
on that IR. CPU time is the process's (every thread), median over rounds. Figures:
docs/benchmarks/serve.md, "Run 6".
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)

    import keras

    from radlens.app.device import DeviceInfo
    from radlens.app.predictor import Predictor
    from radlens.models.architectures import build_model
    from radlens.models.ood import RESNET_LAYERS, load_detector
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import (
        IR_XML,
        OpenVINORuntime,
        add_openvino_runtime,
        convert_to_openvino,
    )
    from radlens.training.ood import attach_detector

    size, n = args.size, args.batch
    cpu_device = DeviceInfo("/CPU:0", "cpu", False)
    with tempfile.TemporaryDirectory(prefix="bench-ood-openvino-") as tmp:
        registry = ModelRegistry(Path(tmp) / "store")
        keras.utils.set_random_seed(0)
        registry.save(
            build_model("resnet50", input_shape=(size, size, 1), num_classes=2, weights=None),
            name="res",
            architecture="resnet50",
            class_names=["normal", "pneumonia"],
            threshold=0.5,
            window=None,
            filters=[],
            metrics={},
            training_config={"note": "bench.ood_openvino"},
            data_fingerprint=None,
        )
        rng = np.random.default_rng(1)
        train = (rng.random((40, size, size, 1), dtype=np.float32), np.arange(40) % 2)
        val = rng.random((30, size, size, 1), np.float32)
        loaded = registry.load("res:1")
        attach_detector(
            registry, "res:1", loaded.model, train, val, method="mahalanobis", layers=RESNET_LAYERS
        )
        add_openvino_runtime(registry, "res:1")  # the detector is attached: features too
        manifest = registry.verify("res", 1)
        detector = load_detector(registry.ood_detector_file(manifest))  # type: ignore[arg-type]
        files = registry.runtime_files(manifest, "openvino")
        xml = next(path for path in files.values() if path.name == IR_XML)
        loaded = registry.load("res:1")
        scores_only = convert_to_openvino(loaded.model, Path(tmp) / "scores-only")[IR_XML]
        shape = (size, size, 1)
        with_features = OpenVINORuntime(xml, "fp32", shape)
        old = OpenVINORuntime(scores_only, "fp32", shape)

        def predictor(**kwargs: object) -> Predictor:
            return Predictor(loaded, cpu_device, max_batch_size=n, max_batch_wait_ms=0.0, **kwargs)  # type: ignore[arg-type]

        configs = {
            "tensorflow + detector": predictor(ood=detector),
            "openvino": predictor(runtime=with_features),
            "openvino + detector (one call)": predictor(runtime=with_features, ood=detector),
            "openvino + detector (scores-only IR)": predictor(runtime=old, ood=detector),
            "openvino (scores-only IR)": predictor(runtime=old),
        }
        x = rng.random((n, size, size, 1), dtype=np.float32)
        for p in configs.values():  # warm-up: the first calls trace and compile
            for _ in range(3):
                p._infer_scored(x)
        cpu: dict[str, list[float]] = {name: [] for name in configs}
        wall: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, p in configs.items():
                c0, w0 = time.process_time(), time.perf_counter()
                p._infer_scored(x)
                cpu[name].append((time.process_time() - c0) * 1000.0)
                wall[name].append((time.perf_counter() - w0) * 1000.0)
    med = {name: statistics.median(v) for name, v in cpu.items()}
    wmed = {name: statistics.median(v) for name, v in wall.items()}
    base = "openvino"
    print(f"ResNet50 {size} px, batch {n}, {args.rounds} rounds, load average {os.getloadavg()}")
    print(f"{'configuration':40s} {'CPU ms':>8s} {'wall ms':>8s} {'CPU/ov':>7s} {'wall/ov':>7s}")
    for name in configs:
        print(
            f"{name:40s} {med[name]:8.1f} {wmed[name]:8.1f} {med[name] / med[base]:7.2f} "
            f"{wmed[name] / wmed[base]:7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

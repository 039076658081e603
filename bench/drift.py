"""What drift monitoring costs: per upload on the service's upload path, and per /metrics
scrape, against baselines measured in the same run.

- per upload: ``ServiceMetrics.observe_upload`` (score histograms, input counts, the drift
  window: the model input's mean and standard deviation) against ``observe_prediction``
  (the one Counter increment every stored prediction already paid);
- per scrape: ``generate_latest`` of the registry with a full drift window of N uploads
  (PSI and KS for every feature, computed at scrape time) against the same registry with no
  drift monitor.

Nothing is asserted: the figures are printed with the CPU model, for docs/benchmarks/
monitoring.md. Run: ``python -m bench.drift [--size 64] [--windows 500 5000]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.serve import cpu_model


def _per_call(fn: Callable[[], Any], *, calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean seconds per call over ``calls`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def _image(size: int, rng: np.random.Generator) -> Any:
    meta = SimpleNamespace(
        format="dicom",
        modality="CR",
        body_part="CHEST",
        photometric_interpretation="MONOCHROME2",
        rows=2048,
        columns=2048,
    )
    return SimpleNamespace(pixels=rng.random((size, size), dtype=np.float32), metadata=meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="model input side (pixels)")
    parser.add_argument("--windows", type=int, nargs="+", default=[500, 5000])
    args = parser.parse_args()

    from radlens.app.drift import DriftMonitor
    from radlens.models.drift import build_reference

    rng = np.random.default_rng(0)
    classes = ["normal", "abnormal"]
    p = rng.beta(2, 5, 500)
    reference = build_reference(
        np.stack([1 - p, p], 1), rng.random((500, args.size, args.size)), classes, 0.5
    )
    manifest = SimpleNamespace(
        ref="bench:1", class_names=classes, metrics={"drift_reference": reference}
    )
    print(f"CPU: {cpu_model()}")
    print(f"model input {args.size}x{args.size}, 2 classes")

    image = _image(args.size, rng)
    for window in args.windows:
        _measure(DriftMonitor(manifest, window), window, image, args.size, rng)  # type: ignore[arg-type]


def _measure(monitor: Any, window: int, image: Any, size: int, rng: np.random.Generator) -> None:
    from prometheus_client import generate_latest

    from radlens.app.metrics import ServiceMetrics

    scores = {"normal": 0.3, "abnormal": 0.7}
    metrics = ServiceMetrics()
    metrics.drift = monitor
    baseline = _per_call(lambda: metrics.observe_prediction("bench:1", "abnormal"), calls=20000)
    upload = _per_call(
        lambda: metrics.observe_upload("bench:1", scores, image, "abnormal"), calls=5000
    )
    for _ in range(window):
        metrics.observe_upload("bench:1", scores, _image(size, rng), "abnormal")
    scrape = _per_call(lambda: generate_latest(metrics.registry), calls=50)
    metrics.drift = None
    scrape_base = _per_call(lambda: generate_latest(metrics.registry), calls=50)
    print(
        f"window {window}: per upload {upload * 1e6:.1f} us vs {baseline * 1e6:.2f} us "
        f"(Counter increment; ratio {upload / baseline:.0f}x); per scrape "
        f"{scrape * 1e3:.2f} ms vs {scrape_base * 1e3:.2f} ms without drift "
        f"(ratio {scrape / scrape_base:.1f}x)"
    )


if __name__ == "__main__":
    main()

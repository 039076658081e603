"""Service explanation cost (issue 8): app.explain.Explainer warm-up and one explanation.

Not a test. Run from the repository root:

    .venv/bin/python -m bench.explain     # ~1 min on 2 shared cores

For simple_cnn at 64 px and resnet50 at 64 and 224 px (weights=None, 2 classes): the wall
time of ``Explainer.warmup()`` (the first Grad-CAM call traces the gradient model: what
RADLENS_EXPLAIN_WARMUP moves to start-up) and the median wall time of three later
``Explainer.explain()`` calls (map + PNG overlay, what ``?explain=true`` adds to a request),
with the PNG size; and the wall time of measuring the explained layer's cell centres again
(models.gradcam.cell_centres: part of the warm-up), as a share of the warm-up. Wall time on a
shared machine: the CPU model and load average are printed with the figures. For CPU seconds
of Grad-CAM alone see bench/gradcam.py.
"""

from __future__ import annotations

import os
import time
import types

import numpy as np


def main() -> None:
    from bench._machine import cpu_model
    from radlens.app.explain import Explainer
    from radlens.models import gradcam
    from radlens.models.architectures import build_model

    print(f"{cpu_model()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for arch, size in (("simple_cnn", 64), ("resnet50", 64), ("resnet50", 224)):
        model = build_model(arch, input_shape=(size, size, 1), num_classes=2)
        predictor = types.SimpleNamespace(
            model=model,
            manifest=types.SimpleNamespace(class_names=["normal", "abnormal"]),
            device=types.SimpleNamespace(name="/CPU:0"),
            input_size=(size, size),
        )
        explainer = Explainer(predictor)  # type: ignore[arg-type]
        first = explainer.warmup()
        image = np.random.default_rng(0).random((size, size, 1), dtype=np.float32)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            out = explainer.explain(image)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        gradcam._measure_centres(gradcam._grad_model(model, None).model)
        centres = time.perf_counter() - start
        print(
            f"{arch:10s} {size:3d} px: warm-up {first:5.1f} s (cell centres {centres:4.1f} s, "
            f"{centres / first:4.0%} of it), then median "
            f"{sorted(times)[1] * 1000:4.0f} ms per explanation, PNG {len(out.png) // 1024} KiB, "
            f"layer {out.layer}"
        )


if __name__ == "__main__":
    main()

"""Grad-CAM cost and localisation figures (issue 8, explanations).

Not a test. Run from the repository root:

    .venv/bin/python -m bench.gradcam            # ~1-2 min on 2 shared cores
    .venv/bin/python -m bench.gradcam --seeds 3  # fewer training runs

What it measures, in one process, on this machine:

1. COST: for simple_cnn at 64 px and resnet50 at 224 px (weights=None, 2 classes), the CPU
   seconds of the first ``gradcam`` call on a model (builds and compiles the gradient
   model, once per model and layer), of a later call on one image, of a batch of 8, of a
   plain forward pass on one image (``model.predict_on_batch``, the service's cost of a
   prediction), and of ``explain_image`` (map + PNG overlay).
2. LOCALISATION: radlens' simple_cnn trained on synthetic 32 px images whose positive class
   has a bright 6 px square at a random place (plus a brighter distractor line in every
   image; the generator of tests/models/test_gradcam.py), until it classifies >= 95% of a
   held-out set; then the share of 100 new positive images whose Grad-CAM peak falls on
   the square (within 2 px), per seed. Chance is about 10%.

CPU seconds (``time.process_time``, all threads) rather than wall time: the machine is
shared, and the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _cpu(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def cost() -> None:
    import numpy as np

    from radlens.models.architectures import build_model
    from radlens.models.gradcam import explain_image, gradcam

    print("| model | first call | 1 image | batch of 8 | forward only | explain_image |")
    print("|---|---|---|---|---|---|")
    for arch, size in (("simple_cnn", 64), ("resnet50", 224)):
        model = build_model(arch, input_shape=(size, size, 1), num_classes=2)
        x = np.random.default_rng(0).uniform(0, 1, (8, size, size, 1)).astype(np.float32)
        model.predict_on_batch(x[:1])  # warm the forward path too
        first = _cpu(lambda m=model, x=x: gradcam(m, x[0]))
        one = sorted(_cpu(lambda m=model, i=i, x=x: gradcam(m, x[i])) for i in range(5))[2]
        batch = _cpu(lambda m=model, x=x: gradcam(m, x))
        forward = sorted(
            _cpu(lambda m=model, i=i, x=x: m.predict_on_batch(x[i : i + 1])) for i in range(5)
        )[2]
        explain = _cpu(
            lambda m=model, x=x: explain_image(m, x[0], class_names=["normal", "abnormal"])
        )
        print(
            f"| {arch} {size} px | {first:.2f} s | {one:.3f} s | {batch:.2f} s | "
            f"{forward:.3f} s | {explain:.2f} s |"
        )


def localisation(seeds: int) -> None:
    import keras
    import numpy as np

    sys.path.insert(0, str(REPO_ROOT / "tests" / "models"))
    from test_gradcam import peak_in_box, squares  # the test's data generator

    from radlens.models.architectures import build_model
    from radlens.models.gradcam import gradcam

    for seed in range(1, seeds + 1):
        keras.utils.set_random_seed(seed)
        images, labels, _ = squares(256, np.random.default_rng(seed))
        held_out, held_labels, _ = squares(40, np.random.default_rng(10_000 + seed))
        model = build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)
        model.compile(
            keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        epochs, accuracy = 0, 0.0
        while epochs < 12 and accuracy < 0.95:
            model.fit(images, labels, batch_size=32, epochs=2, verbose=0)
            epochs += 2
            accuracy = model.evaluate(held_out, held_labels, verbose=0)[1]
        positives, _, boxes = squares(100, np.random.default_rng(20_000 + seed), positive=1)
        maps = gradcam(model, positives, class_index=1)
        hits = np.mean([peak_in_box(m, b, margin=2) for m, b in zip(maps, boxes, strict=True)])
        print(
            f"seed {seed}: {epochs} epochs, held-out accuracy {accuracy:.2f}, "
            f"Grad-CAM peak on the square in {hits:.0%} of 100 positives"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="training runs for part 2")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    cost()
    localisation(args.seeds)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

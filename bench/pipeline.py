"""Input-pipeline throughput against what training consumes (issue 3, Data).

Not a test. Run from the repository root:

    .venv/bin/python -m bench.pipeline                    # ~2-4 min on 2 shared cores
    .venv/bin/python -m bench.pipeline --write docs/benchmarks/pipeline.md

What it measures, in one process, on this machine:

1. TRAINING CONSUMPTION (the baseline): a ResNet50 at 64x64x1 (weights=None, 2 classes,
   Adam, sparse categorical cross-entropy), ``train_on_batch`` on a fixed batch of 32
   already in memory; images/s = 32 x steps / seconds after two warm-up steps.
2. PIPELINE SUPPLY: ``training.data.pipeline.make_dataset`` in training mode (seeded
   shuffle, default augmentation, batch 32, prefetch), iterated with no model attached:
   * PneumoniaMNIST .npz (28 px -> 64 px): the one-off in-memory ``preprocess_array`` of
     every image (build), then an epoch;
   * a folder of demo DICOM files (``radlens demo-data``, 128 px -> 64 px): the first
     epoch decodes every file through ``models.preprocessing.preprocess`` (cold), later
     epochs read the cache; and without cache (every epoch decodes).
   The figure of merit is supply / consumption: above 1 the model never waits for data.

The machine is shared with other work: the load average is printed with the figures;
compare ratios rather than absolute images/s between runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
DEFAULT_NPZ = (
    REPO_ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_28_trainval.npz"
)


def _iterate(ds: object) -> tuple[int, float]:
    """Images and seconds for one full pass over a dataset."""
    start = time.perf_counter()
    n = 0
    for _, labels in ds:  # type: ignore[attr-defined]
        n += int(labels.shape[0])
    return n, time.perf_counter() - start


def measure_training(size: int, batch: int, steps: int) -> float:
    """Images/s that ResNet50 training consumes (train_on_batch on an in-memory batch)."""
    import keras
    import numpy as np

    from radlens.models.architectures import build_model

    keras.utils.set_random_seed(0)
    model = build_model("resnet50", input_shape=(size, size, 1), num_classes=2, weights=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 1), dtype=np.float32)
    y = rng.integers(0, 2, size=batch).astype(np.int32)
    for _ in range(2):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return batch * steps / (time.perf_counter() - start)


def measure_npz(path: Path, size: int, batch: int) -> list[tuple[str, float, str]]:
    from radlens.training.data.pipeline import make_dataset
    from radlens.training.data.sources import open_source, split_source

    source = open_source(path, class_names=["normal", "pneumonia"])
    train = split_source(source)["train"]
    start = time.perf_counter()
    ds = make_dataset(
        source, train, size=size, batch_size=batch, training=True, seed=0, augment=True
    )
    build = time.perf_counter() - start
    rows = [("npz: build (preprocess_array of all images)", len(train) / build, "one-off")]
    n, seconds = _iterate(ds)
    rows.append(("npz: epoch, shuffle + augment", n / seconds, f"{n} images"))
    plain = make_dataset(source, train, size=size, batch_size=batch, training=True, seed=0)
    n, seconds = _iterate(plain)
    rows.append(("npz: epoch, shuffle, no augment", n / seconds, f"{n} images"))
    return rows


def measure_dicom(folder: Path, size: int, batch: int) -> list[tuple[str, float, str]]:
    from radlens.training.data.pipeline import make_dataset
    from radlens.training.data.sources import open_source

    start = time.perf_counter()
    source = open_source(folder)
    scan = time.perf_counter() - start
    examples = source.examples
    rows = [("dicom: open_source scan (header check)", len(examples) / scan, "one-off")]
    ds = make_dataset(
        source, examples, size=size, batch_size=batch, training=True, seed=0, augment=True
    )
    n, seconds = _iterate(ds)
    rows.append(("dicom: epoch 1, decode + augment (cold)", n / seconds, f"{n} files"))
    n, seconds = _iterate(ds)
    rows.append(("dicom: epoch 2, cached + augment", n / seconds, f"{n} files"))
    nocache = make_dataset(
        source,
        examples,
        size=size,
        batch_size=batch,
        training=True,
        seed=0,
        augment=True,
        cache=False,
    )
    n, seconds = _iterate(nocache)
    rows.append(("dicom: epoch, no cache, decode + augment", n / seconds, f"{n} files"))
    return rows


def _machine() -> str:
    import tensorflow as tf

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    cpus = len(os.sched_getaffinity(0))
    return (
        f"{platform.platform()}, {cpus} CPUs available, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}, load average {load}, no GPU"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--dicom-dir", type=Path, default=None, help="default: fresh demo data")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--write", type=Path, default=None, help="write a Markdown report")
    args = parser.parse_args(argv)

    from radlens.training.data.demo import write_demo_dataset

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    consume = measure_training(args.size, args.batch, args.train_steps)
    print(f"training consumes {consume:.1f} images/s (ResNet50 {args.size}px, batch {args.batch})")

    rows: list[tuple[str, float, str]] = []
    if args.npz.exists():
        rows += measure_npz(args.npz, args.size, args.batch)
    else:
        print(f"skipping npz: {args.npz} is absent")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dicom_dir
        if folder is None:
            folder = Path(tmp) / "demo"
            write_demo_dataset(folder, n_per_class=120, size=128, seed=0)
        rows += measure_dicom(folder, args.size, args.batch)

    machine = _machine()
    lines = [
        "| stage | images/s | x training | note |",
        "|---|---:|---:|---|",
        f"| ResNet50 training step (baseline) | {consume:.1f} | 1.00 | batch {args.batch} |",
    ]
    lines += [
        f"| {name} | {rate:.1f} | {rate / consume:.2f} | {note} |" for name, rate, note in rows
    ]
    report = "\n".join(lines)
    print(report)
    print(machine)
    if args.write is not None:
        _write_markdown(args.write, report, machine, started, args)
        print(f"wrote {args.write}")
    return 0


def _write_markdown(
    path: Path, table: str, machine: str, started: str, args: argparse.Namespace
) -> None:
    text = f"""# Input pipeline throughput

Measured {started} with

    .venv/bin/python -m bench.pipeline --write {path}

Machine: {machine}.

Pipeline: `training.data.pipeline.make_dataset` in training mode (seeded shuffle, default
augmentation, batch {args.batch}, prefetch) at {args.size}x{args.size}, iterated with no
model. Baseline: a ResNet50 ({args.size}x{args.size}x1, weights=None, 2 classes, Adam)
`train_on_batch` on an in-memory batch of {args.batch}, {args.train_steps} timed steps. The
"x training" column is pipeline images/s divided by training images/s: above 1 the input
pipeline keeps up and training is compute-bound.

{table}

Notes
- PneumoniaMNIST (4708 training images, 28 px) is preprocessed once in memory with
  `preprocess_array`; an epoch is then a shuffle/augment/batch over arrays.
- The DICOM set is `radlens demo-data` (240 files, 128 px, 12-bit CR, Explicit VR LE).
  Epoch 1 decodes each file with `models.preprocessing.preprocess` inside
  `tf.numpy_function` (parallel map, AUTOTUNE); later epochs read the cache. Without the
  cache every epoch decodes; larger or compressed files (JPEG 2000, JPEG-LS) decode much
  slower than these small uncompressed files (see bench/preprocess.py).
- The machine is shared with other engineers' jobs (see the load average): read the
  ratios, not the absolute rates.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark (issue 4, speed and memory): radlens over HTTP vs the raw model.

Not a test. Run from the repository root (figures and how to read them:
docs/benchmarks/serve.md):

    .venv/bin/python -m bench.serve                      # SQLite, ~3-6 min on 2 cores
    .venv/bin/python -m bench.serve --database postgres  # scratch DB on 127.0.0.1:5432
    .venv/bin/python -m bench.serve --quick              # smaller phases, for a smoke run
    .venv/bin/python -m bench.serve --workload radiographs --runtime openvino --precision f32
                         # real radiographs as stored; RADLENS_RUNTIME / _PRECISION passed on

What it does, in this order, all on this machine and loopback only:
1. builds ResNet50 at 224x224 (weights=None, 2 classes) and saves it to a temporary model
   store through models.registry, exactly as training exports a model;
2. BASELINES, in this process, before the service starts (so they do not share the CPU):
   raw single-image latency and raw throughput at batch sizes 1, 4, 8, 16, 32 for a
   tf.function over model(x, training=False) and model.predict_on_batch, interleaved call by
   call; wall time and CPU time per image; then app.predictor.Predictor alone (no HTTP, no
   decoding) interleaved with the raw model; then preprocessing time per CT file;
3. starts the real service (uvicorn app.main:create_app in a subprocess, SQLite in the
   temporary directory or a scratch PostgreSQL database) and waits for /readyz;
4. PHASES, with an asyncio httpx client posting the workload's DICOMs to POST
   /v1/predictions (--workload: ct, the default = the 512x512 CTs CT1_JLSN: JPEG-LS and
   TOSHIBA_J2K: JPEG 2000; j2k = the chest CR RG1 in JPEG 2000 lossless and lossy from
   pydicom-data; jpeg-ls / jpeg-lossless = the hip CR RG2_JLSL / RG2_JPLL; jpeg-baseline =
   the RSNA chest CR; radiographs = all of those), each upload with a fresh SOP Instance
   UID so the service's de-duplication never short-cuts inference: (b) one client,
   sequential; (a) 16 concurrent clients; both for the files as stored and for the same
   pixels re-encoded uncompressed (separates codec time from service overhead); the
   service's CPU time per request from /proc/<pid>/stat; (c) its VmRSS / VmHWM;
5. PAIRED ROUNDS (--paired-rounds, default 3): the raw model at the sweep's best batch size
   (both methods, interleaved, the faster one counted), then at once another 16-client
   phase; (a) is judged on the median of these per-round ratios. The sweep's best is the
   maximum of 10 noisy measurements taken minutes earlier, so it leans high; it is printed
   too;
6. an overhead probe: the same phases against a 32 px simple_cnn, whose model time is
   negligible, so the service's CPU per request is its own overhead;
7. prints every figure next to its baseline and target, then stops the service and drops
   the scratch database. Each phase is a fixed number of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DICOM = (
    Path(os.environ.get("RADLENS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "dicom"
)
CT_FILES = ("CT1_JLSN.dcm", "TOSHIBA_J2K_OpenJPEGv2Regression.dcm")
# --workload: the files each posts, as (where, file name): "shared" = ../shared/data/dicom,
# "pydicom-data" = pydicom.data.get_testdata_file (the pydicom-data package, offline)
_J2K = (("pydicom-data", "RG1_J2KR.dcm"), ("pydicom-data", "RG1_J2KI.dcm"))  # chest CR
_JPEG_LS = (("shared", "RG2_JLSL.dcm"),)  # hip CR 2140x1760
_JPEG_LOSSLESS = (("shared", "RG2_JPLL.dcm"),)  # the same hip CR
_JPEG_BASELINE = (("shared", "rsna_chest_cr_jpeg_baseline.dcm"),)  # chest CR 1024x1024
WORKLOADS: dict[str, tuple[tuple[str, str], ...]] = {
    "ct": tuple(("shared", name) for name in CT_FILES),
    "j2k": _J2K,
    "jpeg-ls": _JPEG_LS,
    "jpeg-lossless": _JPEG_LOSSLESS,
    "jpeg-baseline": _JPEG_BASELINE,
    "radiographs": _J2K + _JPEG_LS + _JPEG_LOSSLESS + _JPEG_BASELINE,
}
SIZE = 224
BATCH_SIZES = (1, 4, 8, 16, 32)
MODEL_NAME = "bench-resnet50"
RADLENS_APP = "radlens.app.main:create_app"
GIB = 1024**3


# --- the model -------------------------------------------------------------------------------


def build_resnet50() -> Any:
    """ResNet50 at 224x224x1 with weights=None, the project's architecture when available."""
    import keras

    keras.utils.set_random_seed(0)
    try:
        from radlens.models.architectures import build_model
    except ModuleNotFoundError:
        # Same graph as the project's: gray -> 3 channels and ResNet's preprocessing inside.
        inputs = keras.Input((SIZE, SIZE, 1), name="image")
        x = keras.layers.Concatenate()([inputs, inputs, inputs])
        x = keras.layers.Rescaling(255.0, offset=-120.0)(x)
        base = keras.applications.ResNet50(
            weights=None, include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3)
        )
        x = base(x)
        outputs = keras.layers.Dense(2, activation="softmax")(x)
        return keras.Model(inputs, outputs), "resnet50 (bench fallback graph)"
    return build_model("resnet50", input_shape=(SIZE, SIZE, 1), num_classes=2), "resnet50"


def save_model(store: Path) -> str:
    from radlens.models.registry import ModelRegistry

    model, architecture = build_resnet50()
    manifest = ModelRegistry(store).save(
        model,
        name=MODEL_NAME,
        architecture="resnet50",
        class_names=["normal", "abnormal"],
        threshold=0.5,
        window="lung",
        filters=[],
        metrics={},
        training_config={"note": "untrained, weights=None: for speed and memory only"},
        data_fingerprint=None,
        description=f"bench/serve.py: {architecture}",
    )
    return f"{manifest.name}:{manifest.version}"


PARITY_IMAGES = 128


def attach_openvino(store: Path, ref: str) -> None:
    """Convert the bench model to OpenVINO IR beside model.keras, as training's export does,
    with parity measured on PneumoniaMNIST validation images (or noise when ../shared/data is
    absent). The bench model is untrained, so its parity says nothing about a real model's
    (bench/runtime.py measures a trained one): start_service lifts the parity tolerance for
    this speed run, and says so."""
    from radlens.models.preprocessing import preprocess_array
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import add_openvino_runtime, recorded_parity

    npz = SHARED_DICOM.parent / "pneumoniamnist" / "pneumoniamnist_28_trainval.npz"
    if npz.is_file():
        with np.load(npz) as data:
            raw, labels = data["val_images"][:PARITY_IMAGES], data["val_labels"][:PARITY_IMAGES]
        note = f"{PARITY_IMAGES} PneumoniaMNIST val images"
    else:
        rng = np.random.default_rng(0)
        raw = rng.integers(0, 256, (PARITY_IMAGES, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 2, PARITY_IMAGES)
        note = f"{PARITY_IMAGES} noise images (no ../shared/data)"
    images = np.stack([preprocess_array(a, size=(SIZE, SIZE)) for a in raw])[..., None]
    t0 = time.perf_counter()
    manifest = add_openvino_runtime(
        ModelRegistry(store), ref, images=images, labels=np.asarray(labels).reshape(-1),
        data_note=note,
    )  # fmt: skip
    parity = {p: recorded_parity(manifest, p) for p in ("fp32", "bf16")}
    print(
        f"OpenVINO IR attached in {time.perf_counter() - t0:.1f} s; parity on {note} "
        "(untrained model: not a quality figure): "
        + "; ".join(f"{p} {v.summary() if v else 'not measured'}" for p, v in parity.items()),
        flush=True,
    )


def save_tiny_model(store: Path) -> str:
    """A 32 px simple_cnn: serving it costs almost no model time, so the service's CPU per
    request is its overhead (HTTP, multipart, decoding, DB, JSON, batching)."""
    import keras

    from radlens.models.architectures import build_model
    from radlens.models.registry import ModelRegistry

    keras.utils.set_random_seed(0)
    manifest = ModelRegistry(store).save(
        build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2),
        name="bench-tiny",
        architecture="simple_cnn",
        class_names=["normal", "abnormal"],
        threshold=0.5,
        window="lung",
        filters=[],
        metrics={},
        training_config={},
        data_fingerprint=None,
        description="bench/serve.py: service overhead probe",
    )
    return f"{manifest.name}:{manifest.version}"


# --- baselines in this process -----------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


@dataclass
class Baselines:
    single_ms: dict[str, float] = field(default_factory=dict)  # median per method
    throughput: dict[str, dict[int, float]] = field(default_factory=dict)  # method -> bs -> img/s
    cpu_ms: dict[str, dict[int, float]] = field(default_factory=dict)  # CPU ms per image
    predictor: dict[str, float] = field(default_factory=dict)  # app.predictor in-process
    # measure(batch_size, images) -> best of the two methods (img/s, CPU ms/img), interleaved;
    # keeps the raw model loaded for the paired rounds (step 5 of the module docstring)
    measure: Callable[[int, int], tuple[float, float]] | None = None
    # measure_streams(batch_size, streams, images) -> img/s of the raw model run as the service
    # runs it: ``streams`` threads each calling it at ``batch_size`` at once
    measure_streams: Callable[[int, int, int], float] | None = None
    # OpenVINO batch 1: streams model vs latency model vs raw (measure_latency_model)
    latency_model: dict[str, float] | None = None

    @property
    def best_single_ms(self) -> tuple[str, float]:
        method = min(self.single_ms, key=lambda m: self.single_ms[m])
        return method, self.single_ms[method]

    @property
    def best_throughput(self) -> tuple[str, int, float]:
        best = max(
            ((m, bs, v) for m, per in self.throughput.items() for bs, v in per.items()),
            key=lambda t: t[2],
        )
        return best


def time_interleaved(
    methods: dict[str, Callable[[np.ndarray], Any]], batch: np.ndarray, calls: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Run every method on ``batch`` ``calls`` times, call by call in turn (so load from other
    users hits them alike); total wall and CPU seconds per method."""
    wall = dict.fromkeys(methods, 0.0)
    cpu = dict.fromkeys(methods, 0.0)
    for _ in range(calls):
        for name, run in methods.items():
            c0, t0 = time.process_time(), time.perf_counter()
            run(batch)
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    return wall, cpu


def measure_baselines(
    store: Path, ref: str, images: int, single_repeats: int, args: argparse.Namespace
) -> Baselines:
    """Raw model speed by method and batch size, then app.predictor alone (no HTTP).

    The methods are interleaved call by call, so load from other users of the CPU hits them
    alike instead of favouring whichever ran in a quiet moment.
    """
    import tensorflow as tf

    from radlens.models.registry import ModelRegistry

    loaded = ModelRegistry(store).load(ref)
    model = loaded.model

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 1], tf.float32)])
    def serve(x: Any) -> Any:
        return model(x, training=False)

    methods: dict[str, Callable[[np.ndarray], Any]] = {
        "tf.function": lambda b: serve(tf.constant(b)).numpy(),
        "predict_on_batch": lambda b: np.asarray(model.predict_on_batch(b)),
    }
    rng = np.random.default_rng(0)
    result = Baselines()
    one = rng.random((1, SIZE, SIZE, 1), dtype=np.float32)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for run in methods.values():
        run(one)  # trace / build
    for _ in range(single_repeats):
        for name, run in methods.items():
            times[name].extend(timed(functools.partial(run, one), 1))
    for name in methods:
        result.single_ms[name] = statistics.median(times[name])
        print(f"  raw {name:16s} single-image median {result.single_ms[name]:.1f} ms", flush=True)
        result.throughput[name] = {}
        result.cpu_ms[name] = {}
    for bs in BATCH_SIZES:
        batch = rng.random((bs, SIZE, SIZE, 1), dtype=np.float32)
        for run in methods.values():
            run(batch)  # warm this shape
        calls = max(2, -(-images // bs))
        wall, cpu = time_interleaved(methods, batch, calls)
        for name in methods:
            result.throughput[name][bs] = calls * bs / wall[name]
            result.cpu_ms[name][bs] = cpu[name] * 1000.0 / (calls * bs)
            print(
                f"  raw {name:16s} batch {bs:2d}: {result.throughput[name][bs]:6.2f} img/s, "
                f"{result.cpu_ms[name][bs]:6.1f} CPU ms/img",
                flush=True,
            )
    result.predictor = measure_predictor(
        loaded, methods["tf.function"], rng, single_repeats, images, args
    )
    if (args.runtime or os.environ.get("RADLENS_RUNTIME", "auto")) != "tensorflow":
        result.latency_model = measure_latency_model(
            store, ref, methods["tf.function"], max(20, single_repeats), args.inference_streams
        )

    def measure(bs: int, count: int) -> tuple[float, float]:
        batch = rng.random((bs, SIZE, SIZE, 1), dtype=np.float32)
        calls = max(2, -(-count // bs))
        wall, cpu = time_interleaved(methods, batch, calls)
        best = min(methods, key=lambda m: wall[m])  # the faster method: favours the baseline
        return calls * bs / wall[best], cpu[best] * 1000.0 / (calls * bs)

    def measure_streams(bs: int, streams: int, count: int) -> float:
        batch = tf.constant(rng.random((bs, SIZE, SIZE, 1), dtype=np.float32))
        calls = max(1, -(-count // (bs * streams)))

        def stream() -> None:
            for _ in range(calls):
                serve(batch).numpy()

        threads = [threading.Thread(target=stream) for _ in range(streams)]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return calls * bs * streams / (time.perf_counter() - t0)

    result.measure = measure
    result.measure_streams = measure_streams
    return result


def measure_predictor(
    loaded: Any,
    raw: Callable[[np.ndarray], Any],
    rng: np.random.Generator,
    single: int,
    images: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    """radlens.app.predictor.Predictor in this process (no HTTP, no decoding) against the raw model.

    Interleaved with the raw model (tf.function) call by call and round by round, so both
    see the same load from other users: 1 client = predict() awaited in sequence vs one raw
    single-image call; a round of N clients = N concurrent predict() calls vs the same N
    images as raw batches of 8.
    """
    from radlens.app.device import select_device
    from radlens.app.predictor import BatchStats, Predictor

    predictor = Predictor(
        loaded,
        select_device("auto"),
        max_batch_size=args.max_batch_size,
        max_batch_wait_ms=args.max_batch_wait_ms,
    )
    predictor.warmup()
    batches: list[BatchStats] = []
    x = rng.random((SIZE, SIZE, 1), dtype=np.float32)
    one = x[None]
    chunks = [np.repeat(one, len(c), axis=0) for c in np.array_split(
        np.arange(args.clients), max(1, -(-args.clients // 8)))]  # fmt: skip

    async def main() -> dict[str, float]:
        lone, lone_raw = [], []
        for _ in range(single):
            t0 = time.perf_counter()
            await predictor.predict(x)
            lone.append((time.perf_counter() - t0) * 1000.0)
            lone_raw.extend(timed(functools.partial(raw, one), 1))
        predictor.observers.append(batches.append)
        rounds = max(2, -(-images // args.clients))
        crowd_s = raw_s = crowd_cpu = 0.0
        for _ in range(rounds):
            c0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(predictor.predict(x) for _ in range(args.clients)))
            crowd_s += time.perf_counter() - t0
            crowd_cpu += time.process_time() - c0
            t0 = time.perf_counter()
            for chunk in chunks:
                raw(chunk)
            raw_s += time.perf_counter() - t0
        await predictor.stop()
        n = rounds * args.clients
        sizes = [b.size for b in batches]
        return {
            "single_ms": statistics.median(lone),
            "raw_single_ms": statistics.median(lone_raw),
            "throughput": n / crowd_s,
            "raw_throughput": n / raw_s,
            "cpu_ms": crowd_cpu * 1000.0 / n,
            "mean_batch": statistics.mean(sizes),
        }

    out = asyncio.run(main())
    print(
        f"  app.predictor in-process, interleaved with raw: 1 client median "
        f"{out['single_ms']:.1f} ms vs raw {out['raw_single_ms']:.1f} ms; {args.clients} "
        f"clients {out['throughput']:.2f} img/s vs raw {out['raw_throughput']:.2f} img/s "
        f"(mean batch {out['mean_batch']:.1f}, {out['cpu_ms']:.1f} CPU ms/img)",
        flush=True,
    )
    return out


def measure_latency_model(
    store: Path, ref: str, raw: Callable[[np.ndarray], Any], repeats: int, streams: int
) -> dict[str, float] | None:
    """OpenVINO at batch 1 as the service compiles it: the streams model (one stream's share
    of the cores: what a lone request got before round 8) against the latency model (every
    core: what it gets now, RADLENS_LATENCY_MODEL=auto) and the raw TensorFlow fp32 model,
    interleaved call by call (wall p50 and CPU ms per call); the RSS the latency model adds;
    whether the two compiled models give the same scores bit for bit. None without OpenVINO."""
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import OpenVINORuntime, bf16_supported, openvino_version

    if openvino_version() is None:
        return None
    registry = ModelRegistry(store)
    manifest = registry.verify(*registry.resolve(ref))
    files = registry.runtime_files(manifest, "openvino")
    xml = next(path for path in files.values() if path.name == "model.xml")
    precision = "bf16" if bf16_supported() else "fp32"
    shape = (SIZE, SIZE, 1)
    rss0 = proc_memory(os.getpid()).get("VmRSS", 0)
    plain = OpenVINORuntime(xml, precision, shape, streams=streams)
    rss1 = proc_memory(os.getpid()).get("VmRSS", 0)
    both = OpenVINORuntime(xml, precision, shape, streams=streams, latency=True)
    rss2 = proc_memory(os.getpid()).get("VmRSS", 0)
    rng = np.random.default_rng(1)
    images = rng.random((8, *shape), dtype=np.float32)
    identical = all(
        np.array_equal(
            plain.predict(images[i : i + n]), both.predict(images[i : i + n], alone=True)
        )
        for i, n in ((0, 1), (1, 1), (0, 8))
    )
    methods: dict[str, Callable[[np.ndarray], Any]] = {
        "streams": lambda b: both.predict(b),
        "latency": lambda b: both.predict(b, alone=True),
        "raw": raw,
    }
    wall: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for run in methods.values():
        run(images[:1])
    for i in range(repeats):
        one = images[i % 8 : i % 8 + 1]
        for name, run in methods.items():
            c0, t0 = time.process_time(), time.perf_counter()
            run(one)
            wall[name].append((time.perf_counter() - t0) * 1000.0)
            cpu[name].append((time.process_time() - c0) * 1000.0)
    out = {f"{m}_ms": statistics.median(wall[m]) for m in methods}
    out.update({f"{m}_cpu_ms": statistics.median(cpu[m]) for m in methods})
    out.update(
        identical=float(identical),
        kept=float(both.latency),
        plain_mib=(rss1 - rss0) / 2**20,
        latency_mib=(rss2 - rss1) / 2**20 - (rss1 - rss0) / 2**20,
    )
    print(
        f"  OpenVINO {precision} batch 1, interleaved x{repeats}: streams model ({streams} "
        f"streams) p50 {out['streams_ms']:.1f} ms ({out['streams_cpu_ms']:.1f} CPU ms), latency "
        f"model p50 {out['latency_ms']:.1f} ms ({out['latency_cpu_ms']:.1f} CPU ms), raw TF fp32 "
        f"p50 {out['raw_ms']:.1f} ms; latency / streams {out['latency_ms'] / out['streams_ms']:.2f}"
        f"; latency model kept: {both.latency} {both.latency_note}; scores identical: "
        f"{identical}; RSS of one compiled model ~{out['plain_mib']:.0f} MiB,"
        f" the latency model adds ~{out['latency_mib']:.0f} MiB",
        flush=True,
    )
    return out


# --- request bodies --------------------------------------------------------------------------

ENCODINGS = ("stored", "uncompressed")


def workload_files(workload: str) -> tuple[list[Path], list[str]]:
    """The workload's files that exist, and a description of each one that does not."""
    from pydicom.data import get_testdata_file

    found, missing = [], []
    for where, name in WORKLOADS[workload]:
        if where == "shared":
            path: Path | None = SHARED_DICOM / name
        else:
            located = get_testdata_file(name)
            path = Path(str(located)) if located else None
        if path is not None and path.exists():
            found.append(path)
        else:
            missing.append(f"{name} ({SHARED_DICOM if where == 'shared' else 'pydicom-data'})")
    return found, missing


def load_sources(encoding: str, files: list[Path]) -> list[tuple[str, Any]]:
    """The datasets as stored (JPEG-LS / JPEG 2000 / ...) or decoded once to Explicit VR LE."""
    import pydicom

    sources = []
    for path in files:
        ds = pydicom.dcmread(path)
        if encoding == "uncompressed":
            ds.decompress()  # the same pixels, no codec work left for the service
        sources.append((path.name, ds))
    return sources


_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's generate_uid root
_UID_DIGITS = 64 - len(_UID_PREFIX)  # every UID below is 64 characters: replaceable in place


def _fixed_length_uid() -> str:
    digits = str(uuid.uuid4().int * 10**_UID_DIGITS)[:_UID_DIGITS]  # no leading zero
    return _UID_PREFIX + digits


class Uploads:
    """``count`` uploads cycling through the files, each with a fresh SOP Instance UID, made
    when read: a radiograph is several MB, and the ~800 uploads of a run held at once would
    take gigabytes. Each file is written once with a 64-character placeholder UID; an upload
    is that template with the placeholder replaced by a new UID of the same length."""

    def __init__(self, templates: list[tuple[str, bytes, bytes]], count: int, start: int = 0):
        self.templates, self.count, self.start = templates, count, start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            first, stop, step = key.indices(self.count)
            if step != 1:
                raise ValueError("Uploads slices take a step of 1")
            return Uploads(self.templates, max(0, stop - first), self.start + first)
        if not 0 <= key < self.count:
            raise IndexError(key)
        fname, template, placeholder = self.templates[(self.start + key) % len(self.templates)]
        return fname, template.replace(placeholder, _fixed_length_uid().encode())

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return (self[i] for i in range(self.count))


def make_uploads(sources: list[tuple[str, Any]], count: int) -> Uploads:
    """``count`` uploads alternating between the files, each with a fresh SOP Instance UID."""
    templates = []
    for fname, ds in sources:
        placeholder = _fixed_length_uid()
        ds.SOPInstanceUID = placeholder
        if "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = placeholder
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        templates.append((fname, buf.getvalue(), placeholder.encode()))
    return Uploads(templates, count)


def preprocess_ms(uploads: Uploads) -> dict[str, float]:
    """Median in-process preprocessing time per file (decode + window + resize)."""
    from radlens.models.preprocessing import preprocess

    out = {}
    for fname, data, _ in uploads.templates:
        preprocess(data, size=(SIZE, SIZE), window="lung")
        out[fname] = statistics.median(
            timed(functools.partial(preprocess, data, size=(SIZE, SIZE), window="lung"), 10)
        )
    return out


# --- the service -----------------------------------------------------------------------------


_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port: the first free one in RADLENS_BENCH_PORTS ("LOW-HIGH", for a
    machine where each user has a port range), else one the kernel picks."""
    span = os.environ.get("RADLENS_BENCH_PORTS", "")
    candidates = [0]
    if span:
        low, high = (int(part) for part in span.split("-", 1))
        candidates = list(range(low, high + 1))
    for candidate in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port
    raise SystemExit(f"no free port in RADLENS_BENCH_PORTS={span}: widen the range")


@contextlib.contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file, or a scratch PostgreSQL database (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"  # the service migrates SQLite itself
        return
    import psycopg

    from radlens.app.migrate import upgrade

    name = f"radlens_bench_{os.getpid()}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def service_log(tmp: Path, app: str) -> Path:
    """Where a service started for ``app`` (an ASGI factory path) writes its output."""
    return tmp / f"{app.split(':')[0].replace('.', '_')}.log"


def start_service(
    tmp: Path,
    store: Path,
    ref: str,
    port: int,
    database_url: str,
    args: argparse.Namespace,
    app: str = RADLENS_APP,
) -> Any:
    """uvicorn on ``app`` in a subprocess: radlens, or bench/_ordinary.py's comparison."""
    env = dict(os.environ)
    env.update(
        RADLENS_DATABASE_URL=database_url,
        RADLENS_MODEL_STORE=str(store),
        RADLENS_MODEL=ref,
        RADLENS_DEVICE="auto",
        RADLENS_MAX_BATCH_SIZE=str(args.max_batch_size),
        RADLENS_MAX_BATCH_WAIT_MS=str(args.max_batch_wait_ms),
        RADLENS_INFERENCE_STREAMS=str(getattr(args, "inference_streams", 1)),
        RADLENS_LOG_LEVEL="warning",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    # the bench model is untrained: its recorded parity is meaningless, so the tolerance is
    # lifted for this speed run (attach_openvino; a real model's parity: bench/runtime.py)
    env.setdefault("RADLENS_PARITY_MAX_AUC_DIFFERENCE", "1")
    env.setdefault("RADLENS_PARITY_MAX_FLIP_FRACTION", "1")
    # passed through as given (the service's settings validate them)
    for option, variable in (
        ("runtime", "RADLENS_RUNTIME"),
        ("precision", "RADLENS_PRECISION"),
        ("latency_model", "RADLENS_LATENCY_MODEL"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            env[variable] = value
    cmd = [
        sys.executable, "-m", "uvicorn", app, "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
        "--http", getattr(args, "http", "auto"), "--loop", getattr(args, "loop", "auto"),
    ]  # fmt: skip
    log = open(service_log(tmp, app), "wb")  # noqa: SIM115 - closed by stop_service
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def stop_service(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully (lifespan stop)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    proc.log_file.close()


def api_key_headers(database_url: str) -> dict[str, str]:
    """An API key with the predict scope, created in the service's (migrated) database, as the
    Authorization header; {} when this checkout has no API keys (app/keys.py)."""
    try:
        from radlens.app.keys import create_key
    except ModuleNotFoundError:
        return {}
    from radlens.app.db import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            key = create_key(session, name="bench", scopes="predict,read")
            session.commit()
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {key.secret}"}


async def wait_ready(base: str, proc: Any, timeout_s: float) -> float:
    import httpx

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
        while time.perf_counter() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with status {proc.returncode}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"the service was not ready within {timeout_s:.0f} s")


def served_runtime(base: str) -> str:
    """The runtime, precision and reason the service reports on /readyz."""
    import httpx

    body = httpx.get(f"{base}/readyz", timeout=5.0).json()
    return f"{body.get('runtime')} {body.get('precision')} ({body.get('runtime_reason')})"


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


# --- load generation -------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    clients: int
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0  # service process CPU time during the phase
    client_cpu_s: float = 0.0  # this (client) process's CPU time during the phase

    @property
    def client_cpu_ms(self) -> float:
        n = len(self.latencies_ms)
        return self.client_cpu_s * 1000.0 / n if n else float("nan")

    @property
    def cpu_ms_per_img(self) -> float:
        return self.cpu_s * 1000.0 / len(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0


HEADERS: dict[str, str] = {}  # the Authorization header, set once the service is ready
CLIENT = {"kind": "raw"}  # --client


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one connection, requests in
    turn. The load generator shares the two cores with the service (the raw baseline has no
    client), so it should cost as little as it can: the multipart body is encoded once per
    upload before the phase starts, and a response is one header read and one body read.
    ``--client httpx`` uses httpx instead (2.5-3.5 CPU ms per request here)."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        host_port = base.split("://", 1)[1]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def encode(self, fname: str, body: bytes) -> bytes:
        boundary = uuid.uuid4().hex
        form = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{fname}"\r\nContent-Type: application/dicom\r\n\r\n'
            ).encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            f"POST /v1/predictions HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(form)}\r\n\r\n"
        ).encode()
        return head + form

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self.reader.readexactly(length)
        if close:
            await self.aclose()
        return status, body

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def run_phase(
    base: str, name: str, clients: int, uploads: Uploads, warmup: int, pid: int
) -> Phase:
    if CLIENT["kind"] == "raw":
        return await run_phase_raw(base, name, clients, uploads, warmup, pid)
    import httpx

    phase = Phase(name, clients)
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in uploads:
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, timeout=300.0, limits=limits, headers=HEADERS
    ) as client:

        async def post(item: tuple[str, bytes]) -> tuple[float, dict[str, Any] | None, str]:
            fname, body = item
            t0 = time.perf_counter()
            resp = await client.post(
                "/v1/predictions", files={"file": (fname, body, "application/dicom")}
            )
            ms = (time.perf_counter() - t0) * 1000.0
            if resp.status_code not in (200, 201):
                return ms, None, f"{resp.status_code} {resp.text[:200]}"
            return ms, resp.json(), ""

        for _ in range(warmup):  # connections, first-request costs; not counted
            await post(queue.get_nowait())

        async def worker() -> None:
            while True:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                ms, body, err = await post(item)
                if body is None:
                    phase.errors.append(err)
                    continue
                phase.latencies_ms.append(ms)
                phase.inference_ms.append(float(body["inference_ms"]))
                phase.batch_sizes.append(int(body["batch_size"]))

        t0, c0, m0 = time.perf_counter(), proc_cpu_s(pid), time.process_time()
        await asyncio.gather(*(worker() for _ in range(clients)))
        phase.elapsed_s = time.perf_counter() - t0
        phase.cpu_s = proc_cpu_s(pid) - c0
        phase.client_cpu_s = time.process_time() - m0
    return phase


async def run_phase_raw(
    base: str, name: str, clients: int, uploads: Uploads, warmup: int, pid: int
) -> Phase:
    phase = Phase(name, clients)
    pool = [RawClient(base, HEADERS) for _ in range(clients)]
    requests = [pool[0].encode(fname, body) for fname, body in uploads]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests[warmup:]:
        queue.put_nowait(request)

    async def post(client: RawClient, request: bytes) -> None:
        t0 = time.perf_counter()
        status, raw = await client.post(request)
        ms = (time.perf_counter() - t0) * 1000.0
        if status not in (200, 201):
            phase.errors.append(f"{status} {raw[:200]!r}")
            return
        body = json.loads(raw)
        phase.latencies_ms.append(ms)
        phase.inference_ms.append(float(body["inference_ms"]))
        phase.batch_sizes.append(int(body["batch_size"]))

    for request in requests[:warmup]:  # connection, first-request costs; not counted
        await pool[0].post(request)

    async def worker(client: RawClient) -> None:
        while True:
            try:
                request = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await post(client, request)

    try:
        t0, c0, m0 = time.perf_counter(), proc_cpu_s(pid), time.process_time()
        await asyncio.gather(*(worker(client) for client in pool))
        phase.elapsed_s = time.perf_counter() - t0
        phase.cpu_s = proc_cpu_s(pid) - c0
        phase.client_cpu_s = time.process_time() - m0
    finally:
        for client in pool:
            await client.aclose()
    return phase


def main_phases(
    base: str, pid: int, uploads: Uploads, args: argparse.Namespace
) -> tuple[Phase, Phase]:
    """The 1-client phase (``--single`` requests after 3 warm-up ones), then the
    ``--clients`` phase (the next ``--concurrent`` uploads), against the server at ``base``."""
    single = asyncio.run(run_phase(base, "1 client", 1, uploads[: args.single + 3], 3, pid))
    start = args.single + 3
    crowd = asyncio.run(
        run_phase(
            base, f"{args.clients} clients", args.clients,
            uploads[start : start + args.concurrent], 0, pid,
        )
    )  # fmt: skip
    return single, crowd


# --- report ----------------------------------------------------------------------------------


BF16_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_model() -> str:
    """The CPU's model name and which of the bf16-relevant instruction sets it reports."""
    name, flags = platform.processor() or "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    found = [flag for flag in BF16_FLAGS if flag in flags]
    return f"{name} ({', '.join(found) or 'none of ' + ', '.join(BF16_FLAGS)})"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def describe(phase: Phase) -> str:
    sizes = np.bincount(phase.batch_sizes) if phase.batch_sizes else np.array([])
    hist = ", ".join(f"{b}:{n}" for b, n in enumerate(sizes) if n)
    return (
        f"{len(phase.latencies_ms)} ok, {len(phase.errors)} errors in {phase.elapsed_s:.1f} s; "
        f"latency p50 {pct(phase.latencies_ms, 50):.1f} / p90 {pct(phase.latencies_ms, 90):.1f}"
        f" ms; server model time per batch p50 {pct(phase.inference_ms, 50):.1f} ms; "
        f"batch sizes seen by requests {{{hist}}}; service CPU {phase.cpu_ms_per_img:.0f} ms/img;"
        f" client CPU {phase.client_cpu_ms:.1f} ms/request"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small phases (smoke run)")
    parser.add_argument("--raw-images", type=int, default=64, help="images per raw batch size")
    parser.add_argument("--single", type=int, default=40, help="requests in the 1-client phase")
    parser.add_argument("--concurrent", type=int, default=192, help="requests, 16-client phase")
    parser.add_argument("--clients", type=int, default=16)
    # The service's defaults (app/settings.py).
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--inference-streams", type=int, default=2)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument(
        "--http", choices=("auto", "h11", "httptools"), default="auto",
        help="uvicorn's HTTP parser (auto = httptools when installed)",
    )  # fmt: skip
    parser.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
        help="uvicorn's event loop (auto = uvloop when installed)",
    )  # fmt: skip
    parser.add_argument(
        "--database", choices=("sqlite", "postgres"), default="sqlite",
        help="sqlite: a file in the temp dir; postgres: a scratch database on 127.0.0.1:5432",
    )  # fmt: skip
    parser.add_argument(
        "--workload", choices=tuple(WORKLOADS), default="ct",
        help="the files posted: ct = the 512x512 CTs (JPEG-LS, JPEG 2000); j2k = chest CR "
        "1955x1841 in JPEG 2000 lossless and lossy (pydicom-data); jpeg-ls / jpeg-lossless = "
        "hip CR 2140x1760; jpeg-baseline = chest CR 1024x1024; radiographs = all of those",
    )  # fmt: skip
    parser.add_argument(
        "--runtime", default=None,
        help="sets RADLENS_RUNTIME for the service (default: the service's own default)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", default=None,
        help="sets RADLENS_PRECISION for the service (default: the service's own default)",
    )  # fmt: skip
    parser.add_argument(
        "--latency-model", choices=("auto", "off"), default=None,
        help="sets RADLENS_LATENCY_MODEL for the service (default: the service's own default)",
    )  # fmt: skip
    parser.add_argument(
        "--encodings", default=",".join(ENCODINGS),
        help="stored = the files as they are (JPEG-LS, JPEG 2000); uncompressed = same pixels "
        "re-encoded Explicit VR LE (separates codec time from service overhead)",
    )  # fmt: skip
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw",
        help="load generator: raw = minimal HTTP/1.1 on asyncio streams (default), httpx",
    )  # fmt: skip
    parser.add_argument(
        "--paired-rounds", type=int, default=3,
        help="rounds of [raw model at its best batch size, then the 16-client phase] after the "
        "main phases; (a) is judged on the median of the per-round ratios (0 = off)",
    )  # fmt: skip
    parser.add_argument(
        "--ordinary", action=argparse.BooleanOptionalAction, default=True,
        help="also serve the model from an ordinary FastAPI endpoint (bench/_ordinary.py: one "
        "model call per request, no batching, no database) and run it in every phase",
    )  # fmt: skip
    parser.add_argument(
        "--overhead", action=argparse.BooleanOptionalAction, default=True,
        help="also serve a 32 px simple_cnn to measure the service's own CPU per request",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.encodings = [e for e in args.encodings.split(",") if e]
    CLIENT["kind"] = args.client
    if not args.encodings or any(e not in ENCODINGS for e in args.encodings):
        parser.error(f"--encodings: choose from {ENCODINGS}. Received: {args.encodings}")
    if args.quick:
        args.raw_images, args.single, args.concurrent = 16, 10, 48
        args.paired_rounds = min(args.paired_rounds, 1)
    files, missing = workload_files(args.workload)
    if missing:
        print(f"bench/serve.py: --workload {args.workload} needs {', '.join(missing)}",
              file=sys.stderr)  # fmt: skip
        return 2

    started = datetime.now(UTC)
    print(f"radlens serving benchmark  {started:%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: nproc={os.cpu_count()}, {cpu_model()}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (CPU shared with other users)"
    )
    print(f"workload {args.workload}: {', '.join(path.name for path in files)}")
    print(
        "service runtime: "
        f"RADLENS_RUNTIME={args.runtime or os.environ.get('RADLENS_RUNTIME', '(default)')}, "
        f"RADLENS_PRECISION={args.precision or os.environ.get('RADLENS_PRECISION', '(default)')}, "
        "RADLENS_LATENCY_MODEL="
        f"{args.latency_model or os.environ.get('RADLENS_LATENCY_MODEL', '(default)')}"
    )
    with tempfile.TemporaryDirectory(prefix="radlens-bench-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        t0 = time.perf_counter()
        ref = save_model(store)
        print(
            f"model {ref} (ResNet50 {SIZE}x{SIZE}, weights=None) saved in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        if (args.runtime or os.environ.get("RADLENS_RUNTIME", "auto")) != "tensorflow":
            attach_openvino(store, ref)
        print("baselines (in-process, service not running):", flush=True)
        base_line = measure_baselines(store, ref, args.raw_images, max(10, args.single // 2), args)

        per_request = args.single + 3 + args.concurrent * (1 + args.paired_rounds)
        uploads = {}
        pre: dict[str, dict[str, float]] = {}
        for encoding in args.encodings:
            uploads[encoding] = make_uploads(load_sources(encoding, files), per_request)
            pre[encoding] = preprocess_ms(uploads[encoding])
            for fname, ms in pre[encoding].items():
                print(f"  preprocess {encoding:12s} {fname}: median {ms:.1f} ms", flush=True)

        with database(args.database, tmp) as database_url:
            port = free_port()
            proc = start_service(tmp, store, ref, port, database_url, args)
            base = f"http://127.0.0.1:{port}"
            ordinary_proc, ordinary_base = None, ""
            if args.ordinary:
                ordinary_port = free_port()
                ordinary_proc = start_service(
                    tmp, store, ref, ordinary_port, database_url, args, "bench._ordinary:create_app"
                )
                ordinary_base = f"http://127.0.0.1:{ordinary_port}"
            phases: dict[str, tuple[Phase, Phase]] = {}
            paired: dict[str, list[tuple[float, float, Phase]]] = {}
            served: dict[str, list[float]] = {}  # raw model as the service runs it, per round
            # the ordinary endpoint: its 1- and 16-client phases, and its phase in each round
            ordinary: dict[str, tuple[Phase, Phase]] = {}
            ordinary_paired: dict[str, list[Phase]] = {}
            mem_ordinary: dict[str, int] = {}
            try:
                ready_s = asyncio.run(wait_ready(base, proc, args.ready_timeout))
                print(f"service serves with: {served_runtime(base)}", flush=True)
                if ordinary_proc is not None:
                    asyncio.run(wait_ready(ordinary_base, ordinary_proc, args.ready_timeout))
                HEADERS.update(api_key_headers(database_url))
                mem_ready = proc_memory(proc.pid)
                print(
                    f"service pid {proc.pid} ready in {ready_s:.1f} s ({args.database}, "
                    f"max_batch_size={args.max_batch_size}, "
                    f"max_batch_wait_ms={args.max_batch_wait_ms}, "
                    f"inference_streams={args.inference_streams})",
                    flush=True,
                )
                for encoding in args.encodings:
                    ups = uploads[encoding]
                    single, many = main_phases(base, proc.pid, ups, args)
                    print(
                        f"  {encoding:12s} 1 client:  {describe(single)}\n"
                        f"  {encoding:12s} {args.clients} clients: {describe(many)}",
                        flush=True,
                    )
                    phases[encoding] = (single, many)
                    if ordinary_proc is not None:
                        o_single, o_many = main_phases(ordinary_base, ordinary_proc.pid, ups, args)
                        ordinary[encoding] = (o_single, o_many)
                        print(
                            f"  {encoding:12s} ordinary endpoint 1 client:  {describe(o_single)}\n"
                            f"  {encoding:12s} ordinary endpoint {args.clients} clients: "
                            f"{describe(o_many)}",
                            flush=True,
                        )
                    start = args.single + 3 + args.concurrent
                    for round_no in range(args.paired_rounds):
                        _, best_bs, _ = base_line.best_throughput
                        assert base_line.measure is not None
                        raw_ips, raw_cpu = base_line.measure(best_bs, 2 * args.raw_images)
                        assert base_line.measure_streams is not None
                        as_served = base_line.measure_streams(
                            args.max_batch_size, args.inference_streams, 2 * args.raw_images
                        )
                        chunk = ups[start : start + args.concurrent]
                        start += args.concurrent
                        crowd = asyncio.run(
                            run_phase(base, "paired", args.clients, chunk, 0, proc.pid)
                        )
                        paired.setdefault(encoding, []).append((raw_ips, raw_cpu, crowd))
                        served.setdefault(encoding, []).append(as_served)
                        versus = ""
                        if ordinary_proc is not None:
                            o_crowd = asyncio.run(
                                run_phase(
                                    ordinary_base, "paired", args.clients, chunk, 0,
                                    ordinary_proc.pid,
                                )
                            )  # fmt: skip
                            ordinary_paired.setdefault(encoding, []).append(o_crowd)
                            versus = (
                                f"; ordinary endpoint {o_crowd.throughput:.2f} img/s "
                                f"({o_crowd.cpu_ms_per_img:.0f} CPU ms/img) -> "
                                f"{o_crowd.throughput / raw_ips:.2f}"
                            )
                        print(
                            f"  {encoding:12s} paired round {round_no + 1}: raw batch {best_bs} "
                            f"{raw_ips:.2f} img/s ({raw_cpu:.0f} CPU ms/img), raw as served "
                            f"({args.inference_streams} x batch {args.max_batch_size}) "
                            f"{as_served:.2f} img/s, then service {crowd.throughput:.2f} img/s "
                            f"({crowd.cpu_ms_per_img:.0f} CPU ms/img) -> "
                            f"{crowd.throughput / raw_ips:.2f}{versus}",
                            flush=True,
                        )
                mem_after = proc_memory(proc.pid)
                if ordinary_proc is not None:
                    mem_ordinary = proc_memory(ordinary_proc.pid)
            finally:
                stop_service(proc)
                if ordinary_proc is not None:
                    stop_service(ordinary_proc)
                log_text = service_log(tmp, RADLENS_APP).read_text(errors="replace")
            overhead: dict[str, tuple[Phase, Phase]] = {}
            if args.overhead:
                tiny = save_tiny_model(store)
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                proc = start_service(tmp, store, tiny, port, database_url, args)
                try:
                    asyncio.run(wait_ready(base, proc, args.ready_timeout))
                    for encoding in args.encodings:
                        # de-duplication is per model: the same uploads take no short-cut
                        one, crowd = main_phases(base, proc.pid, uploads[encoding], args)
                        overhead[encoding] = (one, crowd)
                        print(
                            f"  overhead probe ({tiny}), {encoding:12s}: 1 client "
                            f"{one.cpu_ms_per_img:.1f} CPU ms/request, p50 "
                            f"{pct(one.latencies_ms, 50):.1f} ms; {args.clients} clients "
                            f"{crowd.cpu_ms_per_img:.1f} CPU ms/request, "
                            f"{crowd.throughput:.1f} req/s",
                            flush=True,
                        )
                finally:
                    stop_service(proc)
        errors = [
            e
            for group in (*phases.values(), *ordinary.values(), *ordinary_paired.values())
            for ph in group
            for e in ph.errors
        ]
        for err in errors[:3]:
            print(f"  error: {err}")
        if errors or len(phases) < len(args.encodings):
            lines = [ln for ln in log_text.splitlines() if "rror" in ln]
            print("  service log, error lines (last 8):")
            for ln in lines[-8:]:
                print(f"    {ln[:400]}")

    method_1, raw_single = base_line.best_single_ms
    method_t, best_bs, raw_best = base_line.best_throughput
    rss = mem_after.get("VmRSS", 0)
    hwm = mem_after.get("VmHWM", 0)
    print()
    print("RESULTS (each with its baseline measured in this run)")
    print(
        f"raw model: single image {raw_single:.1f} ms ({method_1}); best throughput "
        f"{raw_best:.2f} img/s ({method_t}, batch {best_bs})"
    )
    pr = base_line.predictor
    raw_cpu = base_line.cpu_ms[method_t][best_bs]
    print(
        f"app.predictor alone (in-process, no HTTP/decoding, interleaved with the raw model): "
        f"1 client {pr['single_ms']:.1f} ms vs raw {pr['raw_single_ms']:.1f} ms "
        f"({pr['single_ms'] - pr['raw_single_ms']:+.1f} ms); {args.clients} clients "
        f"{pr['throughput']:.2f} img/s vs raw {pr['raw_throughput']:.2f} img/s "
        f"(ratio {pr['throughput'] / pr['raw_throughput']:.2f}, mean batch {pr['mean_batch']:.1f},"
        f" {pr['cpu_ms']:.0f} CPU ms/img vs raw {raw_cpu:.0f})"
    )
    lm = base_line.latency_model
    if lm is not None:
        print(
            f"OpenVINO batch 1 in-process (interleaved): latency model p50 {lm['latency_ms']:.1f} "
            f"ms vs the streams model {lm['streams_ms']:.1f} ms (ratio "
            f"{lm['latency_ms'] / lm['streams_ms']:.2f}) vs raw TF fp32 {lm['raw_ms']:.1f} ms; "
            f"CPU {lm['latency_cpu_ms']:.1f} / {lm['streams_cpu_ms']:.1f} / {lm['raw_cpu_ms']:.1f} "
            f"ms; scores identical: {bool(lm['identical'])}; latency model RSS "
            f"~{lm['latency_mib']:.0f} MiB"
        )
    for encoding, (single, many) in phases.items():
        ratio = many.throughput / raw_best
        lat = pct(single.latencies_ms, 50)
        model_ms = pct(single.inference_ms, 50)
        pre_ms = statistics.mean(pre[encoding].values())
        print(f"[{encoding} {args.workload} DICOMs, {args.database}]")
        rounds = paired.get(encoding, [])
        if rounds:
            ratios = [crowd.throughput / raw_ips for raw_ips, _, crowd in rounds]
            cpu_ratios = [raw_cpu / crowd.cpu_ms_per_img for _, raw_cpu, crowd in rounds]
            mid = statistics.median(ratios)
            print(
                f"(a) throughput at {args.clients} clients, paired with the raw model at batch "
                f"{best_bs} measured just before each phase: ratios "
                f"{', '.join(f'{r:.2f}' for r in ratios)} -> median {mid:.3f} "
                f"(target >= 0.90: {'met' if mid >= 0.90 else 'MISSED'}); CPU-bound "
                f"{', '.join(f'{r:.2f}' for r in cpu_ratios)}"
            )
            strict = [
                crowd.throughput / max(raw_ips, as_served)
                for (raw_ips, _, crowd), as_served in zip(rounds, served[encoding], strict=True)
            ]
            print(
                f"    stricter: against the better of that and the raw model run as the service "
                f"runs it ({args.inference_streams} concurrent calls at batch "
                f"{args.max_batch_size}): ratios {', '.join(f'{r:.2f}' for r in strict)} -> "
                f"median {statistics.median(strict):.3f}"
            )
            print(
                f"    against the best of the {len(BATCH_SIZES) * 2} sweep measurements (leans "
                f"high): {many.throughput:.2f} img/s vs {raw_best:.2f} -> {ratio:.2f}"
            )
        else:
            print(
                f"(a) throughput at {args.clients} clients: {many.throughput:.2f} img/s vs raw "
                f"{raw_best:.2f} img/s -> ratio {ratio:.2f} "
                f"(target >= 0.90: {'met' if ratio >= 0.90 else 'MISSED'})"
            )
        print(
            f"(b) median latency at 1 client: {lat:.1f} ms vs raw single-image "
            f"{raw_single:.1f} ms -> {lat - raw_single:+.1f} ms "
            f"(target <= +15 ms: {'met' if lat - raw_single <= 15 else 'MISSED'})"
        )
        print(
            f"    {args.clients} clients, CPU time (robust to other users' load): service "
            f"{many.cpu_ms_per_img:.0f} CPU ms/img vs raw model {raw_cpu:.0f} at batch {best_bs}"
            f" -> CPU-bound throughput ratio {raw_cpu / many.cpu_ms_per_img:.2f}; "
            f"preprocessing ~{pre_ms:.0f} ms/img of it"
        )
        print(
            f"    1 client, CPU time: service {single.cpu_ms_per_img:.0f} CPU ms/request vs raw "
            f"single image {base_line.cpu_ms[method_1][1]:.0f} -> "
            f"{single.cpu_ms_per_img - base_line.cpu_ms[method_1][1]:+.0f} CPU ms"
        )
        print(
            f"    1 client, where the time goes: server model time p50 {model_ms:.1f} ms, "
            f"preprocessing ~{pre_ms:.1f} ms (in-process median), the rest (HTTP, multipart, "
            f"DB, queue) ~{lat - model_ms - pre_ms:.1f} ms"
        )
        if encoding in ordinary:
            o_single, o_many = ordinary[encoding]
            o_lat = pct(o_single.latencies_ms, 50)
            print(
                f"    vs an ordinary FastAPI endpoint (bench/_ordinary.py: one model call per "
                f"request, no batching, no database): 1 client p50 {o_lat:.1f} ms "
                f"({o_lat - raw_single:+.1f} ms over raw; radlens {lat - raw_single:+.1f} ms)"
            )
            o_rounds = ordinary_paired.get(encoding, [])
            if rounds and o_rounds:
                pairs = list(zip(rounds, o_rounds, strict=True))
                o_ratios = [o.throughput / raw_ips for (raw_ips, _, _), o in pairs]
                wins = [crowd.throughput / o.throughput for (_, _, crowd), o in pairs]
                o_cpu = statistics.median(o.cpu_ms_per_img for o in o_rounds)
                print(
                    f"    {args.clients} clients, same paired rounds: ordinary endpoint ratios "
                    f"{', '.join(f'{r:.2f}' for r in o_ratios)} -> median "
                    f"{statistics.median(o_ratios):.3f}; radlens / ordinary throughput "
                    f"{', '.join(f'{r:.2f}' for r in wins)} -> median "
                    f"{statistics.median(wins):.2f}; ordinary {o_cpu:.0f} CPU ms/img"
                )
            else:
                print(
                    f"    {args.clients} clients: ordinary endpoint {o_many.throughput:.2f} img/s "
                    f"vs raw {raw_best:.2f} -> {o_many.throughput / raw_best:.2f}"
                )
    for encoding, (one, crowd) in overhead.items():
        print(
            f"service overhead without ResNet50 (32 px simple_cnn, {encoding} {args.workload}): "
            f"{one.cpu_ms_per_img:.1f} CPU ms/request at 1 client, "
            f"{crowd.cpu_ms_per_img:.1f} at {args.clients} clients"
        )
    print(
        f"(c) service memory with ResNet50 loaded: VmRSS {rss / GIB:.2f} GiB after the phases "
        f"(peak VmHWM {hwm / GIB:.2f} GiB; at ready {mem_ready.get('VmRSS', 0) / GIB:.2f} GiB)"
        f" (target < 2.5 GiB: {'met' if hwm < 2.5 * GIB else 'MISSED'})"
    )
    if mem_ordinary:
        print(
            f"    ordinary endpoint: VmRSS {mem_ordinary.get('VmRSS', 0) / GIB:.2f} GiB "
            f"(peak VmHWM {mem_ordinary.get('VmHWM', 0) / GIB:.2f} GiB)"
        )
    print(
        "raw throughput by batch size (img/s): "
        + "; ".join(
            f"{m}: " + ", ".join(f"{bs}={v:.1f}" for bs, v in per.items())
            for m, per in base_line.throughput.items()
        )
    )
    print(
        f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"total {(datetime.now(UTC) - started).total_seconds():.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

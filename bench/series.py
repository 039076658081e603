"""Series benchmark (issue 20): a 200-slice 512x512 CT series as ONE STOW-RS request vs the raw
model at its best batch size, measured in the same run.

Not a test. Run from the repository root (figures: docs/benchmarks/series.md):

    .venv/bin/python -m bench.series                      # SQLite in a temp dir
    .venv/bin/python -m bench.series --database postgres  # scratch DB on 127.0.0.1:5432
    .venv/bin/python -m bench.series --slices 40 --rounds 1   # smoke run
    .venv/bin/python -m bench.series --compare-streams 1      # also a 1-stream service, same run
    .venv/bin/python -m bench.series --multiframe-probe 64     # frame-by-frame cost, in process
                                                               # (and preprocessing alone)

What it does, all on this machine and loopback only:
1. builds ResNet50 at 224x224 (weights=None, 2 classes, window "lung") into a temporary model
   store (bench/serve.py's save_model, as training exports a model);
2. generates the series from the real CT ``../shared/data/dicom/CT1_JLSN.dcm`` (JPEG-LS,
   512x512; pydicom's CT_small scaled to 512x512 when the shared data is absent): slice i
   has its pixels rolled by i columns and new SOP Instance UIDs (and, per round, a new Series
   Instance UID, so de-duplication never short-cuts inference), InstanceNumber and
   ImagePositionPatient, written uncompressed (Explicit VR Little Endian), about 100 MiB per
   request;
3. sweeps the raw model (a tf.function over model(x, training=False) and
   model.predict_on_batch, interleaved call by call, the faster counted) at batch sizes 1, 4,
   8, 16, 32, in this process before the service starts;
4. starts the real service (uvicorn radlens.app.main:create_app in a subprocess, the service's
   default batching settings, RADLENS_MAX_UPLOAD_BYTES and RADLENS_STOW_MAX_INSTANCES raised
   to take the request), sends one warm-up request, then per round: the raw model at the
   sweep's best batch size on as many images as the series has slices, then at once the STOW-RS
   request; the round's ratio is (slices / STOW wall time) / raw images per second. The
   verdict is the median ratio over the rounds (target >= 0.9). Each round also prints the
   CPU time per image of both (the raw model's in this process, the service's from
   /proc/<pid>/stat): on a CPU shared with other jobs the wall-clock ratio swings with their
   load, the CPU ratio much less. Each round also reads
   GET /v1/series/{uid} (the aggregate, computed from the 200 stored rows) and checks its
   instance count;
5. prints the CPU model, each figure next to its baseline, and the service's CPU time and
   memory; stops the service and drops the scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve import (
    BATCH_SIZES,
    SHARED_DICOM,
    SIZE,
    api_key_headers,
    cpu_model,
    database,
    free_port,
    proc_cpu_s,
    proc_memory,
    save_model,
    start_service,
    stop_service,
    time_interleaved,
    wait_ready,
)

MIB = 1024 * 1024


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def source_pixels() -> tuple[Any, np.ndarray, str]:
    """The header dataset (pixels removed later) and the 512x512 stored values of a real CT."""
    import pydicom

    path = SHARED_DICOM / "CT1_JLSN.dcm"
    if path.is_file():
        ds = pydicom.dcmread(path)
        return ds, np.asarray(ds.pixel_array), f"{path.name} (JPEG-LS, 512x512)"
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = np.kron(np.asarray(ds.pixel_array), np.ones((4, 4), dtype=ds.pixel_array.dtype))
    return ds, pixels, "CT_small.dcm scaled 4x to 512x512 (shared data absent)"


def make_series(ds: Any, pixels: np.ndarray, slices: int) -> tuple[str, str, list[bytes]]:
    """``slices`` uncompressed instances of one new series: (study, series, encoded files)."""
    from pydicom.uid import ExplicitVRLittleEndian

    study, series = new_uid(), new_uid()
    template = copy.deepcopy(ds)  # the source stays as read
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName"):
        if keyword in template:
            delattr(template, keyword)  # nothing patient-identifying leaves this script
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    template.StudyInstanceUID, template.SeriesInstanceUID = study, series
    files = []
    for i in range(slices):
        sop = new_uid()
        template.SOPInstanceUID = sop
        template.file_meta.MediaStorageSOPInstanceUID = sop
        template.InstanceNumber = i + 1
        template.ImagePositionPatient = [0.0, 0.0, float(i)]
        template.PixelData = np.roll(pixels, i, axis=1).astype(pixels.dtype).tobytes()
        template["PixelData"].VR = "OW"
        template["PixelData"].is_undefined_length = False
        buf = io.BytesIO()
        template.save_as(buf, enforce_file_format=True)
        files.append(buf.getvalue())
    return study, series, files


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = f"radlens-bench-{uuid.uuid4().hex}"
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + f + b"\r\n" for f in files) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


class Raw:
    """The raw model, both methods; ``rate(bs, images)`` -> img/s of the faster."""

    def __init__(self, store: Path, ref: str) -> None:
        import tensorflow as tf

        from radlens.models.registry import ModelRegistry

        model = ModelRegistry(store).load(ref).model

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 1], tf.float32)])
        def serve(x: Any) -> Any:
            return model(x, training=False)

        self.methods = {
            "tf.function": lambda b: serve(tf.constant(b)).numpy(),
            "predict_on_batch": lambda b: np.asarray(model.predict_on_batch(b)),
        }
        self.rng = np.random.default_rng(0)

    def rate(self, bs: int, images: int) -> tuple[float, str, float]:
        """(img/s, method, CPU ms per image) of the faster method at batch size ``bs``."""
        batch = self.rng.random((bs, SIZE, SIZE, 1), dtype=np.float32)
        for run in self.methods.values():
            run(batch)  # trace / warm this shape
        calls = max(2, -(-images // bs))
        wall, cpu = time_interleaved(self.methods, batch, calls)
        best = min(wall, key=lambda m: wall[m])
        return calls * bs / wall[best], best, cpu[best] * 1000.0 / (calls * bs)


async def stow(base: str, headers: dict[str, str], body: bytes, content_type: str) -> Any:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=1800.0, headers=headers) as client:
        return await client.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
        )


async def read_series(base: str, headers: dict[str, str], series: str) -> tuple[Any, float]:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=60.0, headers=headers) as client:
        await client.get(f"/v1/series/{series}")  # first read warms the route
        t0 = time.perf_counter()
        response = await client.get(f"/v1/series/{series}")
        return response, (time.perf_counter() - t0) * 1000.0


def run_round(
    base: str, headers: dict[str, str], ds: Any, pixels: np.ndarray, slices: int
) -> tuple[float, str, int, float]:
    """One STOW-RS of a new series: (seconds, series UID, HTTP status, GET /v1/series ms)."""
    _study, series, files = make_series(ds, pixels, slices)
    body, content_type = multipart(files)
    t0 = time.perf_counter()
    response = asyncio.run(stow(base, headers, body, content_type))
    seconds = time.perf_counter() - t0
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:500]}")
    got, read_ms = asyncio.run(read_series(base, headers, series))
    count = got.json()["results"][0]["instance_count"]
    if count != slices:
        raise RuntimeError(f"GET /v1/series counted {count} instances, {slices} were sent")
    return seconds, series, response.status_code, read_ms


def multiframe_instance(ds: Any, pixels: np.ndarray, frames: int) -> bytes:
    """One multi-frame CT instance whose frame i is the slice rolled by i columns."""
    from pydicom.uid import ExplicitVRLittleEndian

    template = copy.deepcopy(ds)  # the source stays as read
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName"):
        if keyword in template:
            delattr(template, keyword)
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    template.StudyInstanceUID, template.SeriesInstanceUID = new_uid(), new_uid()
    template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = new_uid()
    template.NumberOfFrames = frames
    template.PixelData = b"".join(
        np.roll(pixels, i, axis=1).astype(pixels.dtype).tobytes() for i in range(frames)
    )
    template["PixelData"].VR = "OW"
    template["PixelData"].is_undefined_length = False
    buf = io.BytesIO()
    template.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def preprocessing_probe(data: bytes, frames: int, rounds: int) -> None:
    """Preprocessing alone, in this process: every frame of ``data`` by one
    ``preprocess(data, frame=i)`` call each (what the service did before) vs one
    ``preprocess_frames`` call (the file parsed once), interleaved round by round; CPU and
    wall seconds for the whole instance, at the bench model's 224x224 lung window."""
    from radlens.models.preprocessing import preprocess, preprocess_frames

    options: dict[str, Any] = {"size": (SIZE, SIZE), "window": "lung"}

    def per_frame() -> int:
        return len([preprocess(data, frame=i, **options) for i in range(frames)])

    def read_once() -> int:
        return len(list(preprocess_frames(data, range(frames), **options)))

    for r in range(rounds):
        figures = []
        ways = (("per-frame preprocess()", per_frame), ("preprocess_frames()", read_once))
        for name, run in ways:
            c0, t0 = time.process_time(), time.perf_counter()
            assert run() == frames
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            figures.append(f"{name} {cpu:.2f} CPU s / {wall:.2f} s wall")
        print(
            f"preprocessing round {r + 1}, {frames} frames: {'; '.join(figures)}; load "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )


def multiframe_probe(frames: int, rounds: int) -> None:
    """In process (httpx's ASGI transport, no socket), with a 32 px model whose time is next to
    nothing: one ``frames``-frame 512x512 instance predicted frame by frame vs the same frames
    as single-frame instances in one STOW-RS request. The difference is what the frame-by-frame
    path costs beyond the model."""
    import httpx

    from bench.serve import save_tiny_model
    from radlens.app.main import create_app
    from radlens.app.settings import Settings

    ds, pixels, source = source_pixels()
    print(f"multi-frame probe: {frames} frames of {source}, uncompressed; 32 px model")
    preprocessing_probe(multiframe_instance(ds, pixels, frames), frames, rounds)
    with tempfile.TemporaryDirectory(prefix="radlens-bench-frames-") as tmp_name:
        tmp = Path(tmp_name)
        ref = save_tiny_model(tmp / "store")
        settings = Settings(
            database_url=f"sqlite:///{tmp / 'bench.db'}",
            model_store=tmp / "store",
            model=ref,
            auth="disabled",
            max_upload_bytes=1024 * MIB,
            stow_max_instances=max(frames, 100),
            max_frames=frames,
        )
        app = create_app(settings)

        async def run() -> None:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=600
                ) as client,
            ):
                for r in range(rounds):
                    data = multiframe_instance(ds, pixels, frames)
                    t0, c0 = time.perf_counter(), time.process_time()
                    one = await client.post(
                        "/v1/predictions", files={"file": ("mf.dcm", data, "application/dicom")}
                    )
                    multi_s, multi_cpu = time.perf_counter() - t0, time.process_time() - c0
                    _study, _series, files = make_series(ds, pixels, frames)
                    body, content_type = multipart(files)
                    t0, c0 = time.perf_counter(), time.process_time()
                    many = await client.post(
                        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
                    )
                    stow_s, stow_cpu = time.perf_counter() - t0, time.process_time() - c0
                    if many.status_code != 200:
                        print(many.text[:600])
                    # CPU: this whole process (service threads included) during the request
                    print(
                        f"round {r + 1}: one {frames}-frame instance ({len(data) / MIB:.0f} MiB) "
                        f"{one.status_code} in {multi_s:.2f} s ({multi_cpu:.2f} CPU s); {frames} "
                        f"single-frame instances by STOW-RS {many.status_code} in {stow_s:.2f} s "
                        f"({stow_cpu * 1000 / frames:.1f} CPU ms per instance); load "
                        f"{os.getloadavg()[0]:.1f}",
                        flush=True,
                    )

        asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--raw-images", type=int, default=64, help="images per sweep batch size")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--max-batch-size", type=int, default=8)  # the service's defaults
    parser.add_argument("--max-batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--inference-streams", type=int, default=2)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument(
        "--compare-streams", type=int, default=0, metavar="N",
        help="also run a second service with N inference streams; each round sends the series "
        "to both (the order alternating), against the same raw measurement",
    )  # fmt: skip
    parser.add_argument(
        "--multiframe-probe", type=int, default=0, metavar="FRAMES",
        help="instead: one FRAMES-frame instance vs FRAMES single-frame ones, in process, "
        "with a model of negligible cost (what frame-by-frame prediction costs)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.http, args.loop, args.runtime, args.precision = "auto", "auto", None, None
    if args.multiframe_probe:
        print(f"CPU: {cpu_model()}; {os.cpu_count()} logical cores; load {os.getloadavg()}")
        multiframe_probe(args.multiframe_probe, args.rounds)
        return 0

    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical cores; load {os.getloadavg()}")
    ds, pixels, source = source_pixels()
    print(f"series: {args.slices} slices from {source}, uncompressed; {args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="radlens-bench-series-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        ref = save_model(store)
        raw = Raw(store, ref)
        sweep = {}
        for bs in BATCH_SIZES:
            sweep[bs], _method, cpu_ms = raw.rate(bs, args.raw_images)
            print(
                f"  raw model batch {bs:2d}: {sweep[bs]:6.2f} img/s, {cpu_ms:5.1f} CPU ms/img",
                flush=True,
            )
        best_bs = max(sweep, key=lambda b: sweep[b])
        print(f"  best batch size {best_bs} ({sweep[best_bs]:.2f} img/s)")

        os.environ["RADLENS_MAX_UPLOAD_BYTES"] = str(512 * MIB)
        os.environ["RADLENS_STOW_MAX_INSTANCES"] = str(max(args.slices, 100))
        with database(args.database, tmp) as url:
            services = {f"{args.inference_streams} streams": (tmp, args)}
            if args.compare_streams:
                other = argparse.Namespace(
                    **{**vars(args), "inference_streams": args.compare_streams}
                )
                (tmp / "compare").mkdir()
                services[f"{args.compare_streams} streams"] = (tmp / "compare", other)
            procs: dict[str, tuple[Any, str]] = {}
            try:
                for name, (folder, options) in services.items():
                    port = free_port()
                    proc = start_service(folder, store, ref, port, url, options)
                    base = f"http://127.0.0.1:{port}"
                    procs[name] = (proc, base)
                    ready_s = asyncio.run(wait_ready(base, proc, args.ready_timeout))
                    headers = api_key_headers(url)
                    print(f"service ({name}) ready in {ready_s:.1f} s ({args.database})")
                    run_round(base, headers, ds, pixels, min(args.slices, 16))  # warm-up
                ratios: dict[str, list[float]] = {name: [] for name in procs}
                cpu_ratios: dict[str, list[float]] = {name: [] for name in procs}
                for r in range(args.rounds):
                    raw_rate, method, raw_cpu = raw.rate(best_bs, args.slices)
                    names = list(procs) if r % 2 == 0 else list(reversed(procs))
                    for name in names:
                        proc, base = procs[name]
                        cpu0 = proc_cpu_s(proc.pid)
                        seconds, _series, _status, read_ms = run_round(
                            base, headers, ds, pixels, args.slices
                        )
                        cpu_ms = (proc_cpu_s(proc.pid) - cpu0) * 1000.0 / args.slices
                        rate = args.slices / seconds
                        ratios[name].append(rate / raw_rate)
                        cpu_ratios[name].append(raw_cpu / cpu_ms)
                        print(
                            f"round {r + 1} ({name}): raw {raw_rate:6.2f} img/s, {raw_cpu:.0f} "
                            f"CPU ms/img (batch {best_bs}, {method}); STOW-RS {args.slices} "
                            f"slices in {seconds:6.1f} s = {rate:6.2f} img/s -> "
                            f"{ratios[name][-1]:.3f}x; service {cpu_ms:.0f} CPU ms/slice "
                            f"(raw/service CPU {cpu_ratios[name][-1]:.3f}); GET /v1/series "
                            f"{read_ms:.0f} ms; load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
                memory = {name: proc_memory(proc.pid) for name, (proc, _base) in procs.items()}
            finally:
                for proc, _base in procs.values():
                    stop_service(proc)
    for name in ratios:
        median = statistics.median(ratios[name])
        verdict = "meets" if median >= 0.9 else "misses"
        print(
            f"{name}: median ratio {median:.3f}x over {len(ratios[name])} rounds (target >= 0.9: "
            f"{verdict}); CPU per image, raw / service: median "
            f"{statistics.median(cpu_ratios[name]):.3f}; service VmHWM "
            f"{memory[name].get('VmHWM', 0) / MIB:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

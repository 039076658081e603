"""DIMSE vs STOW-RS benchmark (issue #24, speed): a 200-slice CT series sent on one DICOM
association against the same series sent by STOW-RS, to the same radlens service.

Not a test. Run from the repository root (figures: docs/benchmarks/dimse.md):

    .venv/bin/python -m bench.dimse                  # ResNet50 224 px, 200 slices, 3 rounds
    .venv/bin/python -m bench.dimse --model tiny     # 32 px simple_cnn: transport overhead
    .venv/bin/python -m bench.dimse --quick          # 40 slices, 1 round: a smoke run
    .venv/bin/python -m bench.dimse --dimse-env RADLENS_DIMSE_ACK=queued  # acknowledge queued

What it does, all on this machine and loopback only:
1. saves the model to a temporary store (bench/serve.py's ResNet50 at 224x224, weights=None,
   or its 32 px simple_cnn with --model tiny);
2. builds the series: N instances of one study and one series, each the real 512x512 CT
   ``../shared/data/dicom/CT1_JLSN.dcm`` (JPEG-LS, as stored) with its own SOP Instance UID
   and Instance Number (synthetic 512x512 uncompressed slices when ../shared/data is absent);
3. starts the real service (uvicorn, SQLite in the temporary directory) with the Storage SCP
   on (RADLENS_DIMSE_PORT) and RADLENS_STOW_MAX_INSTANCES = N, waits for /readyz, warms up
   both paths with a few instances;
4. each round, in alternating order: the series by C-STORE on one association (pynetdicom
   SCU, the file's own transfer syntax proposed), timed from the association request until
   every instance is committed (read from the service's database: with
   ``--dimse-env RADLENS_DIMSE_ACK=queued`` that is after the release); the same series with
   fresh UIDs by one STOW-RS request (httpx), timed from the request to the response. Every
   instance must succeed (C-STORE status 0x0000, STOW 200): N predictions committed each;
5. prints throughput (instances/s) per path and round, the per-round ratio DIMSE/STOW and its
   median (target >= 0.8), the CPU model, nproc and the load average.
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

from bench.serve import (
    SHARED_DICOM,
    api_key_headers,
    cpu_model,
    database,
    free_port,
    save_model,
    save_tiny_model,
    start_service,
    stop_service,
    wait_ready,
)

TARGET = 0.8


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def template() -> tuple[Any, str]:
    """The slice every instance copies: the real CT, or a synthetic one."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    path = SHARED_DICOM / "CT1_JLSN.dcm"
    if path.is_file():
        return pydicom.dcmread(path), f"{path.name} (512x512 CT, JPEG-LS as stored)"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    rng = np.random.default_rng(0)
    ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
    return ds, "synthetic 512x512 CT, uncompressed (../shared/data absent)"


def series(base: Any, count: int) -> list[Any]:
    """``count`` instances of one new study and series, each with its own SOP Instance UID."""
    study, series_uid = _uid(), _uid()
    instances = []
    for number in range(1, count + 1):
        ds = copy.deepcopy(base)  # Dataset.copy() shares the elements: one UID for all
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.InstanceNumber = number
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            if keyword in ds:
                delattr(ds, keyword)
        instances.append(ds)
    return instances


def part10(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def committed(database_url: str, study: str) -> int:
    """Predictions the service has committed for ``study`` (read from its database)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            sql = text("SELECT count(*) FROM predictions WHERE study_instance_uid = :s")
            return int(conn.execute(sql, {"s": study}).scalar() or 0)
    finally:
        engine.dispose()


def send_dimse(port: int, instances: list[Any], database_url: str) -> float:
    """Seconds from the association request until every instance is committed (with
    RADLENS_DIMSE_ACK=queued that is after the release); raises on any failure."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    syntax = str(instances[0].file_meta.TransferSyntaxUID)
    ae.add_requested_context(str(instances[0].SOPClassUID), [syntax])
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLENS")
    if not assoc.is_established:
        raise RuntimeError("the association was not established")
    try:
        for ds in instances:
            status = assoc.send_c_store(ds)
            if status.get("Status") != 0x0000:
                raise RuntimeError(f"C-STORE failed: {status}")
    finally:
        assoc.release()
    study = str(instances[0].StudyInstanceUID)
    deadline = time.monotonic() + 1800
    while committed(database_url, study) < len(instances):
        if time.monotonic() > deadline:
            raise RuntimeError("the queued instances were not committed within 30 min")
        time.sleep(0.05)
    return time.perf_counter() - t0


def stow_body(instances: list[Any]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for ds in instances:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()]
        chunks += [part10(ds), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def send_stow(base: str, headers: dict[str, str], instances: list[Any], database_url: str) -> float:
    """Seconds for one STOW-RS request of every instance; raises unless all were stored."""
    import httpx

    body, content_type = stow_body(instances)  # serialised before the clock starts
    t0 = time.perf_counter()
    response = httpx.post(
        f"{base}/dicomweb/studies",
        content=body,
        headers={**headers, "Content-Type": content_type},
        timeout=1800,
    )
    seconds = time.perf_counter() - t0
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:300]}")
    stored = committed(database_url, str(instances[0].StudyInstanceUID))
    if stored != len(instances):
        raise RuntimeError(f"STOW-RS stored {stored} predictions of {len(instances)}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", choices=("resnet50", "tiny"), default="resnet50")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--inference-streams", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="40 slices, 1 round")
    parser.add_argument("--dimse-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra RADLENS_* settings for the service")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.slices, args.rounds = 40, 1
    base_ds, source = template()
    print(f"machine: nproc={os.cpu_count()}, {cpu_model()}; load average {os.getloadavg()}")
    print(f"series: {args.slices} x {source}; model {args.model}; rounds {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="radlens-bench-dimse-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        ref = save_model(store) if args.model == "resnet50" else save_tiny_model(store)
        dimse_port, http_port = free_port(), free_port()
        os.environ.update(
            RADLENS_DIMSE_PORT=str(dimse_port),
            RADLENS_STOW_MAX_INSTANCES=str(max(args.slices, 16)),
            RADLENS_MAX_UPLOAD_BYTES=str(1024**3),
            RADLENS_DIMSE_INBOX_DIR=str(tmp / "dimse-inbox"),  # used with ACK=queued
        )
        for item in args.dimse_env:
            name, _, value = item.partition("=")
            os.environ[name] = value
        with database("sqlite", tmp) as url:
            args.runtime = args.precision = None
            proc = start_service(tmp, store, ref, http_port, url, args)
            try:
                base = f"http://127.0.0.1:{http_port}"
                print(f"service ready in {asyncio.run(wait_ready(base, proc, 600)):.1f} s")
                headers = api_key_headers(url)
                send_stow(base, headers, series(base_ds, 8), url)  # warm-up, not counted
                send_dimse(dimse_port, series(base_ds, 8), url)
                ratios = []
                for round_no in range(1, args.rounds + 1):
                    order = ("dimse", "stow") if round_no % 2 else ("stow", "dimse")
                    seconds = {}
                    for path in order:
                        instances = series(base_ds, args.slices)
                        if path == "dimse":
                            seconds[path] = send_dimse(dimse_port, instances, url)
                        else:
                            seconds[path] = send_stow(base, headers, instances, url)
                    rate = {p: args.slices / s for p, s in seconds.items()}
                    ratios.append(rate["dimse"] / rate["stow"])
                    print(
                        f"round {round_no} ({' then '.join(order)}): "
                        f"DIMSE {rate['dimse']:.2f}/s ({seconds['dimse']:.1f} s), "
                        f"STOW-RS {rate['stow']:.2f}/s ({seconds['stow']:.1f} s), "
                        f"ratio {ratios[-1]:.2f}",
                        flush=True,
                    )
            finally:
                stop_service(proc)
    median = statistics.median(ratios)
    verdict = "meets" if median >= TARGET else "misses"
    print(f"DIMSE/STOW-RS throughput ratio, median of {len(ratios)}: {median:.2f} "
          f"({verdict} the target >= {TARGET})")  # fmt: skip
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A training data pass over real DICOM with glibc's default malloc against the service's tuning.

Not a test. ``radlens train``, ``evaluate`` and ``data-check`` tune glibc's malloc as the
service does (``cli.common.keep_freed_memory_for_jobs``: ``app.memory.keep_freed_memory``,
``RADLENS_MALLOC_KEEP_MIB``, default 64; QA round 106). This measures what that changes::

    nice -n 10 .venv/bin/python -m bench.training_malloc --rounds 4

The data set is a class-folder set of real radiographs and CT (pydicom-data's chest CR RG1
uncompressed, JPEG 2000 lossless and lossy, and the tibia RG3; ../shared/data/dicom's hip CR
RG2 as JPEG Lossless and JPEG-LS, the RSNA chest CR, two CTs and a DX), copied into a
temporary folder. Each child process sets ``RADLENS_MALLOC_KEEP_MIB`` (A: 0, glibc's defaults;
B: 64) and calls the CLI's own tuning, then runs what a training job does with the data, three
times: ``drop_undecodable`` (every image decoded at 32 px, as data-check and train do first)
and one epoch of ``training.data.pipeline.make_dataset`` at 224 px without the cache (the
parallel tf.data decode of a first epoch). It prints per pass the process CPU seconds (all
threads), the minor page faults, and at the end the peak RSS, for each phase and both
together; the children alternate A/B,
B/A by round, so other users' load hits both alike, and the medians (passes 2 and 3: pass 1
warms up imports and codecs) come with the B/A ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
PYDICOM_DATA = {
    "normal": ["RG1_UNCR.dcm", "RG1_J2KR.dcm"],
    "abnormal": ["RG1_J2KI.dcm", "RG3_UNCR.dcm"],
}
SHARED_FILES = {
    "normal": ["RG2_JPLL.dcm", "rsna_chest_cr_jpeg_baseline.dcm", "CT1_JLSN.dcm"],
    "abnormal": ["RG2_JLSL.dcm", "TOSHIBA_J2K_OpenJPEGv2Regression.dcm", "dx_image.dcm"],
}
PASSES = 3


def build(root: Path) -> Path:
    from pydicom.data import get_testdata_file

    if not SHARED.is_dir():
        sys.exit(f"the real DICOM of {SHARED} is needed (see ../shared/data/README.md)")
    for name in PYDICOM_DATA["normal"] + PYDICOM_DATA["abnormal"]:
        if get_testdata_file(name) is None:
            sys.exit(f"pydicom-data's {name} is needed: install pydicom-data")
    for cls in ("normal", "abnormal"):
        (root / cls).mkdir(parents=True)
        for name in PYDICOM_DATA[cls]:
            shutil.copy(str(get_testdata_file(name)), root / cls / name)
        for name in SHARED_FILES[cls]:
            shutil.copy(SHARED / name, root / cls / name)
    return root


def child(data: Path, size: int) -> None:
    from radlens.cli.common import keep_freed_memory_for_jobs

    applied = keep_freed_memory_for_jobs()  # the CLI's own call, as the env says
    from radlens.training.data.pipeline import make_dataset
    from radlens.training.data.sources import drop_undecodable, open_data, skip_lines_held

    with skip_lines_held():
        opened = open_data(data)
    out: dict[str, Any] = {"applied": applied}
    for _ in range(PASSES):
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        source = drop_undecodable(opened)
        middle, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        dataset = make_dataset(source, source.examples, size=size, batch_size=4, cache=False)
        for _batch in dataset:
            pass
        after, t2 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for phase, (a, b, wall) in {
            "check": (before, middle, t1 - t0),
            "epoch": (middle, after, t2 - t1),
            "": (before, after, t2 - t0),
        }.items():
            cpu = b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime
            out.setdefault(f"cpu{phase}", []).append(cpu)
            out.setdefault(f"faults{phase}", []).append(b.ru_minflt - a.ru_minflt)
            out.setdefault(f"wall{phase}", []).append(wall)
        out["images"] = len(source.examples)
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(data: Path, size: int, keep: int) -> dict[str, Any]:
    env = {**os.environ, "RADLENS_MALLOC_KEEP_MIB": str(keep), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.training_malloc", "--child", str(data), "--size", str(size)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.size)
        return
    from bench._machine import cpu_model

    print(f"cpu: {cpu_model()}; load average {os.getloadavg()[0]:.1f}")
    results: dict[int, list[dict[str, Any]]] = {0: [], 64: []}
    with tempfile.TemporaryDirectory(prefix="radlens-bench-") as tmp:
        data = build(Path(tmp) / "data")
        for r in range(args.rounds):
            for keep in (0, 64) if r % 2 == 0 else (64, 0):
                got = run_child(data, args.size, keep)
                results[keep].append(got)
                print(
                    f"round {r + 1} keep={keep} (applied {got['applied']}): "
                    f"{got['images']} images, cpu s/pass "
                    + " ".join(f"{c:.3f}" for c in got["cpu"])
                    + ", faults/pass "
                    + " ".join(str(f) for f in got["faults"])
                    + f", peak RSS {got['maxrss_mib']:.0f} MiB",
                    flush=True,
                )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    for key, unit in (
        ("cpucheck", "decode check (32 px, one thread): CPU s/pass"),
        ("faultscheck", "decode check: faults/pass"),
        ("cpuepoch", f"tf.data epoch ({args.size} px, parallel): CPU s/pass"),
        ("faultsepoch", "tf.data epoch: faults/pass"),
        ("cpu", "both: CPU s/pass"),
        ("wall", "both: wall s/pass"),
        ("faults", "both: faults/pass"),
    ):
        a = statistics.median(v for got in results[0] for v in got[key][1:])
        b = statistics.median(v for got in results[64] for v in got[key][1:])
        ratio = f"{b / a:.3f}" if a else "n/a"
        print(f"{unit}: A (defaults) {a:.3f}, B (keep 64) {b:.3f}, B/A {ratio}")
    a1 = statistics.median(got["cpu"][0] for got in results[0])
    b1 = statistics.median(got["cpu"][0] for got in results[64])
    print(f"first pass CPU s: A {a1:.3f}, B {b1:.3f}, B/A {b1 / a1:.3f}")
    ra = statistics.median(got["maxrss_mib"] for got in results[0])
    rb = statistics.median(got["maxrss_mib"] for got in results[64])
    print(f"peak RSS MiB: A {ra:.0f}, B {rb:.0f}, B/A {rb / ra:.3f}")


if __name__ == "__main__":
    main()

"""Decode + preprocess throughput on one CPU core, against pydicom's raw decode as baseline.

For each file it measures, in the same run and on the same pinned core:

* baseline: ``pydicom.dcmread(...).pixel_array`` — parse and decode only;
* radlens:  ``models.preprocessing.preprocess(data, size=(224, 224))`` — parse, decode,
  modality LUT, VOI, inversion, gray, [0, 1], resize.

and prints files/s for both and the ratio of their times, baseline/radlens (1.0 = no
preprocessing overhead; above 1.0 happens when radlens decodes less, e.g. one frame of a
multi-frame file). Files/s are per CPU second of the pinned process, which a shared
machine's background load disturbs far less than elapsed time (also printed).
Calls alternate between the two so both see the same background load; each figure is a
median over repeats, and the ratio is the median of the per-pair ratios. The machine is
shared, so compare ratios, not absolute numbers, between runs.

Run:  .venv/bin/python bench/preprocess.py [--data-dir ../shared/data/dicom] [--repeat 15]

With ``--threads`` it measures something else, unpinned: for each file, the elapsed time per
file of ``--repeat`` calls in one thread against the same calls split over two threads, for
radlens and for the baseline. A decoder that holds Python's GIL gets no speed-up from the
second thread (about 1.0x on two cores); one that releases it gets up to 2x. This is what
lets the service's two inference streams decode at once while its event loop keeps running.

With ``--reduced`` it compares, pinned, in the same run and alternating call by call, the
current preprocessing (``PREPROCESSING_VERSION`` "2": JPEG 2000 and baseline JPEG decoded at a
reduced resolution for the model size) with version "1" (full decode, then the same resize),
on the files above, pydicom-data's chest CR RG1 in JPEG 2000 lossless and lossy and its head
CT 693_J2KR (a signed JPEG 2000 codestream); the ratio
is full / reduced CPU time. With ``--diff`` it prints, for every JPEG 2000 and JPEG Baseline
file at hand (../shared/data/dicom, pydicom-data, pydicom's own test files), the reduction
applied and the max / mean absolute difference between the two versions' outputs at
``--size`` and at 64.

With ``--before REF`` (a git commit, e.g. the one before a speed-up) it compares, pinned and
alternating call by call, ``preprocess`` as it was at REF with the working tree's, on the files
above, RG1 uncompressed (pydicom-data) and the CT1_JLSN slice re-encoded uncompressed with
the lung preset (the series benchmark's slice): CPU ms per file of each, the ratio before /
after, and whether the two outputs are equal (they must be, for a change that keeps
``PREPROCESSING_VERSION``). REF's ``models/preprocessing.py`` and ``models/codecs.py`` are read
with ``git show`` and imported as a separate package beside the current ones (its decoder
plugin registered with pydicom under another name), so both run in one process.
``--fresh N`` adds, for the uncompressed CT slice, N rounds of one new process per version
that preprocesses only that slice: the state of the C allocator depends on what a process
did before (a process that has seen a large radiograph keeps its freed memory mapped; one
that has only seen 512x512 slices gives it back and takes page faults on the next call, as
a service fed a CT series does), so each side is also measured in the state the series
benchmark's service is in. It prints CPU ms and minor page faults per call.

With ``--refusals`` it times, pinned and alternating call by call, the refusal of JPEG 2000
frames no decoder reads: pydicom-data's RG1 chest CR (lossless, lossy), its 693 head CT and
the TOSHIBA CT above, each with 8 bytes of text added before the EOC marker (OpenJPEG decodes
every tile, then fails). "all decoders" is the refusal as before QA round 85 (imagecodecs,
then pydicom's default pick: imagecodecs again, pylibjpeg-openjpeg, Pillow), obtained by
making ``codecs.j2k_bytes_after_tile_parts`` count nothing; "imagecodecs only" is the
current one. Both must raise the same error class.

With ``--uncompressed`` it times, pinned and round-robin call by call in the same run, a large
radiograph sent uncompressed (Explicit VR Little Endian, as the serving benchmark's
"uncompressed" encoding re-encodes it with pydicom's ``decompress()``) against the same image as
stored: pydicom-data's RG1 chest CR (1955x1841, 15-bit, MONOCHROME1) uncompressed, as JPEG 2000
lossless and lossy (both decoded at a reduced resolution for ``--size``), and the hip CR
RG2 (2140x1760, 10-bit) uncompressed, as JPEG Lossless and JPEG-LS (full decodes). The
baseline is pydicom's own ``dcmread(...).pixel_array`` of the uncompressed file (parse and
copy the pixels: no codec). It prints CPU ms of each and two ratios from the same rounds:
radlens uncompressed / pydicom's raw read, and radlens uncompressed / radlens on the stored
JPEG 2000 (or JPEG Lossless) file, and the minor page faults per call. ``--malloc-keep MIB``
(default 64) tunes glibc's malloc as the service does at start-up (``app.memory``,
``RADLENS_MALLOC_KEEP_MIB``): without it a process's page faults depend on the largest block
it happened to free before (glibc's dynamic mmap threshold), which moves the figures of every
call by milliseconds; ``--malloc-keep 0`` measures glibc's defaults. One process cannot hold
two versions of the same code and time them fairly against these, so a before/after
comparison is two runs of this mode (or ``--before REF``, which loads REF beside the working
tree).

With ``--colour-j2k`` it times, pinned and alternating call by call, colour JPEG 2000 frames
(pydicom-data's ultrasound, YBR_RCT and YBR_ICT, and deid-data's 1536x2048 colour photo
re-encoded as JPEG 2000 lossless and lossy) decoded in full, as versions "1"-"5" do, against
the reduced decode that ``models.preprocessing.COLOUR_J2K_REDUCED_VERSIONS`` turns on from
version "6" (QA rounds 89 and 108); it prints the CPU ratio full / reduced and the max / mean
difference of the outputs at ``--size`` and at 64, and the colour fraction each side reports.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# One thread per library, so the figures are single-core figures.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

FILES = {
    "RG2_JLSL.dcm": "hip CR 2140x1760, JPEG-LS lossless",
    "RG2_JPLL.dcm": "hip CR 2140x1760, JPEG Lossless SV1",
    "rsna_chest_cr_jpeg_baseline.dcm": "chest CR 1024x1024, JPEG Baseline",
    "CT1_JLSN.dcm": "CT 512x512, JPEG-LS near-lossless",
    "TOSHIBA_J2K_OpenJPEGv2Regression.dcm": "CT 512x512, JPEG 2000 lossless",
}


PYDICOM_DATA_FILES = {
    "RG1_J2KR.dcm": "chest CR 1955x1841, JPEG 2000 lossless",
    "RG1_J2KI.dcm": "chest CR 1955x1841, JPEG 2000 lossy",
    "693_J2KR.dcm": "head CT 512x512, signed JPEG 2000",
}


def pin_to_one_cpu(cpu: int | None) -> int:
    """Pin this process to one CPU (the first allowed one unless given); return it."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = cpu if cpu is not None else allowed[0]
    os.sched_setaffinity(0, {chosen})
    return chosen


def time_pair(
    baseline: Callable[[], object], candidate: Callable[[], object], repeat: int
) -> dict[str, float]:
    """Median CPU and wall seconds per call of each, and the median per-pair CPU ratio.

    CPU time (``time.process_time``) of the pinned process is the primary figure: on a
    shared machine it leaves out the time spent waiting for the core. Calls alternate
    (baseline, candidate, ...) after one warm-up each, so both see the same conditions.
    """
    baseline()
    candidate()
    samples: dict[str, list[float]] = {"base_cpu": [], "cand_cpu": [], "base_wall": []}
    samples.update({"cand_wall": [], "ratio": []})
    for _ in range(repeat):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        baseline()
        wall1, cpu1 = time.perf_counter(), time.process_time()
        candidate()
        wall2, cpu2 = time.perf_counter(), time.process_time()
        samples["base_cpu"].append(cpu1 - cpu0)
        samples["cand_cpu"].append(cpu2 - cpu1)
        samples["base_wall"].append(wall1 - wall0)
        samples["cand_wall"].append(wall2 - wall1)
        samples["ratio"].append((cpu1 - cpu0) / max(cpu2 - cpu1, 1e-9))
    return {key: statistics.median(values) for key, values in samples.items()}


def file_calls(data: bytes, size: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """The two calls compared on one file: pydicom's parse + decode, radlens's preprocess."""
    import pydicom

    from radlens.models.preprocessing import preprocess

    def baseline() -> object:
        return pydicom.dcmread(io.BytesIO(data)).pixel_array

    def radlens() -> object:
        return preprocess(data, size=(size, size))

    return baseline, radlens


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}; nproc {os.cpu_count()}; Python {platform.python_version()}; "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared/data/dicom")
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per figure")
    parser.add_argument("--size", type=int, default=224, help="output side in pixels")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to")
    parser.add_argument(
        "--threads", action="store_true", help="1 thread vs 2 threads, unpinned (see above)"
    )
    parser.add_argument(
        "--reduced", action="store_true", help="version 2 (reduced decode) vs 1 (full decode)"
    )
    parser.add_argument(
        "--diff", action="store_true", help="output differences, version 2 vs 1, every file"
    )
    parser.add_argument(
        "--before", metavar="REF", help="preprocess at git commit REF vs now (see above)"
    )
    parser.add_argument(
        "--fresh", type=int, default=0, metavar="N", help="with --before: N fresh-process rounds"
    )
    parser.add_argument(
        "--refusals", action="store_true", help="bad JPEG 2000 frames: refusal cost (see above)"
    )
    parser.add_argument(
        "--colour-j2k",
        action="store_true",
        help="colour JPEG 2000: full decode vs reduced decode (see above)",
    )
    parser.add_argument(
        "--uncompressed",
        action="store_true",
        help="large radiographs uncompressed vs stored vs pydicom's raw read (see above)",
    )
    parser.add_argument(
        "--malloc-keep",
        type=int,
        default=64,
        metavar="MIB",
        help="with --uncompressed: glibc malloc as the service tunes it (0 = glibc defaults)",
    )
    parser.add_argument("--side", choices=("before", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.uncompressed:
        return uncompressed(args)
    if args.colour_j2k:
        return colour_j2k(args)
    if args.refusals:
        return refusals(args)
    if args.before and args.side:
        return fresh_child(args)
    if args.before:
        return before_after(args)
    if args.threads:
        return threads(args)
    if args.diff:
        return diff(args)
    if args.reduced:
        return reduced(args)

    cpu = pin_to_one_cpu(args.cpu)

    import pydicom

    print(f"machine: {machine()}; pinned to CPU {cpu}")
    print(f"pydicom {pydicom.__version__}; output {args.size}x{args.size}; repeat {args.repeat}")
    header = (
        f"{'file':38} {'what':36} {'decode f/s':>10} {'radlens f/s':>11} {'ratio':>6} "
        f"{'radlens ms':>10} {'wall: decode f/s':>16} {'radlens f/s':>11}"
    )
    print("f/s = files per second of CPU time on the pinned core; wall = elapsed time")
    print(header)
    print("-" * len(header))
    missing = 0
    for name, what in FILES.items():
        path = args.data_dir / name
        if not path.exists():
            print(f"{name:38} missing: {path}")
            missing += 1
            continue
        baseline, radlens = file_calls(path.read_bytes(), args.size)
        t = time_pair(baseline, radlens, args.repeat)
        print(
            f"{name:38} {what:36} {1 / t['base_cpu']:10.1f} {1 / t['cand_cpu']:11.1f} "
            f"{t['ratio']:6.2f} {t['cand_cpu'] * 1000:10.1f} "
            f"{1 / t['base_wall']:16.1f} {1 / t['cand_wall']:11.1f}"
        )
    if missing:
        print(f"{missing} file(s) missing; see ../shared/data/README.md")
    return 1 if missing == len(FILES) else 0


def time_rounds(
    calls: dict[str, Callable[[], object]], repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """CPU seconds and minor page faults of each call per round, the calls run round-robin
    (one warm-up each), so every round sees every call under the same background load."""
    import resource

    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    faults: dict[str, list[int]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            cpu0 = time.process_time()
            call()
            samples[name].append(time.process_time() - cpu0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)
    return samples, faults


def per_round_ratio(top: list[float], bottom: list[float]) -> float:
    """The median of the per-round ratios ``top / bottom``."""
    return statistics.median(t / max(b, 1e-9) for t, b in zip(top, bottom, strict=True))


def decompressed(path: Path) -> bytes:
    """The file's pixels re-encoded Explicit VR Little Endian, as bench/serve.py's
    "uncompressed" encoding sends them (pydicom's ``decompress()``)."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.decompress()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def uncompressed(args: argparse.Namespace) -> int:
    """Large radiographs uncompressed: radlens vs pydicom's raw read vs the stored encodings."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file

    from bench._machine import cpu_model
    from radlens.app.memory import keep_freed_memory
    from radlens.models.preprocessing import preprocess

    kept = keep_freed_memory(args.malloc_keep)
    cpu = pin_to_one_cpu(args.cpu)
    print(f"machine: {machine()}; CPU model {cpu_model()!r}; pinned to CPU {cpu}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tuned = f"keeps up to {args.malloc_keep} MiB freed, as the service does"
    print(f"malloc: {tuned if kept else 'glibc defaults'}")
    print(
        f"output {args.size}x{args.size}; repeat {args.repeat}; CPU ms per call (median), "
        "calls round-robin; ratios = medians of the per-round ratios"
    )
    # (image, uncompressed source, stored encodings compared)
    images = [
        (
            "RG1 chest CR 1955x1841",
            "pydicom-data",
            "RG1_J2KR.dcm",
            ("RG1_J2KR.dcm", "RG1_J2KI.dcm"),
        ),
        ("RG2 hip CR 2140x1760", "shared", "RG2_JPLL.dcm", ("RG2_JPLL.dcm", "RG2_JLSL.dcm")),
    ]

    def locate(where: str, name: str) -> Path | None:
        if where == "shared":
            path = args.data_dir / name
            return path if path.exists() else None
        found = get_testdata_file(name)
        return Path(str(found)) if found else None

    size = (args.size, args.size)
    done = 0
    for image, where, source, stored in images:
        source_path = locate(where, source)
        if source_path is None:
            print(f"{image}: missing {source} ({where})")
            continue
        plain = decompressed(source_path)
        calls: dict[str, Callable[[], object]] = {
            "pydicom pixel_array, uncompressed": lambda plain=plain: (
                pydicom.dcmread(io.BytesIO(plain)).pixel_array
            ),
            "radlens, uncompressed": lambda plain=plain: preprocess(plain, size=size),
        }
        for name in stored:
            path = locate(where, name)
            if path is not None:
                data = path.read_bytes()
                calls[f"radlens, {name}"] = lambda data=data: preprocess(data, size=size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            samples, faults = time_rounds(calls, args.repeat)
        mine = samples["radlens, uncompressed"]
        print(f"\n{image} ({len(plain) / 2**20:.1f} MiB uncompressed)")
        for name, times in samples.items():
            row = (
                f"  {name:40} {statistics.median(times) * 1000:8.2f} ms "
                f"{statistics.median(faults[name]):7.0f} faults"
            )
            if name != "radlens, uncompressed":
                row += f"   radlens uncompressed / this: {per_round_ratio(mine, times):5.2f}"
            print(row)
        done += 1
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if done else 1


def refusals(args: argparse.Namespace) -> int:
    """Refusing a bad JPEG 2000 frame: every decoder (as before QA 85) vs imagecodecs only."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    from radlens.models import codecs
    from radlens.models.preprocessing import preprocess

    cpu = pin_to_one_cpu(args.cpu)
    print(f"machine: {machine()}; pinned to CPU {cpu}; load {os.getloadavg()[0]:.2f}")
    print(f"output {args.size}x{args.size}; repeat {args.repeat}; CPU and wall ms per refusal")
    header = (
        f"{'file':38} {'what':36} {'all cpu':>8} {'only cpu':>8} {'ratio':>6} "
        f"{'all wall':>8} {'only wall':>9}"
    )
    print(header)
    print("-" * len(header))
    counted = codecs.j2k_bytes_after_tile_parts
    done = 0
    for name, (path, what) in bench_files(args.data_dir).items():
        if not path.exists():
            print(f"{name:38} missing: {path}")
            continue
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID not in codecs.J2K_SYNTAXES:
            continue
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        eoc = frame.rindex(codecs.END_MARKER)
        ds.PixelData = encapsulate([frame[:eoc] + b"PADDING\x00" + frame[eoc:]])
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        data = out.getvalue()
        refused: dict[bool, str] = {}

        def call(every: bool, data: bytes = data, refused: dict[bool, str] = refused) -> None:
            codecs.j2k_bytes_after_tile_parts = (lambda _: 0) if every else counted
            try:
                preprocess(data, size=(args.size, args.size))
            except Exception as exc:  # the refusal timed here
                refused[every] = type(exc).__name__
            else:
                refused[every] = "decoded"
            finally:
                codecs.j2k_bytes_after_tile_parts = counted

        t = time_pair(lambda: call(True), lambda: call(False), args.repeat)
        same = "same error" if refused[True] == refused[False] else f"DIFFERENT {refused}"
        print(
            f"{name:38} {what:36} {t['base_cpu'] * 1000:8.0f} {t['cand_cpu'] * 1000:8.0f} "
            f"{t['ratio']:6.2f} {t['base_wall'] * 1000:8.0f} {t['cand_wall'] * 1000:9.0f} "
            f"{refused[False]}, {same}"
        )
        done += 1
    return 0 if done else 1


def bench_files(data_dir: Path) -> dict[str, tuple[Path, str]]:
    """The ../shared/data files above and pydicom-data's RG1 chest CR in JPEG 2000."""
    from pydicom.data import get_testdata_file

    files = {name: (data_dir / name, what) for name, what in FILES.items()}
    for name, what in PYDICOM_DATA_FILES.items():
        found = get_testdata_file(name)
        files[name] = (Path(str(found)) if found else Path(name), what)
    return files


def reduction_of(data: bytes, size: int, *, colour: bool = False) -> str:
    """How version 2 decodes the file at size x size: "1/f" or "full" (asked of the same
    function preprocess() uses, so files it leaves at full resolution say so)."""
    import warnings

    import pydicom

    from radlens.models.preprocessing import (
        _codestream_syntaxes,
        _frame_codestream,
        _reduced_decode,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        tsyntax = ds.file_meta.TransferSyntaxUID
        if tsyntax not in _codestream_syntaxes():
            return "full"
        frames = int(ds.get("NumberOfFrames") or 1)
        codestream = _frame_codestream(ds, tsyntax, frames // 2, frames)
        rows, columns = int(ds.Rows), int(ds.Columns)
        out = None
        if codestream is not None:
            out = _reduced_decode(
                codestream, ds, tsyntax, rows, columns, (size, size), colour=colour
            )
    return "full" if out is None else f"1/{round(rows / out[0].shape[0])}"


def reduced(args: argparse.Namespace) -> int:
    from radlens.models.preprocessing import preprocess

    cpu = pin_to_one_cpu(args.cpu)
    print(f"machine: {machine()}; pinned to CPU {cpu}")
    print(f"output {args.size}x{args.size}; repeat {args.repeat}; ratio = full / reduced CPU")
    header = (
        f"{'file':38} {'what':40} {'decode':>7} {'full ms':>8} {'reduced ms':>10} "
        f"{'ratio':>6} {'wall full':>9} {'reduced':>8}"
    )
    print(header)
    print("-" * len(header))
    size = (args.size, args.size)
    for name, (path, what) in bench_files(args.data_dir).items():
        if not path.exists():
            print(f"{name:38} missing: {path}")
            continue
        data = path.read_bytes()
        t = time_pair(
            lambda data=data: preprocess(data, size=size, version="1"),
            lambda data=data: preprocess(data, size=size, version="2"),
            args.repeat,
        )
        print(
            f"{name:38} {what:40} {reduction_of(data, args.size):>7} "
            f"{t['base_cpu'] * 1000:8.1f} {t['cand_cpu'] * 1000:10.1f} {t['ratio']:6.2f} "
            f"{t['base_wall'] * 1000:9.1f} {t['cand_wall'] * 1000:8.1f}"
        )
    return 0


def colour_j2k_files() -> dict[str, tuple[bytes, str]]:
    """Colour JPEG 2000 files: pydicom-data's real ultrasound (YBR_RCT and YBR_ICT, 480x640),
    and deid-data's 1536x2048 colour photo (JPEG Baseline) re-encoded as JPEG 2000 lossless
    (RCT) and lossy (ICT, 20:1) with 5 decomposition levels: real pixels at a hospital
    photo's size, as a colour secondary capture would hold them."""
    import copy
    import warnings

    import imagecodecs
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space
    from pydicom.uid import JPEG2000, JPEG2000Lossless

    files: dict[str, tuple[bytes, str]] = {}
    for name, what in (
        ("US1_J2KR.dcm", "ultrasound 480x640, YBR_RCT lossless"),
        ("US1_J2KI.dcm", "ultrasound 480x640, YBR_ICT lossy"),
        ("examples_jpeg2k.dcm", "ultrasound 480x640, YBR_RCT lossless"),
    ):
        found = get_testdata_file(name)
        if found:
            files[name] = (Path(str(found)).read_bytes(), what)
    try:
        import deid_data
    except ImportError:
        return files
    photo = Path(deid_data.__file__).parent / "data" / "dicom-cookies" / "image1.dcm"
    if not photo.exists():
        return files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = pydicom.dcmread(photo)
        rgb = convert_color_space(source.pixel_array, source.PhotometricInterpretation, "RGB")
    for lossless in (True, False):
        code = imagecodecs.jpeg2k_encode(
            rgb,
            level=0 if lossless else 20,
            codecformat="J2K",
            reversible=lossless,
            mct=True,
            numthreads=1,
        )
        ds = copy.deepcopy(source)
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless if lossless else JPEG2000
        ds.PhotometricInterpretation = "YBR_RCT" if lossless else "YBR_ICT"
        ds.PlanarConfiguration = 0
        ds.PixelData = encapsulate([code])
        ds["PixelData"].VR = "OB"
        out = io.BytesIO()
        ds.save_as(out)
        kind = "YBR_RCT lossless" if lossless else "YBR_ICT lossy 20:1"
        files[f"cookies image1 J2K {'R' if lossless else 'I'}"] = (
            out.getvalue(),
            f"colour photo 1536x2048, {kind}",
        )
    # the same photo through pydicom's own encoder (pylibjpeg-openjpeg; RGB, no component
    # transform), as a sender using pydicom's compress() would write it
    ds = copy.deepcopy(source)
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.compress(JPEG2000Lossless, rgb, encoding_plugin="pylibjpeg", use_mct=False)
    except Exception as exc:  # no pydicom J2K encoder here: the photo's other rows stand
        print(f"pydicom's JPEG 2000 encoder not available ({exc}); its row is left out")
        return files
    out = io.BytesIO()
    ds.save_as(out)
    files["cookies image1 pydicom J2K"] = (out.getvalue(), "colour photo 1536x2048, RGB lossless")
    return files


def colour_j2k(args: argparse.Namespace) -> int:
    """Colour JPEG 2000 at ``--size`` (and 64 for the differences): the full decode (the
    current version without its colour reduced decode: what versions before "6" do) against
    the reduced decode (``COLOUR_J2K_REDUCED_VERSIONS`` holding the current version),
    alternating call by call, pinned; CPU ratio full /
    reduced, and max / mean |reduced - full| of the outputs and their colour fractions."""
    import numpy as np

    from radlens.models import preprocessing as pp

    cpu = pin_to_one_cpu(args.cpu)
    print(f"machine: {machine()}; pinned to CPU {cpu}")
    print(f"output {args.size}x{args.size}; repeat {args.repeat}; ratio = full / reduced CPU")
    header = (
        f"{'file':28} {'what':38} {'decode':>6} {'full ms':>8} {'reduced ms':>10} "
        f"{'ratio':>6} {'max':>7} {'mean':>8} {'max@64':>7} {'mean@64':>8} {'colour full/red':>15}"
    )
    print(header)
    print("-" * len(header))
    # full: the current version with the colour reduced decode taken out (version "6" turned
    # it on; "5" decodes in full), against the current version with it
    shipped = pp.COLOUR_J2K_REDUCED_VERSIONS - {pp.PREPROCESSING_VERSION}
    reducing = shipped | {pp.PREPROCESSING_VERSION}
    original = pp.COLOUR_J2K_REDUCED_VERSIONS

    def run(data: bytes, size: tuple[int, int], reduce: bool) -> Any:
        pp.COLOUR_J2K_REDUCED_VERSIONS = reducing if reduce else shipped
        try:
            return pp.preprocess(data, size=size)
        finally:
            pp.COLOUR_J2K_REDUCED_VERSIONS = original

    for name, (data, what) in colour_j2k_files().items():
        size = (args.size, args.size)
        t = time_pair(
            lambda data=data, size=size: run(data, size, False),
            lambda data=data, size=size: run(data, size, True),
            args.repeat,
        )
        figures = []
        fractions = ""
        for side in (size, (64, 64)):
            full, red = run(data, side, False), run(data, side, True)
            difference = np.abs(red.pixels - full.pixels)
            figures.append(f"{difference.max():7.4f} {difference.mean():8.5f}")
            if side == size:
                fractions = (
                    f"{full.metadata.colour_fraction:.3f}/{red.metadata.colour_fraction:.3f}"
                )
        pp.COLOUR_J2K_REDUCED_VERSIONS = reducing
        try:
            decoded_at = reduction_of(data, args.size, colour=True)
        finally:
            pp.COLOUR_J2K_REDUCED_VERSIONS = original
        print(
            f"{name:28} {what:38} {decoded_at:>6} {t['base_cpu'] * 1000:8.1f} "
            f"{t['cand_cpu'] * 1000:10.1f} {t['ratio']:6.2f} {' '.join(figures)} {fractions:>15}"
        )
    return 0


def diff_files(data_dir: Path) -> list[Path]:
    """Every JPEG 2000 / JPEG Baseline DICOM in data_dir, pydicom-data and pydicom."""
    import warnings

    import pydicom
    from pydicom.data import DATA_ROOT, external_data_sources
    from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit

    roots = [data_dir, Path(DATA_ROOT) / "test_files"]
    roots += [Path(source.data_path) for source in external_data_sources().values()]
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.dcm")) if root.is_dir() else []:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # not DICOM or deliberately broken
                continue
            tsyntax = ds.file_meta.get("TransferSyntaxUID")
            if tsyntax in (JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit):
                found.append(path)
    return found


def diff(args: argparse.Namespace) -> int:
    import warnings

    import numpy as np

    from radlens.models.errors import PreprocessingError
    from radlens.models.preprocessing import preprocess

    print(f"machine: {machine()}")
    print("max / mean |version 2 - version 1| of the [0, 1] output, per output size")
    sizes = (args.size, 64)
    header = f"{'file':44} {'rows x cols':>11} " + " ".join(
        f"{f'{s}: decode':>12} {'max':>7} {'mean':>8}" for s in sizes
    )
    print(header)
    print("-" * len(header))
    warnings.simplefilter("ignore")  # odd-but-readable files among pydicom's
    for path in diff_files(args.data_dir):
        data = path.read_bytes()
        cells = []
        try:
            for side in sizes:
                old = preprocess(data, size=(side, side), version="1").pixels
                new = preprocess(data, size=(side, side), version="2").pixels
                delta = np.abs(new - old)
                cells.append(
                    f"{reduction_of(data, side):>12} {delta.max():7.4f} {delta.mean():8.5f}"
                )
            meta = preprocess(data, version="1").metadata
        except PreprocessingError as exc:
            print(f"{path.name:44} refused: {exc.code}")
            continue
        print(f"{path.name:44} {f'{meta.rows}x{meta.columns}':>11} " + " ".join(cells))
    return 0


def split_over_threads(fn: Callable[[], object], calls: int, threads: int) -> float:
    """Elapsed seconds per call when ``calls`` calls of ``fn`` are split over ``threads``."""
    import threading

    def work(n: int) -> None:
        for _ in range(n):
            fn()

    shares = [calls // threads + (i < calls % threads) for i in range(threads)]
    workers = [threading.Thread(target=work, args=(n,)) for n in shares]
    t0 = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - t0) / calls


def threads(args: argparse.Namespace) -> int:
    import pydicom

    print(f"machine: {machine()}; unpinned, {len(os.sched_getaffinity(0))} CPUs allowed")
    print(f"pydicom {pydicom.__version__}; output {args.size}x{args.size}; {args.repeat} calls")
    print("ms/file = elapsed time per file; speed-up = 1 thread / 2 threads (2.0 = no GIL held)")
    header = (
        f"{'file':38} {'decode 1 thr':>12} {'2 thr':>7} {'speed-up':>8} "
        f"{'radlens 1 thr':>13} {'2 thr':>7} {'speed-up':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in FILES:
        path = args.data_dir / name
        if not path.exists():
            print(f"{name:38} missing: {path}")
            continue
        baseline, radlens = file_calls(path.read_bytes(), args.size)
        row = []
        for fn in (baseline, radlens):
            fn()
            # interleaved: one, two, one, two; the median of each
            ones, twos = [], []
            for _ in range(3):
                ones.append(split_over_threads(fn, args.repeat, 1))
                twos.append(split_over_threads(fn, args.repeat, 2))
            one, two = statistics.median(ones), statistics.median(twos)
            row += [one * 1000, two * 1000, one / two]
        print(
            f"{name:38} {row[0]:12.1f} {row[1]:7.1f} {row[2]:8.2f} "
            f"{row[3]:13.1f} {row[4]:7.1f} {row[5]:8.2f}"
        )
    return 0


def load_before(ref: str) -> Any:
    """``models.preprocessing`` as of git commit ``ref``, as a module beside the current one.

    Its ``models/preprocessing.py`` and ``models/codecs.py`` go into a temporary package
    ``_before_<ref>.models`` (their ``radlens.models.codecs`` imports pointed there, the errors
    module shared); the old codecs plugin registers with pydicom as ``imagecodecs-before``, so
    each version decodes with its own plugin.
    """
    import importlib
    import subprocess
    import tempfile

    package = f"_before_{ref.replace('/', '_').replace('-', '_').replace('~', '_')}"
    root = Path(tempfile.mkdtemp(prefix="radlens-before-"))
    (root / package / "models").mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / package / "models" / "__init__.py").write_text("")
    for name in ("preprocessing.py", "codecs.py"):
        text = subprocess.run(
            ["git", "show", f"{ref}:models/{name}"],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        text = text.replace("radlens.models.codecs", f"{package}.models.codecs")
        text = text.replace(
            "from radlens.models import codecs", f"from {package}.models import codecs"
        )
        text = text.replace('PLUGIN = "imagecodecs"', 'PLUGIN = "imagecodecs-before"')
        (root / package / "models" / name).write_text(text)
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{package}.models.preprocessing")


def uncompressed_ct(data_dir: Path) -> bytes | None:
    """CT1_JLSN's slice re-encoded Explicit VR Little Endian (the series benchmark's slice)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    path = data_dir / "CT1_JLSN.dcm"
    if not path.exists():
        return None
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.pixel_array.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def before_after(args: argparse.Namespace) -> int:
    import numpy as np
    from pydicom.data import get_testdata_file

    from bench._machine import cpu_model
    from radlens.models import preprocessing as now

    old = load_before(args.before)
    cpu = pin_to_one_cpu(args.cpu)
    print(f"machine: {machine()}; CPU model {cpu_model()!r}; pinned to CPU {cpu}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"before = {args.before} ({old.__file__}), after = the working tree; output "
        f"{args.size}x{args.size}; repeat {args.repeat}; ratio = before / after CPU time"
    )
    cases: list[tuple[str, str, bytes, str | None]] = []
    for name, (path, what) in bench_files(args.data_dir).items():
        if path.exists():
            cases.append((name, what, path.read_bytes(), None))
        else:
            print(f"{name:38} missing: {path}")
    found = get_testdata_file("RG1_UNCR.dcm")
    if found:
        what = "chest CR 1955x1841, uncompressed"
        cases.append(("RG1_UNCR.dcm", what, Path(str(found)).read_bytes(), None))
    ct = uncompressed_ct(args.data_dir)
    if ct is not None:
        cases.append(("CT1_JLSN, uncompressed", "CT 512x512, lung preset", ct, "lung"))
    header = (
        f"{'file':38} {'what':40} {'before ms':>9} {'after ms':>8} {'ratio':>6} "
        f"{'wall before':>11} {'after':>7} {'equal':>5}"
    )
    print(header)
    print("-" * len(header))
    size = (args.size, args.size)
    for name, what, data, window in cases:
        a = old.preprocess(data, size=size, window=window).pixels
        b = now.preprocess(data, size=size, window=window).pixels
        equal = a.dtype == b.dtype and np.array_equal(a, b)
        t = time_pair(
            lambda data=data, window=window: old.preprocess(data, size=size, window=window),
            lambda data=data, window=window: now.preprocess(data, size=size, window=window),
            args.repeat,
        )
        print(
            f"{name:38} {what:40} {t['base_cpu'] * 1000:9.2f} {t['cand_cpu'] * 1000:8.2f} "
            f"{t['ratio']:6.3f} {t['base_wall'] * 1000:11.1f} {t['cand_wall'] * 1000:7.1f} "
            f"{'yes' if equal else 'NO':>5}"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.fresh:
        fresh_rounds(args)
    return 0


def fresh_child(args: argparse.Namespace) -> int:
    """One side, in this new process, on the uncompressed CT slice only: CPU ms and minor
    page faults per call, as one ``RESULT`` line for :func:`fresh_rounds`."""
    import resource

    if args.side == "before":
        preprocess = load_before(args.before).preprocess
    else:
        from radlens.models.preprocessing import preprocess
    pin_to_one_cpu(args.cpu)
    data = uncompressed_ct(args.data_dir)
    if data is None:
        print("RESULT missing")
        return 1
    size = (args.size, args.size)
    for _ in range(3):
        preprocess(data, size=size, window="lung")
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu0 = time.process_time()
    for _ in range(args.repeat):
        preprocess(data, size=size, window="lung")
    cpu = (time.process_time() - cpu0) / args.repeat
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.repeat
    print(f"RESULT {cpu * 1000:.3f} {faults:.1f}")
    return 0


def fresh_rounds(args: argparse.Namespace) -> None:
    import subprocess

    print(
        f"\nCT1_JLSN uncompressed, lung preset, one fresh process per side and round "
        f"({args.fresh} rounds, {args.repeat} calls each, the order alternating):"
    )
    results: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    for round_ in range(args.fresh):
        sides = ("before", "after") if round_ % 2 == 0 else ("after", "before")
        for side in sides:
            command = [sys.executable, str(Path(__file__).resolve()), "--before", args.before]
            command += ["--side", side, "--repeat", str(args.repeat), "--size", str(args.size)]
            command += ["--data-dir", str(args.data_dir)]
            if args.cpu is not None:
                command += ["--cpu", str(args.cpu)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            line = next(x for x in out.splitlines() if x.startswith("RESULT"))
            cpu_ms, faults = (float(x) for x in line.split()[1:3])
            results[side].append((cpu_ms, faults))
            print(f"  round {round_ + 1} {side:6}: {cpu_ms:6.2f} CPU ms/call, {faults:7.1f} faults")
    before = statistics.median(cpu for cpu, _ in results["before"])
    after = statistics.median(cpu for cpu, _ in results["after"])
    print(
        f"  median: before {before:.2f} CPU ms, after {after:.2f} CPU ms, "
        f"ratio {before / after:.3f}; faults/call before "
        f"{statistics.median(f for _, f in results['before']):.0f}, after "
        f"{statistics.median(f for _, f in results['after']):.0f}"
    )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())

"""Two radlens services side by side, settings A against settings B, phases interleaved.

Not a test. Round 8 of docs/benchmarks/serve.md measured RADLENS_MALLOC_KEEP_MIB with it:

    .venv/bin/python -m bench.serve_ab --workload j2k --rounds 4
    .venv/bin/python -m bench.serve_ab --workload ct --rounds 4
    .venv/bin/python -m bench.serve_ab --resnet --a RADLENS_LATENCY_MODEL=off \\
        --b RADLENS_LATENCY_MODEL=auto          # ResNet50 224 px, OpenVINO as bench.serve

Both services start at once (same store, same database) with the environment variables of
``--a`` and ``--b``; each round runs a 16-client phase then a 1-client phase on A, then on B
(the order alternates by round), so the other users' load hits both alike. Per phase: the
service's CPU per request (/proc/<pid>/stat) and its minor page faults per request; at the
end VmRSS/VmHWM and the medians with the B/A ratios. The model is bench.serve's 32 px probe
(its CPU per request is the service's own work) unless ``--resnet``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import serve as b


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def start_with(env: str, tmp: Path, store: Path, ref: str, url: str, args: Any) -> tuple[Any, str]:
    """bench.serve.start_service with ``env`` ("NAME=value,NAME=value") added."""
    saved = dict(os.environ)
    try:
        for pair in filter(None, env.split(",")):
            name, _, value = pair.partition("=")
            os.environ[name] = value
        port = b.free_port()
        return b.start_service(tmp, store, ref, port, url, args), f"http://127.0.0.1:{port}"
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="j2k", choices=tuple(b.WORKLOADS))
    parser.add_argument("--encoding", default="stored", choices=b.ENCODINGS)
    parser.add_argument("--requests", type=int, default=192, help="per 16-client phase")
    parser.add_argument("--single", type=int, default=40, help="per 1-client phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resnet", action="store_true", help="ResNet50 + OpenVINO, not the probe")
    parser.add_argument("--a", default="RADLENS_MALLOC_KEEP_MIB=0")
    parser.add_argument("--b", default="RADLENS_MALLOC_KEEP_MIB=64")
    a = parser.parse_args(argv)
    args = argparse.Namespace(
        max_batch_size=8, max_batch_wait_ms=50.0, inference_streams=2, http="auto", loop="auto"
    )
    print(f"bench.serve_ab {' '.join(sys.argv[1:])}; machine: {b.cpu_model()}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)  # fmt: skip
    files, missing = b.workload_files(a.workload)
    if missing:
        print(f"bench/serve_ab.py: --workload {a.workload} needs {', '.join(missing)}",
              file=sys.stderr)  # fmt: skip
        return 2
    results: dict[str, list[tuple[float, ...]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="radlens-bench-ab-") as name:
        tmp = Path(name)
        store = tmp / "store"
        if a.resnet:
            ref = b.save_model(store)
            b.attach_openvino(store, ref)
        else:
            ref = b.save_tiny_model(store)
        per_round = a.requests + a.single + 3
        with b.database("sqlite", tmp) as url:
            services = {}
            for label, env in (("A", a.a), ("B", a.b)):
                (tmp / label).mkdir()
                services[label] = start_with(env, tmp / label, store, ref, url, args)
            try:
                for proc, base in services.values():
                    asyncio.run(b.wait_ready(base, proc, 600))
                b.HEADERS.update(b.api_key_headers(url))
                count = 80 + a.rounds * per_round
                uploads = {L: b.make_uploads(b.load_sources(a.encoding, files), count)
                           for L in services}  # fmt: skip
                for label, (proc, base) in services.items():
                    asyncio.run(b.run_phase(base, "warm", 16, uploads[label][:80], 0, proc.pid))
                start = 80
                for r in range(a.rounds):
                    for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
                        proc, base = services[label]
                        ups = uploads[label]
                        f0 = minor_faults(proc.pid)
                        chunk = ups[start : start + a.requests]
                        crowd = asyncio.run(b.run_phase(base, "16", 16, chunk, 0, proc.pid))
                        faults = (minor_faults(proc.pid) - f0) / a.requests
                        one = asyncio.run(b.run_phase(
                            base, "1", 1, ups[start + a.requests : start + per_round], 3,
                            proc.pid))  # fmt: skip
                        errors = len(crowd.errors) + len(one.errors)
                        row = (crowd.cpu_ms_per_img, crowd.throughput, faults,
                               one.cpu_ms_per_img, b.pct(one.latencies_ms, 50),
                               b.pct(one.inference_ms, 50), errors)  # fmt: skip
                        results[label].append(row)
                        print(
                            f"round {r + 1} {label}: 16 clients {row[0]:.2f} CPU ms/request, "
                            f"{row[1]:.2f} req/s, {row[2]:.0f} page faults/request; 1 client "
                            f"{row[3]:.2f} CPU ms/request, p50 {row[4]:.1f} ms (model p50 "
                            f"{row[5]:.1f} ms); errors {errors}; load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
                    start += per_round
                for label, (proc, _) in services.items():
                    mem = b.proc_memory(proc.pid)
                    rss, hwm = mem["VmRSS"] / 2**30, mem["VmHWM"] / 2**30
                    print(f"{label} ({a.a if label == 'A' else a.b}): VmRSS {rss:.2f} GiB, "
                          f"VmHWM {hwm:.2f} GiB")  # fmt: skip
            finally:
                for proc, _ in services.values():
                    b.stop_service(proc)

    def med(label: str, i: int) -> float:
        return statistics.median(row[i] for row in results[label])

    for label in ("A", "B"):
        print(
            f"median {label}: 16 clients {med(label, 0):.2f} CPU ms/request, {med(label, 1):.2f} "
            f"req/s, {med(label, 2):.0f} faults/request; 1 client {med(label, 3):.2f} CPU "
            f"ms/request, p50 {med(label, 4):.1f} ms, model p50 {med(label, 5):.1f} ms"
        )
    print(
        f"B/A: CPU per request {med('B', 0) / med('A', 0):.3f} (16 clients), "
        f"{med('B', 3) / med('A', 3):.3f} (1 client); throughput {med('B', 1) / med('A', 1):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the display-resolution Grad-CAM overlay adds to an explained upload: the second
preprocessing of the upload at display size, and drawing two panels instead of one, against
the model-size preprocessing and the single-panel overlay measured in the same run.

Real files from ../shared/data/dicom (skipped when absent). Nothing is asserted; the figures
go to docs/benchmarks/monitoring.md. Run: ``python -m bench.overlay [--size 64]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.serve import cpu_model

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom"
FILES = ("rsna_chest_cr_jpeg_baseline.dcm", "RG2_JLSL.dcm", "CT1_JLSN.dcm")


def _seconds(fn: Callable[[], Any], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="model input side (pixels)")
    args = parser.parse_args()

    from radlens.models.overlay import display_size, render_overlay
    from radlens.models.preprocessing import preprocess

    print(f"CPU: {cpu_model()}")
    size = (args.size, args.size)
    for name in FILES:
        path = DATA / name
        if not path.is_file():
            print(f"{name}: absent, skipped")
            continue
        data = path.read_bytes()
        model = preprocess(data, size=size)
        meta = model.metadata
        shown = display_size(meta.rows, meta.columns)
        heatmap = np.random.default_rng(0).random(size, dtype=np.float32)
        t_model = _seconds(lambda d=data: preprocess(d, size=size))
        t_display = _seconds(lambda d=data, s=shown: preprocess(d, size=s))
        display = preprocess(data, size=shown).pixels
        t_single = _seconds(lambda m=model, h=heatmap: render_overlay(m.pixels, h))
        t_pair = _seconds(
            lambda m=model, d=display, h=heatmap: render_overlay(m.pixels, h, display=d)
        )
        print(
            f"{name} {meta.columns}x{meta.rows} -> display {shown[1]}x{shown[0]}: preprocess "
            f"{t_display * 1e3:.0f} ms at display size vs {t_model * 1e3:.0f} ms at "
            f"{args.size} px ({t_display / t_model:.1f}x); overlay {t_pair * 1e3:.0f} ms two "
            f"panels vs {t_single * 1e3:.0f} ms one ({t_pair / t_single:.1f}x)"
        )


if __name__ == "__main__":
    main()

"""What drift monitoring costs: per upload on the service's upload path, and per /metrics
scrape, against baselines measured in the same run.

- per upload: ``ServiceMetrics.observe_upload`` (score histograms, input counts with the
  manufacturer mapped to its vendor label) plus the input statistics ``Ingestor.prepare``
  stores with each prediction (``models.drift.input_features``: the model input's mean and
  standard deviation), against ``observe_prediction`` (the one Counter increment every stored
  prediction already paid);
- per scrape: ``generate_latest`` of the registry with a full drift window of N predictions
  (PSI and KS of every feature, computed at scrape time):
  * before (one process's window, as radlens kept it until the window moved to the
    database): the same statistics over arrays already in memory;
  * after: the window read from the database (app.drift.DriftMonitor: one indexed query of
    the model's last N rows, SQLite file and PostgreSQL), with the summary cache off
    (RADLENS_DRIFT_CACHE_S=0: every scrape queries) and on (a scrape inside the cache
    interval);
  against the same registry with no drift monitor.
  The table holds the window's rows plus as many rows of another model, so the query has to
  pick the model's rows.

Nothing is asserted: the figures (wall time, and this process's CPU time: PostgreSQL's own
work is in its server process) are printed with the CPU model and the load average, for
docs/benchmarks/monitoring.md. Run: ``python -m bench.drift [--size 64] [--windows 500 5000]
[--postgres URL | --no-postgres]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.serve import cpu_model

CLASSES = ["normal", "abnormal"]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"


def _per_call(fn: Callable[[], Any], *, calls: int, repeats: int = 5) -> tuple[float, float]:
    """Median over ``repeats`` of the mean (wall, CPU) seconds per call over ``calls`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        walls.append((time.perf_counter() - wall) / calls)
        cpus.append((time.process_time() - cpu) / calls)
    return statistics.median(walls), statistics.median(cpus)


def _image(size: int, rng: np.random.Generator) -> Any:
    meta = SimpleNamespace(
        format="dicom",
        modality="CR",
        body_part="CHEST",
        photometric_interpretation="MONOCHROME2",
        rows=2048,
        columns=2048,
        manufacturer="FUJI PHOTO FILM CO. LTD.",
    )
    return SimpleNamespace(pixels=rng.random((size, size), dtype=np.float32), metadata=meta)


def _manifest(size: int, rng: np.random.Generator) -> Any:
    from radlens.models.drift import build_reference

    p = rng.beta(2, 5, 500)
    reference = build_reference(
        np.stack([1 - p, p], 1), rng.random((500, size, size)), CLASSES, 0.5
    )
    return SimpleNamespace(
        ref="bench:1",
        name="bench",
        version=1,
        class_names=CLASSES,
        metrics={"drift_reference": reference},
        multi_label=False,  # what app/drift.py reads of a manifest besides the reference
        finding_thresholds={},
    )


class _InMemoryWindow:
    """Before: the window one process kept (arrays in memory), summarised at each scrape."""

    def __init__(self, manifest: Any, window: int, rng: np.random.Generator) -> None:
        from radlens.app.drift import reference_of

        p = rng.beta(2, 5, window)
        self.model, self.window = manifest.ref, window
        self.reference = reference_of(manifest)
        self.scores = np.stack([1 - p, p], 1)
        self.features = [
            {"mean_intensity": float(m), "std_intensity": float(s)}
            for m, s in zip(rng.random(window), rng.random(window) * 0.5, strict=True)
        ]
        self.labels = ["abnormal" if v >= 0.5 else "normal" for v in p]

    def summary(self) -> dict[str, Any]:
        from radlens.app.drift import summarise

        out = summarise(self.reference, CLASSES, self.scores, self.features, self.labels)
        return {"model": self.model, "window": self.window, **out}


@contextmanager
def _database(backend: str, admin: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'drift-{uuid.uuid4().hex[:8]}.db'}"
        return
    import psycopg

    name = f"radlens_bench_drift_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.format(database=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fill(sessions: Any, window: int, rng: np.random.Generator) -> None:
    """The window's rows of model bench:1 and as many of another model, interleaved."""
    from radlens.app.tables import Prediction

    def row(model: str, i: int) -> Prediction:
        p = float(rng.beta(2, 5))
        return Prediction(
            id=uuid.uuid4(),
            model_name=model,
            model_version=1,
            preprocessing_version="3",
            device="/CPU:0",
            label="abnormal" if p >= 0.5 else "normal",
            scores={"normal": 1 - p, "abnormal": p},
            threshold=0.5,
            inference_ms=1.0,
            batch_size=1,
            dedupe_key=f"sha256:{model}-{i}",
            input_sha256="0" * 64,
            input_format="dicom",
            rows=2048,
            columns=2048,
            frames=1,
            input_mean_intensity=float(rng.random()),
            input_std_intensity=float(rng.random() * 0.5),
        )

    with sessions() as session:
        for i in range(window):
            session.add(row("bench", i))
            session.add(row("other", i))
        session.commit()


def _scrape(metrics: Any, monitor: Any) -> tuple[float, float]:
    from prometheus_client import generate_latest

    metrics.drift = monitor
    return _per_call(lambda: generate_latest(metrics.registry), calls=20)


def _ms(pair: tuple[float, float]) -> str:
    return f"{pair[0] * 1e3:.2f} ms ({pair[1] * 1e3:.2f} ms CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="model input side (pixels)")
    parser.add_argument("--windows", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--postgres", default=PG_ADMIN, help="an admin URL (psycopg)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    manifest = _manifest(args.size, rng)
    print(f"CPU: {cpu_model()}")
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    print(f"model input {args.size}x{args.size}, 2 classes")
    _per_upload(args.size, rng)
    backends = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
    with tempfile.TemporaryDirectory() as tmp:
        for window in args.windows:
            _per_scrape(manifest, window, backends, args.postgres, Path(tmp), rng)
    print(f"load average: {Path('/proc/loadavg').read_text().strip()}")


def _per_upload(size: int, rng: np.random.Generator) -> None:
    from radlens.app.metrics import ServiceMetrics
    from radlens.models.drift import input_features

    scores = {"normal": 0.3, "abnormal": 0.7}
    metrics = ServiceMetrics()
    image = _image(size, rng)
    baseline = _per_call(lambda: metrics.observe_prediction("bench:1", "abnormal"), calls=20000)
    upload = _per_call(
        lambda: metrics.observe_upload("bench:1", scores, image, "abnormal"), calls=5000
    )
    features = _per_call(lambda: input_features(image.pixels), calls=5000)
    print(
        f"per upload: observe_upload {upload[0] * 1e6:.1f} us ({upload[1] * 1e6:.1f} us CPU) + "
        f"input statistics {features[0] * 1e6:.1f} us ({features[1] * 1e6:.1f} us CPU) vs "
        f"{baseline[0] * 1e6:.2f} us ({baseline[1] * 1e6:.2f} us CPU; a Counter increment), "
        f"ratio {(upload[1] + features[1]) / baseline[1]:.0f}x in CPU time"
    )


def _per_scrape(
    manifest: Any,
    window: int,
    backends: list[str],
    admin: str,
    tmp: Path,
    rng: np.random.Generator,
) -> None:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.drift import DriftMonitor
    from radlens.app.metrics import ServiceMetrics
    from radlens.app.migrate import upgrade

    metrics = ServiceMetrics()
    none = _scrape(metrics, None)
    before = _scrape(metrics, _InMemoryWindow(manifest, window, rng))
    print(f"window {window}: per scrape without drift {_ms(none)}")
    print(f"  before (in-process window): {_ms(before)}, ratio {before[0] / none[0]:.1f}x")
    for backend in backends:
        with _database(backend, admin, tmp) as url:
            upgrade(url)
            engine = make_engine(url)
            try:
                _fill(make_sessionmaker(engine), window, rng)
                sessions = make_sessionmaker(engine, read_only=True)
                uncached = _scrape(metrics, DriftMonitor(manifest, window, sessions))
                cached_monitor = DriftMonitor(manifest, window, sessions, cache_seconds=3600)
                cached_monitor.summary()  # the interval's one query
                cached = _scrape(metrics, cached_monitor)
                assert cached_monitor.summary()["n"] == window
            finally:
                engine.dispose()
        print(
            f"  after, {backend}: every scrape queries {_ms(uncached)}, ratio "
            f"{uncached[0] / none[0]:.1f}x (vs before {uncached[0] / before[0]:.1f}x); "
            f"within the cache interval {_ms(cached)}, ratio {cached[0] / none[0]:.1f}x"
        )


if __name__ == "__main__":
    main()

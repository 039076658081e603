"""Runtime benchmark (issue 15): TensorFlow fp32 vs OpenVINO fp32 vs OpenVINO bf16, one run.

Not a test. Run from the repository root (figures: docs/benchmarks/serve.md, "Runtimes"):

    .venv/bin/python -m bench.runtime              # ~3-5 min on 2 cores
    .venv/bin/python -m bench.runtime --quick      # smoke run: fewer rounds, 1 epoch
    .venv/bin/python -m bench.runtime --memory-only  # step 3 alone (~1-2 min), RSS by stage

What it does, in this order, on this machine:
1. prints the CPU (OpenVINO FULL_DEVICE_NAME), whether OpenVINO's CPU device lists BF16 in
   OPTIMIZATION_CAPABILITIES, and the library versions;
2. THROUGHPUT: ResNet50 at 224x224x1 (weights=None, 2 classes) saved to a temporary store
   through models.registry and converted with models.runtime.add_openvino_runtime (the code
   `radlens models convert` runs); then TensorFlow fp32 (a tf.function over model(x), as
   app.predictor runs it), OpenVINO fp32 and OpenVINO bf16 at batch 1 and the larger batch
   sizes, interleaved round by round (the CPU is shared: every round runs every
   configuration), images/s per configuration as the median over rounds, and the ratios
   against TensorFlow fp32 measured in the same rounds;
3. MEMORY: a subprocess starts the real app (create_app, SQLite) on the converted 224 px
   model with RADLENS_RUNTIME=openvino, posts one image with ?explain=true (Grad-CAM on the
   Keras model), then compiles the bf16 model too, and reports VmRSS / VmHWM: TensorFlow and
   both OpenVINO precisions loaded in one serving process;
4. PARITY on real images: a trained model is needed (parity of an untrained model is
   meaningless: its scores all sit near 0.5), so the bench trains ResNet50 from scratch at
   32 px on the PneumoniaMNIST train split (../shared/data, 4708 images, a few epochs,
   seed 0), chooses the threshold on val (Youden's J, as training does), saves it, and
   converts it with parity measured on the 524 val images: AUC difference, largest score
   difference, labels that flip at the threshold, for fp32 and (where supported) bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
PNEUMONIA = (
    REPO_ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_28_trainval.npz"
)


def machine() -> dict[str, object]:
    import openvino as ov
    import tensorflow as tf

    from radlens.models.runtime import bf16_supported, cpu_name

    core = ov.Core()
    return {
        "cpu": cpu_name(core),
        "cores": os.cpu_count(),
        "bf16_supported": bf16_supported(core),
        "optimization_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "openvino": ov.__version__.split("-")[0],
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }


def save_model(store: Path, model, name: str, threshold: float, metrics: dict) -> str:
    from radlens.models.registry import ModelRegistry

    manifest = ModelRegistry(store).save(
        model,
        name=name,
        architecture="resnet50",
        class_names=["normal", "pneumonia"],
        threshold=threshold,
        window=None,
        filters=[],
        metrics=metrics,
        training_config={"bench": "bench/runtime.py"},
        data_fingerprint=None,
    )
    return manifest.ref


def _measure(run, batch: np.ndarray, seconds: float, threads: int) -> tuple[float, float]:
    """(images/s wall, CPU ms per image) for ``threads`` callers each calling ``run`` in turn
    for ``seconds``; CPU time is the whole process's (every thread, OpenVINO's included)."""
    import threading

    counts = [0] * threads

    def loop(k: int, deadline: float) -> None:
        while True:
            run(batch)
            counts[k] += 1
            if time.perf_counter() >= deadline and counts[k] >= 2:
                return

    t0, c0 = time.perf_counter(), time.process_time()
    workers = [threading.Thread(target=loop, args=(k, t0 + seconds)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    images = sum(counts) * len(batch)
    return images / wall, cpu * 1000.0 / images


def throughput(store: Path, ref: str, batches: list[int], rounds: int, seconds: float) -> dict:
    """images/s and CPU ms per image per (engine, batch): medians over interleaved rounds,
    and the per-round ratios against TensorFlow fp32 (1 stream) measured in the same round."""
    import tensorflow as tf

    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import OpenVINORuntime, bf16_supported

    registry = ModelRegistry(store)
    loaded = registry.load(ref)
    model = loaded.model
    files = registry.runtime_files(loaded.manifest, "openvino")
    xml = next(p for p in files.values() if p.suffix == ".xml")
    shape = tuple(loaded.manifest.input_shape)

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32)])
    def serve(x):
        return model(x, training=False)

    def tf_run(b):
        return np.asarray(serve(tf.constant(b)))

    # name -> (callable, concurrent callers): 1 stream = one call at a time using every core;
    # 2 streams = two calls at once, as the service runs by default (RADLENS_INFERENCE_STREAMS)
    engines = {
        "tensorflow-fp32": (tf_run, 1),
        "tensorflow-fp32-2streams": (tf_run, 2),
        "openvino-fp32": (OpenVINORuntime(xml, "fp32", shape).predict, 1),
    }
    if bf16_supported():
        engines["openvino-bf16"] = (OpenVINORuntime(xml, "bf16", shape).predict, 1)
        engines["openvino-bf16-2streams"] = (
            OpenVINORuntime(xml, "bf16", shape, streams=2).predict,
            2,
        )
    engines["openvino-fp32-2streams"] = (
        OpenVINORuntime(xml, "fp32", shape, streams=2).predict,
        2,
    )
    rng = np.random.default_rng(0)
    inputs = {n: rng.random((n, *shape), dtype=np.float32) for n in batches}
    for run, _ in engines.values():  # warm-up: compile, trace, first allocations
        for n in batches:
            run(inputs[n])
    rate: dict[str, dict[int, list[float]]] = {e: {n: [] for n in batches} for e in engines}
    cpu: dict[str, dict[int, list[float]]] = {e: {n: [] for n in batches} for e in engines}
    for r in range(rounds):
        for n in batches:
            for name, (run, callers) in engines.items():
                images_s, cpu_ms = _measure(run, inputs[n], seconds, callers)
                rate[name][n].append(images_s)
                cpu[name][n].append(cpu_ms)
        print(f"  round {r + 1}/{rounds} done", flush=True)
    base = "tensorflow-fp32"
    result: dict = {
        "images_per_s": {},
        "cpu_ms_per_image": {},
        "ratio_vs_tensorflow_fp32": {},
        "cpu_ratio_vs_tensorflow_fp32": {},
    }
    for name in engines:
        result["images_per_s"][name] = {n: statistics.median(v) for n, v in rate[name].items()}
        result["cpu_ms_per_image"][name] = {n: statistics.median(v) for n, v in cpu[name].items()}
        result["ratio_vs_tensorflow_fp32"][name] = {
            n: statistics.median(a / b for a, b in zip(rate[name][n], rate[base][n], strict=True))
            for n in batches
        }
        # CPU efficiency: TensorFlow's CPU ms per image over this engine's (higher = better)
        result["cpu_ratio_vs_tensorflow_fp32"][name] = {
            n: statistics.median(b / a for a, b in zip(cpu[name][n], cpu[base][n], strict=True))
            for n in batches
        }
    return result


MEMORY_CHILD = textwrap.dedent(
    """
    import io, json, sys
    import numpy as np
    from PIL import Image
    from fastapi.testclient import TestClient
    from radlens.app.main import create_app
    from radlens.app.settings import Settings
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import OpenVINORuntime, bf16_supported

    store, db = sys.argv[1], sys.argv[2]
    settings = Settings(database_url=db, model_store=store, device="cpu", auth="disabled",
                        runtime="openvino", precision="fp32")
    png = io.BytesIO()
    pixels = (np.random.default_rng(0).random((256, 256)) * 255).astype("uint8")
    Image.fromarray(pixels).save(png, "PNG")
    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    stages = {}
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        stages["ready"] = rss_kib()  # model loaded and warmed up
        r = client.post("/v1/predictions", params={"explain": "true"},
                        files={"file": ("a.png", png.getvalue(), "image/png")})
        assert r.status_code == 201, r.text
        stages["explained"] = rss_kib()
        registry = ModelRegistry(store)
        manifest = registry.read_manifest(*registry.resolve(None))
        xml = next(p for p in registry.runtime_files(manifest, "openvino").values()
                   if p.suffix == ".xml")
        extra = None
        if bf16_supported():
            extra = OpenVINORuntime(xml, "bf16", tuple(manifest.input_shape))
            extra.predict(np.zeros((8, *manifest.input_shape), np.float32))
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        print(json.dumps({"runtime": ready["runtime"], "precision": ready["precision"],
                          "bf16_also_loaded": extra is not None, "stages_kib": stages,
                          "vm_rss_kib": int(status["VmRSS"].split()[0]),
                          "vm_hwm_kib": int(status["VmHWM"].split()[0])}), flush=True)
    """
)


def memory(store: Path, tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env = {k: v for k, v in env.items() if not k.startswith("RADLENS_")}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(store), f"sqlite:///{tmp / 'mem.db'}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    lines = out.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"memory child failed (exit {out.returncode}): {out.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if out.returncode != 0:
        # measured, then the child died on its way out (a native library's threads at exit:
        # "terminate called without an active exception" under heavy load): the figures
        # stand, the exit is reported with them
        tail = out.stderr.strip().splitlines()[-1:] or [""]
        print(f"  (the memory child exited {out.returncode} after measuring: {tail[0][:200]})")
        result["child_exit"] = out.returncode
    return result


def parity(store: Path, epochs: int, size: int) -> dict:
    import keras

    from radlens.models.architectures import build_model
    from radlens.models.preprocessing import preprocess_array
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import add_openvino_runtime, recorded_parity
    from radlens.training.metrics import choose_threshold

    if not PNEUMONIA.exists():
        return {"skipped": f"{PNEUMONIA} is absent"}
    with np.load(PNEUMONIA) as data:
        splits = {
            s: (
                np.stack([preprocess_array(im, size=(size, size)) for im in data[f"{s}_images"]])[
                    ..., None
                ].astype(np.float32),
                data[f"{s}_labels"].reshape(-1).astype(np.int64),
            )
            for s in ("train", "val")
        }
    keras.utils.set_random_seed(0)
    model = build_model("resnet50", input_shape=(size, size, 1), num_classes=2, weights=None)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    x, y = splits["train"]
    t0 = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    train_s = time.perf_counter() - t0
    xv, yv = splits["val"]
    scores = np.asarray(model.predict(xv, batch_size=64, verbose=0))
    from sklearn.metrics import roc_auc_score

    val_auc = float(roc_auc_score(yv, scores[:, 1]))
    threshold = float(choose_threshold(yv, scores[:, 1]))
    ref = save_model(store, model, "pneumonia", threshold, {"val": {"auc": val_auc}})
    manifest = add_openvino_runtime(
        ModelRegistry(store), ref, images=xv, labels=yv, data_note="PneumoniaMNIST val"
    )
    return {
        "model": f"ResNet50 from scratch at {size} px, {epochs} epochs on the train split",
        "train_seconds": round(train_s, 1),
        "val_auc_keras": val_auc,
        "threshold": threshold,
        "fp32": (p.to_dict() if (p := recorded_parity(manifest, "fp32")) else None),
        "bf16": (p.to_dict() if (p := recorded_parity(manifest, "bf16")) else None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1 epoch: a smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per configuration per round")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--epochs", type=int, default=3, help="parity model training epochs")
    parser.add_argument("--parity-size", type=int, default=32)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="convert the 224 px model and measure the serving process's memory only",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs, args.seconds = 1, 1, 1.0
    batches = [int(b) for b in args.batches.split(",")]
    started = time.perf_counter()

    facts = machine()
    print(
        f"CPU: {facts['cpu']} ({facts['cores']} cores); bf16 supported: {facts['bf16_supported']}"
    )
    print(f"  OPTIMIZATION_CAPABILITIES: {facts['optimization_capabilities']}")
    print(f"  openvino {facts['openvino']}, tensorflow {facts['tensorflow']}")
    report: dict = {"machine": facts}
    with tempfile.TemporaryDirectory(prefix="radlens-bench-runtime-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        import keras

        from radlens.models.architectures import build_model
        from radlens.models.registry import ModelRegistry
        from radlens.models.runtime import add_openvino_runtime

        keras.utils.set_random_seed(0)
        big = build_model("resnet50", input_shape=(224, 224, 1), num_classes=2, weights=None)
        ref = save_model(store, big, "resnet224", 0.5, {})
        t0 = time.perf_counter()
        add_openvino_runtime(ModelRegistry(store), ref, model=big)
        report["convert_seconds_224"] = round(time.perf_counter() - t0, 1)
        del big
        print(f"\nconverted ResNet50 224 px to OpenVINO IR in {report['convert_seconds_224']} s")

        if args.memory_only:
            report["memory"] = memory_report(store, tmp)
            return finish(report, started, args.json)

        print(f"\nTHROUGHPUT (ResNet50 224x224x1, weights=None), {args.rounds} interleaved rounds")
        report["throughput"] = throughput(store, ref, batches, args.rounds, args.seconds)
        tput = report["throughput"]
        print("  wall images/s (ratio to tensorflow-fp32, median of per-round ratios) | CPU ms")
        print("  per image (TensorFlow's CPU per image over this one's: CPU efficiency)")
        for name, by_batch in tput["images_per_s"].items():
            cells = "; ".join(
                f"b{n}: {v:5.1f}/s {tput['ratio_vs_tensorflow_fp32'][name][n]:.2f}x | "
                f"{tput['cpu_ms_per_image'][name][n]:4.0f} ms "
                f"{tput['cpu_ratio_vs_tensorflow_fp32'][name][n]:.2f}x"
                for n, v in by_batch.items()
            )
            print(f"  {name:24s} {cells}")
        best = {name: max(v.values()) for name, v in tput["images_per_s"].items()}
        report["best_batch_ratio"] = {n: v / best["tensorflow-fp32"] for n, v in best.items()}
        print(
            "  best batch vs TensorFlow fp32's best: "
            + ", ".join(f"{n} {r:.2f}x" for n, r in report["best_batch_ratio"].items())
        )

        if not args.skip_memory:
            report["memory"] = memory_report(store, tmp)

        print(f"\nPARITY on PneumoniaMNIST val (training {args.epochs} epochs first)")
        report["parity"] = par = parity(store, args.epochs, args.parity_size)
        if "skipped" in par:
            print(f"  skipped: {par['skipped']}")
        else:
            print(
                f"  {par['model']}: {par['train_seconds']} s, Keras val AUC "
                f"{par['val_auc_keras']:.4f}, threshold {par['threshold']:.3f}"
            )
            for precision in ("fp32", "bf16"):
                p = par[precision]
                if p is None:
                    print(f"  {precision}: not measured (CPU without bf16)")
                    continue
                print(
                    f"  {precision}: AUC {p['auc']:.5f} vs {p['auc_reference']:.5f} "
                    f"(difference {p['auc_difference']:.5f}), largest score difference "
                    f"{p['max_score_difference']:.5f}, {p['flips']}/{p['n']} labels flipped"
                )
    return finish(report, started, args.json)


def memory_report(store: Path, tmp: Path) -> dict:
    """Run :func:`memory` and print its figures: the end, and the RSS after each stage."""
    print("\nMEMORY (the app serving the 224 px model with OpenVINO + Keras for Grad-CAM)")
    mem = memory(store, tmp)
    print(
        f"  runtime {mem['runtime']} {mem['precision']}, bf16 also compiled: "
        f"{mem['bf16_also_loaded']}; VmRSS {mem['vm_rss_kib'] / 2**20:.2f} GiB, "
        f"VmHWM {mem['vm_hwm_kib'] / 2**20:.2f} GiB (target < 2.5 GiB)"
    )
    stages = mem.get("stages_kib", {})
    if stages:
        print(
            "  VmRSS by stage: "
            + ", ".join(f"{name} {kib / 2**20:.3f} GiB" for name, kib in stages.items())
            + f", bf16 compiled {mem['vm_rss_kib'] / 2**20:.3f} GiB"
        )
    return mem


def finish(report: dict, started: float, json_path: Path | None) -> int:
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {report['seconds']} s")
    if json_path:
        json_path.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

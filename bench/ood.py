"""How well the out-of-distribution detector (models/ood.py) tells a model's own images from
images it was not made for, and what the gate costs per prediction (issue #17).

Not a test. Run from the repository root (figures: docs/benchmarks/ood.md):

    .venv/bin/python -m bench.ood --out var/bench-ood.json
    .venv/bin/python -m bench.ood --demo-store /tmp/store --demo-model demo \\
        --demo-data /tmp/demo-data

1. Trains a small model on PneumoniaMNIST with ``training.run.train`` (the code of
   ``radlens train``): simple_cnn at 64 px, a few epochs (``--epochs``), which also fits and
   stores the default detector. With ``--demo-store`` it also measures a stored model (the
   demo model: ``radlens train --config training/configs/demo.yaml``) on its own data.
2. Fits both detectors (Mahalanobis with a shared covariance, k-NN) on the model's
   penultimate features of (a sample of) its training split, as training does.
3. In-distribution: the validation split (the detector is fitted on training features only).
   The fraction flagged is measured on images that did not set the threshold: 1000 random
   halvings (threshold on half A, count on half B; mean and 5th-95th percentiles) for the
   stored conformal quantile and numpy's interpolated percentile, and leave-one-out.
4. OOD sets, every image fed exactly as an upload is (``models.preprocessing``): CT slices
   (../shared/data, pydicom, pydicom-data), non-chest radiographs (hip RG2, tibia RG3),
   colour photos (matplotlib's sample photos), noise; each real image also as crops and
   flips (PNG of the crop: what a client could upload), so a set has tens of images from
   a handful of files.
5. AUROC per OOD set (in-distribution: the whole validation split), the fraction of each OOD
   set caught at the threshold, and timing: the model call at batch 1 without and with the
   features + detector, and the metadata gate's header read on a chest CR, each the median of
   repeated runs, as a ratio to the prediction (preprocessing + model call) in the same run.
6. ``--ensemble K``: a small cross-validated ensemble (``training.recipe``: K simple_cnn
   members, member i trained on the other K - 1 folds of PneumoniaMNIST's official train
   split) and its detector (models.ood ``EnsembleOodDetector``: member i's Mahalanobis
   detector fitted on its training folds, calibrated on its held-out fold). The official
   validation split, which no member saw, is the in-distribution set: AUROC per OOD set and
   the fraction flagged, for the served pooled-rank score beside each member's own detector,
   the mean of the members' scores each divided by its own threshold, and one detector on the
   concatenated features (fitted on the train split; AUROC only: no image is unseen by every
   member to calibrate it on).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SHARED = REPO_ROOT.parent / "shared" / "data"
DEFAULT_NPZ = SHARED / "pneumoniamnist" / "pneumoniamnist_28_trainval.npz"

import numpy as np  # noqa: E402

from bench._machine import cpu_model  # noqa: E402

CT_FILES: list[str | Path] = [
    SHARED / "dicom" / "CT1_JLSN.dcm",
    SHARED / "dicom" / "TOSHIBA_J2K_OpenJPEGv2Regression.dcm",
    SHARED / "dicom" / "ct_image.dcm",
    "pydicom:CT_small.dcm",
    "pydicom:693_UNCI.dcm",
    "pydicom:eCT_Supplemental.dcm",
    "pydicom:explicit_VR-UN.dcm",
]
RADIOGRAPH_FILES: list[str | Path] = [SHARED / "dicom" / "RG2_JLSL.dcm", "pydicom:RG3_UNCI.dcm"]
CHEST_DICOM = SHARED / "dicom" / "rsna_chest_cr_jpeg_baseline.dcm"


def _resolve(item: str | Path) -> Path | None:
    if isinstance(item, Path):
        return item if item.is_file() else None
    from pydicom.data import get_testdata_file

    found = get_testdata_file(item.split(":", 1)[1])
    return Path(found) if found else None


def _photos() -> list[Path]:
    import matplotlib

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    return [
        p
        for p in (sample / "grace_hopper.jpg", sample / "Minduka_Present_Blue_Pack.png")
        if p.is_file()
    ]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _views(gray: np.ndarray) -> Iterator[np.ndarray]:
    """The image, four 75% corner crops, two centre crops (60%, 85%), and their mirror
    images: 14 views of one real image."""
    h, w = gray.shape
    crops = [gray]
    for frac in (0.75,):
        ch, cw = int(h * frac), int(w * frac)
        for y, x in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
            crops.append(gray[y : y + ch, x : x + cw])
    for frac in (0.6, 0.85):
        ch, cw = int(h * frac), int(w * frac)
        y, x = (h - ch) // 2, (w - cw) // 2
        crops.append(gray[y : y + ch, x : x + cw])
    for crop in crops:
        yield crop
        yield crop[:, ::-1]


def model_inputs_from_files(
    files: list[Path], size: tuple[int, int], *, version: str | None = None
) -> np.ndarray:
    """Every file decoded as the service does, at 256 px, then its 14 views as PNG uploads."""
    from radlens.models.preprocessing import preprocess

    out = []
    for path in files:
        kwargs: dict[str, Any] = {"size": (256, 256)}
        if version is not None:
            kwargs["version"] = version
        image = preprocess(path.read_bytes(), **kwargs)
        gray = np.clip(np.asarray(image.pixels) * 255.0, 0, 255).astype(np.uint8)
        for view in _views(gray):
            options: dict[str, Any] = {"size": size}
            if version:
                options["version"] = version
            upload = preprocess(_png(np.ascontiguousarray(view)), **options)
            out.append(upload.model_input())
    return np.stack(out) if out else np.empty((0, *size, 1), np.float32)


def noise_inputs(size: tuple[int, int], n: int = 48, seed: int = 0) -> np.ndarray:
    """Uniform, Gaussian, salt-and-pepper and smoothed noise, as PNG uploads."""
    from PIL import Image, ImageFilter

    from radlens.models.preprocessing import preprocess

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            arr = rng.integers(0, 256, (256, 256), dtype=np.uint8)
        elif kind == 1:
            arr = np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8)
        elif kind == 2:
            arr = (rng.random((256, 256)) > 0.5).astype(np.uint8) * 255
        else:
            base = Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8))
            arr = np.asarray(base.filter(ImageFilter.GaussianBlur(radius=6)))
            arr = ((arr - arr.min()) / max(1, int(arr.max()) - int(arr.min())) * 255).astype(
                np.uint8
            )
        out.append(preprocess(_png(arr), size=size).model_input())
    return np.stack(out)


def ood_sets(size: tuple[int, int], version: str | None = None) -> dict[str, np.ndarray]:
    """name -> model inputs of each OOD set (sets whose files are all absent are left out)."""
    sets: dict[str, np.ndarray] = {}
    for name, items in (
        ("ct_slices", CT_FILES),
        ("non_chest_radiographs", RADIOGRAPH_FILES),
    ):
        files = [p for p in (_resolve(i) for i in items) if p is not None]
        if files:
            sets[name] = model_inputs_from_files(files, size, version=version)
            print(f"  {name}: {len(files)} files -> {len(sets[name])} images", flush=True)
    photos = _photos()
    if photos:
        sets["colour_photos"] = model_inputs_from_files(photos, size, version=version)
        print(f"  colour_photos: {len(photos)} files -> {len(sets['colour_photos'])} images")
    sets["noise"] = noise_inputs(size)
    print(f"  noise: {len(sets['noise'])} images", flush=True)
    return sets


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(score of an OOD image > score of an in-distribution one), ties counted half."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def evaluate_model(
    label: str,
    model: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: np.ndarray,
    sets: dict[str, np.ndarray],
    seed: int,
) -> dict[str, Any]:
    """AUROC per set and flagged fractions, for both detectors."""
    from radlens.models.ood import extract_features, fit_detector

    train_f = extract_features(model, train[0])
    val_f = extract_features(model, val)
    set_f = {name: extract_features(model, x) for name, x in sets.items()}
    result: dict[str, Any] = {"train_images": len(train_f), "val_images": len(val_f)}
    for method in ("mahalanobis", "knn"):
        full = fit_detector(train_f, train[1], val_f, method=method)
        val_scores = full.scores(val_f)
        per_set = {}
        for name, feats in set_f.items():
            s = full.scores(feats)
            per_set[name] = {
                "images": len(feats),
                "auroc": auroc(val_scores, s),
                "caught_at_threshold": float(np.mean(s > full.threshold)),
            }
        flagged = in_distribution_flagged(val_scores, full.quantile, seed)
        result[method] = {"sets": per_set, "in_distribution_flagged": flagged}
        worst = min(v["auroc"] for v in per_set.values())
        print(
            f"[{label}] {method:12s} "
            + "  ".join(
                f"{k} AUROC {v['auroc']:.3f} (caught {v['caught_at_threshold']:.0%})"
                for k, v in per_set.items()
            )
            + f"  | worst AUROC {worst:.3f}\n[{label}] {method:12s} in-distribution flagged: "
            + json.dumps(flagged),
            flush=True,
        )
    return result


def in_distribution_flagged(
    val_scores: np.ndarray, quantile: float, seed: int, splits: int = 1000
) -> dict[str, Any]:
    """The fraction of in-distribution images a threshold flags when those images did not
    set it.

    The detector is fitted on training features only, so the validation scores do not
    depend on how the validation split is divided: each of ``splits`` random halvings sets
    the threshold on half A and counts half B above it (mean and 5th-95th percentiles over
    the halvings: one halving of a few hundred images is a noisy figure), for the
    conformal quantile (models.ood.conformal_threshold, as stored) and for numpy's
    interpolated percentile (the threshold before it). Leave-one-out: each image against
    the conformal threshold of all the others (calibration size n - 1, as near the stored
    detector's n as a held-out count can be).
    """
    from radlens.models.ood import conformal_threshold, expected_flag_rate

    scores = np.asarray(val_scores, dtype=np.float64)
    n = len(scores)
    rng = np.random.default_rng(seed)
    rates: dict[str, list[float]] = {"conformal": [], "interpolated": []}
    for _ in range(splits):
        order = rng.permutation(n)
        a, b = scores[order[: n // 2]], scores[order[n // 2 :]]
        rates["conformal"].append(float(np.mean(b > conformal_threshold(a, quantile))))
        rates["interpolated"].append(float(np.mean(b > np.quantile(a, quantile))))
    loo = [bool(scores[i] > conformal_threshold(np.delete(scores, i), quantile)) for i in range(n)]
    out: dict[str, Any] = {
        f"halves_{name}": {
            "mean": float(np.mean(r)),
            "p5": float(np.percentile(r, 5)),
            "p95": float(np.percentile(r, 95)),
            "calibration_images": n // 2,
            "heldout_images": n - n // 2,
        }
        for name, r in rates.items()
    }
    out["leave_one_out_conformal"] = {"flagged": int(sum(loo)), "of": n, "rate": sum(loo) / n}
    out["stored_threshold_expected"] = expected_flag_rate(n, quantile)
    return out


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    return _interleaved_ms([fn], repeat)[0]


def _interleaved_ms(fns: list[Callable[[], Any]], repeat: int) -> list[float]:
    """Median wall ms of each function, called in turn round by round (so a busy spell on
    the shared machine hits them alike)."""
    return [wall for wall, _ in _interleaved_wall_cpu_ms(fns, repeat)]


def _interleaved_wall_cpu_ms(
    fns: list[Callable[[], Any]], repeat: int
) -> list[tuple[float, float]]:
    """(median wall ms, mean process CPU ms) of each function, interleaved as above.

    The CPU time (``time.process_time``: every thread of this process, TensorFlow's pool
    included) is what a call costs the machine whatever else runs on it; it is summed over
    the repeats and divided (one call is near the clock's granularity), while the wall
    time of a shared machine is a median.
    """
    for fn in fns:
        fn()
    walls: list[list[float]] = [[] for _ in fns]
    cpus = [0.0 for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            walls[i].append((time.perf_counter() - t0) * 1000.0)
            cpus[i] += (time.process_time() - c0) * 1000.0
    return [(statistics.median(w), c / repeat) for w, c in zip(walls, cpus, strict=True)]


def previous_scorer(detector: Any) -> Callable[[Any], Any]:
    """The served Mahalanobis score before this bench's change (the baseline): per class,
    the centred features times the full precision matrix, ``classes * D^2`` multiply-adds."""
    import tensorflow as tf

    precision = tf.constant(detector.arrays["precision"], tf.float32)
    means = tf.constant(detector.arrays["means"], tf.float32)

    def mahalanobis(features: Any) -> Any:
        x = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1, epsilon=1e-24)
        centred = x[:, None, :] - means[None, :, :]
        per_class = tf.reduce_sum(tf.einsum("ncd,de->nce", centred, precision) * centred, axis=2)
        return tf.reduce_min(per_class, axis=1)

    return mahalanobis


def scorer_timing(model: Any, detector: Any, size: tuple[int, int], repeat: int) -> dict[str, Any]:
    """The detector alone at batch 1 on one image's real features, served form vs the
    previous one, wall and CPU; and the served form's agreement with the numpy scores."""
    import tensorflow as tf

    from radlens.models.ood import extract_features

    image = np.random.default_rng(0).random((1, *size, 1), dtype=np.float32)
    feats = tf.constant(extract_features(model, image))
    spec = [tf.TensorSpec([None, feats.shape[1]], tf.float32)]
    new = tf.function(detector.tf_scorer(), input_signature=spec)
    figures: dict[str, Any] = {"dimension": int(feats.shape[1])}
    if "basis" in detector.arrays:
        figures["projection_rank"] = int(detector.arrays["basis"].shape[1])
    # the cost of calling a tf.function at all, which the served graph does not pay per op
    empty = tf.function(lambda f: tf.reduce_sum(f, axis=1), input_signature=spec)
    fns = [lambda: empty(feats), lambda: new(feats)]
    if detector.method == "mahalanobis":
        old = tf.function(previous_scorer(detector), input_signature=spec)
        fns.append(lambda: old(feats))
    measured = _interleaved_wall_cpu_ms(fns, repeat)
    figures["empty_function_wall_ms"], figures["empty_function_cpu_ms"] = measured[0]
    figures["scorer_wall_ms"], figures["scorer_cpu_ms"] = measured[1]
    if len(measured) > 2:
        figures["previous_scorer_wall_ms"], figures["previous_scorer_cpu_ms"] = measured[2]
    reference = detector.scores(np.asarray(feats))
    figures["relative_difference_to_numpy"] = float(
        abs(float(new(feats)[0]) - float(reference[0])) / max(abs(float(reference[0])), 1e-12)
    )
    return figures


def timing(model: Any, detector: Any, size: tuple[int, int], repeat: int) -> dict[str, Any]:
    """The gate's added time per prediction at batch 1, as the service runs it."""
    import tensorflow as tf

    from radlens.app.gate import dicom_gate_header
    from radlens.app.ingest import gate_upload
    from radlens.models.intended_use import IntendedUse
    from radlens.models.ood import feature_model
    from radlens.models.preprocessing import preprocess

    h, w = size
    spec = [tf.TensorSpec([None, h, w, 1], tf.float32)]
    plain = tf.function(lambda x: model(x, training=False), input_signature=spec)
    both_model, scorer = feature_model(model), detector.tf_scorer()

    @tf.function(input_signature=spec)
    def scored(x: Any) -> Any:  # as app/predictor.py serves a model with a detector
        scores, features = both_model(x, training=False)
        return scores, scorer(features)

    x = tf.constant(np.random.default_rng(0).random((1, h, w, 1), dtype=np.float32))
    (model_ms, model_cpu), (model_ood_ms, model_ood_cpu) = _interleaved_wall_cpu_ms(
        [lambda: plain(x), lambda: scored(x)], repeat
    )
    figures: dict[str, Any] = {
        "model_call_ms": model_ms,
        "model_call_with_ood_ms": model_ood_ms,
        "ood_added_ms": model_ood_ms - model_ms,
        "model_call_cpu_ms": model_cpu,
        "model_call_with_ood_cpu_ms": model_ood_cpu,
        "ood_added_cpu_ms": model_ood_cpu - model_cpu,
    }
    if hasattr(detector, "arrays"):  # a single model's detector (not an ensemble's)
        figures.update(scorer_timing(model, detector, size, repeat * 10))
    if CHEST_DICOM.is_file():
        data = CHEST_DICOM.read_bytes()
        chest = IntendedUse(modalities=("CR", "DX"), body_parts=("CHEST",))
        (prep_ms, _), (gate_ms, gate_cpu) = _interleaved_wall_cpu_ms(
            [lambda: preprocess(data, size=size), lambda: gate_upload(data, chest, "refuse")],
            max(5, repeat // 4),
        )
        figures["metadata_gate_cpu_ms"] = gate_cpu
        figures["gate_total_added_cpu_ms"] = gate_cpu + figures["ood_added_cpu_ms"]
        if "scorer_cpu_ms" in figures:
            figures["gate_total_scorer_cpu_ms"] = gate_cpu + figures["scorer_cpu_ms"]
        assert dicom_gate_header(data) is not None
        prediction_ms = prep_ms + model_ms
        figures.update(
            {
                "preprocess_chest_cr_ms": prep_ms,
                "metadata_gate_ms": gate_ms,
                "prediction_ms": prediction_ms,
                "gate_total_added_ms": gate_ms + figures["ood_added_ms"],
                "gate_ratio_to_prediction": (gate_ms + figures["ood_added_ms"]) / prediction_ms,
            }
        )
    print("timing: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
    return figures


def _pneumonia_inputs(path: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """PneumoniaMNIST ``split`` as model inputs ``(N, size, size, 1)`` and labels ``(N,)``."""
    from radlens.models.preprocessing import preprocess_array

    data = np.load(path)
    images = data[f"{split}_images"]
    x = np.stack([preprocess_array(a, size=(size, size)) for a in images])[..., None]
    return x.astype(np.float32), data[f"{split}_labels"].reshape(-1).astype(np.int64)


def measure_ensemble(args: argparse.Namespace) -> dict[str, Any]:
    """The ensemble detector's figures (module docstring, 6)."""
    from radlens.models.ood import extract_features, fit_detector, fit_ensemble_detector
    from radlens.training.ood import MAX_FIT_IMAGES
    from radlens.training.recipe import MemberRecipe, cross_validate, stratified_folds

    size, k = args.ensemble_image_size, args.ensemble
    x, y = _pneumonia_inputs(args.data, "train", size)
    x_val, _ = _pneumonia_inputs(args.data, "val", size)
    folds = stratified_folds(y, k, seed=args.seed)
    recipe = MemberRecipe(image_size=size, epochs=args.ensemble_epochs)
    print(f"[ensemble] {k} members, {recipe.to_dict()}", flush=True)
    run = cross_validate(x, y, folds, recipe, seed=args.seed, keep_models=True)
    from sklearn.metrics import roc_auc_score

    oof_auc = float(roc_auc_score(y, run.scores))
    print(f"[ensemble] trained in {run.cpu_seconds:.0f} s CPU; OOF AUC {oof_auc:.3f}", flush=True)
    sets = ood_sets((size, size))
    rng = np.random.default_rng(args.seed)
    fits, val_f, set_f, train_f_all = [], [], [], []
    for fold, member in enumerate(run.models):
        held = folds == fold
        train = np.flatnonzero(~held)
        if len(train) > MAX_FIT_IMAGES:  # as training.ood.attach_cross_fitted_detector samples
            train = np.sort(rng.choice(train, MAX_FIT_IMAGES, replace=False))
        fits.append(
            (extract_features(member, x[train]), y[train], extract_features(member, x[held]))
        )
        val_f.append(extract_features(member, x_val))
        set_f.append({name: extract_features(member, s) for name, s in sets.items()})
        sample = np.sort(rng.choice(len(x), min(len(x), MAX_FIT_IMAGES), replace=False))
        train_f_all.append((extract_features(member, x[sample]), y[sample]))
    detector = fit_ensemble_detector(fits)
    joined_val = np.concatenate(val_f, axis=1)
    joined_sets = {n: np.concatenate([f[n] for f in set_f], axis=1) for n in sets}
    members = detector.members

    def normalised_mean(feats_per_member: list[np.ndarray]) -> np.ndarray:
        return np.mean(
            [members[i].scores(f) / members[i].threshold for i, f in enumerate(feats_per_member)],
            axis=0,
        )

    concat = fit_detector(
        np.concatenate([f for f, _ in train_f_all], axis=1), train_f_all[0][1], joined_val[:1]
    )
    candidates: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {
        "pooled_rank (served)": (
            detector.scores(joined_val),
            {n: detector.scores(f) for n, f in joined_sets.items()},
        ),
        "mean_of_normalised_scores": (
            normalised_mean(val_f),
            {n: normalised_mean([f[n] for f in set_f]) for n in sets},
        ),
        "concatenated_features": (
            concat.scores(joined_val),
            {n: concat.scores(f) for n, f in joined_sets.items()},
        ),
    }
    for i in range(k):
        candidates[f"member_{i}_alone"] = (
            members[i].scores(val_f[i]),
            {n: members[i].scores(set_f[i][n]) for n in sets},
        )
    result: dict[str, Any] = {
        "members": k,
        "recipe": recipe.to_dict(),
        "train_images": len(x),
        "val_images": len(x_val),
        "oof_auc": oof_auc,
        "train_cpu_seconds": run.cpu_seconds,
        "detector": detector.entry(),
        "candidates": {},
    }
    for label, (val_scores, per_set) in candidates.items():
        result["candidates"][label] = {
            n: {"images": len(s), "auroc": auroc(val_scores, s)} for n, s in per_set.items()
        }
    served = result["candidates"]["pooled_rank (served)"]
    val_scores, per_set = candidates["pooled_rank (served)"]
    for n, s in per_set.items():
        served[n]["caught_at_threshold"] = float(np.mean(s > detector.threshold))
    flagged = int(np.sum(val_scores > detector.threshold))
    result["val_flagged"] = {"flagged": flagged, "of": len(x_val), "rate": flagged / len(x_val)}
    # the members alone, each at its own conformal threshold on its fold (for comparison)
    result["val_flagged_member_alone"] = [
        float(np.mean(members[i].scores(val_f[i]) > members[i].threshold)) for i in range(k)
    ]
    for label, figures in result["candidates"].items():
        print(
            f"[ensemble] {label:28s} "
            + "  ".join(f"{n} {v['auroc']:.3f}" for n, v in figures.items()),
            flush=True,
        )
    print(
        f"[ensemble] served threshold {detector.threshold:.4f} (nominal "
        f"{detector.entry()['nominal_flag_rate']:.2%}): official val flagged {flagged} of "
        f"{len(x_val)}; caught "
        + ", ".join(f"{n} {v['caught_at_threshold']:.0%}" for n, v in served.items()),
        flush=True,
    )
    if args.repeat > 0:  # the served graph: the ensemble's features and this detector
        from radlens.training.recipe import averaged_model

        result["timing"] = timing(averaged_model(run.models), detector, (size, size), args.repeat)
    return result


def train_pneumonia(args: argparse.Namespace, workdir: Path) -> Any:
    from radlens.training.config import TrainConfig
    from radlens.training.run import train

    config = TrainConfig.from_dict(
        {
            "data": str(args.data),
            "class_names": ["normal", "pneumonia"],
            "architecture": "simple_cnn",
            "image_size": args.image_size,
            "batch_size": 64,
            "epochs_head": args.epochs,
            "learning_rate_head": 1e-3,
            "dropout": 0.3,
            "augment": False,
            "early_stopping_patience": 0,
            "histogram_freq": 0,
            "tensorboard_samples": 0,
            "openvino": False,
            "name": "pneumonia-ood-bench",
            "store": str(workdir / "store"),
            "runs_dir": str(workdir / "runs"),
            "seed": args.seed,
        }
    )
    t0 = time.monotonic()
    result = train(config, verbose=0)
    print(
        f"trained {result.model_ref} in {time.monotonic() - t0:.0f} s: "
        f"val AUC {result.val_metrics.get('auc')}",
        flush=True,
    )
    return result


def _split_inputs(
    source: Any, splits: dict[str, Any], manifest: Any, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    from radlens.training.data.pipeline import load_examples
    from radlens.training.ood import MAX_FIT_IMAGES, sample_examples

    kwargs = {
        "size": manifest.input_size,
        "window": manifest.window,
        "version": manifest.preprocessing_version,
    }
    train = load_examples(source, sample_examples(splits["train"], MAX_FIT_IMAGES, seed), **kwargs)
    val, _ = load_examples(source, splits["val"], **kwargs)
    return train, val


def measure_stored(
    label: str,
    store: Path,
    ref: str,
    data: Path,
    seed: int,
    repeat: int,
    timing_only: bool = False,
) -> dict[str, Any]:
    """The figures for a model in a store, on its own data split as training split it."""
    from radlens.models.ood import load_detector
    from radlens.models.registry import ModelRegistry
    from radlens.training.data.sources import open_data
    from radlens.training.evaluate import select_split

    registry = ModelRegistry(store)
    loaded = registry.load(ref)
    manifest = loaded.manifest
    figures: dict[str, Any] = {}
    if not timing_only:
        source = open_data(data, manifest.class_names)
        splits = {s: select_split(source, s, manifest.training_config) for s in ("train", "val")}
        train, val = _split_inputs(source, splits, manifest, seed)
        print(f"[{label}] {manifest.ref}: input {manifest.input_size}, OOD sets:", flush=True)
        sets = ood_sets(manifest.input_size, manifest.preprocessing_version)
        figures = evaluate_model(label, loaded.model, train, val, sets, seed)
    path = registry.ood_detector_file(manifest)
    if path is not None:
        detector = load_detector(path)
        figures["stored_detector"] = {k: v for k, v in (manifest.ood or {}).items() if k != "files"}
        figures["timing"] = timing(loaded.model, detector, manifest.input_size, repeat)
    figures["model"] = manifest.ref
    figures["architecture"] = manifest.architecture
    figures["val_auc"] = manifest.metrics.get("val", {}).get("auc")
    return figures


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_NPZ, help="PneumoniaMNIST npz")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--repeat", type=int, default=200, help="timing repetitions (median)")
    p.add_argument("--demo-store", type=Path, help="a store holding the demo model")
    p.add_argument("--demo-model", default="demo")
    p.add_argument("--demo-data", type=Path, help="the demo model's data (radlens demo-data)")
    p.add_argument("--no-pneumonia", action="store_true", help="only the --demo-store model")
    p.add_argument(
        "--timing-only", action="store_true", help="stored models: the timing, not the AUROC"
    )
    p.add_argument(
        "--ensemble", type=int, default=0, help="K > 1: also a K-member cross-validated ensemble"
    )
    p.add_argument("--ensemble-epochs", type=int, default=3)
    p.add_argument("--ensemble-image-size", type=int, default=32)
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not args.data.is_file():
        print(f"bench.ood: PneumoniaMNIST not found: {str(args.data)!r}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    header = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in load],
        "command": " ".join(["python -m bench.ood", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(
        f"CPU: {header['cpu']} ({header['cpus']} logical), load average {load[0]:.1f}", flush=True
    )
    report: dict[str, Any] = {**header}
    if not args.no_pneumonia:
        with tempfile.TemporaryDirectory(prefix="bench-ood-") as tmp:
            result = train_pneumonia(args, Path(tmp))
            report["pneumonia"] = measure_stored(
                "pneumonia", result.store, result.model_ref, args.data, args.seed, args.repeat
            )
            report["pneumonia"]["epochs"] = args.epochs
    if args.demo_store is not None:
        if args.demo_data is None:
            print("bench.ood: --demo-store needs --demo-data", file=sys.stderr)
            return 2
        report["demo"] = measure_stored(
            "demo",
            args.demo_store,
            args.demo_model,
            args.demo_data,
            args.seed,
            args.repeat,
            args.timing_only,
        )
    if args.ensemble > 1:
        report["ensemble"] = measure_ensemble(args)
    report["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The selection signal for the PneumoniaMNIST recipe: 5-fold out-of-fold figures (issue 19).

Not a test. Run from the repository root (figures in docs/results.md):

    .venv/bin/python -m bench.recipe_cv --configs base,ls,mixup,ema --seeds 1 --out runs/cv

train+val (5232 images) are split into ``--folds`` stratified folds with a FIXED fold seed (so
different training seeds see the same folds), one simple CNN is trained per fold on the other
folds (``training.recipe.cross_validate``) and every image is scored once, out of fold. Per
configuration it prints AUC, accuracy and accuracy at the test prior (37.5 % normal; see
``training.recipe``) as mean +- sd over the folds, at a fixed 0.5 threshold and at the
"balanced" threshold chosen on the OOF scores, with and without test-time augmentation
(``--tta-shift`` px). OOF scores go to ``<out>/oof_<config>_s<seed>.npy`` so that averaging
the scores of two seeds measures a two-member ensemble (``--ensembles``), and ``<out>/cv.json``
collects every figure, the CPU time (``time.process_time``: this process, both cores) and the
wall time with the load average -- the machine is shared, so wall time is noisy.

``--holdout cluster`` replaces the stratified random folds with the leave-modes-out hold-out
(``training.recipe.cluster_folds``: each class cut into look-alike groups, whole groups held
out), a harder signal; ``--holdout shape`` cuts the groups on each image standardised to its own
mean and spread, so that exposure plays no part in them; ``--probe`` prints, in seconds, how
much harder: a pixel logistic regression scored out of fold under every hold-out (the data
README's yardstick: that model scores val AUC .99 but test AUC .93). Keep each hold-out's runs in
their own ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench._machine import cpu_model  # noqa: E402

DEFAULT_NPZ = (
    REPO_ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_28_trainval.npz"
)


HOLDOUT_CHOICES = ("random", "cluster", "shape")
"""``training.recipe.HOLDOUTS``, named here so that ``--help`` does not import TensorFlow."""

FILTER_BANK = ("sobel_h", "sobel_v", "blur", "outline")
"""The course's filters stacked with the image by the chosen recipe's front-end."""


def configs() -> dict[str, Any]:
    """The configurations measured, each a change from ``base``."""
    from radlens.training.data.augment import AugmentConfig
    from radlens.training.recipe import MemberRecipe

    base = MemberRecipe()
    strong = AugmentConfig(rotation_degrees=12.0, zoom=0.15, contrast=0.25, brightness=0.1)
    # the default geometry, stronger exposure changes only (contrast x0.7..1.3, brightness +-0.15)
    intensity = AugmentConfig(contrast=0.3, brightness=0.15)
    member = base.replace(filters=FILTER_BANK, epochs=12, augment=intensity, label_smoothing=0.1)
    return {
        "base": base,
        "ls": base.replace(label_smoothing=0.1),  # the previous README recipe's smoothing
        "mixup": base.replace(mixup_alpha=0.2),
        "ema": base.replace(ema_momentum=0.99),
        "strongaug": base.replace(augment=strong),
        "noaug": base.replace(augment=None),
        "filters": base.replace(filters=FILTER_BANK),
        "size48": base.replace(image_size=48),
        "mixup_ema": base.replace(mixup_alpha=0.2, ema_momentum=0.99),
        # issue 19, input size and length on top of the chosen filter front-end: run these
        # without --epochs (which would override the 12) or with --epochs 6 for the sizes
        "filters48": base.replace(filters=FILTER_BANK, image_size=48),
        "filters64": base.replace(filters=FILTER_BANK, image_size=64),
        "filters_e12": base.replace(filters=FILTER_BANK, epochs=12),
        # issue 19, the leave-modes-out hold-out: does stronger augmentation pay under shift?
        "filters_strongaug": base.replace(filters=FILTER_BANK, augment=strong),
        "filters_intensity": base.replace(filters=FILTER_BANK, augment=intensity),
        "filters_noaug": base.replace(filters=FILTER_BANK, augment=None),
        "filters_ls": base.replace(filters=FILTER_BANK, label_smoothing=0.1),
        "filters_e12_intensity": base.replace(filters=FILTER_BANK, epochs=12, augment=intensity),
        "filters_e24": base.replace(filters=FILTER_BANK, epochs=24),
        "filters_e12_ls": base.replace(filters=FILTER_BANK, epochs=12, label_smoothing=0.1),
        "filters_e12_intensity_ls": member,
        "filters_e24_intensity_ls": member.replace(epochs=24),
        # issue 19, on top of the chosen member: blind to a film's overall exposure (each
        # image minus its mean, in the model), and batch normalisation after each convolution
        "filters_e12_intensity_ls_center": member.replace(center=True),
        "filters_e12_intensity_ls_bn": member.replace(batchnorm=True),
        "filters_e12_intensity_ls_center_bn": member.replace(center=True, batchnorm=True),
        # with the exposure gone, only contrast is left to vary: x0.5..1.5 instead of x0.7..1.3
        "filters_e12_intensity_ls_center_contrast": member.replace(
            center=True, augment=AugmentConfig(contrast=0.5, brightness=0.15)
        ),
        # issue 19, the methods not yet measured, on top of the centred member: CutMix (a box of
        # another image pasted in, up to half the image) and SWA (the mean of the weights after
        # each of the last 6 of the 12 epochs, the second half of the cosine schedule)
        "filters_e12_intensity_ls_center_cutmix": member.replace(center=True, cutmix_alpha=1.0),
        "filters_e12_intensity_ls_center_swa": member.replace(center=True, swa_epochs=6),
        # SWA as designed: a constant-rate tail (the cosine reaches 2e-4, a fifth of the peak,
        # at epoch 7 and holds it), the weights averaged over those 6 epochs
        "filters_e12_intensity_ls_center_swa_const": member.replace(
            center=True, swa_epochs=6, swa_learning_rate=2e-4
        ),
        # twice the convolution channels (64, 64, 128, 128): does a wider member hold up better?
        "filters_e12_intensity_ls_center_w2": member.replace(center=True, width_multiplier=2),
        # the shape hold-out (groups that differ in layout, not exposure): does stronger
        # geometry (rotation +-12 deg, zoom +-15 %, strongaug's) pay where the shift is geometric?
        "filters_e12_intensity_ls_center_geo": member.replace(
            center=True,
            augment=AugmentConfig(rotation_degrees=12.0, zoom=0.15, contrast=0.3, brightness=0.15),
        ),
        # twice the length on the centred member (24 epochs): dropped, no gain at either seed on
        # the leave-modes-out hold-out (docs/results.md, "24 epochs on the centred member")
        "filters_e24_intensity_ls_center": member.replace(center=True, epochs=24),
        # a snapshot ensemble in the member's 12 epochs: the cosine restarted 2 or 3 times and
        # the member is the mean of the networks at each cycle's end (no extra training)
        "filters_e12_intensity_ls_center_snap2": member.replace(center=True, snapshots=2),
        "filters_e12_intensity_ls_center_snap3": member.replace(center=True, snapshots=3),
    }


PROBE_SIZE = 28
"""The cluster hold-out is built on the images at the source's own 28 px, so the folds are the
same whatever input size a configuration trains at."""


def folds_for(
    data: str, holdout: str, labels: Any, k: int, seed: int, copies_apart: bool = False
) -> Any:
    """The folds of ``holdout`` over train+val (the leave-modes-out ones read the 28 px images),
    identical images in one fold unless ``copies_apart`` (the folds of runs before 5 December
    2026 23:45 UTC, which ignored copies: PneumoniaMNIST's train+val holds 24 groups of
    identical images)."""
    from radlens.training.recipe import GROUPED_HOLDOUTS, make_folds

    images = load(data, PROBE_SIZE)[0] if holdout in GROUPED_HOLDOUTS else None
    copies = None if copies_apart else copy_keys(data)
    return make_folds(holdout, images, labels, k, seed, copies)


def copy_keys(data: str) -> list[str]:
    """The pixel digest of each train+val image, in :func:`load`'s order (equal for copies)."""
    from radlens.training.data.sources import open_data, pixel_digest

    source = open_data(data, ["normal", "pneumonia"])
    examples = [e for e in source.examples if e.split in ("train", "val")]
    return [pixel_digest(source.raw_array(e)) for e in examples]


COPIES_APART = " (copies apart)"


def fold_kind(args: Any) -> str:
    """The folds a run used, as its ``--out`` folder records them (runs of two kinds must not
    mix in one folder): the hold-out, and whether copies were kept apart."""
    return args.holdout + (COPIES_APART if args.copies_apart else "")


def parse_fold_kind(kind: str) -> tuple[str, bool]:
    """(hold-out, copies apart) of a recorded :func:`fold_kind`."""
    return kind.removesuffix(COPIES_APART), kind.endswith(COPIES_APART)


def probe(data: str, k: int, seed: int) -> dict[str, Any]:
    """Out-of-fold AUC of a pixel logistic regression under each hold-out (seconds to run):
    how much harder the cluster hold-out is, on the model the data README measured on test."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from radlens.training.recipe import HOLDOUTS, fold_figures, make_folds

    images, labels = load(data, PROBE_SIZE)
    pixels = images.reshape(len(labels), -1)
    result: dict[str, Any] = {}
    copies = copy_keys(data)
    for holdout in HOLDOUTS:
        folds = make_folds(holdout, images, labels, k, seed, copies)  # images loaded once, here
        scores = np.zeros(len(labels))
        for f in np.unique(folds):
            held = folds == f
            model = LogisticRegression(max_iter=2000).fit(pixels[~held], labels[~held])
            scores[held] = model.predict_proba(pixels[held])[:, 1]
        figures = fold_figures(labels, scores, folds, 0.5)
        normal_share = [round(float(np.mean(labels[folds == f] == 0)), 3) for f in np.unique(folds)]
        result[holdout] = {
            "auc": figures["auc"],
            "fold_sizes": np.bincount(folds).tolist(),
            "normal_share": normal_share,
        }
        a = figures["auc"]
        print(
            f"pixel logistic regression, {holdout:<7} hold-out: OOF AUC {a['mean']:.4f} +- "
            f"{a['sd']:.4f} (folds {a['folds']}; sizes {result[holdout]['fold_sizes']}; "
            f"normal share {normal_share})",
            flush=True,
        )
    return result


def with_epochs(recipe: Any, epochs: int | None) -> Any:
    """``recipe`` at ``--epochs`` unless the configuration sets its own length (filters_e12)."""
    from radlens.training.recipe import MemberRecipe

    if epochs and recipe.epochs == MemberRecipe().epochs:
        return recipe.replace(epochs=epochs)
    return recipe


def load(data: str, size: int) -> tuple[Any, Any]:
    """train+val of the npz, preprocessed exactly as training and the service do."""
    from radlens.training.data.pipeline import load_examples
    from radlens.training.data.sources import open_data

    source = open_data(data, ["normal", "pneumonia"])
    examples = [e for e in source.examples if e.split in ("train", "val")]
    return load_examples(source, examples, size=(size, size), window=None)


def summarise(labels: Any, scores: Any, folds: Any) -> dict[str, Any]:
    """Figures at 0.5 and at the balanced threshold chosen on these OOF scores."""
    from radlens.training.metrics import decision_threshold
    from radlens.training.recipe import fold_figures

    balanced = decision_threshold("balanced", labels, scores)
    return {
        "at_0.5": fold_figures(labels, scores, folds, 0.5),
        "at_balanced": fold_figures(labels, scores, folds, balanced),
    }


def record_run(
    out: Path,
    name: str,
    cv: Any,
    labels: Any,
    load_before: tuple[float, float, float],
    holdout: str = "random",
) -> dict[str, Any]:
    """Save one 5-fold run (``training.recipe.CrossValidation``) of configuration ``name``:
    its OOF scores as ``<out>/oof_<name>_s<seed>[_tta].npy`` and its figures, CPU and wall
    time and load average under ``runs`` in ``<out>/cv.json`` (kept across invocations)."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "cv.json"
    report: dict[str, Any] = (
        json.loads(report_path.read_text()) if report_path.is_file() else {"runs": {}}
    )
    mixed = mixed_holdout(out, holdout)
    if mixed:
        raise SystemExit(mixed)
    report.update(
        {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "folds": int(cv.folds.max()) + 1,
            "holdout": holdout,
        }
    )
    np.save(out / f"oof_{name}_s{cv.seed}.npy", cv.scores)
    entry: dict[str, Any] = {
        "config": name,
        "seed": cv.seed,
        "recipe": cv.recipe.to_dict(),
        "plain": summarise(labels, cv.scores, cv.folds),
        "cpu_seconds": round(cv.cpu_seconds, 1),
        "wall_seconds": round(cv.wall_seconds, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(line(f"{name} s{cv.seed}", entry["plain"]), flush=True)
    if cv.scores_tta is not None:
        np.save(out / f"oof_{name}_s{cv.seed}_tta.npy", cv.scores_tta)
        entry["tta"] = summarise(labels, cv.scores_tta, cv.folds)
        print(line(f"{name} s{cv.seed} +tta", entry["tta"]), flush=True)
    print(
        f"  {cv.cpu_seconds:.0f} CPU-s, {cv.wall_seconds:.0f} s wall, "
        f"loadavg {entry['loadavg_after']}",
        flush=True,
    )
    report["runs"][f"{name}_s{cv.seed}"] = entry
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return entry


def mixed_holdout(out: Path, holdout: str) -> str | None:
    """The refusal when ``out`` already holds runs of another hold-out, else None."""
    report_path = out / "cv.json"
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text())
    held = report.get("holdout", "random")  # runs before the option: random folds
    if report.get("runs") and held != holdout:
        return (
            f"bench.recipe_cv: {out} holds {held}-hold-out runs; write {holdout}-hold-out runs "
            "to another --out"
        )
    return None


def line(name: str, figures: dict[str, Any]) -> str:
    a, b = figures["at_0.5"], figures["at_balanced"]
    return (
        f"{name:<22} AUC {a['auc']['mean']:.4f} +- {a['auc']['sd']:.4f}  "
        f"acc@0.5 {a['accuracy']['mean']:.4f} +- {a['accuracy']['sd']:.4f}  "
        f"acc@prior,0.5 {a['accuracy_at_test_prior']['mean']:.4f}  "
        f"acc@prior,bal({b['threshold']:.2f}) {b['accuracy_at_test_prior']['mean']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    from radlens.models.errors import ConfigurationError

    try:
        return _main(argv)
    except ConfigurationError as exc:  # e.g. too few images of a class for the cluster hold-out
        print(f"bench.recipe_cv: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_NPZ))
    p.add_argument("--configs", default="base,ls,mixup,ema,strongaug,filters")
    p.add_argument("--seeds", default="1", help="training seeds, comma-separated")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold-seed", type=int, default=0)
    p.add_argument(
        "--epochs",
        type=int,
        help="the epochs of every configuration that does not set its own (filters_e12 keeps 12)",
    )
    p.add_argument(
        "--holdout",
        choices=HOLDOUT_CHOICES,
        default="random",
        help="random: stratified folds; cluster: leave-modes-out (training.recipe.cluster_folds); "
        "shape: leave-modes-out on each image standardised to its own mean and spread",
    )
    p.add_argument(
        "--copies-apart",
        action="store_true",
        help="deal identical images to folds one by one, as runs before 5 December 2026 23:45 "
        "UTC did (by default copies share a fold: one scored out of fold by a model trained on "
        "its copy inflates the signal)",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="no training: a pixel logistic regression's OOF AUC under each hold-out",
    )
    p.add_argument("--tta-shift", type=int, default=2)
    p.add_argument("--ensembles", action="store_true", help="also score seed-averaged OOF")
    p.add_argument("--out", type=Path, default=Path("runs/cv"))
    p.add_argument(
        "--summary",
        help="no training: merge the cv.json/OOF files of these comma-separated --out folders "
        "into <out>/summary.json (table, seed-averaged ensembles, ranking across seeds)",
    )
    p.add_argument(
        "--against",
        help="with --summary: also print every configuration minus this one, paired by fold "
        "at the same seed (AUC; accuracy at the test prior at each one's balanced threshold)",
    )
    p.add_argument(
        "--apply-thresholds",
        type=Path,
        help="with --summary: the figures JSON of a bench.pneumonia cv-ensemble run (--out); its "
        "served threshold and operating points applied to the seed-averaged OOF scores of its "
        "member configuration in these folders (does the threshold survive this hold-out?)",
    )
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"bench.recipe_cv: data not found: {args.data!r}", file=sys.stderr)
        return 2
    if args.summary:
        return summary([Path(d) for d in args.summary.split(",") if d], args)
    if args.probe:
        args.out.mkdir(parents=True, exist_ok=True)
        result = probe(args.data, args.folds, args.fold_seed)
        (args.out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    from radlens.training.recipe import cross_validate

    table = configs()
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        print(
            f"bench.recipe_cv: unknown config(s) {unknown}; known: {sorted(table)}", file=sys.stderr
        )
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s]
    mixed = mixed_holdout(args.out, fold_kind(args))
    if mixed:
        print(mixed, file=sys.stderr)
        return 2
    cache: dict[int, Any] = {}
    folds = None
    for seed in seeds:
        for name in names:
            recipe = with_epochs(table[name], args.epochs)
            if recipe.image_size not in cache:
                cache[recipe.image_size] = load(args.data, recipe.image_size)
            images, labels = cache[recipe.image_size]
            if folds is None:
                folds = folds_for(
                    args.data, args.holdout, labels, args.folds, args.fold_seed, args.copies_apart
                )
            load_before = os.getloadavg()
            print(f"{name} seed {seed}: {recipe.to_dict()}", flush=True)
            cv = cross_validate(images, labels, folds, recipe, seed=seed, tta_shift=args.tta_shift)
            record_run(args.out, name, cv, labels, load_before, fold_kind(args))
    report_path = args.out / "cv.json"
    report: dict[str, Any] = (
        json.loads(report_path.read_text()) if report_path.is_file() else {"runs": {}}
    )
    if args.ensembles:
        ensembles(args.out, report, names, args)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def seed_files(folder: Path, name: str, tta: bool) -> list[Path]:
    """The OOF files of configuration ``name``, one per seed: ``oof_<name>_s<seed>[_tta].npy``
    exactly (a glob would also take ``filters_strongaug``'s files for ``filters``)."""
    pattern = re.compile(rf"oof_{re.escape(name)}_s\d+{'_tta' if tta else ''}\.npy")
    return sorted(f for f in folder.glob("oof_*.npy") if pattern.fullmatch(f.name))


def ensembles(out: Path, report: dict[str, Any], names: list[str], args: Any) -> None:
    """Seed-averaged OOF scores: the OOF figures of an ensemble of one member per seed."""
    import numpy as np

    _, labels = load(args.data, 32)
    folds = folds_for(
        args.data, args.holdout, labels, args.folds, args.fold_seed, args.copies_apart
    )
    report.setdefault("ensembles", {})
    for name in names:
        for suffix in ("", "_tta"):
            files = seed_files(out, name, tta=suffix == "_tta")
            if len(files) < 2:
                continue
            scores = np.mean([np.load(f) for f in files], axis=0)
            key = f"{name}{suffix}_x{len(files)}"
            report["ensembles"][key] = summarise(labels, scores, folds)
            print(line(key, report["ensembles"][key]), flush=True)


def summary(folders: list[Path], args: Any) -> int:
    """Merge runs from several ``--out`` folders (the seeds may run as separate processes)."""
    import numpy as np

    runs: dict[str, Any] = {}
    holdouts = set()
    for folder in folders:
        report = read_json(folder / "cv.json", ("runs",), "a bench.recipe_cv --out folder's")
        if report is None:
            return 2
        runs.update(report["runs"])
        holdouts.add(report.get("holdout", "random"))  # runs before the option: random folds
    if len(holdouts) > 1:
        print(
            f"bench.recipe_cv: the folders mix hold-outs {sorted(holdouts)}; summarise each "
            "hold-out's folders on their own",
            file=sys.stderr,
        )
        return 2
    (holdout,) = holdouts
    _, labels = load(args.data, 32)
    kind, apart = parse_fold_kind(holdout)
    folds = folds_for(args.data, kind, labels, args.folds, args.fold_seed, apart)
    merged: dict[str, Any] = {"holdout": holdout, "runs": runs, "ensembles": {}, "ranking": {}}
    print(f"per run (OOF over train+val, {holdout} hold-out, mean +- sd over folds):")
    for key in sorted(runs):
        print(line(key, runs[key]["plain"]))
        if "tta" in runs[key]:
            print(line(f"{key} +tta", runs[key]["tta"]))
    configs_seen = sorted({r["config"] for r in runs.values()})
    print("seed-averaged OOF scores (an ensemble of one member per seed):")
    for name in configs_seen:
        for suffix in ("", "_tta"):
            # one file per seed: a seed run in two folders counts once (the last folder wins,
            # as for the runs)
            by_seed = {
                f.name: f for folder in folders for f in seed_files(folder, name, suffix == "_tta")
            }
            files = list(by_seed.values())
            if len(files) < 2:
                continue
            scores = np.mean([np.load(f) for f in files], axis=0)
            key = f"{name}{suffix} x{len(files)} seeds"
            merged["ensembles"][key] = summarise(labels, scores, folds)
            print(line(key, merged["ensembles"][key]))
    seeds = sorted({r["seed"] for r in runs.values()})
    both = [c for c in configs_seen if all(f"{c}_s{s}" in runs for s in seeds)]
    if len(seeds) >= 2 and len(both) >= 2:
        for metric in ("auc", "accuracy_at_test_prior"):
            orders = {
                s: sorted(
                    both, key=lambda c, s=s: -runs[f"{c}_s{s}"]["plain"]["at_0.5"][metric]["mean"]
                )
                for s in seeds
            }
            merged["ranking"][metric] = orders
            print(f"ranking by {metric}: " + "; ".join(f"seed {s}: {o}" for s, o in orders.items()))
    if args.against:
        merged["paired"] = paired(folders, runs, args.against, labels, folds)
    if args.apply_thresholds:
        applied = apply_thresholds(folders, args.apply_thresholds, labels, folds)
        if applied is None:
            return 2
        merged["thresholds_applied"] = applied
    out = args.out / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    return 0


def read_json(path: Path, keys: tuple[str, ...], what: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` if it holds ``keys``, else None and a one-line message."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"bench.recipe_cv: cannot read {path}: {exc}", file=sys.stderr)
        return None
    missing = [k for k in keys if not isinstance(value, dict) or k not in value]
    if missing:
        print(
            f"bench.recipe_cv: {path} is not {what} figures file: it lacks {missing}",
            file=sys.stderr,
        )
        return None
    return value  # type: ignore[no-any-return]


def apply_thresholds(
    folders: list[Path], figures_path: Path, labels: Any, folds: Any
) -> dict[str, Any] | None:
    """A cv-ensemble run's operating points (``bench.pneumonia --out``) applied to the
    seed-averaged OOF scores of its member configuration in ``folders``: sensitivity,
    specificity and accuracy at the test prior at each point's threshold, beside the scores'
    own balanced threshold. None (and a message) when the folders hold no such scores."""
    import numpy as np

    from radlens.training.metrics import decision_threshold
    from radlens.training.recipe import fold_figures

    figures = read_json(
        figures_path, ("model", "member_config", "operating_points"), "a cv-ensemble run's (--out)"
    )
    if figures is None:
        return None
    points_in = figures["operating_points"]
    if not isinstance(points_in, dict) or not all(
        isinstance(p, dict) and isinstance(p.get("threshold"), int | float)
        for p in points_in.values()
    ):
        print(
            f"bench.recipe_cv: {figures_path}: operating_points must map each name to an "
            "object with a numeric threshold",
            file=sys.stderr,
        )
        return None
    name = figures["member_config"]
    by_seed = {f.name: f for folder in folders for f in seed_files(folder, name, tta=False)}
    if not by_seed:
        print(f"bench.recipe_cv: no OOF scores of {name!r} in {folders}", file=sys.stderr)
        return None
    scores = np.mean([np.load(f) for f in by_seed.values()], axis=0)

    def rates(threshold: float) -> dict[str, Any]:
        figures = fold_figures(labels, scores, folds, threshold)
        # a shifted group shows in its own fold: one threshold may miss it while the pooled
        # rates look fine, so the worst fold of each rate is kept with the pooled one
        worst = {
            rate: {
                "value": min(figures[rate]["folds"]),
                "fold": int(np.argmin(figures[rate]["folds"])),
            }
            for rate in ("sensitivity", "specificity")
        }
        return {"threshold": float(threshold), **figures["pooled"], "worst_fold": worst}

    points = {n: rates(p["threshold"]) for n, p in points_in.items()}
    own = rates(decision_threshold("balanced", labels, scores))
    print(f"{figures['model']}'s operating points on {len(by_seed)} seed(s) of {name}'s OOF here:")
    for n, r in [*points.items(), ("own balanced", own)]:
        w = r["worst_fold"]
        print(
            f"  {n:<13} threshold {r['threshold']:.4f}  sensitivity {r['sensitivity']:.3f}  "
            f"specificity {r['specificity']:.3f}  acc@prior {r['accuracy_at_test_prior']:.4f}  "
            f"worst fold: sensitivity {w['sensitivity']['value']:.3f} (fold "
            f"{w['sensitivity']['fold']}), specificity {w['specificity']['value']:.3f} (fold "
            f"{w['specificity']['fold']})"
        )
    return {"model": figures["model"], "member": name, "points": points, "own_balanced": own}


def paired(
    folders: list[Path], runs: dict[str, Any], against: str, labels: Any, folds: Any
) -> dict[str, Any]:
    """Each configuration minus ``against`` at the same seed, fold by fold (same folds)."""
    import numpy as np

    from radlens.training.recipe import paired_fold_differences

    def oof(key: str) -> Path | None:
        found = [f / f"oof_{key}.npy" for f in folders if (f / f"oof_{key}.npy").is_file()]
        return found[-1] if found else None  # the last folder wins, as for the runs

    result: dict[str, Any] = {}
    print(f"paired by fold against {against} (same seed, same folds):")
    for key in sorted(runs):
        name, seed = runs[key]["config"], runs[key]["seed"]
        reference, candidate = oof(f"{against}_s{seed}"), oof(key)
        if name == against or reference is None or candidate is None:
            continue
        d = paired_fold_differences(labels, np.load(reference), np.load(candidate), folds)
        result[key] = d
        a, b = d["auc"], d["accuracy_at_test_prior"]
        n = len(a["folds"])
        print(
            f"{key:<22} AUC {a['mean']:+.4f} +- {a['sd']:.4f} (better on {a['better']}/{n})  "
            f"acc@prior,bal {b['mean']:+.4f} +- {b['sd']:.4f} (better on {b['better']}/{n})"
        )
    return result


if __name__ == "__main__":
    raise SystemExit(main())

"""How much copies dealt to different folds inflate the selection signal (issue 19).

Not a test. PneumoniaMNIST's train+val holds 24 groups of identical images (50 images). With
copies dealt to folds one by one (``bench.recipe_cv --copies-apart``, the folds of every run
before 5 December 2026 23:45 UTC) an image can be scored out of fold by a model that trained on its
twin. Run one configuration both ways, then compare the two OOF score files:

    .venv/bin/python -m bench.recipe_cv --configs filters_e12_intensity_ls_center --seeds 1 \\
        --tta-shift 0 --copies-apart --out runs/dup_apart
    .venv/bin/python -m bench.recipe_cv --configs filters_e12_intensity_ls_center --seeds 1 \\
        --tta-shift 0 --out runs/dup_together
    .venv/bin/python -m bench.copies_effect runs/dup_apart runs/dup_together \\
        --config filters_e12_intensity_ls_center --seed 1

It prints, for each run, the OOF AUC over all images and over the images without a copy, and
for the copies themselves the mean absolute error of their scores and how many were scored by
a model that had trained on their twin.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.recipe_cv import DEFAULT_NPZ, copy_keys, folds_for, load  # noqa: E402


def figures(labels: Any, scores: Any, folds: Any, keys: list[str], name: str) -> dict[str, Any]:
    """OOF AUC over all and over the images without a copy; the copies' error and leaks."""
    from collections import Counter

    import numpy as np
    from sklearn.metrics import roc_auc_score

    count = Counter(keys)
    copied = np.array([count[k] > 1 for k in keys])
    fold_of: dict[str, set[int]] = {}
    for key, fold in zip(keys, folds, strict=True):
        fold_of.setdefault(key, set()).add(int(fold))
    # scored by a model that trained on its twin: the twin sat in another fold
    leaked = np.array([len(fold_of[k]) > 1 for k in keys])
    error = np.abs(scores - labels)
    result = {
        "run": name,
        "auc_all": round(float(roc_auc_score(labels, scores)), 4),
        "auc_without_copies": round(float(roc_auc_score(labels[~copied], scores[~copied])), 4),
        "copies": int(copied.sum()),
        "copies_scored_after_training_on_twin": int(leaked.sum()),
        "copies_mean_abs_error": round(float(error[copied].mean()), 4),
        "leaked_mean_abs_error": round(float(error[leaked].mean()), 4) if leaked.any() else None,
        "others_mean_abs_error": round(float(error[~copied].mean()), 4),
    }
    print(
        f"{name:<40} AUC all {result['auc_all']:.4f}  without copies "
        f"{result['auc_without_copies']:.4f}  copies {result['copies']} (scored after training "
        f"on the twin: {result['copies_scored_after_training_on_twin']}), mean |score - label|: "
        f"copies {result['copies_mean_abs_error']:.4f}, the rest "
        f"{result['others_mean_abs_error']:.4f}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("apart", type=Path, help="--out of the run with --copies-apart")
    p.add_argument("together", type=Path, help="--out of the same run without it")
    p.add_argument("--config", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fold-seed", type=int, default=0)
    p.add_argument("--data", default=str(DEFAULT_NPZ))
    args = p.parse_args(argv)
    files = [d / f"oof_{args.config}_s{args.seed}.npy" for d in (args.apart, args.together)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not Path(args.data).is_file():
        print(f"bench.copies_effect: not found: {missing or args.data}", file=sys.stderr)
        return 2
    labels = load(args.data, 28)[1]
    keys = copy_keys(args.data)
    for out, apart in ((files[0], True), (files[1], False)):
        folds = folds_for(args.data, "random", labels, args.folds, args.fold_seed, apart)
        figures(
            labels,
            np.load(out),
            folds,
            keys,
            f"{out.parent.name} (copies {'apart' if apart else 'together'})",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

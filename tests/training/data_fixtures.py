"""Small on-disk data sets for the training.data tests (written into tmp_path)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8/uint16 gray array, as Pillow writes them."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))
    return path


def random_gray(rng: np.random.Generator, size: int = 32, bright: bool = False) -> np.ndarray:
    """A random uint8 image; ``bright`` ones have a light square (a learnable signal)."""
    image = rng.integers(0, 120, size=(size, size), dtype=np.uint8)
    if bright:
        image[size // 4 : size // 2, size // 4 : size // 2] = 230
    return image


def png_folder(
    root: Path,
    *,
    n_per_class: int = 4,
    size: int = 32,
    classes: Iterable[str] = ("normal", "abnormal"),
    seed: int = 0,
) -> Path:
    """``root/<class>/<i>.png``, with every second file one folder deeper."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        for i in range(n_per_class):
            sub = root / name / ("deep" if i % 2 else "")
            write_png(sub / f"{name}_{i:03d}.png", random_gray(rng, size, bright=label == 1))
    return root


def write_csv(path: Path, rows: Iterable[Mapping[str, object]]) -> Path:
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_npz(
    path: Path,
    *,
    n: Mapping[str, int] | None = None,
    size: int = 28,
    label_shape_2d: bool = True,
    seed: int = 0,
) -> Path:
    """A MedMNIST-style npz with ``{split}_images`` uint8 and ``{split}_labels``."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, count in (n or {"train": 12, "val": 6}).items():
        labels = np.arange(count) % 2
        images = np.stack([random_gray(rng, size, bright=bool(lab)) for lab in labels])
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels[:, None] if label_shape_2d else labels
    np.savez(path, **arrays)
    return path


FINDING_BOXES = {  # finding -> the image quarter lit up when an image has it (learnable)
    "Effusion": (slice(0, 16), slice(0, 16)),
    "Infiltration": (slice(16, 32), slice(16, 32)),
    "Nodule": (slice(0, 16), slice(16, 32)),
}


def finding_image(rng: np.random.Generator, findings: Iterable[str], size: int = 32) -> np.ndarray:
    """A random dark uint8 image with a bright quarter per finding (32 px layout)."""
    image = rng.integers(0, 90, size=(size, size), dtype=np.uint8)
    for name in findings:
        rows, cols = FINDING_BOXES[name]
        image[rows, cols] = 230
    return image


def multilabel_csv(
    root: Path,
    *,
    n: int = 48,
    seed: int = 0,
    column: str = "findings",
    separator: str = "|",
    none_name: str = "No Finding",
) -> Path:
    """``root/labels.csv`` (path, split, ``column``, patient_id) over ``n`` 32 px PNGs whose
    findings cycle through none, each one alone and pairs; a fixed train/val/test split."""
    rng = np.random.default_rng(seed)
    combos: list[tuple[str, ...]] = [
        (),
        ("Effusion",),
        ("Infiltration",),
        ("Nodule",),
        ("Effusion", "Infiltration"),
        ("Infiltration", "Nodule"),
    ]
    rows = []
    for i in range(n):
        combo = combos[i % len(combos)]
        split = ("train", "train", "train", "train", "val", "test")[(i // len(combos)) % 6]
        path = write_png(root / "images" / f"img_{i:03d}.png", finding_image(rng, combo))
        rows.append(
            {
                "path": path.relative_to(root).as_posix(),
                "split": split,
                column: separator.join(combo) if combo else none_name,
                "patient_id": f"P{i:03d}",
            }
        )
    return write_csv(root / "labels.csv", rows)

"""Train/serve parity: the training pipeline yields exactly what the service feeds the model.

The service calls ``models.preprocessing.preprocess(bytes, size=, window=).model_input()``
on an upload. For the same file, the training pipeline in validation mode (no shuffling, no
augmentation) must yield an identical array (``np.array_equal``, not "close"), for real
DICOM (CR, CT, MONOCHROME1, JPEG / JPEG-LS / JPEG 2000 encodings), real PNG (RGB and RGBA)
and the synthetic demo DICOM. For .npz sources, ``preprocess_array`` must equal
``preprocess`` of the PNG bytes of the same array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.models.preprocessing import preprocess, preprocess_array
from radlens.training.data.demo import write_demo_dataset
from radlens.training.data.pipeline import make_dataset
from radlens.training.data.sources import open_source
from tests.conftest import shared_data_path
from tests.training.data_fixtures import png_bytes, write_csv

pytestmark = pytest.mark.shared_data

NIH_PNGS = (
    "test/0_normal/00000231_013.png",  # RGB
    "test/0_normal/00000273_004.png",  # RGBA
    "train/0_normal/00000059_001.png",  # RGBA
    "train/1_abnormal/00000013_005.png",
)
SIZES = [(64, 64), (48, 80)]


def _assert_pipeline_matches_service(
    files: list[Path], tmp_path: Path, *, size: tuple[int, int], window: str | None
) -> None:
    rows = [{"path": str(f), "label": i % 2} for i, f in enumerate(files)]
    source = open_source(write_csv(tmp_path / "parity.csv", rows))
    assert source.skipped == [] and len(source.examples) == len(files)
    ds = make_dataset(
        source, source.examples, size=size, window=window, batch_size=3, training=False
    )
    yielded = np.concatenate([x.numpy() for x, _ in ds])
    assert len(yielded) == len(files)
    for array, path in zip(yielded, files, strict=True):
        served = preprocess(path.read_bytes(), size=size, window=window).model_input()
        assert served.dtype == array.dtype == np.float32
        assert array.shape == served.shape == (*size, 1)
        assert np.array_equal(array, served), f"train/serve mismatch for {path.name}"


@pytest.mark.parametrize(
    ("window", "size"), [(None, (64, 64)), ("lung", (64, 64)), (None, (48, 80))]
)
def test_shared_dicom(tmp_path: Path, size: tuple[int, int], window: str | None) -> None:
    files = sorted(shared_data_path("dicom").glob("*.dcm"))
    assert len(files) >= 8
    _assert_pipeline_matches_service(files, tmp_path, size=size, window=window)


@pytest.mark.parametrize("size", SIZES)
def test_nih_png(tmp_path: Path, size: tuple[int, int]) -> None:
    root = shared_data_path("nih1000")
    files = [root / rel for rel in NIH_PNGS]
    _assert_pipeline_matches_service(files, tmp_path, size=size, window=None)


@pytest.mark.parametrize("window", [None, "lung"])
def test_demo_dicom(tmp_path: Path, window: str | None) -> None:
    out = tmp_path / "demo"
    write_demo_dataset(out, n_per_class=4, size=96, seed=1, modality="mixed")
    files = sorted(out.rglob("*.dcm"))
    _assert_pipeline_matches_service(files, tmp_path, size=(64, 64), window=window)


@pytest.mark.parametrize("size", [None, (28, 28), (64, 64), (40, 24)])
def test_npz_arrays_match_their_png(size: tuple[int, int] | None) -> None:
    path = shared_data_path("pneumoniamnist", "pneumoniamnist_28_trainval.npz")
    source = open_source(path, class_names=["normal", "pneumonia"])
    for example in source.examples[::997]:
        raw = source.raw_array(example)
        from_array = preprocess_array(raw, size=size)
        from_png = preprocess(png_bytes(raw), size=size).pixels
        assert np.array_equal(from_array, from_png), example.key


def test_npz_pipeline_matches_png_upload() -> None:
    path = shared_data_path("pneumoniamnist", "pneumoniamnist_28_trainval.npz")
    source = open_source(path, class_names=["normal", "pneumonia"])
    examples = [e for e in source.examples if e.split == "val"][:10]
    ds = make_dataset(source, examples, size=64, batch_size=4, training=False)
    yielded = np.concatenate([x.numpy() for x, _ in ds])
    for array, example in zip(yielded, examples, strict=True):
        upload = png_bytes(source.raw_array(example))  # what a user would send the service
        assert np.array_equal(array, preprocess(upload, size=(64, 64)).model_input())

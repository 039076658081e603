"""TensorBoard's sample and filter images, read back with TensorBoard's own EventAccumulator.

QA round 71: the ``filters/<name>`` images were zero-padded responses scaled min-max, so the
false edge that zero padding draws along a bright image's frame held the extremes and the
radiograph inside used about half of the gray range (a 64x64 NIH image's Sobel interior
spanned 28..158 of 0..255).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from radlens.models.ops import FILTER_NAMES, KERNELS
from radlens.models.preprocessing import preprocess
from radlens.training.callbacks import SampleImagesCallback
from tests.conftest import shared_data_path

NIH = [
    ("nih1000", "test", "0_normal", "00000231_013.png"),  # RGB
    ("nih1000", "test", "0_normal", "00000273_004.png"),  # RGBA (opaque)
]


def images_by_tag(log_dir: Path) -> dict[str, list[np.ndarray]]:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    found: dict[str, list[np.ndarray]] = {}
    for tag in accumulator.Tags()["tensors"]:
        (event,) = accumulator.Tensors(tag)
        assert event.step == 0
        width, height, *pngs = tensor_util.make_ndarray(event.tensor_proto)
        decoded = []
        for png in pngs:
            with Image.open(io.BytesIO(png)) as image:
                assert image.size == (int(width), int(height))
                decoded.append(np.asarray(image.convert("L")).astype(np.int64))
        found[tag] = decoded
    return found


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, dict]:
    pixels = np.stack(
        [preprocess(shared_data_path(*parts).read_bytes()).pixels for parts in NIH]
    ).astype(np.float32)
    log_dir = tmp_path_factory.mktemp("tb") / "validation"
    SampleImagesCallback(log_dir, pixels[..., None]).on_train_begin()
    return pixels, images_by_tag(log_dir)


def test_tags_as_documented(logged):
    _, images = logged
    assert set(images) == {"inputs/as_model_sees_them"} | {f"filters/{n}" for n in FILTER_NAMES}
    assert all(len(batch) == len(NIH) for batch in images.values())


def test_inputs_are_the_model_input(logged):
    pixels, images = logged
    for got, want in zip(images["inputs/as_model_sees_them"], pixels, strict=True):
        assert np.abs(got - np.rint(want * 255)).max() <= 1


@pytest.mark.parametrize("kind", FILTER_NAMES)
def test_filters_are_mirrored_at_the_border_and_scaled_min_max(logged, kind):
    pixels, images = logged
    for got, image in zip(images[f"filters/{kind}"], pixels, strict=True):
        response = ndimage.correlate(
            image.astype(np.float64), KERNELS[kind].astype(np.float64), mode="reflect"
        )
        unit = (response - response.min()) / (response.max() - response.min())
        assert np.abs(got - np.rint(unit * 255)).max() <= 1
        assert got.min() == 0 and got.max() == 255

"""The course's numpy convolution computes in the image's float dtype (QA 81).

A float32 image (what preprocessing makes and Keras computes in) is convolved in float32, not
copied to float64; the result agrees with the float64 computation within float32 tolerance,
on real chest X-rays and with every kind of kernel. Integer images are still computed in
float64, exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.models import ops

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pneumoniamnist"
DATA = DATA / "pneumoniamnist_28_trainval.npz"
RNG = np.random.default_rng(81)
RTOL32 = 1e-5  # float32's 2**-23 times a few accumulated 3x3 / 5x5 products


def _real_images() -> np.ndarray:
    if not DATA.exists():
        pytest.skip(f"real data not found at {DATA} (see ../shared/data/README.md)")
    with np.load(DATA) as npz:
        images = npz["train_images"][:16]
    return images.astype(np.float32) / np.float32(255.0)  # (16, 28, 28) in [0, 1]


def _close32(got: np.ndarray, reference: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(got, reference, rtol=0, atol=RTOL32 * scale)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", ops.FILTER_NAMES)
def test_float32_image_convolved_in_float32_on_real_xrays(name, stride, padding):
    for image in _real_images():
        got = ops.conv2d(image, ops.KERNELS[name], stride=stride, padding=padding)
        assert got.dtype == np.float32
        reference = ops.conv2d(
            image.astype(np.float64), ops.KERNELS[name], stride=stride, padding=padding
        )
        assert reference.dtype == np.float64
        _close32(got, reference)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_multichannel_and_depthwise_kernels_keep_float32(padding):
    image = RNG.random((33, 29, 3)).astype(np.float32)
    kernel = RNG.normal(size=(5, 5, 3, 4))  # float64 weights: the image's precision wins
    got = ops.conv2d(image, kernel, stride=2, padding=padding)
    assert got.dtype == np.float32 and got.shape[-1] == 4
    _close32(got, ops.conv2d(image.astype(np.float64), kernel, stride=2, padding=padding))
    depthwise = ops.conv2d(image, ops.KERNELS["sobel_h"], padding=padding)
    assert depthwise.dtype == np.float32 and depthwise.shape[-1] == 3
    _close32(
        depthwise, ops.conv2d(image.astype(np.float64), ops.KERNELS["sobel_h"], padding=padding)
    )


def test_float32_input_is_not_copied_to_float64():
    # the old code made a float64 copy of the (padded) image: 8 bytes per pixel
    import tracemalloc

    image = RNG.random((1024, 1024)).astype(np.float32)
    tracemalloc.start()
    try:
        ops.conv2d(image, ops.KERNELS["blur"], padding="same")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # padded float32 copy (4 MiB) + float32 result (4 MiB); float64 would need 16 MiB+
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_other_dtypes():
    ints = np.arange(30, dtype=np.uint16).reshape(5, 6)
    got = ops.conv2d(ints, np.ones((2, 2), dtype=np.int64))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(
        got, ints[:-1, :-1] + ints[1:, :-1] + ints[:-1, 1:] + ints[1:, 1:]
    )
    half = ops.conv2d(ints.astype(np.float16), ops.KERNELS["outline"])
    assert half.dtype == np.float32
    wide = ops.conv2d(ints.astype(np.float64), ops.KERNELS["outline"])
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(half, wide)  # small integers: exact in either


def test_apply_filter_keeps_float64_sums_for_display():
    # conv2d itself follows the input; the display filter still sums in float64, so a flat
    # region gives exactly 0 (float32 sums leave ~1e-7 there, drawn at full brightness by a
    # display scaled by its largest response: tests/cli/test_qa71_filter_border.py)
    flat = np.full((5, 7), 200 / 255, dtype=np.float32)
    for name in ("sobel_h", "sobel_v", "outline"):
        got = ops.apply_filter(flat, name, border="reflect")
        assert got.dtype == np.float32
        assert not got.any(), (name, np.abs(got).max())
    for image in _real_images()[:4]:
        for border in ops.BORDERS:
            got = ops.apply_filter(image, "sobel_v", border=border)
            assert got.dtype == np.float32
            _close32(got, ops.apply_filter(image.astype(np.float64), "sobel_v", border=border))

"""preprocess_frames: several frames of one file, parsed once, each exactly as
``preprocess(data, frame=i)`` gives it (real multi-frame files from pydicom and pydicom-data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import radlens.models.preprocessing as preprocessing
from radlens.models.errors import InvalidImageError, NotAnImageError
from radlens.models.preprocessing import frame_indices, preprocess, preprocess_frames

# (file, what it is): real multi-frame images in several encodings
MULTI_FRAME = [
    ("eCT_Supplemental.dcm", "enhanced CT, rescale/window in functional groups (pydicom-data)"),
    ("emri_small.dcm", "10-frame MR, uncompressed"),
    ("emri_small_RLE.dcm", "the same MR, RLE Lossless"),
    ("emri_small_jpeg_2k_lossless.dcm", "the same MR, JPEG 2000 lossless"),
    ("color3d_jpeg_baseline.dcm", "120-frame colour JPEG Baseline"),
]


def real_file(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(str(path)).read_bytes()


def assert_same(got: Any, expected: Any) -> None:
    np.testing.assert_array_equal(got.pixels, expected.pixels)
    assert got.pixels.dtype == expected.pixels.dtype
    assert got.metadata == expected.metadata


@pytest.mark.parametrize(("name", "what"), MULTI_FRAME, ids=[n for n, _ in MULTI_FRAME])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"size": (32, 24), "window": "lung"},
        {"size": (16, 16), "version": "2"},
        {"size": (16, 16), "version": "1"},
    ],
    ids=["native", "lung-32x24", "v2-16", "v1-16"],
)
def test_each_frame_is_what_preprocess_gives_for_it(
    name: str, what: str, options: dict[str, Any]
) -> None:
    data = real_file(name)
    count = preprocess(data).metadata.frames
    assert count > 1, what
    wanted = frame_indices(count, 8)  # every k-th frame of the long ones
    images = list(preprocess_frames(data, wanted, **options))
    assert [image.metadata.frame_index for image in images] == wanted
    for index, image in zip(wanted, images, strict=True):
        assert_same(image, preprocess(data, frame=index, **options))


def test_all_frames_by_default_and_in_the_order_asked() -> None:
    data = real_file("emri_small.dcm")
    assert [i.metadata.frame_index for i in preprocess_frames(data)] == list(range(10))
    assert [i.metadata.frame_index for i in preprocess_frames(data, [7, 2, 7])] == [7, 2, 7]


def test_the_file_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    data = real_file("emri_small.dcm")
    reads = []
    real = preprocessing._read_dicom

    def counting(raw: bytes, *args: Any) -> Any:
        reads.append(len(raw))
        return real(raw, *args)

    monkeypatch.setattr(preprocessing, "_read_dicom", counting)
    assert len(list(preprocess_frames(data, range(10), size=(16, 16)))) == 10
    assert reads == [len(data)]


def test_a_png_has_the_one_frame_0() -> None:
    from tests.app.conftest import png_bytes

    data = png_bytes(seed=3)
    (image,) = preprocess_frames(data, size=(8, 8))
    assert_same(image, preprocess(data, size=(8, 8)))
    with pytest.raises(InvalidImageError, match=r"one frame \(index 0\). Received frame=1"):
        preprocess_frames(data, [0, 1])


def test_file_errors_are_raised_by_the_call_before_any_frame() -> None:
    data = real_file("emri_small.dcm")
    with pytest.raises(InvalidImageError, match="frame index 10 is out of range"):
        preprocess_frames(data, [0, 10])
    with pytest.raises(InvalidImageError, match="frame must be None or a non-negative"):
        preprocess_frames(data, [-1])
    with pytest.raises(InvalidImageError, match="unknown window preset 'lungs'"):
        preprocess_frames(data, window="lungs")
    with pytest.raises(NotAnImageError):
        preprocess_frames(b"not an image at all, nothing like one")

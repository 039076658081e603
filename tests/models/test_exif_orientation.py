"""A PNG or JPEG is turned as its EXIF Orientation says (preprocessing version "4").

The expected images are written from the EXIF specification's table (CIPA DC-008, tag 274:
where the stored 0th row and 0th column lie in the picture as it is meant to be seen), with
numpy's rot90/flip, not with Pillow's exif_transpose that preprocessing calls.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radlens.models.preprocessing import exif_orientation, preprocess
from tests.conftest import shared_data_path

# orientation -> the stored array turned into the array a viewer shows
SPEC: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # 0th row top, 0th column right: mirrored left-right
    3: lambda a: a[::-1, ::-1],  # 0th row bottom, 0th column right: half a turn
    4: lambda a: a[::-1, :],  # 0th row bottom, 0th column left: mirrored top-bottom
    5: lambda a: a.T,  # 0th row left, 0th column top: transposed
    6: lambda a: np.rot90(a, k=-1),  # 0th row right, 0th column top: a quarter turn clockwise
    7: lambda a: a[::-1, ::-1].T,  # 0th row right, 0th column bottom: transverse
    8: lambda a: np.rot90(a, k=1),  # 0th row left, 0th column bottom: counter-clockwise
}


def stored() -> np.ndarray:
    """40x60 8-bit gray with no symmetry: a gradient and a bright block in one corner."""
    arr = np.tile(np.linspace(0, 120, 60, dtype=np.float32), (40, 1))
    arr += np.linspace(0, 60, 40, dtype=np.float32)[:, None]
    arr[:10, :20] = 255
    return arr.astype(np.uint8)


def encode(arr: np.ndarray, kind: str, orientation: int | None) -> bytes:
    image = Image.fromarray(arr)
    options: dict[str, object] = {}
    if orientation is not None:
        exif = image.getexif()
        exif[0x0112] = orientation
        options["exif"] = exif
    if kind == "JPEG":
        options["quality"] = 100
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", sorted(SPEC))
def test_png_is_turned_as_the_specification_says(orientation: int) -> None:
    arr = stored()
    image = preprocess(encode(arr, "PNG", orientation))
    expected = SPEC[orientation](arr).astype(np.float32) / 255.0
    np.testing.assert_array_equal(image.pixels, expected)
    assert (image.metadata.rows, image.metadata.columns) == expected.shape
    assert image.metadata.exif_orientation == (None if orientation == 1 else orientation)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_jpeg_is_turned_the_same_way(orientation: int) -> None:
    arr = stored()
    upright = preprocess(encode(arr, "JPEG", None)).pixels
    image = preprocess(encode(arr, "JPEG", orientation))
    # the same JPEG pixels, turned: exact, since the tag changes no coefficient
    np.testing.assert_array_equal(image.pixels, SPEC[orientation](upright))
    assert image.metadata.exif_orientation == orientation


def test_a_model_trained_under_version_3_is_fed_the_stored_pixels() -> None:
    arr = stored()
    image = preprocess(encode(arr, "PNG", 6), version="3")
    np.testing.assert_array_equal(image.pixels, arr.astype(np.float32) / 255.0)
    assert image.metadata.exif_orientation is None


def test_resize_applies_to_the_turned_image() -> None:
    arr = stored()
    turned = preprocess(encode(arr, "PNG", 6), size=(30, 20)).pixels
    direct = preprocess(encode(SPEC[6](arr).copy(), "PNG", None), size=(30, 20)).pixels
    np.testing.assert_array_equal(turned, direct)


def test_16_bit_png_is_turned_and_keeps_its_depth_scaling() -> None:
    arr = (stored().astype(np.uint16) * 16).astype(np.uint16)  # 12-bit values
    plain = preprocess(encode(arr, "PNG", None)).pixels
    image = preprocess(encode(arr, "PNG", 8))
    np.testing.assert_array_equal(image.pixels, SPEC[8](plain))
    assert image.metadata.bits_stored == preprocess(encode(arr, "PNG", None)).metadata.bits_stored


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_values_outside_the_table_leave_the_image_as_stored(value: int) -> None:
    arr = stored()
    image = preprocess(encode(arr, "PNG", value))
    np.testing.assert_array_equal(image.pixels, arr.astype(np.float32) / 255.0)
    assert image.metadata.exif_orientation is None


def test_unreadable_exif_is_passed_over_as_a_viewer_does() -> None:
    data = encode(stored(), "JPEG", None)
    # a big-endian TIFF header whose first IFD lies far past the end of the block
    payload = b"Exif\x00\x00" + b"MM\x00\x2a\xff\xff\xff\xf0" + b"\x07" * 40
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    broken = data[:2] + app1 + data[2:]
    image = preprocess(broken)
    np.testing.assert_array_equal(image.pixels, preprocess(data).pixels)
    assert image.metadata.exif_orientation is None


def test_exif_orientation_reads_the_tag_of_an_opened_image() -> None:
    with Image.open(io.BytesIO(encode(stored(), "JPEG", 6))) as image:
        assert exif_orientation(image) == 6
    with Image.open(io.BytesIO(encode(stored(), "JPEG", 1))) as image:
        assert exif_orientation(image) is None


def test_a_real_chest_x_ray_is_turned_pixel_for_pixel() -> None:
    path = sorted(shared_data_path("nih1000").glob("train/*/*.png"))[0]
    with Image.open(path) as image:
        gray = np.asarray(image.convert("L"))
    original = preprocess(encode(gray, "PNG", None)).pixels
    turned = preprocess(encode(gray, "PNG", 6)).pixels
    np.testing.assert_array_equal(turned, SPEC[6](original))
    assert not np.array_equal(turned, original)


def test_training_reads_the_turned_image_and_surveys_its_turned_size(tmp_path: Path) -> None:
    from radlens.training.data.intended import image_header
    from radlens.training.data.sources import open_source

    arr = stored()
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.jpg").write_bytes(encode(arr, "JPEG", 6))
    source = open_source(tmp_path)
    example = source.examples[0]
    data = (tmp_path / "a" / "x.jpg").read_bytes()
    expected = preprocess(data, size=(32, 32)).model_input()
    np.testing.assert_array_equal(source.load_pixels(example, size=32), expected)
    header = image_header(source, example)
    assert (header["rows"], header["columns"]) == (60, 40)  # stored 40x60, a quarter turn


def test_an_exif_block_after_the_image_data_does_not_change_the_turn() -> None:
    """A PNG with an eXIf chunk saying 6 before the image data and one saying 3 after it:
    turned by 6, the one read (found in review: Pillow's exif_transpose read the later one
    after the load, turning the pixels by 3 while the metadata said 6)."""
    import struct
    import zlib

    arr = stored()
    data = encode(arr, "PNG", 6)
    with Image.open(io.BytesIO(encode(arr, "PNG", 3))) as image:
        later = image.info["exif"]
    later = later[6:] if later.startswith(b"Exif\x00\x00") else later
    chunk = struct.pack(">I", len(later)) + b"eXIf" + later
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + later))
    iend = data.rindex(b"IEND") - 4
    image = preprocess(data[:iend] + chunk + data[iend:])
    assert image.metadata.exif_orientation == 6
    np.testing.assert_array_equal(image.pixels, SPEC[6](arr).astype(np.float32) / 255.0)

"""``ImageMetadata.blank``: every stored pixel of the frame has one value, whatever the window
(the service refuses such an image: tests/app/test_blank_uploads.py)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radlens.models.preprocessing import blank_image_error, preprocess, preprocess_frames


def ct(pixels: np.ndarray) -> bytes:
    """pydicom's real CT_small.dcm with its pixels replaced (uint16 rows x columns)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def raster(pixels: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


# 16x16 is decoded pixel by pixel; 128x128 (>= 4096 pixels) through the value table
@pytest.mark.parametrize("side", [16, 128])
@pytest.mark.parametrize("window", [None, "lung"])
def test_a_constant_dicom_frame_is_blank_and_one_other_value_is_not(
    side: int, window: str | None
) -> None:
    flat = np.full((side, side), 1000, np.uint16)
    assert preprocess(ct(flat), window=window).metadata.blank
    flat[side // 2, 3] = 1001
    assert not preprocess(ct(flat), window=window).metadata.blank


def test_saturated_by_a_window_is_not_blank() -> None:
    """A bone window (400/1800: from -500 HU) maps -1024 and -1019 HU to 0: the model sees one
    value, but the stored image has contrast (a model's window is the model's matter)."""
    pixels = np.full((16, 16), 0, np.uint16)  # CT_small's rescale: -1024 + stored value
    pixels[:8] = 5
    image = preprocess(ct(pixels), window="bone")
    assert float(image.pixels.max()) == float(image.pixels.min())  # flat to the model
    assert not image.metadata.blank


@pytest.mark.parametrize(
    ("pixels", "kind"),
    [
        (np.zeros((20, 30), np.uint8), "PNG"),
        (np.full((20, 30), 4000, np.uint16), "PNG"),
        (np.full((20, 30, 3), (10, 200, 30), np.uint8), "PNG"),
        (np.full((24, 32), 128, np.uint8), "JPEG"),
    ],
)
def test_a_constant_png_or_jpeg_is_blank(pixels: np.ndarray, kind: str) -> None:
    assert preprocess(raster(pixels, kind)).metadata.blank
    varied = pixels.copy()
    varied[: pixels.shape[0] // 2] = varied[: pixels.shape[0] // 2] // 2 + 1
    assert not preprocess(raster(varied, kind)).metadata.blank


def test_each_frame_of_a_multi_frame_instance_says_whether_it_is_blank() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frames = [np.full((16, 16), 7, np.uint16), np.arange(256, dtype=np.uint16).reshape(16, 16)]
    ds.Rows = ds.Columns = 16
    ds.NumberOfFrames = 2
    ds.PixelData = b"".join(f.tobytes() for f in frames)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    blanks = [f.metadata.blank for f in preprocess_frames(buffer.getvalue(), [0, 1])]
    assert blanks == [True, False]


class TestNearlyBlankFileWindow:
    """Version "4": a file window leaving the whole image within one gray level of an 8-bit
    display (found by the QA round: a window in stored units over a rescale to optical
    density) gives way to min-max, as one mapping it to a single value did before."""

    @staticmethod
    def windowed(width: float) -> bytes:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.WindowCenter, ds.WindowWidth = 0, width
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def test_a_window_a_million_wide_gives_way_to_min_max(self) -> None:
        image = preprocess(self.windowed(1e6))
        assert image.metadata.window == "minmax(not file:0/1e+06)"
        assert (float(image.pixels.min()), float(image.pixels.max())) == (0.0, 1.0)

    def test_version_3_keeps_the_window(self) -> None:
        image = preprocess(self.windowed(1e6), version="3")
        assert image.metadata.window == "file:0/1e+06"
        assert float(image.pixels.max() - image.pixels.min()) < 1 / 255

    def test_a_wide_window_that_still_shows_a_few_levels_is_kept(self) -> None:
        image = preprocess(self.windowed(1e5))
        assert image.metadata.window == "file:0/100000"
        assert float(image.pixels.max() - image.pixels.min()) > 1 / 255


def test_one_colour_all_over_is_blank_in_a_colour_dicom_too() -> None:
    """A colour frame is judged by its gray, as a PNG is: (10, 200, 30) everywhere is blank,
    though its channels differ; pydicom's real SC_rgb.dcm is not."""
    path = get_testdata_file("SC_rgb.dcm")
    ds = pydicom.dcmread(path)
    flat = np.empty((ds.Rows, ds.Columns, 3), np.uint8)
    flat[...] = (10, 200, 30)
    ds.PixelData = flat.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert preprocess(buffer.getvalue()).metadata.blank
    with open(path, "rb") as handle:
        assert not preprocess(handle.read()).metadata.blank


def test_the_blank_error_of_a_multi_frame_file_names_the_frame_read() -> None:
    """Training reads one frame of a multi-frame file (the middle one): its skip reason says
    that frame is blank, not the file (found by QA round 2: "the image is blank" for a file
    whose other frames were not)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frames = [np.arange(256, dtype=np.uint16).reshape(16, 16), np.full((16, 16), 7, np.uint16)]
    frames.append(frames[0])
    ds.Rows = ds.Columns = 16
    ds.NumberOfFrames = 3
    ds.PixelData = b"".join(f.tobytes() for f in frames)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    image = preprocess(buffer.getvalue())
    assert image.metadata.blank and image.metadata.frame_index == 1
    assert str(blank_image_error(image.metadata)).endswith(
        "every stored pixel of frame 1 of 3 (the one read) of the 16x16 DICOM image has the "
        "same value"
    )

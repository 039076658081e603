"""Cheaper preprocessing of large already-decoded gray frames, with the output unchanged (QA 97).

An uncompressed 1955x1841 chest CR spent a third of its preprocessing finding which stored
values occur in the frame (``_ValueTable.present``, a pass over every pixel) for a min-max it
then did not use (the file has a window), and a tenth copying the float image into Pillow for
the resize. Now min-max is computed only when it is the answer, and counts the values present
only when the modality values are not monotonic over the table's domain (then the domain's
ends, the frame's minimum and maximum, are not the extremes); the resize reads the array in
place (``_float_image``). ``PREPROCESSING_VERSION`` stays: every array must be bit for bit
what it was. The tests pin that against straightforward reference computations (pydicom's
rescale, float64 min-max, ``1 - x``, Pillow's resize of ``Image.fromarray``) on generated edge
cases, and check that the skipped work is not done.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import radlens.models.preprocessing as pp

SIZES: list[tuple[int, int] | None] = [None, (224, 224), (64, 64), (37, 50)]


@contextmanager
def presence_counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the computations of ``_ValueTable.present`` (a pass over every pixel)."""
    counted: list[int] = []
    real = pp._ValueTable.__dict__["present"].func

    def present(self: pp._ValueTable) -> np.ndarray:
        counted.append(self.offsets.size)
        return real(self)

    with monkeypatch.context() as m:
        m.setattr(pp._ValueTable, "present", property(present))
        yield counted


@contextmanager
def element_wise(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The module's own per-pixel path: no value table."""
    with monkeypatch.context() as m:
        m.setattr(pp, "_value_table", lambda arr: None)
        yield


def dicom(pixels: np.ndarray, bits: int, photometric: str = "MONOCHROME2", **tags: Any) -> bytes:
    """An Explicit VR Little Endian file of ``pixels`` (int8/uint8 or int16/uint16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def frame(bits: int, signed: bool, seed: int, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    """Stored values of a ``bits``-bit frame: a random subset (many values absent) of a span
    of at most 1500 values at the bottom, the top or (signed) across zero of the depth's
    range, the span's ends present once each: narrow enough for the value table to be used
    on a small frame, at the ends of the range where the sign and unused bits matter."""
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    span = min(hi - lo, 1500)
    start = (lo, hi - span, -span // 2 if signed else lo)[seed % 3]
    dtype = np.dtype(f"{'i' if signed else 'u'}{1 if bits <= 8 else 2}")
    values = rng.integers(start, start + span + 1, size=min(300, span + 1))
    pixels = rng.choice(values, size=shape).astype(dtype)
    pixels[0, 0], pixels[-1, -1] = start, start + span
    return pixels


@contextmanager
def table_used(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Record whether each frame went through the value table."""
    used: list[bool] = []
    real = pp._value_table

    def spy(arr: np.ndarray) -> pp._ValueTable | None:
        table = real(arr)
        used.append(table is not None)
        return table

    with monkeypatch.context() as m:
        m.setattr(pp, "_value_table", spy)
        yield used


def bytes_of(image: pp.PreprocessedImage | np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    pixels = image.pixels if isinstance(image, pp.PreprocessedImage) else image
    return pixels.dtype.str, pixels.shape, pixels.tobytes()  # tobytes: -0.0 is not 0.0 here


def reference_min_max(data: bytes, size: tuple[int, int] | None, *, inverted: bool) -> np.ndarray:
    """What preprocessing does for a file without a window, written out: pydicom's stored
    values and rescale, float64 min-max over the pixels, float32, ``1 - x`` for MONOCHROME1,
    clip, and Pillow's bilinear resize of ``Image.fromarray``."""
    ds = pydicom.dcmread(io.BytesIO(data))
    values = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        pixels = np.zeros(values.shape, np.float32)
    else:
        pixels = ((values - lo) / (hi - lo)).astype(np.float32)
    if inverted:
        pixels = 1.0 - pixels
    pixels = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    if size is None:
        return pixels
    resized = Image.fromarray(np.ascontiguousarray(pixels)).resize(
        (size[1], size[0]), resample=Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


RESCALES: dict[str, dict[str, Any]] = {
    "none": {},
    "identity": {"RescaleSlope": 1, "RescaleIntercept": 0},
    "fractional": {"RescaleSlope": 0.37, "RescaleIntercept": -1024.5},
    "negative slope": {"RescaleSlope": -2.5, "RescaleIntercept": 100},
    "negative slope, -0 intercept": {"RescaleSlope": -1, "RescaleIntercept": "-0"},
    "tiny slope": {"RescaleSlope": 1e-300, "RescaleIntercept": 0},
}


class TestMinMaxWithoutPresenceCount:
    @pytest.mark.parametrize("bits", range(8, 17))
    @pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
    def test_every_depth_and_rescale_equals_the_reference(
        self, bits: int, signed: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for seed, (name, tags) in enumerate(RESCALES.items()):
            for photometric in ("MONOCHROME2", "MONOCHROME1"):
                data = dicom(frame(bits, signed, seed), bits, photometric, **tags)
                for size in SIZES:
                    with table_used(monkeypatch) as used, presence_counted(monkeypatch) as counted:
                        got = pp.preprocess(data, size=size)
                    what = f"{bits}-bit {signed=} {name} {photometric} {size}"
                    assert used == [True], what
                    assert got.metadata.window == "minmax", what
                    assert counted == [], f"{what}: the pixels were counted"
                    want = reference_min_max(data, size, inverted=photometric == "MONOCHROME1")
                    assert bytes_of(got) == bytes_of(want), what
                    with element_wise(monkeypatch):
                        assert bytes_of(pp.preprocess(data, size=size)) == bytes_of(got), what

    @pytest.mark.parametrize("bits", [8, 12, 16])
    def test_a_constant_frame_is_all_zeros_as_before(
        self, bits: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        dtype = np.uint8 if bits == 8 else np.uint16
        for photometric in ("MONOCHROME2", "MONOCHROME1"):
            data = dicom(np.full((80, 80), 3, dtype), bits, photometric, RescaleSlope=2,
                         RescaleIntercept=-1)  # fmt: skip
            for size in SIZES:
                got = pp.preprocess(data, size=size)
                assert got.metadata.blank
                want = reference_min_max(data, size, inverted=photometric == "MONOCHROME1")
                assert bytes_of(got) == bytes_of(want)

    def test_a_non_monotonic_modality_lut_still_counts_the_values_present(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Entries that never occur hold the LUT's extremes: min-max must not see them."""
        entries = 4096
        stored = np.arange(entries)
        lut = np.where(stored % 2 == 0, 100 + stored // 8, 3000 - stored // 8)
        lut[1000], lut[1001] = 0, 4095  # never in the frame
        item = Dataset()
        item.LUTDescriptor = [entries, 0, 16]
        item.ModalityLUTType = "US"
        item.LUTData = [int(v) for v in lut]
        item["LUTData"].VR = "US"
        rng = np.random.default_rng(3)
        occurring = rng.choice(np.setdiff1d(stored, [1000, 1001]), size=300, replace=False)
        pixels = rng.choice(occurring, size=(140, 130)).astype(np.uint16)  # table: >= 4 px a value
        pixels[0, 0], pixels[-1, -1] = 0, entries - 1
        data = dicom(pixels, 12, ModalityLUTSequence=[item])
        for size in SIZES:
            with table_used(monkeypatch) as used, presence_counted(monkeypatch) as counted:
                got = pp.preprocess(data, size=size)
            assert used == [True]
            assert counted, "a non-monotonic table must count the values present"
            assert bytes_of(got) == bytes_of(reference_min_max(data, size, inverted=False))


WINDOWS: dict[str, dict[str, Any]] = {
    "window": {"WindowCenter": 600, "WindowWidth": 900},
    "sigmoid": {"WindowCenter": 300, "WindowWidth": 500, "VOILUTFunction": "SIGMOID"},
    "blanking window": {"WindowCenter": 1e9, "WindowWidth": 1},  # gives way to min-max
    "unusable window": {"WindowCenter": 100, "WindowWidth": 0},  # minmax(not file:...)
}


@pytest.mark.parametrize("bits", [8, 10, 12, 15, 16])
@pytest.mark.parametrize("window", list(WINDOWS))
def test_windows_equal_the_element_wise_path(
    bits: int, window: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file window (applied, or giving way to min-max) with a rescale and either photometric
    interpretation: the table path's bytes and metadata are the per-pixel path's."""
    for seed, signed in enumerate((False, True)):
        for photometric in ("MONOCHROME2", "MONOCHROME1"):
            tags = {**WINDOWS[window], "RescaleSlope": 0.5, "RescaleIntercept": 7}
            data = dicom(frame(bits, signed, 40 + seed), bits, photometric, **tags)
            for size in SIZES:
                with table_used(monkeypatch) as used:
                    got = pp.preprocess(data, size=size)
                assert used == [True]
                with element_wise(monkeypatch):
                    want = pp.preprocess(data, size=size)
                assert bytes_of(got) == bytes_of(want), (bits, window, signed, photometric)
                assert got.metadata == want.metadata


def test_a_file_window_does_not_count_the_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The window applies, so min-max (and the count of values present it needed) is not
    computed at all: before, every frame with a table counted them."""
    data = dicom(frame(12, False, 5, (300, 280)), 12, WindowCenter=2000, WindowWidth=3000)
    with presence_counted(monkeypatch) as counted:
        image = pp.preprocess(data, size=(224, 224))
    assert image.metadata.window == "file:2000/3000"
    assert counted == []


def test_the_uncompressed_chest_cr_does_not_count_the_pixels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pydicom-data's RG1 uncompressed (1955x1841, 15-bit, MONOCHROME1, window 15000/30000):
    the benchmark's radiograph."""
    found = get_testdata_file("RG1_UNCR.dcm")
    if not found:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    data = Path(str(found)).read_bytes()
    with presence_counted(monkeypatch) as counted:
        image = pp.preprocess(data, size=(224, 224))
    assert counted == []
    with element_wise(monkeypatch):
        want = pp.preprocess(data, size=(224, 224))
    assert bytes_of(image) == bytes_of(want)
    assert image.metadata == want.metadata


def pillow_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """resize_image as it was: Pillow's copy of the array (``Image.fromarray``)."""
    arr = np.ascontiguousarray(np.asarray(pixels), dtype=np.float32)
    if arr.shape == size:
        return np.clip(arr, 0.0, 1.0)
    resized = Image.fromarray(arr).resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def resize_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(97)
    base = rng.normal(0.5, 0.4, size=(301, 257))  # outside [0, 1] too
    return {
        "float32": base.astype(np.float32),
        "float64": base,
        "big-endian float32": base.astype(">f4"),
        "transposed": base.astype(np.float32).T,
        "every other column": base.astype(np.float32)[:, ::2],
        "reversed rows": base.astype(np.float32)[::-1],
        "read-only": np.frombuffer(base.astype(np.float32).tobytes(), np.float32).reshape(301, 257),
        "uint16": (base * 1000).clip(0, 65535).astype(np.uint16),
        "one row": base[:1].astype(np.float32),
        "one column": base[:, :1].astype(np.float32),
        "with -0.0": np.where(base < 0.3, -0.0, base).astype(np.float32),
    }


class TestResizeInPlace:
    @pytest.mark.parametrize("name", list(resize_inputs()))
    @pytest.mark.parametrize("size", [(224, 224), (64, 64), (37, 50), (400, 300)])
    def test_resize_equals_pillows_copy(self, name: str, size: tuple[int, int]) -> None:
        pixels = resize_inputs()[name]
        before = pixels.copy()
        assert bytes_of(pp.resize_image(pixels, size)) == bytes_of(pillow_resize(pixels, size))
        assert np.array_equal(pixels, before)  # the input is only read

    def test_the_float_image_is_not_copied(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Pillow reads the array's own memory: ``Image.fromarray``'s copy is not made."""
        pixels = resize_inputs()["float32"]
        want = pillow_resize(pixels, (64, 64))

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("Image.fromarray copied the float image")

        monkeypatch.setattr(Image, "fromarray", refuse)
        assert bytes_of(pp.resize_image(pixels, (64, 64))) == bytes_of(want)

    def test_a_pillow_without_the_mapping_copies_as_before(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pixels = resize_inputs()["float32"]
        want = pillow_resize(pixels, (64, 64))

        def unavailable(*args: object) -> None:
            raise TypeError("map_buffer() takes other arguments")

        monkeypatch.setattr(Image.core, "map_buffer", unavailable)
        assert bytes_of(pp.resize_image(pixels, (64, 64))) == bytes_of(want)

    def test_the_image_keeps_the_array_alive(self) -> None:
        image = pp._float_image(np.full((50, 40), 0.25, np.float32))  # the only reference
        assert image.mode == "F" and image.size == (40, 50)
        assert np.asarray(image.resize((20, 10))).tolist() == [[0.25] * 20] * 10


def array_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    gray8 = rng.integers(0, 256, size=(130, 90), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(130, 90, 3), dtype=np.uint8)
    return {
        "gray8": gray8,
        "gray8 (H, W, 1)": gray8[..., None],
        "gray8 transposed": gray8.T,
        "rgb": rgb,
        "rgb, equal channels": np.repeat(gray8[..., None], 3, axis=2),
        "rgba": np.dstack([rgb, gray8]),
        "rgb every other row": rgb[::2],
        "uint16 12-bit": rng.integers(0, 4096, size=(130, 90), dtype=np.uint16),
        "uint16 full": rng.integers(0, 65536, size=(130, 90), dtype=np.uint16),
        "uint16 reversed": rng.integers(0, 1024, size=(130, 90), dtype=np.uint16)[::-1],
        "uint16 zeros": np.zeros((70, 70), np.uint16),
    }


def reference_array(array: np.ndarray, version: str) -> np.ndarray:
    """preprocess_array's float32 pixels as they were computed: a new array per step."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == np.uint8:
        if array.ndim == 2:
            gray = array.astype(np.float32)
        elif np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
            array[..., 0], array[..., 2]
        ):
            gray = array[..., 0].astype(np.float32)
        else:
            weights = np.asarray((0.299, 0.587, 0.114), dtype=np.float32)
            gray = (array[..., :3].astype(np.float32) @ weights).astype(np.float32)
        pixels = gray / np.float32(255.0)
    elif version == "2":
        pixels = array.astype(np.float32) / np.float32(65535.0)
    else:
        peak = int(array.max())
        bits = next((b for b in (8, 10, 12, 14, 16) if peak < 1 << b), 16)
        scaled = array.astype(np.float32) / np.float32((1 << bits) - 1)
        pixels = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    return np.clip(pixels, 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("name", list(array_inputs()))
@pytest.mark.parametrize("version", ["5", "2"])
def test_preprocess_array_equals_the_step_by_step_reference(name: str, version: str) -> None:
    array = array_inputs()[name]
    before = array.copy()
    want = reference_array(array, version)
    assert bytes_of(pp.preprocess_array(array, version=version)) == bytes_of(want)
    for size in [(224, 224), (64, 64)]:
        got = pp.preprocess_array(array, size=size, version=version)
        assert bytes_of(got) == bytes_of(pillow_resize(want, size))
    assert np.array_equal(array, before)  # the caller's array is not written to


def test_scale_16bit_with_sbit_equals_the_reference() -> None:
    rng = np.random.default_rng(8)
    scaled_up = (rng.integers(0, 1024, size=(64, 64)) << 6).astype(np.uint16)  # 10 bits, scaled
    for significant, values in ((10, scaled_up), (12, scaled_up >> 6), (16, scaled_up)):
        pixels, bits = pp.scale_16bit(values, significant)
        arr = (
            values
            if int(values.max()) < 1 << significant
            else values.astype(np.uint32) >> (16 - significant)
        )
        want = np.clip(arr.astype(np.float32) / np.float32((1 << significant) - 1), 0.0, 1.0)
        assert bits == significant
        assert bytes_of(pixels) == bytes_of(want.astype(np.float32))

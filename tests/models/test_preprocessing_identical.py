"""The fast post-decode path gives exactly the arrays of the element-wise one, on every real file.

``models.preprocessing`` runs the per-value steps of an integer gray frame (modality LUT, VOI or
window preset, MONOCHROME1 / INVERSE inversion, [0, 1]) once per stored value in the frame's
range and looks every pixel up (``_value_table``, ``_ValueTable.lookup``). It may not change an
output bit, or ``PREPROCESSING_VERSION`` would have to change. The reference is the
element-wise path the module still takes for float pixels and wide value ranges: turning
``_value_table`` off sends every frame down it.

The corpus is the one ``test_preprocessing_corpus.py`` checks (pydicom's test files,
pydicom-data, ../shared/data/dicom): every file is preprocessed with the table and without it,
at every preprocessing version still accepted, with and without a window preset and a resize,
and its frames through ``preprocess_frames``; files refused are refused the same way.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import radlens.models.preprocessing as pp
from radlens.models.errors import PreprocessingError
from tests.models.test_preprocessing_corpus import corpus

OPTIONS: dict[str, dict[str, Any]] = {
    "v3": {},
    "v3-lung-64": {"window": "lung", "size": (64, 64)},
    "v2-bone-48x40": {"version": "2", "window": "bone", "size": (48, 40)},
    "v1-40x48": {"version": "1", "size": (40, 48)},
}
MAX_FRAMES = 3  # frames of a multi-frame file compared through preprocess_frames


@contextmanager
def element_wise(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The reference: no value table, every step over every pixel."""
    with monkeypatch.context() as m:
        m.setattr(pp, "_value_table", lambda arr: None)
        yield


@contextmanager
def tables_counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Record, per frame, whether the table path was taken."""
    taken: list[bool] = []
    real = pp._value_table

    def spy(arr: np.ndarray) -> pp._ValueTable | None:
        table = real(arr)
        taken.append(table is not None)
        return table

    with monkeypatch.context() as m:
        m.setattr(pp, "_value_table", spy)
        yield taken


def outcome(call: Callable[[], list[pp.PreprocessedImage]]) -> Any:
    try:
        return call()
    except PreprocessingError as exc:
        return type(exc), str(exc)


def assert_same(fast: Any, reference: Any, what: str) -> None:
    if isinstance(reference, tuple):  # refused: the same way
        assert fast == reference, what
        return
    assert not isinstance(fast, tuple), f"{what}: refused only with the table: {fast}"
    assert len(fast) == len(reference), what
    for got, want in zip(fast, reference, strict=True):
        assert got.pixels.dtype == want.pixels.dtype == np.float32, what
        assert got.pixels.shape == want.pixels.shape, what
        assert np.array_equal(got.pixels, want.pixels), (
            f"{what}: max |difference| {np.abs(got.pixels - want.pixels).max()}"
        )
        assert got.metadata == want.metadata, what


def runs(data: bytes) -> dict[str, Callable[[], list[pp.PreprocessedImage]]]:
    """One call per ``OPTIONS`` entry (the multi-frame call: :func:`frames_run`)."""
    return {
        name: lambda options=options: [pp.preprocess(data, **options)]
        for name, options in OPTIONS.items()
    }


def frames_run(data: bytes, frames: int) -> Callable[[], list[pp.PreprocessedImage]] | None:
    if frames <= 1:
        return None
    indices = pp.frame_indices(frames, MAX_FRAMES)
    return lambda: list(pp.preprocess_frames(data, indices, window="lung", size=(64, 64)))


def frame_count(default: Any) -> int:
    """The file's frames, from the ``outcome`` of ``pp.preprocess(data)`` with no options (a
    refusal counts as one frame): the sweep's own ``"v3"`` result, not a further decode."""
    return 1 if isinstance(default, tuple) else int(default[0].metadata.frames)


@pytest.mark.parametrize("path", corpus())
def test_every_real_file_identical(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = path.read_bytes()

    def compare(name: str, call: Callable[[], list[pp.PreprocessedImage]]) -> Any:
        with tables_counted(monkeypatch):
            fast = outcome(call)
        with element_wise(monkeypatch):
            reference = outcome(call)
        assert_same(fast, reference, f"{path.name} [{name}]")
        return fast

    results = {name: compare(name, call) for name, call in runs(data).items()}
    assert OPTIONS["v3"] == {}  # its result gives the frame count
    frames = frames_run(data, frame_count(results["v3"]))
    if frames is not None:
        compare("frames-lung-64", frames)


# Files the table must really serve (so the sweep above is not equal by never using it);
# big-endian frames are too small or too wide here (MR_small_bigendian: 64x64, 2019 values),
# the lookup test below covers them. (file, what it exercises)
TABLE_FILES = [
    ("CT_small.dcm", "signed CT, rescale to HU"),
    ("RG1_UNCR.dcm", "MONOCHROME1 CR, 15-bit, file window"),
    ("vlut_04.dcm", "VOI LUT Sequence"),
    ("mlut_18.dcm", "Modality LUT Sequence"),
    ("liver.dcm", "multi-frame CT"),
    ("693_J2KR.dcm", "signed JPEG 2000 CT, file window"),
    ("emri_small.dcm", "multi-frame MR, min-max"),
]


@pytest.mark.parametrize(("name", "what"), TABLE_FILES, ids=[n for n, _ in TABLE_FILES])
def test_the_table_serves_the_files_that_exercise_it(
    name: str, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = Path(str(get_testdata_file(name))).read_bytes()
    with tables_counted(monkeypatch) as taken:
        for options in OPTIONS.values():
            pp.preprocess(data, **options)
    # The first run is at full size; a reduced decode (693_J2KR at 1/8 for 64 px) may leave
    # too few pixels for a table to pay, and those runs go element-wise.
    assert taken and taken[0], f"{name} ({what}) took the element-wise path: {taken}"


def test_an_off_by_one_lookup_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison has teeth: a table read one entry off differs from the reference."""
    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    with element_wise(monkeypatch):
        reference = pp.preprocess(data, window="lung")

    def one_off(self: pp._ValueTable, values: np.ndarray) -> np.ndarray:
        shifted = np.minimum(self.offsets.astype(np.intp) + 1, values.size - 1)
        return np.take(values, shifted)

    with monkeypatch.context() as m:
        m.setattr(pp._ValueTable, "lookup", one_off)
        wrong = pp.preprocess(data, window="lung")
    assert not np.array_equal(wrong.pixels, reference.pixels)
    assert np.array_equal(pp.preprocess(data, window="lung").pixels, reference.pixels)


FRAMES = {
    "uint8 from 0": np.arange(256, dtype=np.uint8),
    "int8, full range": np.arange(-128, 128, dtype=np.int16).astype(np.int8),
    "uint16 from 874": np.arange(874, 874 + 3000, dtype=np.uint16),
    "int16, negative": np.arange(-2048, 2048, dtype=np.int16),
    "int16, full range": np.arange(-32768, 32768, dtype=np.int32).astype(np.int16),
    "uint16, full range": np.arange(0, 65536, dtype=np.int32).astype(np.uint16),
    "int32, negative": np.arange(-70000, -66000, dtype=np.int32),
    "big-endian int16": np.arange(-300, 400, dtype=np.int16).astype(">i2"),
    "big-endian uint16 from 0": np.arange(0, 700, dtype=np.uint16).astype(">u2"),
}


@pytest.mark.parametrize("case", list(FRAMES))
def test_lookup_gives_each_pixel_its_own_entry(case: str) -> None:
    """``lookup`` of the domain is the frame itself, and of 0..n-1 is ``frame - min``:
    an offset one off (or a wrap-around gone wrong at the ends of the type) fails here."""
    values = FRAMES[case]
    rng = np.random.default_rng(3)
    side = 512 if values.size > 4096 else 128  # at least 4x as many pixels as values
    # (side, side + 7): not a whole number of lookup chunks
    frame = rng.choice(values, size=(side, side + 7)).astype(values.dtype)
    assert frame.size % pp._LOOKUP_CHUNK != 0
    frame.flat[:2] = values[0], values[-1]  # both ends of the range occur
    table = pp._value_table(frame)
    assert table is not None
    assert table.domain.size == values.size
    back = table.lookup(table.domain)
    assert back.shape == frame.shape and np.array_equal(back, frame)
    positions = table.lookup(np.arange(table.domain.size))
    assert np.array_equal(positions, frame.astype(np.int64) - int(values.min()))
    assert table.present.sum() == np.unique(frame).size


def test_float_pixel_data_goes_element_wise(monkeypatch: pytest.MonkeyPatch) -> None:
    """No file at hand has Float Pixel Data; a synthetic one (a parametric-map-like MR frame)
    takes the element-wise path, with and without the table switched on."""
    values = np.random.default_rng(8).normal(800.0, 150.0, size=(96, 80)).astype(np.float32)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    for options in OPTIONS.values():
        with tables_counted(monkeypatch) as taken:
            fast = outcome(lambda options=options: [pp.preprocess(data, **options)])
        with element_wise(monkeypatch):
            reference = outcome(lambda options=options: [pp.preprocess(data, **options)])
        assert taken == [False]
        assert_same(fast, reference, f"float pixels {options}")
        assert not isinstance(fast, tuple), fast

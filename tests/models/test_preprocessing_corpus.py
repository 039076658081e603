"""radlens.models.preprocessing on every real DICOM we have, and on fuzzed DICOM bytes.

The corpus is pydicom's bundled test files, pydicom-data's files (both through
``get_testdata_files()``), pynetdicom's, deid-data's, nibabel's and ../shared/data/dicom.
Each file either decodes to float32 in [0, 1] of its declared (Rows, Columns), or raises a
PreprocessingError subclass; and any file pydicom itself can decode must decode here too, so
"typed error" cannot hide a regression.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files

from radlens.models.errors import InvalidImageError, PreprocessingError
from radlens.models.preprocessing import PreprocessedImage, preprocess
from tests.conftest import (
    KNOWN_BLANK,
    SHARED_DICOM,
    known_mosaic,
    packaged_dicom_paths,
    pynetdicom_dicom_paths,
)

NOT_DICOM_SUFFIXES = {".txt", ".json", ".gz", ".icc", ".dump"}
MAX_FILE_BYTES = 20_000_000  # larger files would dominate the run; none are this big today


def corpus() -> list[pytest.param]:
    params = []
    files = [Path(f) for f in get_testdata_files() if os.path.isfile(f)]
    for path in sorted(files, key=lambda p: (p.name, str(p))):
        if path.suffix.lower() in NOT_DICOM_SUFFIXES:
            continue
        marks = []
        if path.stat().st_size > MAX_FILE_BYTES:
            marks.append(pytest.mark.skip(reason=f"over {MAX_FILE_BYTES} bytes: too slow here"))
        label = f"{path.parent.name}/{path.name}"
        params.append(pytest.param(path, id=label, marks=marks))
    from pydicom.data.data_manager import DATA_ROOT

    for folder in ("charset_files", "palettes"):  # beside test_files: not in get_testdata_files
        for path in sorted((Path(DATA_ROOT) / folder).glob("*.dcm")):
            params.append(pytest.param(path, id=f"{folder}/{path.name}"))
    for path in pynetdicom_dicom_paths():
        params.append(pytest.param(path, id=f"pynetdicom/{path.name}"))
    for path in packaged_dicom_paths():
        params.append(pytest.param(path, id="/".join(path.parts[-4:])))
    if SHARED_DICOM.is_dir():
        for path in sorted(SHARED_DICOM.glob("*.dcm")):
            params.append(pytest.param(path, id=f"shared/{path.name}"))
    else:
        params.append(
            pytest.param(
                None,
                id="shared/absent",
                marks=pytest.mark.skip(reason=f"real data not available: {SHARED_DICOM}"),
            )
        )
    return params


def pydicom_can_decode(data: bytes) -> bool:
    """The oracle: pydicom (with the pylibjpeg plugins) reads and decodes the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
            arr = ds.pixel_array
        return arr.size > 0 and bool(np.isfinite(arr).all())
    except Exception:  # the oracle only asks whether pydicom succeeds
        return False


def check_result(image: PreprocessedImage) -> None:
    assert image.pixels.dtype == np.float32
    assert image.pixels.ndim == 2
    assert image.pixels.shape == (image.metadata.rows, image.metadata.columns)
    assert float(image.pixels.min()) >= 0.0
    assert float(image.pixels.max()) <= 1.0
    assert 0 <= image.metadata.frame_index < max(image.metadata.frames, 1)


class TestEveryRealFile:
    @pytest.mark.parametrize("path", corpus())
    def test_decodes_or_raises_a_typed_error(self, path):
        data = path.read_bytes()
        try:
            image = preprocess(data)
        except PreprocessingError as exc:
            assert str(exc).startswith(exc.title)
            if known_mosaic(path):  # pydicom decodes the tiled slices; radlens refuses (QA 76)
                assert isinstance(exc, InvalidImageError) and "Siemens mosaic" in str(exc)
                return
            assert not pydicom_can_decode(data), f"pydicom decodes it but radlens said: {exc}"
            return
        assert not known_mosaic(path), "a Siemens mosaic was read as one picture"
        check_result(image)
        # the service refuses a blank file; only the known one, whose pixels were zeroed, is
        assert image.metadata.blank == (path.name in KNOWN_BLANK)

    def test_the_corpus_contains_the_deliberately_broken_files(self):
        names = {Path(p.values[0]).name for p in corpus() if p.values[0] is not None}
        assert {"MR_truncated.dcm", "no_meta.dcm", "badVR.dcm", "rtplan_truncated.dcm"} <= names
        assert len(names) > 150


FUZZ_SOURCES = [
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "OBXXXX1A.dcm",
    "vlut_04.dcm",
    "JPGExtended.dcm",
]
_FUZZ_BYTES = {name: Path(str(get_testdata_file(name))).read_bytes() for name in FUZZ_SOURCES}

HEADER_FIELDS = {
    "Rows": st.integers(0, 70000),
    "Columns": st.integers(0, 70000),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64]),
    "BitsStored": st.integers(0, 40),
    "SamplesPerPixel": st.integers(0, 5),
    "PixelRepresentation": st.integers(0, 3),
    "NumberOfFrames": st.integers(-1, 100000),
    "PhotometricInterpretation": st.sampled_from(
        ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "YBR_RCT", "XYZ", ""]
    ),
    "RescaleSlope": st.sampled_from([0, -1, 1e30, 1e300, 0.5]),
    "WindowWidth": st.sampled_from([0, -10, 1, 1e9]),
}


def _with_header_field(data: bytes, keyword: str, value: object) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
    return buffer.getvalue()


@st.composite
def mutated_dicom(draw: st.DrawFn) -> bytes:
    data = _FUZZ_BYTES[draw(st.sampled_from(FUZZ_SOURCES))]
    kind = draw(st.sampled_from(["flip", "truncate", "header", "random", "flip+truncate"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=2048))
    if kind == "header":
        keyword = draw(st.sampled_from(sorted(HEADER_FIELDS)))
        try:
            return _with_header_field(data, keyword, draw(HEADER_FIELDS[keyword]))
        except Exception:  # pydicom refused to write that value: flip bytes instead
            kind = "flip"
    buffer = bytearray(data)
    if kind.startswith("flip"):
        positions = draw(st.lists(st.integers(0, len(buffer) - 1), min_size=1, max_size=40))
        for position in positions:
            buffer[position] = draw(st.integers(0, 255))
    if kind.endswith("truncate"):
        buffer = buffer[: draw(st.integers(0, len(buffer)))]
    return bytes(buffer)


class TestFuzzedDicom:
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=mutated_dicom())
    def test_only_preprocessing_errors_come_out(self, data):
        try:
            image = preprocess(data, size=(32, 32))
        except PreprocessingError as exc:
            event(type(exc).__name__)
            assert exc.detail
            return
        event("decoded")
        assert image.pixels.shape == (32, 32)
        assert image.pixels.dtype == np.float32
        assert float(image.pixels.min()) >= 0.0 and float(image.pixels.max()) <= 1.0


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


_RNG = np.random.default_rng(11)
_PIL_SOURCES = [
    _encoded(_RNG.integers(0, 256, (24, 20), dtype=np.uint8), "PNG"),
    _encoded(_RNG.integers(0, 65536, (24, 20), dtype=np.uint16), "PNG"),
    _encoded(_RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8), "PNG"),
    _encoded(_RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG"),
]


@st.composite
def mutated_png_or_jpeg(draw: st.DrawFn) -> bytes:
    buffer = bytearray(draw(st.sampled_from(_PIL_SOURCES)))
    if draw(st.booleans()):  # PNG IHDR width/height live at bytes 16..24
        start = draw(st.sampled_from([16, 20]))
        buffer[start : start + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    positions = draw(st.lists(st.integers(8, len(buffer) - 1), max_size=8))
    for position in positions:
        buffer[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        buffer = buffer[: draw(st.integers(0, len(buffer)))]
    return bytes(buffer)


class TestFuzzedPngAndJpeg:
    @settings(max_examples=100, deadline=None, derandomize=True)
    @given(data=mutated_png_or_jpeg())
    def test_only_preprocessing_errors_come_out(self, data):
        try:
            image = preprocess(data, size=(16, 16))
        except PreprocessingError as exc:
            event(type(exc).__name__)
            return
        event("decoded")
        assert image.pixels.shape == (16, 16)
        assert float(image.pixels.min()) >= 0.0 and float(image.pixels.max()) <= 1.0

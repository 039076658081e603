"""QA 108: preprocessing version "6" bundles corrections that change the arrays of files that
already decoded, so models trained on versions "1"-"5" keep exactly their arrays:

- a. a compressed colour frame (JPEG Baseline, JPEG 2000) stated Planar Configuration 1 is read
  colour-by-pixel, as its codestream lays it out (it was scrambled into three planes);
- b. an 8-bit colour JPEG 2000 frame is decoded at a reduced resolution for the model size;
- c. Float / Double Float Pixel Data with a Window Center/Width is windowed (it was min-max
  scaled: pydicom's windowing needs Bits Stored, which float pixels do not have).

Each test asks for version "6" semantics (HEAD, at "5", refuses version "6") and checks that
version "5" still gives the old array. The files are made here from pydicom's and
pydicom-data's test files; nothing is committed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_windowing
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

import radlens.models.preprocessing as pp
from radlens.models.preprocessing import preprocess


def test_the_current_version_is_6_and_every_older_one_is_kept() -> None:
    assert pp.PREPROCESSING_VERSION == "6"
    assert pp.SUPPORTED_PREPROCESSING_VERSIONS == ("1", "2", "3", "4", "5", "6")
    assert "6" in pp.CODESTREAM_LAYOUT_VERSIONS and "6" in pp.COLOUR_J2K_REDUCED_VERSIONS
    assert not {"1", "2", "3", "4", "5"} & (
        pp.CODESTREAM_LAYOUT_VERSIONS | pp.COLOUR_J2K_REDUCED_VERSIONS
    )


# --- a. Planar Configuration 1 on a JPEG / JPEG 2000 colour frame ------------------------------


def _testdata(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"{name} absent: pydicom-data is not installed")
    return Path(str(found))


def _with_planar_configuration_one(data: bytes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PlanarConfiguration == 0
    ds.PlanarConfiguration = 1
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_gdcm_KY.dcm", "US1_J2KR.dcm", "color3d_jpeg_baseline.dcm"],
)
def test_a_stray_planar_configuration_one_is_read_by_pixel_in_version_6(name: str) -> None:
    data = _testdata(name).read_bytes()
    stray = _with_planar_configuration_one(data)
    for size in (None, (64, 64)):
        right = preprocess(data, size=size, version="6").pixels
        np.testing.assert_array_equal(preprocess(stray, size=size, version="6").pixels, right)
    # version "5" keeps the header's layout: the scrambled array its models were trained on
    scrambled = preprocess(stray, version="5").pixels
    assert np.abs(scrambled - preprocess(data, version="5").pixels).mean() > 0.01


# --- b. colour JPEG 2000 reduced for the model size ---------------------------------------------


def _colour_j2k_file(rgb: np.ndarray) -> bytes:
    code = imagecodecs.jpeg2k_encode(rgb, level=0, codecformat="J2K", reversible=True, mct=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_RCT"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([code])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _photo_like(rows: int, columns: int) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    red = 128 + 100 * np.sin(x / 90.0) * np.cos(y / 130.0)
    green = 255 * x / columns
    blue = 255 * (1 - y / rows)
    return np.rint(np.dstack([red, green, blue])).clip(0, 255).astype(np.uint8)


def _decoded_reduced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The reductions preprocess() decodes JPEG 2000 frames at, as it runs."""
    seen: list[int] = []
    original = pp._decode_j2k_reduced

    def spy(codestream: bytes, reduction: int, *args: object, **kwargs: object) -> np.ndarray:
        seen.append(reduction)
        return original(codestream, reduction, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pp, "_decode_j2k_reduced", spy)
    return seen


def test_a_colour_j2k_frame_is_decoded_reduced_in_version_6(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _colour_j2k_file(_photo_like(900, 1000))
    seen = _decoded_reduced(monkeypatch)
    full = preprocess(data, size=(224, 224), version="1")  # full decode, then resize
    for version in ("2", "3", "4", "5"):
        np.testing.assert_array_equal(
            preprocess(data, size=(224, 224), version=version).pixels, full.pixels
        )
    assert seen == []
    new = preprocess(data, size=(224, 224), version="6")
    assert seen == [2]  # 1/4: 225x250, the least that still covers 224x224
    assert new.metadata.window == full.metadata.window == "full-range"
    difference = np.abs(new.pixels - full.pixels)
    assert 0 < difference.mean() < 0.01 and difference.max() < 0.2
    # native size: nothing to reduce for, the full decode in every version
    np.testing.assert_array_equal(
        preprocess(data, version="6").pixels, preprocess(data, version="5").pixels
    )


def test_real_colour_ultrasound_is_reduced_in_version_6_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _testdata("US1_J2KR.dcm").read_bytes()
    seen = _decoded_reduced(monkeypatch)
    old = preprocess(data, size=(64, 64), version="5")
    assert seen == []
    new = preprocess(data, size=(64, 64), version="6")
    assert seen == [2]  # 480x640 -> 120x160
    difference = np.abs(new.pixels - old.pixels)
    assert 0 < difference.mean() < 0.03  # measured 0.017 (docs/benchmarks/preprocess.md)
    assert new.metadata.colour_fraction == pytest.approx(old.metadata.colour_fraction, abs=0.02)


# --- c. Float and Double Float Pixel Data with a window ---------------------------------------


def _float_file(
    values: np.ndarray, *, window: tuple[float, float] | None = (500.0, 400.0), **extra: object
) -> bytes:
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
    if values.dtype == np.float64:
        ds.BitsAllocated = 64
        ds.DoubleFloatPixelData = values.astype("<f8").tobytes()
    else:
        ds.BitsAllocated = 32
        ds.FloatPixelData = values.astype("<f4").tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _ramp(dtype: type) -> np.ndarray:
    return np.linspace(-100.0, 1100.0, 48 * 40).reshape(48, 40).astype(dtype)


def _pydicom_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """pydicom's windowing of the same values, given the Bits Stored it needs, scaled to [0, 1]
    by its output range: what a float frame's window means."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 16, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    out = apply_windowing(values.astype(np.float64), ds)
    return out / 65535.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float", "double"])
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_a_float_frame_is_windowed_in_version_6(dtype: type, function: str) -> None:
    values = _ramp(dtype)
    data = _float_file(values, VOILUTFunction=function)
    image = preprocess(data, version="6")
    suffix = "" if function == "LINEAR" else f" {function}"
    assert image.metadata.window == f"file:500/400{suffix}"
    expected = _pydicom_window(values, 500.0, 400.0, function)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.pixels.min() <= 0.01 and image.pixels.max() >= 0.99  # sigmoid: near 0, 1
    # the default version is "6"; a model of version "5" keeps min-max
    assert preprocess(data).metadata.window == image.metadata.window
    old = preprocess(data, version="5")
    assert old.metadata.window == "minmax(not file:unusable)"
    np.testing.assert_allclose(old.pixels, (values - values.min()) / np.ptp(values), atol=1e-6)


def test_a_float_window_the_standard_does_not_define_still_gives_min_max() -> None:
    values = _ramp(np.float32)
    for window, function in (((500.0, 0.5), "LINEAR"), ((500.0, 0.0), "LINEAR_EXACT")):
        data = _float_file(values, window=window, VOILUTFunction=function)
        assert preprocess(data, version="6").metadata.window == "minmax(not file:unusable)"


def test_a_float_window_over_the_whole_range_of_a_small_map() -> None:
    """A window narrower than 1 with LINEAR_EXACT (an ADC or T1 map in seconds): windowed."""
    values = np.linspace(0.0, 0.004, 32 * 32).reshape(32, 32).astype(np.float32)
    data = _float_file(values, window=(0.002, 0.002), VOILUTFunction="LINEAR_EXACT")
    image = preprocess(data, size=(16, 16), version="6")
    assert image.metadata.window == "file:0.002/0.002 LINEAR_EXACT"
    assert image.pixels.min() == 0.0 and image.pixels.max() == pytest.approx(1.0, abs=1e-3)


def test_a_float_window_that_blanks_the_image_gives_way_to_min_max() -> None:
    values = _ramp(np.float32)
    data = _float_file(values, window=(50000.0, 10.0))  # far above every value
    assert preprocess(data, version="6").metadata.window == "minmax(not file:50000/10)"


def test_a_float_frame_with_a_voi_lut_is_unchanged() -> None:
    """A VOI LUT Sequence already applied to float pixels (rounded to its integer inputs)."""
    values = np.linspace(0.0, 200.0, 32 * 32).reshape(32, 32).astype(np.float32)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", [min(255, 2 * i) for i in range(256)])
    data = _float_file(values, window=None, VOILUTSequence=Sequence([item]))
    new, old = preprocess(data, version="6"), preprocess(data, version="5")
    assert new.metadata.window == old.metadata.window == "voi-lut"
    np.testing.assert_array_equal(new.pixels, old.pixels)


def test_an_integer_frame_window_is_unchanged_in_version_6() -> None:
    path = Path(str(get_testdata_file("CT_small.dcm")))
    data = path.read_bytes()
    for size in (None, (64, 64)):
        new = preprocess(data, size=size, version="6")
        old = preprocess(data, size=size, version="5")
        assert new.metadata == old.metadata
        np.testing.assert_array_equal(new.pixels, old.pixels)

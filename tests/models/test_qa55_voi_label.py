"""QA round 55: ``metadata.window`` tells which VOI was used, and when a file's own window was
passed over.

A file whose Window Center/Width pydicom cannot apply (a width it refuses, text where a number
belongs, an unknown or empty VOI LUT Function) is shown with min-max, as before; it was
labelled ``minmax`` like a file without any window, so nothing told the two apart. It is now
``minmax(not file:unusable)``, as a window that would blank the image is
``minmax(not file:C/W)``. A window applied with a VOI LUT Function other than LINEAR was
labelled as the linear window of the same numbers although the array differs; the label now
names the function. Arrays are unchanged: only the label moves.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from radlens.models.preprocessing import preprocess
from tests.conftest import shared_data_path


def mr_small() -> Dataset:
    path = get_testdata_file("MR_small.dcm")  # Window Center/Width 600/1600, no rescale
    if path is None:
        pytest.skip("pydicom's MR_small.dcm is not installed")
    return pydicom.dcmread(path)


def real_dx() -> Dataset:
    # a real veterinary thorax DX, MONOCHROME1, Window Center/Width 128/256 (highdicom, MIT)
    return pydicom.dcmread(shared_data_path("dicom", "dx_image.dcm"))


def to_bytes(ds: Dataset) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values that break their VR, on purpose
        buffer = io.BytesIO()
        ds.save_as(buffer)
    return buffer.getvalue()


def changed(ds: Dataset, **values: Any) -> bytes:
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return to_bytes(ds)


def raw_value(ds: Dataset, tag: int, value: bytes) -> bytes:
    """``ds`` with the DS element ``tag`` holding ``value`` as written (pydicom would refuse
    to convert it): what a malformed file carries."""
    assert not ds.original_encoding[0], "an explicit VR file"
    ds._dict[Tag(tag)] = RawDataElement(Tag(tag), "DS", len(value), value, 0, False, True)
    return to_bytes(ds)


UNUSABLE_WINDOWS = {
    "width-0": lambda ds: changed(ds, WindowWidth="0"),  # LINEAR: width >= 1
    "width-below-1": lambda ds: changed(ds, WindowWidth="0.5"),
    "negative-width": lambda ds: changed(ds, WindowWidth="-40"),
    "unknown-voi-lut-function": lambda ds: changed(ds, VOILUTFunction="GAMMA"),
    "empty-voi-lut-function": lambda ds: changed(ds, VOILUTFunction=""),
    "center-text": lambda ds: raw_value(ds, 0x00281050, b"abc "),
    "width-text": lambda ds: raw_value(ds, 0x00281051, b"wide"),
}


class TestAWindowThatCannotBeAppliedIsNamedAsPassedOver:
    @pytest.mark.parametrize("make", UNUSABLE_WINDOWS.values(), ids=UNUSABLE_WINDOWS.keys())
    def test_min_max_labelled_not_file(self, make: Any) -> None:
        plain = preprocess(changed(mr_small(), WindowCenter=None, WindowWidth=None))
        assert plain.metadata.window == "minmax"
        image = preprocess(make(mr_small()))
        assert image.metadata.window == "minmax(not file:unusable)"
        np.testing.assert_array_equal(image.pixels, plain.pixels)  # the array is as before

    def test_a_window_with_no_number_in_it_is_named_by_its_numbers(self) -> None:
        image = preprocess(raw_value(mr_small(), 0x00281050, b"nan "))
        assert image.metadata.window == "minmax(not file:nan/1600)"

    @pytest.mark.parametrize("version", ["4", "5"])
    def test_on_a_real_monochrome1_radiograph(self, version: str) -> None:
        plain = preprocess(
            changed(real_dx(), WindowCenter=None, WindowWidth=None), size=(64, 64), version=version
        )
        image = preprocess(changed(real_dx(), WindowWidth="0"), size=(64, 64), version=version)
        assert plain.metadata.window == "minmax"
        assert image.metadata.window == "minmax(not file:unusable)"
        np.testing.assert_array_equal(image.pixels, plain.pixels)

    def test_a_file_without_a_whole_window_still_says_minmax(self) -> None:
        # Window Center without Window Width is no window (the two come together, C.11.2)
        image = preprocess(changed(mr_small(), WindowWidth=None))
        assert image.metadata.window == "minmax"
        # ... while a width pydicom refuses is a window passed over
        assert preprocess(changed(mr_small(), WindowWidth="0")).metadata.window != "minmax"

    def test_a_voi_lut_whose_output_is_one_value_is_named_as_passed_over(self) -> None:
        ds = mr_small()
        del ds.WindowCenter, ds.WindowWidth
        item = Dataset()
        item.LUTDescriptor = [4, 0, 16]
        item["LUTData"] = DataElement(0x00283006, "US", [7, 7, 7, 7])
        ds.VOILUTSequence = Sequence([item])
        image = preprocess(to_bytes(ds))
        assert image.metadata.window == "minmax(not voi-lut)"
        plain = preprocess(changed(mr_small(), WindowCenter=None, WindowWidth=None))
        np.testing.assert_array_equal(image.pixels, plain.pixels)


class TestTheLabelNamesTheVoiLutFunction:
    def test_sigmoid(self) -> None:
        ds = mr_small()
        stored = ds.pixel_array.astype(np.float64)
        image = preprocess(changed(ds, VOILUTFunction="SIGMOID"))
        assert image.metadata.window == "file:600/1600 SIGMOID"
        # PS3.3 C.11.2.1.3.1, scaled to [0, 1]: what the label says was applied
        expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - 600.0) / 1600.0))
        np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
        linear = preprocess(to_bytes(mr_small()))
        assert linear.metadata.window == "file:600/1600"
        assert np.abs(image.pixels - linear.pixels).max() > 0.05  # another image, another label

    def test_linear_exact_on_a_real_radiograph(self) -> None:
        image = preprocess(changed(real_dx(), VOILUTFunction="LINEAR_EXACT"))
        assert image.metadata.window == "file:128/256 LINEAR_EXACT"

    def test_linear_spelled_out_is_the_plain_window(self) -> None:
        image = preprocess(changed(mr_small(), VOILUTFunction="LINEAR"))
        assert image.metadata.window == "file:600/1600"


def test_real_files_keep_their_labels() -> None:
    """The real files' own windows read as before (none has an unusable window)."""
    expected = {
        "dx_image.dcm": "file:128/256",
        "ct_image.dcm": "minmax",
        "CT1_JLSN.dcm": "minmax",
    }
    for name, label in expected.items():
        path: Path = shared_data_path("dicom", name)
        assert preprocess(path.read_bytes(), size=(64, 64)).metadata.window == label, name

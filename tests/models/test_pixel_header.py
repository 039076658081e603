"""An Image Pixel attribute decoding needs, absent or empty, is named in the error
(IncompletePixelHeaderError), as is an empty Rescale Slope or Intercept (InvalidRescaleError),
instead of pydicom's AttributeError or TypeError behind a generic title. pydicom's real
CT_small.dcm, edited where a tag matters."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from radlens.models.errors import IncompletePixelHeaderError, InvalidRescaleError
from radlens.models.preprocessing import preprocess
from tests.conftest import shared_data_path

_DELETE = object()  # ct_small(Keyword=_DELETE): remove the element; None: keep it, empty


def ct_small(**changes: object) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in changes.items():
        if value is _DELETE:
            del ds[keyword]
        else:
            ds[keyword].value = value
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("keyword", "named"),
    [
        ("SamplesPerPixel", "Samples per Pixel (0028,0002)"),
        ("PhotometricInterpretation", "Photometric Interpretation (0028,0004)"),
        ("BitsAllocated", "Bits Allocated (0028,0100)"),
        ("BitsStored", "Bits Stored (0028,0101)"),
        ("PixelRepresentation", "Pixel Representation (0028,0103)"),
    ],
)
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_a_missing_pixel_attribute_is_named(keyword: str, named: str, how: str) -> None:
    ds = ct_small(**{keyword: _DELETE if how == "absent" else None})
    with pytest.raises(IncompletePixelHeaderError, match=r"absent, empty or unreadable") as info:
        preprocess(to_bytes(ds), size=(32, 32))
    assert named in str(info.value)
    assert info.value.code == "incomplete-pixel-header"


def test_two_missing_attributes_are_both_named() -> None:
    ds = ct_small(BitsStored=None, PhotometricInterpretation=_DELETE)
    with pytest.raises(IncompletePixelHeaderError) as info:
        preprocess(to_bytes(ds))
    assert "Photometric Interpretation" in str(info.value) and "Bits Stored" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"RescaleSlope": None}, "Rescale Slope (0028,1053) is present but empty"),
        ({"RescaleIntercept": None}, "Rescale Intercept (0028,1052) is present but empty"),
        (
            {"RescaleSlope": None, "RescaleIntercept": None},
            "Rescale Slope (0028,1053) and Rescale Intercept (0028,1052) are present but empty",
        ),
    ],
)
def test_an_empty_rescale_is_named_not_guessed(changes: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRescaleError, match=r"cannot be known") as info:
        preprocess(to_bytes(ct_small(**changes)), window="lung")
    assert named in str(info.value)


def test_a_rescale_without_its_pair_still_reads_as_stored_values() -> None:
    """pydicom applies a rescale only with both attributes: one alone is no rescale."""
    ds = ct_small(RescaleSlope=_DELETE)
    image = preprocess(to_bytes(ds))
    plain = ct_small(RescaleSlope=_DELETE, RescaleIntercept=_DELETE)
    assert (image.pixels == preprocess(to_bytes(plain)).pixels).all()


@pytest.mark.parametrize("size", [(224, 224), None])
def test_the_same_answer_whichever_decoder_reads_the_frame(size: tuple[int, int] | None) -> None:
    """The real RSNA chest CR (JPEG Baseline 1024x1024) without Bits Stored: at the model's
    size its frame is decoded at 1/4 by Pillow, which needs no Bits Stored, and at full size by
    pydicom, which does. Refused both ways from version "4" (found by QA round 2: the service
    said 201 to a post and 422 to the same post with ?explain=true); a version "3" model is
    still fed the reduced decode it was trained on."""
    ds = pydicom.dcmread(shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm"))
    del ds.BitsStored
    data = to_bytes(ds)
    with pytest.raises(IncompletePixelHeaderError, match=r"Bits Stored \(0028,0101\)"):
        preprocess(data, size=size)
    if size is not None:
        assert preprocess(data, size=size, version="3").pixels.shape == size


def test_a_modality_lut_item_without_its_table_is_named() -> None:
    """Found by QA round 2: pydicom's AttributeError for LUTDescriptor behind a generic title."""
    from pydicom.sequence import Sequence

    ds = ct_small(RescaleSlope=_DELETE, RescaleIntercept=_DELETE)
    ds.ModalityLUTSequence = Sequence([Dataset()])
    with pytest.raises(InvalidRescaleError, match=r"Modality LUT Sequence \(0028,3000\) item "):
        preprocess(to_bytes(ds))
    assert preprocess(to_bytes(pydicom.dcmread(get_testdata_file("mlut_18.dcm")))).pixels.size


def test_a_decoder_failure_leaves_no_traceback_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Found by QA round 2: pydicom logged each failing plugin's traceback at ERROR for an
    upload the service refused with a 422 (pydicom's own broken JPEG 2000 file)."""
    from radlens.models.errors import PreprocessingError

    path = get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm")
    with open(path, "rb") as handle:
        data = handle.read()
    with caplog.at_level("DEBUG"), pytest.raises(PreprocessingError):
        preprocess(data, size=(64, 64))
    assert [r for r in caplog.records if r.exc_info] == []

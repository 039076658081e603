"""QA round 36 (acceptance sweep of real files and hospital-style variants of them).

1. A Photometric Interpretation written with a leading space (" MONOCHROME1": leading spaces
   are not significant in a CS value, PS3.5 6.2) or in lower case was refused by the full
   decode ("The DICOM pixel data cannot be decoded; re-encode it" for a JPEG, "The image is
   invalid" for an uncompressed file), while the reduced-resolution decode of a JPEG or JPEG
   2000 frame (a model smaller than the image) read it stripped and predicted, without the
   file's window (pydicom's windowing compares the value exactly): `radlens inspect` refused
   a file the service predicted, and neither rendered it as the file says. The value is now
   read as its defined term on every path.
2. A Rescale Slope or Intercept with a decimal comma ("1,0") was refused as "The image is
   invalid; check its size, pixel values and the options given" with numpy's "ufunc 'multiply'
   did not contain a loop with signature matching types" as the reason; it is now an
   invalid-rescale refusal naming the attribute and its value (a value that is no number-like
   text is not quoted: it may be a name or an ID in the wrong field).
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from radlens.models.errors import InvalidRescaleError
from radlens.models.preprocessing import preprocess
from tests.app.conftest import dicom_bytes
from tests.conftest import shared_data_path

SIZES = [None, (32, 32)]


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) == 1, (old, data.count(old))
    return data.replace(old, new)


def _dx_monochrome1() -> bytes:
    """A small uncompressed MONOCHROME1 DX with a window (written by pydicom)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows=64, columns=64, seed=3)))
    ds.Modality = "DX"
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter = 1000
    ds.WindowWidth = 2000
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize("spelling", [b" MONOCHROME1", b"monochrome1 "], ids=["space", "lower"])
@pytest.mark.parametrize("size", SIZES, ids=["native", "32px"])
def test_a_photometric_spelling_is_read_as_the_defined_term(
    spelling: bytes, size: tuple[int, int] | None
) -> None:
    exact = _dx_monochrome1()
    variant = _replace_once(exact, b"MONOCHROME1 ", spelling)
    want = preprocess(exact, size=size)
    got = preprocess(variant, size=size)
    assert got.metadata.window == want.metadata.window == "file:1000/2000"
    assert got.metadata.photometric_interpretation == "MONOCHROME1"
    np.testing.assert_array_equal(got.pixels, want.pixels)


@pytest.mark.shared_data
@pytest.mark.parametrize("size", SIZES, ids=["native", "32px-reduced-decode"])
def test_a_jpeg_with_a_spaced_photometric_gets_one_answer_at_every_size(
    size: tuple[int, int] | None,
) -> None:
    """The real chest CR tagged MONOCHROME1 (JPEG Baseline), given a window: the full decode
    refused it, the reduced one predicted it without the window."""
    path = shared_data_path("dicom", "rsna_chest_cr_tagged_monochrome1.dcm")
    ds = pydicom.dcmread(path)
    ds.WindowCenter = 120
    ds.WindowWidth = 160
    out = io.BytesIO()
    ds.save_as(out)
    exact = out.getvalue()
    variant = _replace_once(exact, b"MONOCHROME1 ", b" MONOCHROME1")
    want = preprocess(exact, size=size)
    got = preprocess(variant, size=size)
    assert got.metadata.window == want.metadata.window == "file:120/160"
    np.testing.assert_array_equal(got.pixels, want.pixels)


def _ct_with(keyword: str, text: str) -> bytes:
    """The conftest CT (Rescale Slope 1, Intercept -1024) with one of them as raw text."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows=32, columns=32)))
    marker = "1234567.89" if keyword == "RescaleSlope" else "-9876543.2"
    setattr(ds, keyword, marker)
    out = io.BytesIO()
    ds.save_as(out)
    padded = text.encode().ljust(len(marker))
    return _replace_once(out.getvalue(), marker.encode(), padded)


@pytest.mark.parametrize(
    ("keyword", "text", "named"),
    [
        ("RescaleSlope", "1,0", "Rescale Slope (0028,1053) '1,0'"),
        ("RescaleIntercept", "-1024,0", "Rescale Intercept (0028,1052) '-1024,0'"),
    ],
)
def test_a_decimal_comma_in_the_rescale_is_named(keyword: str, text: str, named: str) -> None:
    with pytest.raises(InvalidRescaleError) as caught:
        preprocess(_ct_with(keyword, text))
    detail = caught.value.detail
    assert f"{named} is not a decimal number" in detail, detail
    assert "ufunc" not in detail


def test_a_rescale_holding_text_is_not_quoted() -> None:
    with pytest.raises(InvalidRescaleError) as caught:
        preprocess(_ct_with("RescaleSlope", "ZZPHIQQMRN"))
    detail = caught.value.detail
    assert "ZZPHIQQMRN" not in detail
    assert "Rescale Slope (0028,1053) <value not shown> is not a decimal number" in detail


def test_inspect_says_the_same_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from radlens.cli.main import main

    good = tmp_path / "spaced.dcm"
    good.write_bytes(_replace_once(_dx_monochrome1(), b"MONOCHROME1 ", b" MONOCHROME1"))
    bad = tmp_path / "comma.dcm"
    bad.write_bytes(_ct_with("RescaleSlope", "1,0"))
    assert main(["inspect", str(good)]) == 0
    assert "window: file:1000/2000" in capsys.readouterr().out
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("radlens: error: "), err
    assert "Rescale Slope (0028,1053) '1,0' is not a decimal number" in err

"""QA 99: real DICOM files re-written as hospital devices write them.

- A compressed colour frame (JPEG, JPEG-LS, JPEG 2000, RLE) whose header lacks Planar
  Configuration (0028,0006) -- ultrasound and secondary captures from some vendors omit it, and
  DCMTK's decoders show such a file -- was refused as undecodable ("re-encode it (e.g. Explicit
  VR Little Endian)"): pydicom's decoders refuse the header before decoding, though the
  codestream, not the header, says how its samples are laid out. It now decodes to exactly the
  array of the same file with the attribute.
- An uncompressed colour image without it (neither pydicom nor DCMTK can read it) is refused
  naming the attribute (IncompletePixelHeaderError), as a missing Bits Stored is, instead of
  "could not read ... (AttributeError ...)".

The variants are made here from pydicom's and pydicom-data's test files; nothing is committed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from radlens.models.errors import IncompletePixelHeaderError
from radlens.models.preprocessing import preprocess

# (file, what it is): compressed colour files whose decoders each set the layout themselves
COMPRESSED_COLOUR = [
    ("SC_rgb_jpeg_dcmtk.dcm", "JPEG Baseline YBR_FULL_422, written by DCMTK"),
    ("SC_rgb_rle.dcm", "RLE Lossless RGB"),
    ("SC_rgb_gdcm_KY.dcm", "JPEG 2000 RGB, written by GDCM"),
    ("SC_rgb_jls_lossy_line.dcm", "JPEG-LS near-lossless RGB, line interleaved"),
    ("US1_J2KR.dcm", "real ultrasound, JPEG 2000 lossless YBR_RCT (pydicom-data)"),
    ("color3d_jpeg_baseline.dcm", "real multi-frame colour JPEG Baseline (pydicom-data)"),
]


def _path(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        pytest.skip(f"{name} absent: pydicom-data is not installed")
    return Path(str(found))


def _without_planar_configuration(data: bytes, tsyntax: str | None = None) -> bytes:
    """The file with Planar Configuration deleted and new UIDs (a distinct instance)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
    assert "PlanarConfiguration" in ds
    del ds.PlanarConfiguration
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if tsyntax is not None:
        ds.file_meta.TransferSyntaxUID = tsyntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(("name", "what"), COMPRESSED_COLOUR, ids=[n for n, _ in COMPRESSED_COLOUR])
@pytest.mark.parametrize("size", [None, (64, 64)], ids=["native", "reduced"])
def test_compressed_colour_without_planar_configuration_decodes_as_with_it(
    name: str, what: str, size: tuple[int, int] | None
) -> None:
    data = _path(name).read_bytes()
    variant = _without_planar_configuration(data)
    expected = preprocess(data, size=size)
    got = preprocess(variant, size=size)  # was UnsupportedTransferSyntaxError
    np.testing.assert_array_equal(got.pixels, expected.pixels)
    assert got.metadata.window == expected.metadata.window
    assert got.metadata.colour_fraction == expected.metadata.colour_fraction


@pytest.mark.parametrize("tsyntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_uncompressed_colour_without_planar_configuration_names_it(tsyntax: str) -> None:
    variant = _without_planar_configuration(_path("SC_rgb.dcm").read_bytes(), tsyntax)
    with pytest.raises(IncompletePixelHeaderError) as info:
        preprocess(variant)
    assert info.value.missing == ["Planar Configuration (0028,0006)"]
    assert "Planar Configuration (0028,0006)" in str(info.value)
    assert "AttributeError" not in str(info.value)


def _with_planar_configuration_one(data: bytes) -> bytes:
    """The file with Planar Configuration 1 (a stray value some vendors write) and a new UID."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PlanarConfiguration == 0
    ds.PlanarConfiguration = 1
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(("name", "what"), COMPRESSED_COLOUR, ids=[n for n, _ in COMPRESSED_COLOUR])
def test_a_stray_planar_configuration_one_is_read_by_pixel_from_a_new_version(
    name: str, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JPEG Baseline and JPEG 2000 frames stated planar 1 were laid out as three planes (a
    scrambled image, by pydicom too); the fix changes those arrays, so it waits for a new
    preprocessing version: version "5" reads them as before."""
    import radlens.models.preprocessing as pp

    data = _path(name).read_bytes()
    stray = _with_planar_configuration_one(data)
    expected = preprocess(data).pixels
    before = preprocess(stray, version="5").pixels  # as it always decoded
    monkeypatch.setattr(pp, "CODESTREAM_LAYOUT_VERSIONS", frozenset({pp.PREPROCESSING_VERSION}))
    np.testing.assert_array_equal(preprocess(stray).pixels, expected)
    np.testing.assert_array_equal(
        preprocess(stray, size=(64, 64)).pixels, preprocess(data, size=(64, 64)).pixels
    )
    monkeypatch.setattr(pp, "CODESTREAM_LAYOUT_VERSIONS", frozenset())
    np.testing.assert_array_equal(preprocess(stray).pixels, before)

"""Presentation LUT Shape and the bit depth of 16-bit PNG (preprocessing version "3").

DICOM fixtures are real files (pydicom's CT_small.dcm, the shared folder's DX) edited
where a tag matters; PNGs are generated here, with an sBIT chunk written where the test
needs one.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from radlens.models.errors import InvalidImageError
from radlens.models.preprocessing import (
    display_inverted,
    preprocess,
    preprocess_array,
    scale_16bit,
)
from tests.conftest import shared_data_path


def ct_small() -> Dataset:
    return pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png16(array: np.ndarray, significant_bits: int | None = None) -> bytes:
    """A 16-bit gray PNG of ``array``, with an sBIT chunk right after IHDR when asked."""
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint16)).save(buffer, format="PNG")
    data = buffer.getvalue()
    if significant_bits is None:
        return data
    body = bytes([significant_bits])
    chunk = struct.pack(">I", 1) + b"sBIT" + body
    chunk += struct.pack(">I", zlib.crc32(b"sBIT" + body) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def twelve_bit() -> np.ndarray:
    return (np.arange(32 * 32, dtype=np.uint32) * 4).clip(0, 4095).astype(np.uint16).reshape(32, 32)


class TestPresentationLutShape:
    def test_inverse_inverts_a_monochrome2_image(self):
        ds = ct_small()
        plain = preprocess(to_bytes(ds)).pixels
        ds.PresentationLUTShape = "INVERSE"
        inverted = preprocess(to_bytes(ds)).pixels
        np.testing.assert_allclose(inverted, 1.0 - plain, atol=1e-6)
        assert not np.allclose(inverted, plain)

    def test_identity_changes_nothing(self):
        ds = ct_small()
        plain = preprocess(to_bytes(ds)).pixels
        ds.PresentationLUTShape = "IDENTITY"
        np.testing.assert_array_equal(preprocess(to_bytes(ds)).pixels, plain)

    def test_version_2_models_keep_ignoring_it(self):
        ds = ct_small()
        plain = preprocess(to_bytes(ds), version="2").pixels
        ds.PresentationLUTShape = "INVERSE"
        np.testing.assert_array_equal(preprocess(to_bytes(ds), version="2").pixels, plain)

    @pytest.mark.parametrize("shape", [None, "IDENTITY", "INVERSE"])
    def test_monochrome1_is_inverted_exactly_once_whatever_the_shape(self, shape: str | None):
        ds = ct_small()
        mono2 = preprocess(to_bytes(ds)).pixels
        ds.PhotometricInterpretation = "MONOCHROME1"
        if shape is not None:
            ds.PresentationLUTShape = shape
        np.testing.assert_allclose(preprocess(to_bytes(ds)).pixels, 1.0 - mono2, atol=1e-6)

    def test_real_dx_tagged_monochrome1_and_inverse_is_inverted_once(self):
        data = shared_data_path("dicom", "dx_image.dcm").read_bytes()
        ds = pydicom.dcmread(io.BytesIO(data))
        assert (ds.PhotometricInterpretation, ds.PresentationLUTShape) == (
            "MONOCHROME1",
            "INVERSE",
        )
        current = preprocess(data).pixels
        np.testing.assert_array_equal(current, preprocess(data, version="2").pixels)
        ds.PhotometricInterpretation = "MONOCHROME2"
        del ds.PresentationLUTShape
        np.testing.assert_allclose(current, 1.0 - preprocess(to_bytes(ds)).pixels, atol=1e-6)

    @pytest.mark.parametrize(
        ("photometric", "shape", "version", "expected"),
        [
            ("MONOCHROME2", None, "3", False),
            ("MONOCHROME2", "IDENTITY", "3", False),
            ("MONOCHROME2", "INVERSE", "3", True),
            ("MONOCHROME2", "INVERSE", "2", False),
            ("MONOCHROME1", None, "3", True),
            ("MONOCHROME1", "IDENTITY", "3", True),
            ("MONOCHROME1", "INVERSE", "3", True),
            ("MONOCHROME1", "INVERSE", "1", True),
            ("RGB", "INVERSE", "3", False),
        ],
    )
    def test_the_documented_table(
        self, photometric: str, shape: str | None, version: str, expected: bool
    ):
        ds = Dataset()
        if shape is not None:
            ds.PresentationLUTShape = shape
        assert display_inverted(photometric, ds, version=version) is expected


class TestSixteenBitPng:
    def test_12_bit_values_without_sbit_use_the_data_range_depth(self):
        array = twelve_bit()
        image = preprocess(png16(array))
        assert image.metadata.bits_stored == 12
        np.testing.assert_allclose(image.pixels, array / 4095.0, atol=1e-7)

    def test_version_2_keeps_dividing_by_65535(self):
        array = twelve_bit()
        image = preprocess(png16(array), version="2")
        assert image.metadata.bits_stored == 16
        np.testing.assert_allclose(image.pixels, array / 65535.0, atol=1e-7)

    def test_sbit_decides_the_depth_when_present(self):
        array = (np.arange(32 * 32, dtype=np.uint16) * 2).reshape(32, 32)  # peak 2046
        assert preprocess(png16(array)).metadata.bits_stored == 12  # by the data: 2046 < 4096
        image = preprocess(png16(array, significant_bits=11))
        assert image.metadata.bits_stored == 11
        np.testing.assert_allclose(image.pixels, array / 2047.0, atol=1e-7)

    def test_sbit_samples_scaled_up_as_the_png_specification_says(self):
        array = twelve_bit()
        replicated = (array.astype(np.uint32) << 4 | array.astype(np.uint32) >> 8).astype(np.uint16)
        image = preprocess(png16(replicated, significant_bits=12))
        assert image.metadata.bits_stored == 12
        np.testing.assert_allclose(image.pixels, array / 4095.0, atol=1e-7)

    @pytest.mark.parametrize("bits", [0, 17, 255])
    def test_a_malformed_sbit_is_ignored(self, bits: int):
        array = twelve_bit()
        image = preprocess(png16(array, significant_bits=bits))
        assert image.metadata.bits_stored == 12
        np.testing.assert_allclose(image.pixels, array / 4095.0, atol=1e-7)

    def test_full_range_16_bit_data_is_still_divided_by_65535(self):
        array = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
        image = preprocess(png16(array))
        assert image.metadata.bits_stored == 16
        np.testing.assert_allclose(image.pixels, array / 65535.0, atol=1e-7)

    def test_8_bit_values_in_a_16_bit_png_map_like_an_8_bit_png(self):
        array = np.array([[0, 100], [200, 255]], dtype=np.uint16)
        np.testing.assert_allclose(preprocess(png16(array)).pixels, array / 255.0, atol=1e-7)

    def test_uint16_arrays_match_their_png(self):
        array = twelve_bit()
        np.testing.assert_array_equal(preprocess_array(array), preprocess(png16(array)).pixels)
        np.testing.assert_array_equal(
            preprocess_array(array, version="2"), preprocess(png16(array), version="2").pixels
        )

    def test_preprocess_array_refuses_an_unknown_version(self):
        with pytest.raises(InvalidImageError, match=r"unknown preprocessing version '9'"):
            preprocess_array(twelve_bit(), version="9")

    def test_scale_16bit_reports_the_depth(self):
        pixels, bits = scale_16bit(np.array([0, 512, 1023], np.uint16))
        assert bits == 10
        np.testing.assert_allclose(pixels, [0.0, 512 / 1023, 1.0], atol=1e-7)

    def test_real_nih_png_is_unchanged(self):
        """NIH PNGs are 8-bit: only 16-bit data is affected."""
        folder = shared_data_path("nih1000", "train", "0_normal")
        data = sorted(Path(folder).glob("*.png"))[0].read_bytes()
        np.testing.assert_array_equal(preprocess(data).pixels, preprocess(data, version="2").pixels)

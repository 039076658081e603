"""radlens.models.preprocessing: one class per behaviour, on real files where possible.

Real DICOM comes from pydicom's bundled test files, pydicom-data and ../shared/data/dicom
(skipped with a reason when absent). Small PNG/JPEG/DICOM fixtures are built in the tests.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radlens.models.errors import (
    ImageTooLargeError,
    InvalidImageError,
    NoPixelDataError,
    NotAnImageError,
    PreprocessingError,
    TruncatedDataError,
    UnsupportedTransferSyntaxError,
)
from radlens.models.preprocessing import (
    DEFAULT_MAX_PIXELS,
    PREPROCESSING_VERSION,
    WINDOW_PRESETS,
    ImageMetadata,
    PreprocessedImage,
    apply_window,
    modality_values,
    preprocess,
    preprocess_array,
    resize_image,
    sniff_format,
)
from tests.conftest import shared_data_path

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def read_testdata(name: str) -> bytes:
    return Path(str(get_testdata_file(name))).read_bytes()


def shared_bytes(name: str) -> bytes:
    return shared_data_path("dicom", name).read_bytes()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_ct(rows: int = 8, columns: int = 8, *, stored: np.ndarray | None = None) -> Dataset:
    """A minimal CT image: 16-bit signed stored values, HU = stored - 1024."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if stored is None:
        stored = np.arange(rows * columns, dtype=np.int16).reshape(rows, columns) * 40
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds


class TestInterface:
    def test_constants_match_the_documented_contract(self):
        assert isinstance(PREPROCESSING_VERSION, str) and PREPROCESSING_VERSION
        assert WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
        assert WINDOW_PRESETS["mediastinum"] == (50.0, 350.0)
        assert WINDOW_PRESETS["bone"] == (400.0, 1800.0)
        assert WINDOW_PRESETS["brain"] == (40.0, 80.0)
        assert WINDOW_PRESETS["soft_tissue"] == (40.0, 400.0)
        assert DEFAULT_MAX_PIXELS >= 4096 * 4096

    def test_model_input_adds_the_channel_axis(self):
        image = preprocess(read_testdata("CT_small.dcm"))
        assert isinstance(image, PreprocessedImage)
        assert image.model_input().shape == (128, 128, 1)
        assert image.model_input().dtype == np.float32


class TestSniffing:
    def test_empty_bytes_are_not_an_image(self):
        with pytest.raises(NotAnImageError, match=r"received 0 bytes starting \(empty\)"):
            preprocess(b"")

    def test_random_bytes_are_not_an_image_and_the_first_bytes_are_quoted(self):
        data = np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8).tobytes()
        with pytest.raises(NotAnImageError) as info:
            preprocess(data)
        assert data[:4].hex(" ") in str(info.value)
        assert "600 bytes" in str(info.value)

    def test_a_png_named_dcm_is_read_as_png(self, tmp_path):
        path = tmp_path / "looks_like.dcm"
        path.write_bytes(png_bytes(np.full((5, 7), 51, dtype=np.uint8)))
        image = preprocess(path.read_bytes())
        assert image.metadata.format == "png"
        np.testing.assert_allclose(image.pixels, 0.2, atol=1e-6)

    def test_text_is_not_an_image(self):
        with pytest.raises(NotAnImageError):
            preprocess(b"patient,label\n1,0\n" * 20)

    def test_formats_are_recognised_by_content(self):
        assert sniff_format(png_bytes(np.zeros((2, 2), np.uint8))) == "png"
        assert sniff_format(read_testdata("CT_small.dcm")) == "dicom"
        assert sniff_format(b"\xff\xd8\xff\xe0" + b"\x00" * 20) == "jpeg"

    def test_non_bytes_input_is_refused(self):
        with pytest.raises(InvalidImageError, match="Received: str"):
            preprocess("CT_small.dcm")  # type: ignore[arg-type]


class TestModalityValues:
    def test_ct_small_air_and_tissue_in_hounsfield_units(self):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        hu = modality_values(ds.pixel_array, ds)
        # stored + (-1024): the corner is air (noisy, about -840 on this small phantom
        # scan), the median pixel is soft tissue / water, near 0 HU.
        assert -900 < hu[:8, :8].mean() < -780
        assert -50 < float(np.median(hu)) < 50
        assert float(hu.min()) == float(ds.pixel_array.min()) - 1024

    def test_real_chest_ct_air_region_is_about_minus_1000(self):
        path = shared_data_path("dicom", "TOSHIBA_J2K_OpenJPEGv2Regression.dcm")
        ds = pydicom.dcmread(path)
        hu = modality_values(ds.pixel_array, ds)
        air = hu[40:60, 246:266]  # in front of the chest, inside the field of view
        assert -1100 < air.mean() < -950

    def test_built_ct_maps_stored_values_by_rescale(self):
        ds = make_ct()
        hu = modality_values(ds.pixel_array, ds)
        np.testing.assert_array_equal(hu, ds.pixel_array.astype(np.float64) - 1024)


class TestWindows:
    def test_lung_window_end_points(self):
        out = apply_window(np.array([-2000.0, -1350.0, -600.0, 150.0, 900.0]), -600, 1500)
        np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
        assert out.dtype == np.float32

    @pytest.mark.parametrize("name", sorted(WINDOW_PRESETS))
    def test_each_preset_on_a_built_ct(self, name):
        center, width = WINDOW_PRESETS[name]
        hu = np.linspace(center - width, center + width, 64).reshape(8, 8)
        ds = make_ct(stored=np.rint(hu + 1024).astype(np.int16))
        image = preprocess(dicom_bytes(ds), window=name)
        assert image.metadata.window == f"preset:{name}({center:g}/{width:g})"
        expected = np.clip((np.rint(hu) - (center - width / 2)) / width, 0, 1)
        np.testing.assert_allclose(image.pixels, expected, atol=1e-6)

    def test_preset_on_a_real_ct_file(self):
        data = read_testdata("CT_small.dcm")
        ds = pydicom.dcmread(io.BytesIO(data))
        image = preprocess(data, window="lung")
        expected = apply_window(modality_values(ds.pixel_array, ds), -600, 1500)
        np.testing.assert_allclose(image.pixels, expected, atol=1e-6)

    def test_file_window_is_used_without_a_preset(self):
        data = read_testdata("MR_small.dcm")
        ds = pydicom.dcmread(io.BytesIO(data))
        image = preprocess(data)
        assert image.metadata.window == "file:600/1600"
        # pydicom LINEAR windowing: center - 0.5, width - 1, output over the stored range
        values = ds.pixel_array.astype(np.float64)
        lower, upper = 599.5 - 1599 / 2, 599.5 + 1599 / 2
        expected = np.clip((values - 599.5) / 1599 + 0.5, 0, 1)
        expected[values <= lower] = 0.0
        expected[values > upper] = 1.0
        np.testing.assert_allclose(image.pixels, expected, atol=1e-5)

    def test_voi_lut_sequence_is_used(self):
        image = preprocess(read_testdata("vlut_04.dcm"))
        assert image.metadata.window == "voi-lut"
        assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
        assert image.pixels.std() > 0.05

    def test_min_max_when_the_file_has_no_window(self):
        image = preprocess(dicom_bytes(make_ct()))
        assert image.metadata.window == "minmax"
        assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0

    def test_presets_do_not_apply_to_non_ct_images(self):
        image = preprocess(read_testdata("MR_small.dcm"), window="lung")
        assert image.metadata.window == "file:600/1600"

    def test_unknown_preset_lists_the_valid_ones(self):
        with pytest.raises(InvalidImageError, match=r"'lungs'.*lung, mediastinum, bone"):
            preprocess(read_testdata("CT_small.dcm"), window="lungs")

    def test_bad_window_width_is_refused(self):
        with pytest.raises(InvalidImageError, match="width > 0"):
            apply_window(np.zeros(3), 0, 0)


class TestMonochrome1:
    def test_monochrome1_is_the_inverse_of_its_monochrome2_twin(self):
        mono2 = preprocess(shared_bytes("rsna_chest_cr_jpeg_baseline.dcm"), size=(128, 128))
        mono1 = preprocess(shared_bytes("rsna_chest_cr_tagged_monochrome1.dcm"), size=(128, 128))
        assert mono1.metadata.photometric_interpretation == "MONOCHROME1"
        assert mono2.metadata.photometric_interpretation == "MONOCHROME2"
        corr = np.corrcoef(mono1.pixels.ravel(), mono2.pixels.ravel())[0, 1]
        assert corr < -0.999
        np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-5)

    def test_built_monochrome1_is_inverted(self):
        ds = make_ct()
        ds.Modality = "CR"
        mono2 = preprocess(dicom_bytes(ds)).pixels
        ds.PhotometricInterpretation = "MONOCHROME1"
        mono1 = preprocess(dicom_bytes(ds)).pixels
        np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


class TestFrames:
    def test_multi_frame_uses_the_middle_frame(self):
        data = read_testdata("emri_small.dcm")
        ds = pydicom.dcmread(io.BytesIO(data))
        assert int(ds.NumberOfFrames) == 10
        image = preprocess(data)
        assert image.metadata.frames == 10
        assert image.metadata.frame_index == 5
        frame = ds.pixel_array[5].astype(np.float64)
        expected = (frame - frame.min()) / (frame.max() - frame.min())
        np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
        other = ds.pixel_array[0].astype(np.float64)
        assert not np.allclose(image.pixels, (other - other.min()) / np.ptp(other))

    def test_compressed_multi_frame_matches_the_uncompressed_one(self):
        native = preprocess(read_testdata("emri_small.dcm")).pixels
        rle = preprocess(read_testdata("emri_small_RLE.dcm")).pixels
        j2k = preprocess(read_testdata("emri_small_jpeg_2k_lossless.dcm")).pixels
        np.testing.assert_array_equal(native, rle)
        np.testing.assert_array_equal(native, j2k)


class TestColour:
    def test_rgb_becomes_bt601_gray(self):
        data = read_testdata("SC_rgb.dcm")
        rgb = pydicom.dcmread(io.BytesIO(data)).pixel_array
        image = preprocess(data)
        assert image.pixels.shape == rgb.shape[:2]
        np.testing.assert_allclose(image.pixels, (rgb.astype(np.float32) @ LUMA) / 255, atol=1e-6)

    @pytest.mark.parametrize(
        "name",
        [
            "SC_ybr_full_uncompressed.dcm",
            "SC_ybr_full_422_uncompressed.dcm",
            "examples_ybr_color.dcm",
            "US1_J2KR.dcm",
            "OBXXXX1A.dcm",
            "OBXXXX1A_expb.dcm",
            "examples_palette.dcm",
        ],
    )
    def test_ybr_and_palette_become_gray(self, name):
        image = preprocess(read_testdata(name))
        assert image.pixels.ndim == 2
        assert image.pixels.dtype == np.float32
        assert image.metadata.window == "full-range"
        assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
        assert image.pixels.std() > 0.02  # not a blank image

    def test_ybr_matches_its_rgb_original(self):
        rgb = preprocess(read_testdata("SC_rgb.dcm")).pixels
        ybr = preprocess(read_testdata("SC_ybr_full_uncompressed.dcm")).pixels
        np.testing.assert_allclose(rgb, ybr, atol=2 / 255)

    def test_palette_big_and_little_endian_agree(self):
        little = preprocess(read_testdata("OBXXXX1A.dcm")).pixels
        big = preprocess(read_testdata("OBXXXX1A_expb.dcm")).pixels
        np.testing.assert_allclose(little, big, atol=1 / 255)


class TestPngAndJpeg:
    def test_8_bit_png_maps_by_full_range(self):
        array = np.arange(256, dtype=np.uint8).reshape(16, 16)
        image = preprocess(png_bytes(array))
        np.testing.assert_allclose(image.pixels, array / 255.0, atol=1e-7)
        assert image.metadata.bits_stored == 8
        assert image.metadata.window == "full-range"

    def test_16_bit_png_keeps_its_precision(self):
        array = (np.arange(64 * 64, dtype=np.uint32) * 16 + 3).astype(np.uint16).reshape(64, 64)
        image = preprocess(png_bytes(array))
        assert image.metadata.bits_stored == 16
        back = np.rint(image.pixels.astype(np.float64) * 65535).astype(np.uint16)
        np.testing.assert_array_equal(back, array)
        assert len(np.unique(image.pixels)) == 64 * 64  # far more than 256 levels

    @pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "1"])
    def test_other_modes_become_gray(self, mode):
        array = np.tile(np.array([0, 255], dtype=np.uint8), (8, 4))
        image = preprocess(png_bytes(array, mode=mode))
        np.testing.assert_allclose(image.pixels, array / 255.0, atol=1e-6)

    def test_coloured_png_uses_luma(self):
        rgb = np.zeros((4, 4, 3), dtype=np.uint8)
        rgb[..., 0] = 200
        rgb[..., 2] = 50
        image = preprocess(png_bytes(rgb))
        np.testing.assert_allclose(image.pixels, (0.299 * 200 + 0.114 * 50) / 255, atol=1e-6)

    def test_jpeg_works(self):
        gradient = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
        buffer = io.BytesIO()
        Image.fromarray(gradient).save(buffer, format="JPEG", quality=95)
        image = preprocess(buffer.getvalue(), size=(32, 32))
        assert image.metadata.format == "jpeg"
        assert image.pixels.shape == (32, 32)
        expected = resize_image(gradient / np.float32(255), (32, 32))
        np.testing.assert_allclose(image.pixels, expected, atol=0.03)

    def test_real_nih_png(self):
        path = next(iter(sorted(shared_data_path("nih1000", "train", "0_normal").glob("*.png"))))
        image = preprocess(path.read_bytes(), size=(32, 32))
        assert image.pixels.shape == (32, 32) and image.pixels.std() > 0.05


class TestPreprocessArrayParity:
    @pytest.mark.parametrize("size", [None, (64, 64), (20, 36)])
    def test_uint8_matches_png_bytes(self, size):
        array = np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)
        from_png = preprocess(png_bytes(array), size=size).pixels
        from_array = preprocess_array(array, size=size)
        np.testing.assert_array_equal(from_png, from_array)
        assert from_array.dtype == np.float32

    def test_uint16_and_rgb_match_png_bytes(self):
        rng = np.random.default_rng(4)
        gray16 = rng.integers(0, 65536, (30, 20), dtype=np.uint16)
        rgb = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
        for array in (gray16, rgb, rgb[..., :1]):
            np.testing.assert_array_equal(
                preprocess(png_bytes(array if array.shape[-1] != 1 else array[..., 0])).pixels,
                preprocess_array(array),
            )

    def test_real_medmnist_images_match(self):
        path = shared_data_path("pneumoniamnist", "pneumoniamnist_28_trainval.npz")
        with np.load(path) as npz:
            images = npz["val_images"][:5]
        for array in images:
            np.testing.assert_array_equal(
                preprocess(png_bytes(array), size=(64, 64)).pixels,
                preprocess_array(array, size=(64, 64)),
            )

    @pytest.mark.parametrize(
        "array",
        [np.zeros((0, 4), np.uint8), np.zeros((4, 4), np.float64), np.zeros((4, 4, 2), np.uint8)],
    )
    def test_bad_arrays_are_refused_with_what_was_received(self, array):
        with pytest.raises(InvalidImageError, match="Received"):
            preprocess_array(array)


class TestResize:
    def test_shape_dtype_and_range(self):
        pixels = np.random.default_rng(0).random((300, 200)).astype(np.float32)
        out = resize_image(pixels, (224, 224))
        assert out.shape == (224, 224) and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0

    def test_aspect_ratio_is_not_preserved_and_constant_stays_constant(self):
        out = resize_image(np.full((10, 40), 0.25, np.float32), (30, 7))
        assert out.shape == (30, 7)
        np.testing.assert_allclose(out, 0.25, atol=1e-6)

    def test_downsampling_is_antialiased(self):
        checkerboard = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)
        out = resize_image(checkerboard, (32, 32))
        assert abs(out.mean() - 0.5) < 0.01 and out.std() < 0.05

    def test_preprocess_resizes_dicom(self):
        image = preprocess(read_testdata("CT_small.dcm"), size=(64, 48))
        assert image.pixels.shape == (64, 48) and image.pixels.dtype == np.float32

    @pytest.mark.parametrize("size", [(0, 10), (10,), (-1, 5), (2.5, 3), "224"])
    def test_bad_sizes_are_refused(self, size):
        with pytest.raises(InvalidImageError, match="size"):
            resize_image(np.zeros((4, 4), np.float32), size)


class TestTypedErrors:
    def test_dicom_without_pixel_data(self):
        ds = make_ct()
        del ds.PixelData
        with pytest.raises(NoPixelDataError, match="CT Image Storage"):
            preprocess(dicom_bytes(ds))

    def test_a_structured_report_has_no_pixel_data(self):
        with pytest.raises(NoPixelDataError):
            preprocess(read_testdata("test-SR.dcm"))

    @pytest.mark.parametrize("fraction", [0.1, 0.35, 0.5, 0.8, 0.999])
    def test_truncated_dicom(self, fraction):
        data = read_testdata("CT_small.dcm")
        with pytest.raises(TruncatedDataError, match=r"received|bytes"):
            preprocess(data[: int(len(data) * fraction)])

    @pytest.mark.parametrize(
        "name", ["JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_jpeg_ls_lossless.dcm"]
    )
    def test_truncated_compressed_dicom_is_typed(self, name):
        data = read_testdata(name)
        for cut in (len(data) // 2, len(data) - 200):
            with pytest.raises(PreprocessingError):
                preprocess(data[:cut])

    def test_declared_rows_and_columns_far_beyond_the_data(self):
        ds = make_ct()
        ds.Rows = ds.Columns = 4000
        with pytest.raises(TruncatedDataError, match=r"Rows=4000, Columns=4000.*need 32000000"):
            preprocess(dicom_bytes(ds))

    def test_too_many_pixels_in_the_header_is_refused_before_decoding(self):
        ds = make_ct()
        ds.Rows = ds.Columns = 60000
        with pytest.raises(ImageTooLargeError, match="60000x60000"):
            preprocess(dicom_bytes(ds))
        with pytest.raises(ImageTooLargeError, match="limit of 32"):
            preprocess(dicom_bytes(make_ct()), max_pixels=32)

    def test_decompression_bomb_png_is_refused_cheaply(self, monkeypatch):
        # A valid PNG header declaring 100000 x 100000 gray pixels, and nothing else.
        def chunk(kind: bytes, body: bytes) -> bytes:
            crc = zlib.crc32(kind + body)
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

        loads: list[tuple[int, int]] = []  # Pillow's pixel loads, recorded (not timed)
        real_load = ImageFile.ImageFile.load

        def load(image: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
            loads.append(image.size)
            return real_load(image)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)
        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
        bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
        with pytest.raises(ImageTooLargeError):
            preprocess(bomb)
        # Below Pillow's own limit but above ours: refused by max_pixels before load().
        ihdr = struct.pack(">IIBBBBB", 5000, 5000, 8, 0, 0, 0, 0)
        small_bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
        with pytest.raises(ImageTooLargeError, match="5000x5000 = 25000000 pixels"):
            preprocess(small_bomb, max_pixels=1_000_000)
        assert loads == []  # both refused from the header: no pixel was read

    def test_pillow_bomb_warning_is_a_refusal_too(self):
        def chunk(kind: bytes, body: bytes) -> bytes:
            crc = zlib.crc32(kind + body)
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

        side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)  # between Pillow's warn and error
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
        with pytest.raises(ImageTooLargeError, match="Pillow's limit"):
            preprocess(png, max_pixels=10 * Image.MAX_IMAGE_PIXELS)

    def test_truncated_png(self):
        data = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
        with pytest.raises((TruncatedDataError, InvalidImageError)):
            preprocess(data[: len(data) // 2])

    def test_unsupported_transfer_syntax_is_named(self):
        ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 MP@ML
        with pytest.raises(
            UnsupportedTransferSyntaxError, match=r"1\.2\.840\.10008\.1\.2\.4\.100"
        ) as info:
            preprocess(dicom_bytes(ds))
        assert info.value.transfer_syntax is not None
        assert "MPEG2" in info.value.transfer_syntax

    @pytest.mark.parametrize(
        ("uid", "said"),
        [
            # newer than pydicom's table (dcm4che's will-jxl.dcm, QA round 14): its name, once
            # (decoded since by models.codecs; here a JPEG 2000 codestream it cannot decode)
            ("1.2.840.10008.1.2.4.111", "(JPEG XL JPEG Recompression)"),
            ("1.2.3.4.5.6.7.8.9.10.11", "is not a DICOM transfer syntax pydicom knows"),
        ],
    )
    def test_a_transfer_syntax_pydicom_does_not_know_is_named_once(self, uid: str, said: str):
        ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
        carrier = "1.2.840.10008.1.2.4.201"  # pydicom writes no UID it does not know: swapped
        ds.file_meta.TransferSyntaxUID = carrier  # in after writing (the same length)
        data = dicom_bytes(ds).replace(carrier.encode(), uid.encode())
        with pytest.raises(UnsupportedTransferSyntaxError) as info:
            preprocess(data)
        assert said in str(info.value)
        assert str(info.value).count(uid) == 1

    def test_undecodable_compressed_data_names_the_transfer_syntax(self):
        ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        # a J2K header, then noise, then the EOC marker (without it: TruncatedDataError)
        garbage = frame[:60] + bytes(range(256)) * 4 + b"\xff\xd9"
        ds.PixelData = encapsulate([garbage])
        with pytest.raises(UnsupportedTransferSyntaxError, match="JPEG 2000") as info:
            preprocess(dicom_bytes(ds))
        assert "1.2.840.10008.1.2.4.91" in str(info.value)

    def test_zero_size_dicom(self):
        ds = make_ct()
        ds.Rows = 0
        with pytest.raises(InvalidImageError, match=r"zero-size.*Rows=0"):
            preprocess(dicom_bytes(ds))

    def test_non_finite_float_pixel_data(self):
        ds = make_ct(4, 4)
        del ds.PixelData
        del ds.PixelRepresentation
        ds.BitsAllocated = 32
        del ds.BitsStored
        del ds.HighBit
        values = np.zeros((4, 4), dtype="<f4")
        values[1, 1] = np.nan
        ds.FloatPixelData = values.tobytes()
        with pytest.raises(InvalidImageError, match="NaN"):
            preprocess(dicom_bytes(ds))

    @pytest.mark.parametrize("max_pixels", [0, -5, 2.5, True])
    def test_bad_max_pixels(self, max_pixels):
        with pytest.raises(InvalidImageError, match="max_pixels"):
            preprocess(b"\x89PNG", max_pixels=max_pixels)

    def test_every_error_is_a_value_error_with_a_code(self):
        with pytest.raises(ValueError) as info:
            preprocess(b"nope")
        assert isinstance(info.value, PreprocessingError)
        assert info.value.code == "not-an-image"


class TestLibraryWarnings:
    def make_padded_ct(self) -> bytes:
        ds = make_ct()
        ds.PixelData = ds.PixelData + b"\x00" * 4  # pydicom warns about the excess
        return dicom_bytes(ds)

    def test_library_warnings_do_not_escape_even_when_warnings_are_errors(self):
        data = self.make_padded_ct()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(UserWarning, match="excess"):  # pydicom does warn
                pydicom.dcmread(io.BytesIO(data)).pixel_array  # noqa: B018
            image = preprocess(data)
        assert image.pixels.shape == (8, 8)

    def test_concurrent_calls_leave_the_warning_filters_as_they_were(self):
        data = self.make_padded_ct()
        before = list(warnings.filters)
        with ThreadPoolExecutor(max_workers=6) as pool:
            shapes = list(pool.map(lambda _: preprocess(data).pixels.shape, range(60)))
        assert shapes == [(8, 8)] * 60
        assert warnings.filters == before


class TestNoPhi:
    PHI: ClassVar[dict[str, str]] = {
        "PatientName": "Doe^Jane^Q",
        "PatientID": "MRN-998877",
        "PatientBirthDate": "19610704",
        "PatientAddress": "12 Elm Street, Springfield",
        "OtherPatientIDs": "ALT-4455",
        "PatientTelephoneNumbers": "555-0100",
    }

    def test_metadata_never_contains_patient_identifiers(self):
        ds = make_ct()
        for keyword, value in self.PHI.items():
            setattr(ds, keyword, value)
        ds.BodyPartExamined = "CHEST"
        image = preprocess(dicom_bytes(ds))
        as_text = json.dumps(image.metadata.to_dict())
        for value in self.PHI.values():
            assert value not in as_text
            assert value.split("^")[0] not in as_text
        assert image.metadata.body_part == "CHEST"
        assert image.metadata.sop_instance_uid == ds.SOPInstanceUID
        assert image.metadata.modality == "CT"

    def test_metadata_has_no_patient_fields_at_all(self):
        names = {field.name for field in dataclasses.fields(ImageMetadata)}
        assert not {name for name in names if "patient" in name or "birth" in name}


class TestBurnedInAnnotation:
    """ImageMetadata.burned_in_annotation: the source's Burned In Annotation as YES/NO, None
    when unknown (the service stores it with each prediction, migration 0013)."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("YES", "YES"), ("NO", "NO"), ("MAYBE", None), ("", None), (None, None)],
    )
    def test_from_a_real_file(self, value: str | None, expected: str | None) -> None:
        ds = pydicom.dcmread(io.BytesIO(shared_bytes("ct_image.dcm")))
        if value is None:
            ds.pop("BurnedInAnnotation", None)
        else:
            ds.BurnedInAnnotation = value
        image = preprocess(dicom_bytes(ds), size=(16, 16))
        assert image.metadata.burned_in_annotation == expected

    def test_a_file_that_says_no(self) -> None:
        # highdicom's DX test file carries Burned In Annotation NO as shipped
        image = preprocess(shared_bytes("dx_image.dcm"), size=(16, 16))
        assert image.metadata.burned_in_annotation == "NO"

    def test_png_is_unknown(self) -> None:
        data = png_bytes(np.zeros((8, 8), dtype=np.uint8))
        assert preprocess(data).metadata.burned_in_annotation is None

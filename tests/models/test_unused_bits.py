"""A JPEG-LS or JPEG 2000 frame keeps only its Bits Stored (preprocessing version "4"): the
bits above are cleared or sign-extended as in the uncompressed file, which pydicom masks.

The compressed files are real files (pydicom's mlut_18.dcm: signed, Bits Stored 12, its words
not sign-extended; pydicom-data's RG1 chest CR with bit 15 set here, as an overlay bit would
be) whose whole 16-bit words were encoded: by imagecodecs here, and by dcmtk's dcmcjpls (which
writes precision 16 for them) when it is installed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless

from radlens.models.preprocessing import mask_unused_bits, preprocess


def mlut_18() -> Dataset:
    return pydicom.dcmread(get_testdata_file("mlut_18.dcm"))


def rg1_with_bit_15() -> Dataset:
    """A 256x256 crop of the real RG1 CR (unsigned, Bits Stored 15) with bit 15 set on the
    left half: the uncompressed file reads as if it were not there."""
    path = get_testdata_file("RG1_UNCI.dcm")
    if path is None:
        pytest.skip("pydicom-data's RG1_UNCI.dcm is not installed")
    ds = pydicom.dcmread(path)
    crop = ds.pixel_array[800:1056, 800:1056].astype(np.uint16)
    assert int(ds.BitsStored) == 15 and int(crop.max()) < 1 << 15
    crop[:, :128] |= 1 << 15
    ds.Rows, ds.Columns = crop.shape
    ds.PixelData = crop.tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def compressed(ds: Dataset, tsyntax: UID, encode: Callable[[np.ndarray], bytes]) -> bytes:
    """``ds`` with its whole stored words (high bits included) in one codestream."""
    words = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    out = pydicom.dcmread(io.BytesIO(to_bytes(ds)))
    out.PixelData = encapsulate([encode(words)])
    out["PixelData"].VR = "OB"
    out.file_meta.TransferSyntaxUID = tsyntax
    return to_bytes(out)


ENCODERS = {
    "jpeg-ls": (JPEGLSLossless, imagecodecs.jpegls_encode),
    "jpeg2000": (
        JPEG2000Lossless,
        lambda a: imagecodecs.jpeg2k_encode(a, level=0, codecformat="J2K"),
    ),
}
SOURCES = {"mlut_18 (signed, 12 bits)": mlut_18, "RG1 crop (bit 15 set)": rg1_with_bit_15}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("codec", ENCODERS)
def test_the_compressed_frame_reads_as_the_uncompressed_file(source: str, codec: str) -> None:
    ds = SOURCES[source]()
    expected = preprocess(to_bytes(ds), size=(64, 64))
    data = compressed(ds, *ENCODERS[codec])
    image = preprocess(data, size=(64, 64))
    np.testing.assert_array_equal(image.pixels, expected.pixels)
    assert image.metadata.window == expected.metadata.window
    # version "3" models keep the frame as it was decoded, high bits and all
    assert not np.array_equal(preprocess(data, size=(64, 64), version="3").pixels, image.pixels)


@pytest.mark.parametrize(
    ("codec", "lossy_uid"),
    [("jpeg-ls", "1.2.840.10008.1.2.4.81"), ("jpeg2000", "1.2.840.10008.1.2.4.91")],
)
def test_a_lossless_codestream_under_a_lossy_uid_is_masked(codec: str, lossy_uid: str) -> None:
    """Found by QA round 3: reversible JPEG 2000 is often sent as 4.91, lossless JPEG-LS may
    come as 4.81; the codestream (NEAR 0, the 5-3 wavelet), not the UID, says lossless."""
    ds = rg1_with_bit_15()
    expected = preprocess(to_bytes(ds), size=(64, 64)).pixels
    data = compressed(ds, UID(lossy_uid), ENCODERS[codec][1])
    np.testing.assert_array_equal(preprocess(data, size=(64, 64)).pixels, expected)


@pytest.mark.skipif(shutil.which("dcmcjpls") is None, reason="dcmtk's dcmcjpls is not installed")
def test_dcmtks_jpeg_ls_of_a_file_with_high_bits(tmp_path: Path) -> None:
    source = tmp_path / "rg1.dcm"
    source.write_bytes(to_bytes(rg1_with_bit_15()))
    target = tmp_path / "rg1_jls.dcm"
    subprocess.run(["dcmcjpls", str(source), str(target)], check=True, capture_output=True)
    assert pydicom.dcmread(target).file_meta.TransferSyntaxUID == JPEGLSLossless
    expected = preprocess(source.read_bytes()).pixels
    np.testing.assert_array_equal(preprocess(target.read_bytes()).pixels, expected)


class TestMaskUnusedBits:
    def test_unsigned_bits_above_are_cleared(self) -> None:
        arr = np.array([[0x8FFF, 0x1001]], np.uint16)
        np.testing.assert_array_equal(mask_unused_bits(arr, 12), [[0x0FFF, 0x0001]])

    def test_signed_values_are_sign_extended_from_bits_stored(self) -> None:
        arr = np.array([[0x0FFF, 0x0800, 0x07FF, 0x7001]], np.uint16).view(np.int16)
        np.testing.assert_array_equal(mask_unused_bits(arr, 12), [[-1, -2048, 2047, 1]])

    @pytest.mark.parametrize("bits", [None, 0, 16, 17])
    def test_nothing_to_mask_or_an_impossible_bits_stored_leaves_it(self, bits: int | None) -> None:
        arr = np.array([[0xFFFF, 1]], np.uint16)
        np.testing.assert_array_equal(mask_unused_bits(arr, bits), arr)

    def test_a_read_only_array_is_copied(self) -> None:
        arr = np.array([[0xF001]], np.uint16)
        arr.flags.writeable = False
        np.testing.assert_array_equal(mask_unused_bits(arr, 12), [[1]])
        assert arr[0, 0] == 0xF001


def test_a_lossy_frame_is_clipped_to_bits_stored_not_masked() -> None:
    """Lossy JPEG 2000 at precision 16 over 12-bit values rings above 4095 next to a white
    block; masking would wrap those pixels to near black (found in review), so a lossy
    syntax's values are clipped to the Bits Stored range instead."""
    from pydicom.uid import JPEG2000

    stored = np.full((128, 128), 200, np.uint16)
    stored[32:96, 32:96] = 4095
    stored[::7, :24] = 0  # texture beside the block, not in it
    ds = mlut_18()
    del ds.ModalityLUTSequence
    ds.Rows = ds.Columns = 128
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = stored.tobytes()
    data = compressed(ds, JPEG2000, lambda a: imagecodecs.jpeg2k_encode(a, level=30))
    decoded = pydicom.dcmread(io.BytesIO(data)).pixel_array
    block = (slice(32, 96), slice(32, 96))
    assert int((decoded[block] > 4095).sum()) > 100  # the codec overshoots the 12-bit range
    wrapped = int(((decoded[block] & 0x0FFF) < 2048).sum())  # what masking would make dark
    pixels = preprocess(data).pixels
    assert int((pixels[block] < 0.5).sum()) < wrapped // 4
    assert float(pixels.max()) == 1.0


@pytest.mark.parametrize(
    ("name", "near", "reversible"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", 0, None),
        ("JPEGLSNearLossless_16.dcm", 2, None),
        ("RG1_J2KR.dcm", None, True),
        ("RG1_J2KI.dcm", None, False),
    ],
)
def test_the_codestream_headers_say_how_real_files_were_coded(
    name: str, near: int | None, reversible: bool | None
) -> None:
    from pydicom.encaps import generate_frames

    from radlens.models.codecs import jpeg_ls_near
    from radlens.models.preprocessing import _j2k_main_header

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data)")
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert jpeg_ls_near(frame) == near
    assert _j2k_main_header(frame).reversible is reversible

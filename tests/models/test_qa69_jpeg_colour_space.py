"""QA round 69: a JPEG Baseline DICOM whose codestream stores YCbCr with subsampled chroma
and no JFIF or Adobe marker, under Photometric Interpretation RGB (older GDCM wrote these:
pydicom's SC_rgb_jpeg_lossy_gdcm.dcm as pydicom 2.x and Debian's python3-pydicom ship it;
pydicom 3 corrected its header to YBR_FULL). The decoder honours "RGB", applies no colour
transform, and the YCbCr values were read as RGB: white came out as gray 0.65, the gray of the
real file was off by 0.25 on average (0.555 at most), and a gray radiograph so stored kept a
third of its contrast. Such a frame is now refused as a codestream that disagrees with its
header, naming the fix; files whose marker says the colour space, or whose components are
not subsampled (an RGB codestream), decode as before.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from radlens.models.errors import CodestreamMismatchError
from radlens.models.preprocessing import preprocess

GRADIENT = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))  # a gray image


def _jpeg(*, subsampling: int, jfif: bool) -> bytes:
    """A gray gradient saved by Pillow as a 3-component YCbCr JPEG; without its JFIF APP0
    segment (the marker that tells a decoder the colour space) unless ``jfif``."""
    buf = io.BytesIO()
    Image.fromarray(np.dstack([GRADIENT] * 3)).save(
        buf, format="JPEG", quality=95, subsampling=subsampling
    )
    data = buf.getvalue()
    assert data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\x00"
    if jfif:
        return data
    return data[:2] + data[4 + int.from_bytes(data[4:6], "big") :]


def _dicom(codestream: bytes, photometric: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = GRADIENT.shape
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _gray_error(data: bytes) -> float:
    return float(np.abs(preprocess(data).pixels - GRADIENT / 255.0).max())


class TestUnmarkedSubsampledYcbcrUnderRgb:
    @pytest.mark.parametrize("subsampling", [2, 1], ids=["4:2:0", "4:2:2"])
    def test_is_refused_naming_the_header_fix(self, subsampling: int) -> None:
        data = _dicom(_jpeg(subsampling=subsampling, jfif=False), "RGB")
        with pytest.raises(CodestreamMismatchError, match="stores YCbCr") as caught:
            preprocess(data, size=(32, 32))
        assert "PhotometricInterpretation to YBR_FULL_422" in str(caught.value)

    def test_the_same_codestream_under_its_true_header_decodes_gray(self) -> None:
        data = _dicom(_jpeg(subsampling=2, jfif=False), "YBR_FULL_422")
        assert _gray_error(data) < 0.02

    def test_with_its_jfif_marker_the_decoder_knows_and_it_decodes(self) -> None:
        assert _gray_error(_dicom(_jpeg(subsampling=2, jfif=True), "RGB")) < 0.02

    def test_components_not_subsampled_are_taken_as_the_header_says(self) -> None:
        # 4:4:4 without a marker: an RGB codestream is possible (pydicom's
        # SC_jpeg_no_color_transform.dcm); the header is believed, nothing refused
        preprocess(_dicom(_jpeg(subsampling=0, jfif=False), "RGB"))


class TestRealFile:
    def test_pydicom_2_header_is_refused_pydicom_3_header_decodes(self) -> None:
        path = get_testdata_file("SC_rgb_jpeg_lossy_gdcm.dcm")
        fixed = pydicom.dcmread(path)
        assert fixed.PhotometricInterpretation == "YBR_FULL"  # as pydicom 3 ships it
        reference = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array
        gray = reference.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
        shipped = preprocess(Path(path).read_bytes()).pixels
        assert float(np.abs(shipped - gray).mean()) < 0.01  # the lossy copy of SC_rgb

        fixed.PhotometricInterpretation = "RGB"  # the file as pydicom 2.x shipped it
        buf = io.BytesIO()
        fixed.save_as(buf)
        with pytest.raises(CodestreamMismatchError, match="sampling factors 2x2, 1x1, 1x1"):
            preprocess(buf.getvalue())

    @pytest.mark.parametrize(
        "name",
        [
            "SC_jpeg_no_color_transform.dcm",  # RGB codestream, component ids 0-2, no marker
            "SC_jpeg_no_color_transform_2.dcm",  # the same with an Adobe marker
            "SC_rgb_jpeg.dcm",
            "SC_rgb_jpeg_app14_dcmd.dcm",
            "SC_rgb_dcmtk_+eb+cr.dcm",
        ],
    )
    def test_rgb_jpeg_files_still_decode(self, name: str) -> None:
        data = Path(get_testdata_file(name)).read_bytes()
        assert preprocess(data, size=(16, 16)).pixels.shape == (16, 16)

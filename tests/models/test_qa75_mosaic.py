"""QA 75: a Siemens MR mosaic (Image Type ...\\MOSAIC, (0019,100A) NumberOfImagesInMosaic) is
refused by models.preprocessing.parse_dicom -- the entry the service's uploads and training's
files go through -- with an invalid-image error saying what it is and what to send; it was
predicted as one picture of many tiled slices. Other MR images are not refused."""

from __future__ import annotations

import io

import numpy as np
import pytest

import radlens.models.preprocessing as pp
from radlens.models.errors import InvalidImageError


def mosaic_bytes(
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"),
    *,
    tiles: int | None = 4,
    implicit: bool = False,
) -> bytes:
    """A 2x2 mosaic of 8x8 MR slices (16x16), written by pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        MRImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ImageType = list(image_type)
    if tiles is not None:
        ds.add_new(0x00191000 | 0x0010, "LO", "SIEMENS MR HEADER")  # private creator
        ds.add_new(0x0019100A, "US", tiles)  # NumberOfImagesInMosaic
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(75)
    ds.PixelData = rng.integers(0, 4096, size=(16, 16), dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("implicit", [False, True])
def test_a_mosaic_is_refused_saying_what_to_send(implicit: bool) -> None:
    data = mosaic_bytes(implicit=implicit)
    with pytest.raises(InvalidImageError) as caught:
        pp.parse_dicom(data)
    message = str(caught.value)
    assert caught.value.code == "invalid-image"
    assert "Siemens mosaic" in message and "ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC" in message
    assert "4 slices" in message
    assert "separate instances" in message and "enhanced MR" in message


def test_a_mosaic_without_the_private_count_is_refused() -> None:
    with pytest.raises(InvalidImageError, match="many slices tiled"):
        pp.parse_dicom(mosaic_bytes(tiles=None))


def test_an_mr_that_is_no_mosaic_is_read() -> None:
    data = mosaic_bytes(("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), tiles=None)
    dataset = pp.parse_dicom(data)
    image = pp.preprocess(data, dataset=dataset)
    assert image.metadata.modality == "MR" and image.pixels.shape == (16, 16)

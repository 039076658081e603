"""QA round 20 (weasis-dicom-tools' NeurosurgeryPlan.dcm, a real Hanging Protocol instance):
an object without pixel data and without a Modality was refused with "Received SOP class
'Hanging Protocol Storage', modality None", Python's None in the service's 422 detail and in
`radlens inspect`'s line. Hanging protocols and colour palettes are non-patient objects that
carry no Modality (nor, with a DICOMDIR's data set, a SOP Class UID); the reason now says
"no Modality" (and "no SOP Class UID") in words. The fixture is a synthetic hanging protocol:
its SOP class, no Modality, no pixels."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radlens.models.errors import NoPixelDataError
from radlens.models.preprocessing import preprocess

HANGING_PROTOCOL_STORAGE = "1.2.840.10008.5.1.4.38.1"


def _no_pixels(sop_class: str | None, modality: str | None) -> bytes:
    ds = Dataset()
    uid = generate_uid()
    if sop_class:
        ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    if modality:
        ds.Modality = modality
    ds.HangingProtocolName = "NEURO PLAN"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class or "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _detail(data: bytes) -> str:
    with pytest.raises(NoPixelDataError) as caught:
        preprocess(data)
    return caught.value.detail


def test_an_absent_modality_is_said_in_words() -> None:
    detail = _detail(_no_pixels(HANGING_PROTOCOL_STORAGE, None))
    assert "Received SOP class 'Hanging Protocol Storage', no Modality, " in detail
    assert "None" not in detail


def test_a_present_modality_is_still_quoted() -> None:
    detail = _detail(_no_pixels("1.2.840.10008.5.1.4.1.1.11.1", "PR"))
    assert "Received SOP class 'Grayscale Softcopy Presentation State Storage', modality 'PR'" in (
        detail
    )

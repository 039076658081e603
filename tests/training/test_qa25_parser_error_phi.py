"""QA round 25: a skipped file's reason carried bytes of the file, a patient's name among them.

pydicom's BytesLengthException quotes up to 256 bytes of an element whose length breaks its VR
("Instead received b'...'"). A File Meta Information Group Length (0002,0000) with a corrupted
length runs on over the rest of the meta and into the data set: the patient's name and ID. The
training folder probe put pydicom's whole text in the skip reason, which `radlens data-check`
prints and `radlens train` writes to train.log and result.json (found with real files whose
quoted bytes were Delphi project paths; then reproduced with this synthetic file). The reason
now names the exception and leaves the bytes out (models.preprocessing.error_text, which the
service's messages already used to cut the text to 160 characters).
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from radlens.models.errors import MalformedDicomError
from radlens.models.preprocessing import error_text, preprocess
from radlens.training.data.sources import open_source
from tests.training.data_fixtures import png_folder

NAME, MRN = "ZORRO^ESMERALDA", "MRN99887766"


def broken_meta_length() -> bytes:
    """An 8x8 image whose (0002,0000) UL says 255 bytes: pydicom reads them as its value."""
    ds = Dataset()
    ds.PatientName, ds.PatientID = NAME, MRN
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    assert data[132:138] == b"\x02\x00\x00\x00UL"
    assert 0 < data.find(NAME.encode()) - 140 < 255  # within the bytes pydicom will quote
    data[138:140] = struct.pack("<H", 255)
    return bytes(data)


def test_the_training_skip_reason_quotes_no_bytes_of_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = png_folder(tmp_path / "ds", n_per_class=2)
    (root / "normal" / "broken.dcm").write_bytes(broken_meta_length())
    with caplog.at_level(logging.INFO, logger="radlens.training"):
        source = open_source(root)
    [skipped] = source.skipped
    assert Path(skipped.path).name == "broken.dcm"
    assert "not a readable DICOM file (BytesLengthException" in skipped.reason
    assert "with length 255" in skipped.reason  # what was wrong is still said
    for value in ("ZORRO", "ESMERALDA", MRN):
        assert value not in skipped.reason
        assert value not in caplog.text
    assert "b'" not in skipped.reason and len(skipped.reason) < 260


def test_the_service_message_quotes_no_bytes_either() -> None:
    with pytest.raises(MalformedDicomError) as info:
        preprocess(broken_meta_length())
    assert "BytesLengthException" in str(info.value) and "<bytes not shown>" in str(info.value)
    assert "\\x" not in str(info.value)


class TestErrorText:
    def test_bytes_literals_are_left_out(self) -> None:
        exc = ValueError("Instead received b'ab\\'\\x00ZORRO' and b\"it's\" with length 9")
        assert error_text(exc) == (
            "ValueError: Instead received <bytes not shown> and <bytes not shown> with length 9"
        )

    def test_other_text_is_kept_and_cut(self) -> None:
        assert error_text(KeyError("the verb's b")) == 'KeyError: "the verb\'s b"'
        assert len(error_text(ValueError("x" * 500))) == len("ValueError: ") + 160
        assert error_text(RuntimeError()) == "RuntimeError: RuntimeError"

"""QA round 31: two skip reasons quoted what a file holds, a patient's name or ID among it.

A skipped file's reason is printed by `radlens data-check` and written by `radlens train` to
train.log and result.json, which travel with a run; the README promises that no raw identifier
from the files reaches them.

- A DICOM file whose file meta Transfer Syntax UID (0002,0010) has a broken length: its value
  runs on over the rest of the file meta into the data set, and the refusal of the "unknown
  transfer syntax" quoted it: accession number, institution, referring physician, patient's
  name. It is refused as a malformed data set now, the value not shown (models/dicomread.py).
- A file that is no image (a text report named .dcm or .png, or a CSV row naming the wrong
  file) was skipped as "starts with b'DOE^JOHN'": its first eight bytes. Text is not quoted
  now; a binary file's first bytes (a format's signature) still are.
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from radlens.models.errors import MalformedDicomError
from radlens.models.preprocessing import preprocess
from radlens.training.data.sources import open_source
from tests.training.data_fixtures import png_folder, write_csv

NAME, MRN, ACCESSION = "ZORRO^ESMERALDA", "MRN31313131", "ACC3131"
PLANTED = ("ZORRO", "ESMERALDA", MRN, ACCESSION, "ZZPHI")


def planted_dicom() -> bytes:
    """A 16x16 image with patient and study identification, Explicit VR Little Endian."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.AccessionNumber = ACCESSION
    ds.Modality = "OT"
    ds.InstitutionName = "ZZPHI General Hospital"
    ds.ReferringPhysicianName = "ZZPHI^DOCTOR"
    ds.PatientName, ds.PatientID = NAME, MRN
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(256, dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def transfer_syntax_overrun(extra: int = 300) -> bytes:
    """The file above with (0002,0010)'s length ``extra`` bytes too long."""
    data = bytearray(planted_dicom())
    at = data.find(b"\x02\x00\x10\x00UI")
    assert at > 0
    (length,) = struct.unpack("<H", data[at + 6 : at + 8])
    data[at + 6 : at + 8] = struct.pack("<H", length + extra)
    assert data.find(NAME.encode()) + len(NAME) < at + 8 + length + extra  # within the value
    return bytes(data)


@pytest.mark.parametrize("extra", [300, 400])
def test_a_transfer_syntax_running_into_the_data_set_is_not_quoted(extra: int) -> None:
    with pytest.raises(
        MalformedDicomError, match=r"Transfer Syntax UID \(0002,0010\) is not a UID"
    ):
        preprocess(transfer_syntax_overrun(extra))
    try:
        preprocess(transfer_syntax_overrun(extra))
    except MalformedDicomError as exc:
        for value in PLANTED:
            assert value not in str(exc)


def test_an_unknown_but_well_formed_transfer_syntax_is_still_named() -> None:
    data = planted_dicom().replace(
        str(ExplicitVRLittleEndian).encode(), b"1.2.840.10008.1.2.9", 1
    )  # same length as 1.2.840.10008.1.2.1: the file meta stays valid
    with pytest.raises(Exception, match=r"1\.2\.840\.10008\.1\.2\.9"):
        preprocess(data)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = png_folder(tmp_path / "ds", n_per_class=2)
    (root / "normal" / "broken_meta.dcm").write_bytes(transfer_syntax_overrun())
    (root / "normal" / "report.dcm").write_bytes(f"{NAME} {MRN} chest PA, no findings".encode())
    (root / "abnormal" / "notes.png").write_bytes(f"{MRN} follow-up".encode("latin-1"))
    (root / "abnormal" / "latin1.png").write_bytes("MÜLLER^JÖRG".encode("latin-1"))
    (root / "abnormal" / "tiff.png").write_bytes(b"II*\x00" + bytes(60))
    return root


def test_skip_reasons_quote_no_identifier(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="radlens"):
        source = open_source(folder)
    reasons = {Path(s.path).name: s.reason for s in source.skipped}
    assert set(reasons) == {"broken_meta.dcm", "report.dcm", "notes.png", "latin1.png", "tiff.png"}
    assert "is not a UID" in reasons["broken_meta.dcm"]
    for name in ("report.dcm", "notes.png", "latin1.png"):
        assert "starts with text, not shown" in reasons[name], reasons[name]
    assert "b'II*\\x00" in reasons["tiff.png"] and "TIFF" in reasons["tiff.png"]  # binary: shown
    for text in (*reasons.values(), caplog.text):
        for value in (*PLANTED, "MÜLLER", "M\\xdcLLER", "follow-up"):
            assert value not in text


def test_a_csv_row_naming_a_text_file_is_skipped_without_quoting_it(tmp_path: Path) -> None:
    root = png_folder(tmp_path / "ds", n_per_class=2)
    rows = [
        {"path": str(p.relative_to(root)), "label": p.parent.name.replace("deep", "")}
        for p in sorted(root.rglob("*.png"))
    ]
    for row in rows:  # png_folder nests every second file one folder deeper
        row["label"] = row["path"].split("/")[0]
    (root / "export.txt").write_text(f"PatientName,{NAME}\nPatientID,{MRN}\n")
    rows.append({"path": "export.txt", "label": "normal"})
    source = open_source(write_csv(root / "labels.csv", rows))
    [skipped] = source.skipped
    assert "starts with text, not shown" in skipped.reason
    assert not any(value in skipped.reason for value in PLANTED)

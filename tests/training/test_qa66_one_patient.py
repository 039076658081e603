"""QA round 66: an anonymised folder data set whose DICOMs all carry one PatientID.

Found: two class folders of 6 DICOMs each, every one with the same PatientID (anonymisers
often write one constant for everyone): the split by patient makes one group, so
`radlens data-check` showed "split train: 12, val: 0" and `radlens train` refused with
"... Add data or raise --val-fraction", which cannot help. Now both say the cause (all images
carry the same patient, so a patient-wise split cannot make val or test) and what to do (a
CSV manifest with patient_id or split columns), never naming the patient. The split itself
is unchanged.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import check_splits, open_data, split_source

PATIENT = "ANON-QA66-7731"  # stands for a real ID: must never be printed
CAUSE = "All 12 images carry the same patient"


def _write_dicom(path: Path, patient: str, seed: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = patient
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, (32, 32), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _anonymised(root: Path, patients: list[str] | None = None) -> Path:
    """normal/ and abnormal/, 6 DICOMs each; every one of PATIENT unless ``patients`` (one
    per image, in order) says otherwise."""
    k = 0
    for c, name in enumerate(("normal", "abnormal")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            who = patients[k] if patients else PATIENT
            _write_dicom(root / name / f"im{i}.dcm", who, seed=100 * c + i)
            k += 1
    return root


def _refusal(data: Path) -> str:
    source = open_data(data)
    splits = split_source(source, val_fraction=0.15, test_fraction=0.15, seed=1234)
    with pytest.raises(ConfigurationError) as caught:
        check_splits(source, splits)
    return str(caught.value)


def test_one_patient_folder_says_why_and_what_to_do(tmp_path: Path) -> None:
    message = _refusal(_anonymised(tmp_path / "data"))
    assert CAUSE in message and "PatientID" in message
    assert "no --val-fraction can make val or test" in message
    assert "raise --val-fraction" not in message  # it cannot help
    assert "CSV manifest" in message and "patient_id" in message and "split" in message
    assert PATIENT not in message


def test_one_patient_csv_says_to_fill_patient_id(tmp_path: Path) -> None:
    data = _anonymised(tmp_path / "data")
    with (data / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id"])
        for file in sorted(data.glob("*/*.dcm")):
            writer.writerow([f"{file.parent.name}/{file.name}", file.parent.name, PATIENT])
    message = _refusal(data)
    assert "All 12 images carry the same patient (patient_id column)" in message
    assert "fill the manifest's patient_id column" in message
    assert PATIENT not in message


def test_several_patients_keep_the_old_advice(tmp_path: Path) -> None:
    """Two patients, each with images of both classes, too few for val: raising the fraction
    is the advice, as before."""
    data = _anonymised(tmp_path / "data", ["A", "B"] * 6)
    message = _refusal(data)
    assert "the same patient" not in message
    assert "raise --val-fraction" in message


def test_data_check_and_train_explain_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _anonymised(tmp_path / "data")
    assert main(["data-check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "split val: 0" in out
    assert CAUSE in out and PATIENT not in out
    argv = ["train", "--data", str(data), "--arch", "simple_cnn", "--epochs", "1"]
    runs = ["--runs-dir", str(tmp_path / "runs"), "--store", str(tmp_path / "store")]
    assert main([*argv, *runs, "--no-openvino"]) == 2
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("radlens: error: ")
    assert CAUSE in line and "CSV manifest" in line
    assert PATIENT not in captured.out + captured.err


def test_one_patient_multi_label_folder_says_it_too(tmp_path: Path) -> None:
    from radlens.training.data.sources import MultiLabelSpec

    data = tmp_path / "data"
    for c, name in enumerate(("No Finding", "Effusion", "Mass")):
        (data / name).mkdir(parents=True)
        for i in range(4):
            _write_dicom(data / name / f"im{i}.dcm", PATIENT, seed=100 * c + i)
    source = open_data(data, multi_label=MultiLabelSpec())
    splits = split_source(source, val_fraction=0.15, test_fraction=0.15, seed=1234)
    with pytest.raises(ConfigurationError) as caught:
        check_splits(source, splits)
    message = str(caught.value)
    assert "All 12 images carry the same patient in their DICOM headers" in message
    assert "raise --val-fraction" not in message and PATIENT not in message

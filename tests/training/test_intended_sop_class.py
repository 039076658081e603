"""Training reads an instance's modality as the service's gate does: a Modality that says
nothing gives way to the modality its SOP class implies (QA round 14: a CT with Modality
deleted was predicted by a chest CR/DX model). The manifest's survey counts such a CT as CT,
and a training image the gate would refuse under the stated intended use is named, with the
gate's reason, in the run's log."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from radlens.training.data.intended import image_header, intended_use_for
from radlens.training.data.sources import open_data


def _ct_small_without_modality(path: Path, how: str) -> Path:
    """pydicom's CT_small.dcm (CT Image Storage) with Modality absent or empty."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    if how == "absent":
        del ds.Modality
    else:
        ds.Modality = ""
    ds.SOPInstanceUID = generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _made(path: Path, sop_class: str, seed: int) -> Path:
    """A 32x32 chest image of ``sop_class`` without Modality, written by pydicom."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = f"P{seed}"
    ds.BodyPartExamined = "CHEST"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=(32, 32), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Class folders of chest CRs without Modality, one secondary capture and two CTs
    without Modality (one absent, one empty)."""
    root = tmp_path / "data"
    for i, label in enumerate(["normal", "normal", "abnormal", "abnormal"]):
        _made(root / label / f"cr{i}.dcm", ComputedRadiographyImageStorage, seed=i)
    _made(root / "normal" / "sc.dcm", SecondaryCaptureImageStorage, seed=9)
    _ct_small_without_modality(root / "normal" / "ct_absent.dcm", "absent")
    _ct_small_without_modality(root / "abnormal" / "ct_empty.dcm", "empty")
    return root


def test_a_ct_without_modality_is_read_with_its_sop_class(mixed: Path) -> None:
    source = open_data(mixed)
    (example,) = [e for e in source.examples if e.key.endswith("ct_absent.dcm")]
    header = image_header(source, example)
    assert header["Modality"] is None and header["SOPClassUID"] == str(CTImageStorage)


def test_the_survey_counts_what_the_sop_class_implies(mixed: Path) -> None:
    source = open_data(mixed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = intended_use_for(source, source.examples)
    assert record["observed"]["modalities"] == {"CR": 4, "CT": 2, "unknown": 1}
    # nothing stated: the gate accepts what training saw, the CTs' modality included
    assert record["accepts"]["modalities"] == ["CR", "CT"]


def test_images_outside_the_stated_use_are_named_with_the_gates_reason(
    mixed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = open_data(mixed)
    with caplog.at_level(logging.WARNING, logger="radlens.training.data.intended"):
        record = intended_use_for(
            source, source.examples, modalities=["CR", "DX"], body_parts=["CHEST"]
        )
    assert record["accepts"]["modalities"] == ["CR", "DX"]
    (message,) = [r.getMessage() for r in caplog.records if "intended use" in r.getMessage()]
    assert message.startswith("2 training image(s) are outside the stated intended use"), message
    for name, said in (("ct_absent.dcm", "absent"), ("ct_empty.dcm", "empty")):
        assert (
            f"{name}: Modality is {said}; SOP Class 'CT Image Storage' ({CTImageStorage}) "
            "implies 'CT', which this model is not for (model accepts CR, DX)"
        ) in message, message
    assert "cr0.dcm" not in message and "sc.dcm" not in message


def test_nothing_is_named_when_the_intended_use_is_not_stated(
    mixed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = open_data(mixed)
    with caplog.at_level(logging.WARNING, logger="radlens.training.data.intended"):
        intended_use_for(source, source.examples)
    assert "outside the stated intended use" not in caplog.text

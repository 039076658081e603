"""QA 78: what the SR/SC sent back reference (app/ingest.py ``Ingestor._sender``) is read from
the dataset the upload was parsed into once for the gate and preprocessing, not from its bytes
parsed again (``_source_from_header`` read the header a second time whenever
RADLENS_DICOM_COPY_PATIENT was set or a destination wanted the SC). SQLite and PostgreSQL.

The single-frame case failed before QA 78 (two parses of the upload, the second a header-only
read); the outputs are as before: the sender's UIDs and, with RADLENS_DICOM_COPY_PATIENT, its
patient module.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

import radlens.models.dicomread as dicomread
from tests.app.conftest import dicom_bytes, new_uid
from tests.app.test_outbox import outbox_settings, post_dicom
from tests.app.test_series import multiframe_bytes

# QA 78's ports (27800-27899); nothing listens there: entries stay pending
PACS = "PACS@127.0.0.1:27821"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "qa78-0001"}


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(size, header only) of every byte string pydicom was asked to parse (every reader goes
    through models.dicomread.read_dicom_bytes)."""
    seen: list[tuple[int, bool]] = []
    real = dicomread.read_dicom_bytes

    def spy(data: bytes, **kwargs: Any) -> Any:
        seen.append((len(data), bool(kwargs.get("stop_before_pixels"))))
        return real(data, **kwargs)

    monkeypatch.setattr(dicomread, "read_dicom_bytes", spy)
    return seen


def _client(url: str, store: Path, spool: Path, outputs: str, **extra: Any) -> Any:
    from radlens.app.main import create_app

    settings = outbox_settings(
        url,
        store,
        spool,
        f"{PACS}/{outputs}",
        dicom_outbox_retry_s=60,
        dicom_outbox_retry_max_s=60,
        **extra,
    )
    return TestClient(create_app(settings))


@pytest.fixture()
def copying(tmp_path: Path, model_store: Path, migrated_database_url: str) -> Iterator[TestClient]:
    """An SR destination, the patient module copied into it."""
    with _client(
        migrated_database_url, model_store, tmp_path / "spool", "sr", dicom_copy_patient=True
    ) as client:
        yield client


@pytest.fixture()
def sending_sc(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> Iterator[TestClient]:
    with _client(migrated_database_url, model_store, tmp_path / "spool", "sr+sc") as client:
        yield client


def _sent(client: TestClient, kind: str) -> pydicom.Dataset:
    app: Any = client.app
    outbox = app.state.resources.ingestor.outbox
    (entry,) = [e for e in outbox.entries() if e.kind == kind]
    return pydicom.dcmread(io.BytesIO(outbox.payload(entry)))


def test_the_copied_patient_module_is_read_from_the_one_parse(
    copying: TestClient, parses: list[tuple[int, bool]]
) -> None:
    study, sop = new_uid(), new_uid()
    data = dicom_bytes(study=study, sop=sop, patient=PATIENT)
    post_dicom(copying, data)
    assert [p for p in parses if p[0] == len(data)] == [(len(data), False)]  # was 2
    sr = _sent(copying, "sr")
    assert sr.StudyInstanceUID == study
    assert str(sr.PatientName) == PATIENT["PatientName"]
    assert sr.PatientID == PATIENT["PatientID"]


def test_the_sc_source_is_read_without_a_header_only_parse(
    sending_sc: TestClient, parses: list[tuple[int, bool]]
) -> None:
    study, sop = new_uid(), new_uid()
    data = dicom_bytes(study=study, sop=sop, instance=7)
    post_dicom(sending_sc, data)
    # the gate and preprocessing's parse, and the overlay drawn at display size (Grad-CAM)
    # parse it; the header is no longer read on its own as well
    assert (len(data), True) not in parses
    sc = _sent(sending_sc, "sc")
    assert sc.StudyInstanceUID == study
    assert "PatientName" not in sc or not str(sc.PatientName)  # not copied: the setting is off
    sr = _sent(sending_sc, "sr")
    assert sr.StudyInstanceUID == study


def test_a_multi_frame_instance_is_referenced_from_the_one_parse(
    copying: TestClient, parses: list[tuple[int, bool]]
) -> None:
    data = multiframe_bytes(3, seed=78)[0]
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    body = post_dicom(copying, data)
    assert body["frame_result"]["frames"] == [0, 1, 2]
    assert [p for p in parses if p[0] == len(data)] == [(len(data), False)]
    sr = _sent(copying, "sr")
    assert sr.StudyInstanceUID == ds.StudyInstanceUID
    assert str(sr.PatientName) == PATIENT["PatientName"]

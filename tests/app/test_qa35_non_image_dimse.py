"""QA round 35: a whole study sent to the Storage SCP (app/dimse.py), as a PACS's "Send to" or
a routing rule sends it, holds objects that are no images: a report, a dose report, a key
object selection, a presentation state, a PDF, RT objects. Their classes were rejected at
association negotiation (no accepted presentation context), and the sender's whole job failed
(Orthanc: the study's store job; dcmtk's storescu of a folder). They are now accepted and
answered Success without being predicted or stored (RADLENS_NON_IMAGE_INSTANCES=acknowledge,
the default); each association logs one line counting them, without any UID; an image without
pixel data keeps its 0xC000. ``refuse`` keeps the old rejection.

The builders here (highdicom for the key object selection and the presentation state,
pydicom's bundled SR and RT files, pydicom for the rest) serve test_qa35_non_image_stow.py too.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Databases, app_client, dicom_bytes, new_uid

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import sop_class as sop

PATIENT = {"PatientID": "QA35-SYNTH", "PatientName": "Synthetic^Qa35"}  # not a person

# what a study carries beside its images, by the classes the brief of QA round 35 names
NON_IMAGE_CLASSES = (
    sop.BasicTextSRStorage,
    sop.EnhancedSRStorage,
    sop.ComprehensiveSRStorage,
    sop.Comprehensive3DSRStorage,
    sop.ExtensibleSRStorage,
    sop.XRayRadiationDoseSRStorage,
    sop.EnhancedXRayRadiationDoseSRStorage,
    sop.KeyObjectSelectionDocumentStorage,
    sop.GrayscaleSoftcopyPresentationStateStorage,
    sop.ColorSoftcopyPresentationStateStorage,
    sop.PseudoColorSoftcopyPresentationStageStorage,  # (pynetdicom's spelling)
    sop.BlendingSoftcopyPresentationStateStorage,
    sop.EncapsulatedPDFStorage,
    sop.EncapsulatedCDAStorage,
    sop.RTStructureSetStorage,
    sop.RTPlanStorage,
    sop.RTDoseStorage,
    sop.RawDataStorage,
    sop.SpatialRegistrationStorage,
)


# --- builders -------------------------------------------------------------------------


def images(study: str, count: int = 2, seed: int = 350) -> list[Dataset]:
    """``count`` small CT instances of one series of ``study``, under the synthetic patient."""
    series = new_uid()
    # the patient and study module's Type 2 attributes, which highdicom copies from evidence
    patient = {**PATIENT, "PatientBirthDate": "", "PatientSex": "", "StudyDate": "20260101",
               "StudyTime": "120000", "ReferringPhysicianName": "", "StudyID": "",
               "AccessionNumber": ""}  # fmt: skip
    return [
        dcmread(io.BytesIO(dicom_bytes(study=study, series=series, seed=seed + i, patient=patient)))
        for i in range(count)
    ]


def _refile(ds: Dataset, study: str) -> Dataset:
    """``ds`` moved into ``study``, in a new series, with a new SOP Instance UID."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, new_uid()
    ds.SOPInstanceUID = new_uid()
    ds.PatientID, ds.PatientName = PATIENT["PatientID"], PATIENT["PatientName"]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def report(study: str) -> Dataset:
    """pydicom's Comprehensive SR, filed into ``study``."""
    return _refile(dcmread(get_testdata_file("test-SR.dcm")), study)


def rt_object(name: str, study: str) -> Dataset:
    """One of pydicom's RT files (rtstruct, rtplan, rtdose), filed into ``study`` (rtstruct.dcm
    has no file meta: it is given one, in the Implicit VR Little Endian it is written in)."""
    ds = dcmread(get_testdata_file(f"{name}.dcm"), force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return _refile(ds, study)


def key_objects(sources: list[Dataset]) -> Dataset:
    """A Key Object Selection document (highdicom) flagging ``sources`` as of interest."""
    from highdicom import UID
    from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
    from pydicom.sr.codedict import codes

    return KeyObjectSelectionDocument(
        evidence=sources,
        content=KeyObjectSelection(document_title=codes.DCM.OfInterest, referenced_objects=sources),
        series_instance_uid=UID(),
        series_number=50,
        sop_instance_uid=UID(),
        instance_number=1,
        manufacturer="QA35",
    )


def presentation_state(sources: list[Dataset]) -> Dataset:
    """A Grayscale Softcopy Presentation State (highdicom) of ``sources``."""
    from highdicom import UID
    from highdicom.pr import GrayscaleSoftcopyPresentationState

    return GrayscaleSoftcopyPresentationState(
        referenced_images=sources,
        series_instance_uid=UID(),
        series_number=51,
        sop_instance_uid=UID(),
        instance_number=1,
        manufacturer="QA35",
        manufacturer_model_name="qa35",
        software_versions="1",
        device_serial_number="1",
        content_label="QA35",
    )


def non_image(sop_class: str, study: str, **attributes: Any) -> Dataset:
    """A minimal instance of a class that holds no image (pydicom): what the SCP does not read."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, new_uid()
    ds.PatientID, ds.PatientName = PATIENT["PatientID"], PATIENT["PatientName"]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def pdf(study: str) -> Dataset:
    return non_image(
        sop.EncapsulatedPDFStorage,
        study,
        Modality="DOC",
        MIMETypeOfEncapsulatedDocument="application/pdf",
        EncapsulatedDocument=b"%PDF-1.4\n% QA35 request form, synthetic\n%%EOF\n",
    )


def mixed_study(study: str) -> tuple[list[Dataset], list[Dataset]]:
    """(images, the rest): two CT images, an SR, a dose SR, a presentation state, a key object
    selection and a PDF of one study."""
    shown = images(study)
    rest = [
        report(study),
        non_image(sop.XRayRadiationDoseSRStorage, study, Modality="SR"),
        presentation_state(shown),
        key_objects(shown),
        pdf(study),
    ]
    return shown, rest


def encoded(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --- the SCP --------------------------------------------------------------------------


def count(app: Any, sql: str) -> int:
    from sqlalchemy import text

    with app.state.resources.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


def everything_stored(app: Any) -> str:
    """Every row of every table, as text."""
    from sqlalchemy import inspect, text

    rows = []
    with app.state.resources.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            result = conn.execute(text(f'SELECT * FROM "{table}"'))
            rows += [str(dict(row)) for row in result.mappings()]
    return "\n".join(rows)


@contextmanager
def started(databases: Databases, model_store: Path, **overrides: Any) -> Iterator[Any]:
    """An app with the SCP (on a free port unless ``dimse_port`` says); yields the app."""
    running = app_client(databases, model_store, **{"dimse_port": 0, **overrides})
    try:
        _client, app = next(running)
        yield app
    finally:
        running.close()


def associate(port: int, *classes: str) -> Any:
    ae = AE(ae_title="ORTHANC")
    for sop_class in classes:
        ae.add_requested_context(sop_class)
    return ae.associate("127.0.0.1", port, ae_title="RADLENS")


def send(port: int, instances: list[Dataset]) -> list[int]:
    """C-STORE ``instances`` on one association (a context per class, in their own syntax)."""
    ae = AE(ae_title="ORTHANC")
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in instances):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLENS")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in instances]
    finally:
        assoc.release()


def radlens_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("radlens")]


def wait_for_line(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    """The radlens log lines holding ``needle``, once one is there (the SCP logs its summary as
    the connection closes, on the association's thread, after the sender's release)."""
    from tests.app.test_outbox import wait_for

    wait_for(lambda: any(needle in m for m in radlens_lines(caplog)), 20, f"a log line {needle!r}")
    return [m for m in radlens_lines(caplog) if needle in m]


SUMMARY = "of classes that hold no image acknowledged, not predicted"


@pytest.fixture(scope="module")
def scp(databases: Databases, model_store: Path) -> Iterator[Any]:
    """A committed-mode SCP with the default settings."""
    with started(databases, model_store) as app:
        yield app


def test_the_classes_a_study_carries_are_accepted_at_negotiation(scp: Any) -> None:
    assoc = associate(scp.state.dimse.port, *NON_IMAGE_CLASSES, sop.RTImageStorage)
    assert assoc.is_established
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    assoc.release()
    assert accepted == {str(c) for c in NON_IMAGE_CLASSES}  # RT Image: an image, not listed


def test_a_mixed_study_is_taken_in_one_association_and_only_its_images_predicted(
    scp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    study = new_uid()
    shown, rest = mixed_study(study)
    rest += [rt_object(name, study) for name in ("rtstruct", "rtplan", "rtdose")]
    broken = images(study, count=1, seed=359)[0]
    del broken.PixelData  # an image without pixel data keeps its status
    before = count(scp, "SELECT count(*) FROM predictions")
    with caplog.at_level(logging.INFO, logger="radlens"):
        statuses = send(scp.state.dimse.port, [shown[0], *rest, broken, shown[1]])
        (line,) = wait_for_line(caplog, SUMMARY)
    assert statuses == [0x0000] * (1 + len(rest)) + [0xC000, 0x0000]
    assert count(scp, "SELECT count(*) FROM predictions") == before + 2
    stored = everything_stored(scp)
    for ds in rest:
        assert str(ds.SOPInstanceUID) not in stored
    assert "QA35-SYNTH" not in stored and "Qa35" not in stored
    assert f"(calling 'ORTHANC'): {len(rest)} instances {SUMMARY}" in line
    for name in ("Comprehensive SR Storage: 1", "Key Object Selection Document Storage: 1",
                 "Grayscale Softcopy Presentation State Storage: 1", "RT Plan Storage: 1",
                 "Encapsulated PDF Storage: 1", "X-Ray Radiation Dose SR Storage: 1"):  # fmt: skip
        assert name in line
    # no UID in radlens' log: neither the instances' nor their classes'
    logged = "\n".join(radlens_lines(caplog))
    assert "1.2.840.10008.5.1.4" not in logged
    for ds in [*shown, *rest]:
        assert str(ds.SOPInstanceUID) not in logged and study not in logged


def test_a_foreign_3d_sr_is_acknowledged_too(scp: Any) -> None:
    """A Comprehensive 3D SR another system made (radlens' own class) was refused per instance
    with 0x0122, which failed the sender's job as surely."""
    ds = non_image(sop.Comprehensive3DSRStorage, new_uid(), Modality="SR", Manufacturer="OTHER")
    assert send(scp.state.dimse.port, [ds]) == [0x0000]


def test_queued_mode_acknowledges_them_without_queuing_them(
    tmp_path: Path, databases: Databases, model_store: Path
) -> None:
    from tests.app.test_outbox import wait_for

    inbox = tmp_path / "inbox"
    study = new_uid()
    shown, rest = mixed_study(study)
    with started(
        databases, model_store, dimse_ack="queued", dimse_inbox_dir=inbox
    ) as app:  # fmt: skip
        assert send(app.state.dimse.port, [*rest, *shown]) == [0x0000] * (len(rest) + 2)
        wait_for(lambda: count(app, "SELECT count(*) FROM predictions") == 2, 60, "2 predictions")
        wait_for(lambda: not list(inbox.glob("*.dcm")), 30, "an empty inbox")
        assert count(app, "SELECT count(*) FROM predictions") == 2


def test_refuse_keeps_them_rejected_at_negotiation(
    scp: Any, databases: Databases, model_store: Path
) -> None:
    """Accepted by default; RADLENS_NON_IMAGE_INSTANCES=refuse: rejected, as before."""
    assoc = associate(scp.state.dimse.port, sop.EncapsulatedPDFStorage)
    assert assoc.is_established and assoc.accepted_contexts
    assoc.release()
    with started(databases, model_store, non_image_instances="refuse") as app:
        assoc = associate(app.state.dimse.port, *NON_IMAGE_CLASSES)
        accepted = (
            {str(c.abstract_syntax) for c in assoc.accepted_contexts}
            if assoc.is_established
            else set()
        )
        if assoc.is_established:
            assoc.release()
        # radlens' own SR class stays open, as since QA round 30
        assert accepted == {str(sop.Comprehensive3DSRStorage)}


def test_the_setting_is_checked_at_start_up() -> None:
    from pydantic import ValidationError

    from radlens.app.settings import Settings

    assert Settings().non_image_instances == "acknowledge"
    with pytest.raises(ValidationError, match="non_image_instances"):
        Settings(non_image_instances="ignore")


def test_every_class_acknowledged_is_one_the_gate_says_holds_no_image() -> None:
    """One list: what the SCP acknowledges is what the intended-use gate refuses as no image
    (models/intended_use.py), so no image class is ever acknowledged unpredicted."""
    from radlens.app.dimse import DEFAULT_STORAGE_SOP_CLASSES, NON_IMAGE_STORAGE_SOP_CLASSES
    from radlens.models.intended_use import holds_no_image

    assert {str(c) for c in NON_IMAGE_CLASSES} <= set(NON_IMAGE_STORAGE_SOP_CLASSES)
    assert all(holds_no_image(uid) for uid in NON_IMAGE_STORAGE_SOP_CLASSES)
    defaults = {str(getattr(sop, keyword)) for keyword in DEFAULT_STORAGE_SOP_CLASSES}
    assert not defaults & set(NON_IMAGE_STORAGE_SOP_CLASSES)
    assert str(sop.RTImageStorage) not in NON_IMAGE_STORAGE_SOP_CLASSES

"""Orthanc as the PACS (issue #24): Orthanc, configured with radlens as a DICOM modality,
sends it a study by C-STORE; radlens's SRs come back by C-STORE into the same study in
Orthanc, seen through Orthanc's REST API. Debian's ``orthanc`` package, run from a config
file in a temporary directory on loopback ports (no systemd); skipped without the binary.
docs/pacs-integration.md shows this configuration.

Issue #20: the same Orthanc with Debian's DICOMweb plugin (``orthanc-dicomweb``) sends a real
CT series and a real chest CR to radlens by STOW-RS (its DICOMweb client, radlens's API key
as an HTTP header), radlens served by uvicorn on a loopback port; the SRs and SCs come back
into the same study.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import create_api_key, dicom_bytes, make_settings, new_uid
from tests.app.test_docs_browser import _Server
from tests.app.test_outbox import free_port, wait_for
from tests.conftest import shared_data_path

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
pytestmark = pytest.mark.skipif(
    not Path(ORTHANC).is_file(),
    reason="Orthanc is not installed (Debian: apt-get install orthanc; .ci/run installs it)",
)
pytest.importorskip("requests")
import requests  # noqa: E402


def orthanc_config(
    folder: Path,
    http_port: int,
    dicom_port: int,
    radlens_port: int,
    radlens_dicomweb: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Orthanc's configuration, as docs/pacs-integration.md shows it; ``radlens_dicomweb``:
    radlens as a server of the DICOMweb plugin's client (``DicomWeb.Servers``)."""
    config: dict[str, Any] = {
        "Name": "radlens-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # REST API for localhost only
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": False,  # only the modalities below may store into it ...
        "DicomCheckModalityHost": True,  # ... from their own address
        "DicomModalities": {"radlens": ["RADLENS", "127.0.0.1", radlens_port]},
        "Plugins": [],
        "OrthancExplorerEnabled": False,
        "SaveJobs": False,
    }
    if radlens_dicomweb is not None:
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Servers": {"radlens": radlens_dicomweb}}
    return config


class Orthanc:
    def __init__(
        self,
        folder: Path,
        radlens_port: int,
        radlens_dicomweb: dict[str, Any] | None = None,
        dicom_port: int | None = None,
    ) -> None:
        self.http_port, self.dicom_port = free_port(), dicom_port or free_port()
        config = orthanc_config(
            folder, self.http_port, self.dicom_port, radlens_port, radlens_dicomweb
        )
        path = folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [ORTHANC, str(path)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.http_port}"
        wait_for(self._up, 60, "Orthanc's REST API")

    def _up(self) -> bool:
        assert self.process.poll() is None, "Orthanc exited at start-up (see orthanc.log)"
        try:
            return requests.get(f"{self.url}/system", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, **kwargs: Any) -> Any:
        response = requests.post(f"{self.url}{path}", timeout=120, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


@pytest.fixture()
def orthanc_and_radlens(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> Iterator[tuple[Orthanc, Any]]:
    from radlens.app.main import create_app

    radlens_port = free_port()
    orthanc = Orthanc(tmp_path, radlens_port)
    try:
        settings = make_settings(
            migrated_database_url,
            model_store,
            auth="enabled",
            dimse_port=radlens_port,
            dimse_allowed_ae_titles="ORTHANC",
            dicom_destinations=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}/sr",
            dicom_copy_patient=True,  # Orthanc files a study under its patient: see the docs
            dicom_outbox_dir=tmp_path / "outbox",
            dicom_outbox_retry_s=0.5,
        )
        key = create_api_key(migrated_database_url)
        app = create_app(settings)
        with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
            yield orthanc, client
    finally:
        orthanc.stop()


def test_orthanc_sends_a_study_and_gets_the_srs_back_into_it(
    orthanc_and_radlens: tuple[Orthanc, Any],
) -> None:
    orthanc, client = orthanc_and_radlens
    study = new_uid()
    patient = {"PatientID": "SYNTH-0001", "PatientName": "Synthetic^Test"}  # not a person
    for seed in range(3):
        orthanc.post(
            "/instances", data=dicom_bytes(study=study, series=None, seed=seed, patient=patient)
        )
    (orthanc_study,) = orthanc.get("/studies")
    assert orthanc.get(f"/studies/{orthanc_study}")["MainDicomTags"]["StudyInstanceUID"] == study
    instances = orthanc.get(f"/studies/{orthanc_study}/instances")
    sources = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}

    # Orthanc -> radlens by C-STORE (what a routing rule or a user's "Send to" does)
    job = orthanc.post(
        "/modalities/radlens/store", json={"Resources": [orthanc_study], "Synchronous": True}
    )
    assert job["InstancesCount"] == 3 and job["FailedInstancesCount"] == 0

    def sr_series() -> list[Any]:
        series = orthanc.get(f"/studies/{orthanc_study}/series?expand")
        return [s for s in series if s["MainDicomTags"].get("Modality") == "SR"]

    srs = wait_for(lambda: len(sr_series()) == 3 and sr_series(), 120, "3 SRs in Orthanc")
    assert orthanc.get("/studies") == [orthanc_study]  # no second study, no second patient
    referenced = set()
    for series in srs:
        (instance,) = series["Instances"]
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        assert tags["StudyInstanceUID"] == study
        assert tags["PatientID"] == "SYNTH-0001"
        evidence = tags["CurrentRequestedProcedureEvidenceSequence"][0]
        referenced.add(
            evidence["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0][
                "ReferencedSOPInstanceUID"
            ]
        )
    assert referenced == sources  # one SR per instance sent, each naming its source
    # the spool entry goes once Orthanc's C-STORE response is in: moments after Orthanc
    # shows the SR, so wait for it (a loaded machine saw the last one still pending)
    wait_for(lambda: client.get("/v1/dicom/outbox").json()["pending"] == [], 60, "an empty outbox")
    # radlens stored no patient identifier while doing so
    body = client.get("/v1/predictions").json()
    assert "SYNTH" not in json.dumps(body)


# --- STOW-RS (issue #20) -----------------------------------------------------------------

SYNTHETIC_PATIENT = {"PatientID": "SYNTH-0002", "PatientName": "Synthetic^Stow"}  # not a person


def real_instance(path: Path | str, study: str, series: str) -> bytes:
    """A real DICOM file filed into ``study``/``series`` with a new SOP Instance UID and the
    synthetic patient: whatever identified the original patient is removed."""
    import io

    import pydicom
    from pydicom.uid import UID

    ds = pydicom.dcmread(path)
    for keyword in ("PatientBirthDate", "PatientSex", "PatientAge", "OtherPatientIDs",
                    "InstitutionName", "ReferringPhysicianName", "AccessionNumber"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in SYNTHETIC_PATIENT.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid())
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture()
def orthanc_stow_radlens(
    tmp_path: Path, model_store: Path, migrated_database_url: str
) -> Iterator[tuple[Orthanc, Any]]:
    """radlens served by uvicorn (Orthanc's HTTP client needs a socket) and an Orthanc whose
    DICOMweb client knows radlens as server "radlens", with the API key as a header."""
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(
            f"{DICOMWEB_PLUGIN} absent (Debian: apt-get install orthanc-dicomweb; .ci/run "
            "installs it)"
        )
    from radlens.app.main import create_app

    key = create_api_key(migrated_database_url)
    orthanc_dicom_port = free_port()
    settings = make_settings(
        migrated_database_url,
        model_store,
        auth="enabled",
        dicom_destinations=f"ORTHANC@127.0.0.1:{orthanc_dicom_port}/sr+sc",
        dicom_copy_patient=True,  # Orthanc files a study under its patient: see the docs
        dicom_outbox_dir=tmp_path / "outbox",
        dicom_outbox_retry_s=0.5,
    )
    with _Server(create_app(settings)) as base:
        orthanc = Orthanc(
            tmp_path,
            free_port(),  # radlens's DIMSE port: unused here (radlens receives by STOW-RS)
            {"Url": f"{base}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {key}"}},
            dicom_port=orthanc_dicom_port,
        )
        try:
            yield orthanc, {"base": base, "key": key}
        finally:
            orthanc.stop()


def test_orthanc_sends_a_study_by_stow_rs_and_gets_srs_and_scs_back_into_it(
    orthanc_stow_radlens: tuple[Orthanc, Any],
) -> None:
    from pydicom.data import get_testdata_file

    orthanc, radlens = orthanc_stow_radlens
    study, ct_series, cr_series = new_uid(), new_uid(), new_uid()
    ct = str(get_testdata_file("CT_small.dcm"))  # a real CT slice (pydicom's), three times
    cr = shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm")  # a real chest CR
    files = [real_instance(ct, study, ct_series) for _ in range(3)]
    files.append(real_instance(cr, study, cr_series))
    for data in files:
        orthanc.post("/instances", data=data)
    (orthanc_study,) = orthanc.get("/studies")
    instances = orthanc.get(f"/studies/{orthanc_study}/instances")
    sources = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    assert len(sources) == 4

    # Orthanc -> radlens by STOW-RS: the DICOMweb plugin's client, server "radlens"
    orthanc.post(
        "/dicom-web/servers/radlens/stow",
        json={"Resources": [orthanc_study], "Synchronous": True},
    )
    headers = {"Authorization": f"Bearer {radlens['key']}"}
    listed = requests.get(f"{radlens['base']}/v1/predictions", headers=headers, timeout=30)
    assert listed.status_code == 200
    assert len(listed.json()["items"]) == 4  # one prediction per instance Orthanc sent

    def outputs() -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {"SR": [], "OT": []}
        for series in orthanc.get(f"/studies/{orthanc_study}/series?expand"):
            modality = series["MainDicomTags"].get("Modality")
            if modality in found:
                found[modality].append(series)
        return found

    def all_back() -> dict[str, list[Any]] | None:
        found = outputs()
        counts = [sum(len(series["Instances"]) for series in found[m]) for m in ("SR", "OT")]
        return found if counts == [4, 4] else None

    found = wait_for(all_back, 120, "4 SRs and 4 SCs in Orthanc")
    assert orthanc.get("/studies") == [orthanc_study]  # no second study, no second patient
    # one SR series and one SC series per source series (CT and CR), not one per instance
    assert (len(found["SR"]), len(found["OT"])) == (2, 2)
    referenced, derived = set(), set()
    for instance in (i for series in found["SR"] for i in series["Instances"]):
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        assert tags["StudyInstanceUID"] == study
        assert tags["PatientID"] == SYNTHETIC_PATIENT["PatientID"]
        evidence = tags["CurrentRequestedProcedureEvidenceSequence"][0]
        referenced.add(
            evidence["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0][
                "ReferencedSOPInstanceUID"
            ]
        )
    for instance in (i for series in found["OT"] for i in series["Instances"]):
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        assert tags["StudyInstanceUID"] == study
        derived.add(tags["SourceImageSequence"][0]["ReferencedSOPInstanceUID"])
    assert referenced == sources and derived == sources  # one SR and one SC per instance
    body = requests.get(f"{radlens['base']}/v1/predictions", headers=headers, timeout=30).text
    assert "SYNTH" not in body and "Synthetic" not in body  # no patient identifier stored

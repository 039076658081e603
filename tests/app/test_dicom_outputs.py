"""DICOM outputs: SR and Secondary Capture built with highdicom, read back with pydicom, in the
source study, referencing the source instance; no patient identifiers unless the site allows
them for an SR returned in the same request. Real DICOM from ../shared/data and pydicom-data."""

from __future__ import annotations

import io
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from tests.app.conftest import (
    CLASS_NAMES,
    Service,
    TestClient,
    assert_problem,
    dicom_bytes,
    make_settings,
    new_uid,
    png_bytes,
)
from tests.conftest import shared_data_path

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
PATIENT = {
    "PatientName": "Roe^Richard",
    "PatientID": "MRN-0042-XYZ",
    "PatientBirthDate": "19610203",
    "PatientSex": "M",
    "AccessionNumber": "ACC-5566",
}


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _pydicom_data_chest_cr() -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm (chest CR) is not installed")
    return Path(str(path)).read_bytes()


def _post(service: Service, data: bytes, explain: bool = True) -> dict[str, Any]:
    response = service.post(data, "src.dcm", params={"explain": str(explain).lower()})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def _content_items(ds: Any) -> Iterator[Any]:
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _content_items(item)


def _assert_sr(sr: pydicom.Dataset, source: pydicom.Dataset, prediction: dict[str, Any]) -> None:
    import highdicom as hd

    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.StudyInstanceUID == source.StudyInstanceUID  # in the source study
    assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID,)  # a new series
    assert sr.Manufacturer == "radlens"
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)  # highdicom's own parsing and checks
    groups = parsed.content.get_image_measurement_groups()
    assert len(groups) == 1
    items = list(_content_items(sr))
    finding = [
        i
        for i in items
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
    ]  # DCM "Finding"
    assert len(finding) == 1
    code = finding[0].ConceptCodeSequence[0]
    assert (code.CodingSchemeDesignator, code.CodeMeaning) == ("99RADLENS", prediction["label"])
    scores = {
        i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
        for i in items
        if i.ValueType == "NUM"
    }
    assert scores == pytest.approx(
        {f"Model score for {name}": prediction["scores"][name] for name in CLASS_NAMES},
        abs=1e-6,
    )
    texts = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue
        for i in items
        if i.ValueType == "TEXT"
    }
    assert texts["Algorithm Name"] == prediction["model"]["name"]
    assert texts["Algorithm Version"] == str(prediction["model"]["version"])
    images = [i for i in items if i.ValueType == "IMAGE"]
    ref = images[0].ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    listed = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert listed.ReferencedSOPInstanceUID == source.SOPInstanceUID


def _assert_no_patient(ds: pydicom.Dataset, raw: bytes) -> None:
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
    ):
        assert keyword in ds  # Type 2: present ...
        assert not ds[keyword].value  # ... and empty
    for value in PATIENT.values():
        if len(value) > 2:
            assert value.encode() not in raw


class TestStructuredReport:
    def test_sr_of_a_real_ct(self, service: Service) -> None:
        data = shared_data_path("dicom", "ct_image.dcm").read_bytes()
        prediction = _post(service, data, explain=False)
        response = service.client.get(f"/v1/predictions/{prediction['id']}/dicom/sr")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom"
        _assert_sr(_read(response.content), _read(data), prediction)
        _assert_no_patient(_read(response.content), response.content)

    def test_sr_of_the_pydicom_data_chest_cr(self, service: Service) -> None:
        data = _pydicom_data_chest_cr()
        prediction = _post(service, data, explain=False)
        response = service.client.get(f"/v1/predictions/{prediction['id']}/dicom/sr")
        assert response.status_code == 200, response.text
        _assert_sr(_read(response.content), _read(data), prediction)

    def test_same_prediction_same_uids(self, service: Service) -> None:
        prediction = _post(service, dicom_bytes(), explain=False)
        url = f"/v1/predictions/{prediction['id']}/dicom/sr"
        first, second = (_read(service.client.get(url).content) for _ in range(2))
        assert first.SOPInstanceUID == second.SOPInstanceUID
        assert first.SeriesInstanceUID == second.SeriesInstanceUID
        assert len(first.SOPInstanceUID) <= 64

    def test_stored_path_carries_no_patient_identifiers(self, service: Service) -> None:
        prediction = _post(service, dicom_bytes(patient=PATIENT), explain=True)
        for kind in ("sr", "secondary-capture"):
            response = service.client.get(f"/v1/predictions/{prediction['id']}/dicom/{kind}")
            assert response.status_code == 200, response.text
            _assert_no_patient(_read(response.content), response.content)

    def test_png_prediction_has_no_dicom_outputs(self, service: Service) -> None:
        prediction = _post(service, png_bytes(), explain=True)
        for kind in ("sr", "secondary-capture"):
            body = assert_problem(
                service.client.get(f"/v1/predictions/{prediction['id']}/dicom/{kind}"),
                409,
                code="dicom-source-required",
            )
            assert "PNG" in body["detail"]

    def test_unknown_prediction(self, service: Service) -> None:
        assert_problem(
            service.client.get("/v1/predictions/00000000-0000-4000-8000-000000000001/dicom/sr"),
            404,
        )

    def test_inline_sr_without_the_site_setting_has_no_patient(self, service: Service) -> None:
        data = dicom_bytes(patient=PATIENT)
        response = service.client.post(
            "/v1/predictions/dicom-sr", files={"file": ("a.dcm", data, "application/dicom")}
        )
        assert response.status_code == 201, response.text
        assert response.headers["location"].startswith("/v1/predictions/")
        sr = _read(response.content)
        assert sr.StudyInstanceUID == _read(data).StudyInstanceUID
        _assert_no_patient(sr, response.content)

    def test_inline_sr_needs_a_dicom_upload(self, service: Service) -> None:
        response = service.client.post(
            "/v1/predictions/dicom-sr", files={"file": ("a.png", png_bytes(), "image/png")}
        )
        assert_problem(response, 409, code="dicom-source-required")

    @pytest.mark.parametrize(
        "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
    )
    def test_inline_sr_of_an_instance_without_a_uid_names_it(
        self, service: Service, keyword: str
    ) -> None:
        ds = _read(dicom_bytes())
        delattr(ds, keyword)
        if keyword == "SOPClassUID":
            del ds.file_meta.MediaStorageSOPClassUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        response = service.client.post(
            "/v1/predictions/dicom-sr",
            files={"file": ("a.dcm", buffer.getvalue(), "application/dicom")},
        )
        body = assert_problem(response, 422, code="dicom-source-incomplete")
        assert keyword in body["detail"] and "PNG" not in body["title"]

    def test_outputs_of_a_stored_prediction_without_a_sop_class_name_it(
        self, service: Service
    ) -> None:
        """A real file without SOP Class UID (dwv's anonymisation test, QA round 14) is
        predicted; its outputs were refused as if it had been a PNG upload or predated
        migration 0002."""
        ds = _read(dicom_bytes())
        del ds.SOPClassUID
        del ds.file_meta.MediaStorageSOPClassUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        prediction = _post(service, buffer.getvalue(), explain=True)
        for output in ("sr", "secondary-capture"):
            response = service.client.get(f"/v1/predictions/{prediction['id']}/dicom/{output}")
            body = assert_problem(response, 409, code="dicom-source-incomplete")
            assert "had no SOPClassUID" in body["detail"], body
            assert "PNG" not in body["title"]


class TestSecondaryCapture:
    def test_sc_of_a_real_chest_cr(self, service: Service) -> None:
        data = shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm").read_bytes()
        prediction = _post(service, data, explain=True)
        response = service.client.get(f"/v1/predictions/{prediction['id']}/dicom/secondary-capture")
        assert response.status_code == 200, response.text
        sc, source = _read(response.content), _read(data)
        assert sc.SOPClassUID == SecondaryCaptureImageStorage
        assert sc.StudyInstanceUID == source.StudyInstanceUID
        assert sc.SeriesInstanceUID != source.SeriesInstanceUID
        assert sc.SOPInstanceUID != source.SOPInstanceUID
        ref = sc.SourceImageSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            source.SOPClassUID,
            source.SOPInstanceUID,
        )
        assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
        # the pixels are the heatmap PNG's
        from radlens.app.dicom_outputs import overlay_rgb

        png = service.client.get(f"/v1/predictions/{prediction['id']}/heatmap").content
        np.testing.assert_array_equal(sc.pixel_array, overlay_rgb(png))
        _assert_no_patient(sc, response.content)

    def test_sc_of_the_pydicom_data_chest_cr(self, service: Service) -> None:
        data = _pydicom_data_chest_cr()
        prediction = _post(service, data, explain=True)
        response = service.client.get(f"/v1/predictions/{prediction['id']}/dicom/secondary-capture")
        assert response.status_code == 200, response.text
        sc = _read(response.content)
        assert sc.StudyInstanceUID == _read(data).StudyInstanceUID
        assert sc.pixel_array.ndim == 3

    def test_sc_from_a_stored_prediction_declares_burned_in_annotation(
        self, service: Service
    ) -> None:
        """The overlay's pixels are the source's, and the service does not keep the source's
        Burned In Annotation: the SC must not claim NO (it says YES, i.e. may carry text)."""
        data = dicom_bytes(seed=5)
        source = _read(data)
        assert "BurnedInAnnotation" not in source
        prediction = _post(service, data, explain=True)
        response = service.client.get(f"/v1/predictions/{prediction['id']}/dicom/secondary-capture")
        assert response.status_code == 200, response.text
        assert _read(response.content).BurnedInAnnotation == "YES"

    @pytest.mark.parametrize(
        ("source_value", "expected"), [("NO", "NO"), ("YES", "YES"), (None, "YES"), ("", "YES")]
    )
    def test_sc_copies_the_source_burned_in_annotation(
        self, service: Service, source_value: str | None, expected: str
    ) -> None:
        from radlens.app.dicom_outputs import build_sc, source_from_dataset
        from radlens.app.services import get_prediction

        data = dicom_bytes(seed=6)
        prediction = _post(service, data, explain=True)
        ds = _read(data)
        if source_value is not None:
            ds.BurnedInAnnotation = source_value
        source = source_from_dataset(ds, copy_patient=False)
        png = service.client.get(f"/v1/predictions/{prediction['id']}/heatmap").content
        with service.app.state.resources.sessionmaker() as session:
            row = get_prediction(session, uuid.UUID(prediction["id"]))
            sc = _read(build_sc(row, source, png))
        assert sc.BurnedInAnnotation == expected

    def test_sc_needs_an_explanation(self, service: Service) -> None:
        prediction = _post(service, dicom_bytes(), explain=False)
        body = assert_problem(
            service.client.get(f"/v1/predictions/{prediction['id']}/dicom/secondary-capture"),
            404,
            code="explanation-not-found",
        )
        assert "explain=true" in body["title"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Service]:
    """A site that opts in to patient copying and pseudonymises stored UIDs (SQLite)."""
    from radlens.app.main import create_app

    url = f"sqlite:///{tmp_path_factory.mktemp('site') / 'site.db'}"
    settings = make_settings(
        url,
        model_store,
        dicom_copy_patient=True,
        uid_pseudonym_key="a-site-secret-of-32-characters!!",
        dedupe_key="another-site-secret-of-32-chars!",
    )
    app = create_app(settings)
    with TestClient(app) as client:
        yield Service(client=client, app=app, database_url=url, backend="sqlite")


class TestSiteSettings:
    def test_inline_sr_copies_the_patient_when_the_site_allows(self, site: Service) -> None:
        study = new_uid()
        data = dicom_bytes(patient=PATIENT, study=study)
        response = site.client.post(
            "/v1/predictions/dicom-sr", files={"file": ("a.dcm", data, "application/dicom")}
        )
        assert response.status_code == 201, response.text
        sr = _read(response.content)
        assert str(sr.PatientName) == PATIENT["PatientName"]
        assert sr.PatientID == PATIENT["PatientID"]
        assert sr.PatientBirthDate == PATIENT["PatientBirthDate"]
        assert sr.AccessionNumber == PATIENT["AccessionNumber"]
        assert sr.StudyInstanceUID == study  # the real UID, not the stored pseudonym
        # ... and nothing of it was stored
        dump = repr(site.rows())
        for value in (PATIENT["PatientName"], PATIENT["PatientID"], study):
            assert value not in dump

    @pytest.mark.parametrize(
        "name",
        [
            "chrH31.dcm",  # ISO 2022 IR 87: Japanese ideographic and phonetic names
            "chrX1.dcm",  # ISO_IR 192 (UTF-8): Chinese
            "chrGreek.dcm",  # ISO_IR 126, a one-component name (highdicom warns quoting it)
            "chrRuss.dcm",  # ISO_IR 144, one component
            "chrFren.dcm",  # ISO_IR 100 (Latin-1)
        ],
    )
    def test_inline_sr_keeps_a_name_in_its_character_set_and_out_of_the_log(
        self, site: Service, name: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """pydicom's real character-set files (QA round 11): each non-Latin character of the
        copied name came out as '?' (no Specific Character Set was written), Latin-1 as bare
        8859-1 bytes, and highdicom's warning quoting a one-component name reached the log."""
        from pydicom.data.data_manager import DATA_ROOT

        data = (Path(DATA_ROOT) / "charset_files" / name).read_bytes()
        source = _read(data)
        with caplog.at_level("DEBUG"):
            response = site.client.post(
                "/v1/predictions/dicom-sr", files={"file": (name, data, "application/dicom")}
            )
        assert response.status_code in (200, 201), response.text
        sr = _read(response.content)
        assert sr.SpecificCharacterSet == source.SpecificCharacterSet
        assert str(sr.PatientName) == str(source.PatientName) != ""
        assert sr.PatientName.components == source.PatientName.components
        logged = caplog.text + "".join(str(r.args) for r in caplog.records)
        for component in str(source.PatientName).replace("=", "^").split("^"):
            assert not component or component not in logged

    def test_inline_sr_copies_odd_values_as_they_are_without_logging_them(
        self, site: Service, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A birth date not written as YYYYMMDD and a sex highdicom does not know: setting
        them by keyword warned quoting the value (in the log; a 500 under -W error)."""
        odd = {
            "PatientName": "Roe^Richard",
            "PatientID": "MRN-0042-XYZ",
            "PatientBirthDate": "1961-02-03 born",
            "PatientSex": "MALE",
        }
        with warnings.catch_warnings():  # the modality's own junk, written by the test
            warnings.simplefilter("ignore", UserWarning)
            data = dicom_bytes(patient=odd)
        caplog.clear()  # pydicom logged the test's own junk as it wrote it
        with caplog.at_level("DEBUG"):
            response = site.client.post(
                "/v1/predictions/dicom-sr", files={"file": ("odd.dcm", data, "application/dicom")}
            )
        assert response.status_code == 201, response.text
        sr = _read(response.content)
        assert (sr.PatientBirthDate, sr.PatientSex) == ("1961-02-03 born", "MALE")
        for value in odd.values():
            assert value not in caplog.text

    def test_a_pseudonymising_site_logs_no_source_uid(
        self, site: Service, caplog: pytest.LogCaptureFixture
    ) -> None:
        """highdicom logs at INFO that it copies the patient and study modules "from dataset
        <SOP Instance UID>": a real UID in the log of a site that pseudonymises UIDs before
        storing them (QA round 14). The SR itself carries the real UIDs, for the PACS."""
        study, series, sop = new_uid(), new_uid(), new_uid()
        data = dicom_bytes(study=study, series=series, sop=sop, patient=PATIENT)
        caplog.clear()
        with caplog.at_level("DEBUG"):
            response = site.client.post(
                "/v1/predictions/dicom-sr?explain=true",
                files={"file": ("a.dcm", data, "application/dicom")},
            )
        assert response.status_code == 201, response.text
        assert _read(response.content).StudyInstanceUID == study
        logged = caplog.text + "".join(str(r.args) for r in caplog.records)
        for uid in (study, series, sop):
            assert uid not in logged

    def test_a_non_conforming_uid_is_not_quoted_in_the_log(
        self, site: Service, caplog: pytest.LogCaptureFixture
    ) -> None:
        """pydicom validated each value it converted and logged a bad one on its own logger,
        quoting it ("Invalid value for VR UI: '...'"): a hospital's UID with letters in it
        reached the log of a site that pseudonymises UIDs before storing them, on the plain
        path too; the over-long name made dicom-sr a 500 under -W error."""
        study = "1.2.826.0.1.3680043.SMITH.19610203"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            data = dicom_bytes(study=study, patient={"PatientName": "Smith^John" + "n" * 70})
        caplog.clear()
        with caplog.at_level("DEBUG"):
            plain = site.client.post(
                "/v1/predictions", files={"file": ("u.dcm", data, "application/dicom")}
            )
            sr = site.client.post(
                "/v1/predictions/dicom-sr", files={"file": ("u.dcm", data, "application/dicom")}
            )
        assert plain.status_code == 201, plain.text
        assert sr.status_code == 200, sr.text  # the same instance, stored by the first post
        assert _read(sr.content).StudyInstanceUID == study
        assert "SMITH" not in caplog.text and "19610203" not in caplog.text
        assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == []
        assert study not in repr(site.rows())

    def test_patient_variant_has_its_own_uid(self) -> None:
        import uuid

        from radlens.app.dicom_outputs import output_uid

        pid = uuid.uuid4()
        assert output_uid(pid, "sr", with_patient=False) == output_uid(
            pid, "sr", with_patient=False
        )
        assert output_uid(pid, "sr", with_patient=True) != output_uid(pid, "sr", with_patient=False)

    def test_stored_path_refuses_pseudonymised_uids(self, site: Service) -> None:
        response = site.post(dicom_bytes(), "b.dcm", params={"explain": "true"})
        assert response.status_code == 201
        pid = response.json()["id"]
        for kind in ("sr", "secondary-capture"):
            body = assert_problem(
                site.client.get(f"/v1/predictions/{pid}/dicom/{kind}"),
                409,
                code="uids-pseudonymised",
            )
            assert "dicom-sr" in body["title"]
        assert site.client.get(f"/v1/predictions/{pid}/heatmap").status_code == 200

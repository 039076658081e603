"""DICOMweb STOW-RS: multipart/related DICOM in, a DICOM JSON response with a prediction per
instance out (PS3.18 §10.5), on SQLite and PostgreSQL; real DICOM from ../shared/data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.app.conftest import (
    Service,
    TestClient,
    assert_problem,
    dicom_bytes,
    make_settings,
    new_uid,
)
from tests.conftest import shared_data_path

DICOM_JSON = "application/dicom+json"


def multipart_related(
    parts: list[bytes | tuple[bytes, str]], boundary: str | None = None
) -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type (each part application/dicom unless given)."""
    boundary = boundary or f"radlens-{uuid.uuid4().hex}"
    chunks = []
    for part in parts:
        data, content_type = part if isinstance(part, tuple) else (part, "application/dicom")
        chunks.append(
            f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(service: Service, parts: list[Any], url: str = "/dicomweb/studies", **params: Any) -> Any:
    body, content_type = multipart_related(parts)
    return service.client.post(
        url, content=body, headers={"Content-Type": content_type}, params=params
    )


def parse(response: Any) -> Dataset:
    assert response.headers["content-type"].startswith(DICOM_JSON)
    return Dataset.from_json(response.json())  # valid DICOM JSON, private block included


def no_pixels_dicom() -> bytes:
    return dicom_bytes(pixels=False)


class TestStow:
    def test_many_instances_with_bad_parts(self, service: Service) -> None:
        ct = shared_data_path("dicom", "ct_image.dcm").read_bytes()
        cr = shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm").read_bytes()
        made = dicom_bytes(seed=11)
        no_pixels = no_pixels_dicom()
        garbage = b"this is not DICOM at all" * 10
        before = service.count()

        response = stow(service, [ct, garbage, cr, no_pixels, made])
        assert response.status_code == 202, response.text
        ds = parse(response)

        referenced = ds.ReferencedSOPSequence
        assert [item.ReferencedSOPInstanceUID for item in referenced] == [
            pydicom.dcmread(pydicom.filebase.DicomBytesIO(x)).SOPInstanceUID for x in (ct, cr, made)
        ]
        for item in referenced:
            assert item[0x00990010].value == "RADLENS 1"
            prediction_id = item[0x00991001].value
            assert item.RetrieveURL.endswith(f"/v1/predictions/{prediction_id}")
            got = service.client.get(f"/v1/predictions/{prediction_id}")
            assert got.status_code == 200
            assert got.json()["label"] == item[0x00991002].value
            assert got.json()["sop_instance_uid"] == item.ReferencedSOPInstanceUID
        # ct / cr may have been posted by other tests ("existing"); `made` has fresh UIDs
        created = [item[0x00991003].value for item in referenced]
        assert created[2] == "created"
        assert service.count() == before + created.count("created")

        failed = ds.FailedSOPSequence
        assert len(failed) == 2
        by_code = {item[0x00991004].value: item for item in failed}
        assert by_code["not-an-image"].FailureReason == 0xC000
        assert "ReferencedSOPInstanceUID" in by_code["not-an-image"]
        assert not by_code["not-an-image"].ReferencedSOPInstanceUID  # unknown: empty
        no_pix = by_code["no-pixel-data"]
        assert no_pix.FailureReason == 0x0122
        assert (
            no_pix.ReferencedSOPInstanceUID
            == pydicom.dcmread(pydicom.filebase.DicomBytesIO(no_pixels)).SOPInstanceUID
        )
        assert "pixel data" in no_pix[0x00991005].value

    def test_all_ok_is_200_and_a_resend_is_existing(self, service: Service) -> None:
        parts = [dicom_bytes(seed=1), dicom_bytes(seed=2)]
        first = stow(service, parts)
        assert first.status_code == 200, first.text
        ds = parse(first)
        assert "FailedSOPSequence" not in ds
        assert [i[0x00991003].value for i in ds.ReferencedSOPSequence] == ["created"] * 2
        again = parse(stow(service, parts))
        assert [i[0x00991003].value for i in again.ReferencedSOPSequence] == ["existing"] * 2
        assert [i[0x00991001].value for i in again.ReferencedSOPSequence] == [
            i[0x00991001].value for i in ds.ReferencedSOPSequence
        ]

    def test_all_failed_is_409(self, service: Service) -> None:
        response = stow(service, [b"nope", no_pixels_dicom()])
        assert response.status_code == 409, response.text
        ds = parse(response)
        assert "ReferencedSOPSequence" not in ds
        assert sorted(i.FailureReason for i in ds.FailedSOPSequence) == [0x0122, 0xC000]

    def test_part_of_another_type_fails_alone(self, service: Service) -> None:
        response = stow(service, [dicom_bytes(), (b"{}", "application/json")])
        assert response.status_code == 202
        failed = parse(response).FailedSOPSequence
        assert failed[0][0x00991004].value == "not-dicom-part"
        assert failed[0].FailureReason == 0xC000

    def test_study_in_the_url(self, service: Service) -> None:
        study = new_uid()
        inside, outside = dicom_bytes(study=study), dicom_bytes()
        response = stow(service, [inside, outside], url=f"/dicomweb/studies/{study}")
        assert response.status_code == 202
        ds = parse(response)
        assert len(ds.ReferencedSOPSequence) == 1
        assert ds.FailedSOPSequence[0].FailureReason == 0xA900

    def test_a_part_that_is_no_dicom_is_not_a_study_mismatch(self, service: Service) -> None:
        """Every part was reported 0xA900 study-mismatch when the URL named a study, a text
        part too (QA round 13)."""
        study = new_uid()
        response = stow(
            service,
            [dicom_bytes(study=study), b"not a dicom file at all"],
            url=f"/dicomweb/studies/{study}",
        )
        assert response.status_code == 202, response.text
        (failed,) = parse(response).FailedSOPSequence
        assert failed.FailureReason == 0xC000
        assert failed[0x00991004].value != "study-mismatch"

    def test_explain_for_every_instance(self, service: Service) -> None:
        response = stow(service, [dicom_bytes(), dicom_bytes()], explain="true")
        assert response.status_code == 200
        for item in parse(response).ReferencedSOPSequence:
            heatmap = service.client.get(f"/v1/predictions/{item[0x00991001].value}/heatmap")
            assert heatmap.status_code == 200
            assert heatmap.headers["content-type"] == "image/png"

    def test_truncated_instance(self, service: Service) -> None:
        data = shared_data_path("dicom", "ct_image.dcm").read_bytes()
        response = stow(service, [data[: len(data) // 2]])
        assert response.status_code == 409
        item = parse(response).FailedSOPSequence[0]
        assert item.FailureReason == 0xC000
        assert item[0x00991004].value == "truncated"


class TestBadRequests:
    def test_not_multipart_related(self, service: Service) -> None:
        response = service.client.post(
            "/dicomweb/studies",
            content=dicom_bytes(),
            headers={"Content-Type": "application/dicom"},
        )
        body = assert_problem(response, 415, code="unsupported-media-type")
        assert "application/dicom" in body["detail"]
        # the title names STOW-RS's body, not the upload routes' multipart/form-data
        assert "multipart/related" in body["title"] and "form-data" not in body["title"]

    def test_other_part_type(self, service: Service) -> None:
        body, _ = multipart_related([dicom_bytes()], boundary="b1")
        response = service.client.post(
            "/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=b1'
            },
        )
        body = assert_problem(response, 415)
        assert "multipart/related" in body["title"]

    def test_no_boundary(self, service: Service) -> None:
        response = service.client.post(
            "/dicomweb/studies",
            content=b"--x\r\n\r\n--x--",
            headers={"Content-Type": 'multipart/related; type="application/dicom"'},
        )
        assert_problem(response, 400, code="bad-multipart")

    def test_no_parts(self, service: Service) -> None:
        response = service.client.post(
            "/dicomweb/studies",
            content=b"nothing here",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=zz'},
        )
        assert_problem(response, 400, code="bad-multipart")

    def test_body_size_limit(self, service: Service) -> None:
        from tests.app.conftest import TEST_MAX_UPLOAD_BYTES

        body, content_type = multipart_related([b"\0" * (TEST_MAX_UPLOAD_BYTES + 10)])
        response = service.client.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
        )
        assert_problem(response, 413)

    def test_needs_an_api_key(self, service: Service) -> None:
        body, content_type = multipart_related([dicom_bytes()])
        response = service.client.post(
            "/dicomweb/studies",
            content=body,
            headers={"Content-Type": content_type, "Authorization": ""},
        )
        assert response.status_code == 401


@pytest.fixture(scope="module")
def small_site(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Service]:
    from radlens.app.main import create_app

    url = f"sqlite:///{tmp_path_factory.mktemp('stow') / 'stow.db'}"
    app = create_app(make_settings(url, model_store, stow_max_instances=2))
    with TestClient(app) as client:
        yield Service(client=client, app=app, database_url=url, backend="sqlite")


def test_instances_over_the_limit_fail_with_out_of_resources(small_site: Service) -> None:
    response = stow(small_site, [dicom_bytes(), dicom_bytes(), dicom_bytes()])
    assert response.status_code == 202
    ds = parse(response)
    assert len(ds.ReferencedSOPSequence) == 2
    assert ds.FailedSOPSequence[0].FailureReason == 0xA700
    assert "RADLENS_STOW_MAX_INSTANCES" in ds.FailedSOPSequence[0][0x00991005].value


@pytest.mark.parametrize(
    "part",
    [
        b"",
        b"\0" * 128 + b"DICM",
        b"\0" * 128 + b"DICM" + bytes(range(256)) * 4,
        b"\0" * 128 + b"DICM\x02\x00\x10\x00UI\xff\xff",
        dicom_bytes()[:300],
    ],
    ids=["empty", "preamble-only", "preamble-and-noise", "bad-length", "cut-in-header"],
)
def test_malformed_parts_are_failures_not_500(service: Service, part: bytes) -> None:
    response = stow(service, [part])
    assert response.status_code == 409, response.text
    item = parse(response).FailedSOPSequence[0]
    assert item.FailureReason in (0xC000, 0xA900, 0x0122, 0xC122)
    assert item[0x00991005].value


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--b\r\n", 'multipart/related; type="application/dicom"; boundary=b'),
        (b"--b\r\nContent-Type: application/dicom\r\n", "multipart/related; boundary=b"),
        (b"\xff" * 64, "multipart/related; boundary=" + "x" * 80),
    ],
    ids=["cut-after-boundary", "cut-in-headers", "long-boundary"],
)
def test_malformed_bodies_are_problems_not_500(
    service: Service, body: bytes, content_type: str
) -> None:
    response = service.client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert 400 <= response.status_code < 500, response.text


def test_pydicom_data_chest_cr(service: Service) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm (chest CR) is not installed")
    data = Path(str(path)).read_bytes()
    response = stow(service, [data])
    assert response.status_code == 200, response.text
    item = parse(response).ReferencedSOPSequence[0]
    source = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    prediction = service.client.get(f"/v1/predictions/{item[0x00991001].value}").json()
    assert (prediction["rows"], prediction["columns"], prediction["modality"]) == (
        source.Rows,
        source.Columns,
        source.Modality,
    )


def test_every_upload_refusal_has_a_failure_reason() -> None:
    """A per-instance refusal (a 4xx problem on the upload routes) maps to a Failure Reason of
    its own; one missing fell back to 0x0110 "processing failure", which a PACS reads as a
    fault of ours and retries (codestream-mismatch did, QA round 14)."""
    from radlens.app.errors import STATUS_BY_CODE
    from radlens.app.routes.dicomweb import FAILURE_REASONS

    refusals = {code for code, status in STATUS_BY_CODE.items() if 400 <= status < 500}
    assert refusals - set(FAILURE_REASONS) == set()
    assert all(FAILURE_REASONS[code] != 0x0110 for code in refusals)

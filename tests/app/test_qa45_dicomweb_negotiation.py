"""QA round 45 (a DICOMweb viewer, OHIF-style, and a VNA against radlens' DICOMweb side).

- WADO-RS and QIDO-RS did not look at the Accept header: a viewer asking for JPEG frames got raw
  pixels labelled octet-stream, one asking for a JPEG-encoded instance or XML metadata got
  something else with a 200. Now the header is negotiated as PS3.18 8.7 says (media ranges,
  wildcards, the multipart ``type`` and ``transfer-syntax`` parameters, q-values) and nothing
  acceptable is a 406 problem whose title names what radlens sends.
- A STOW-RS body without its closing boundary (an upload cut short) had its parts predicted and
  stored, the half part failing as an instance; now it is a 400 ``truncated-multipart`` and
  nothing of it is stored.
- A UID path parameter that is no UID (letters, more than 64 characters) was a 404 "nothing
  produced"; now a 422 that says so (a UID radlens stored as received, e.g. an anonymiser's
  UUID, is still retrievable), and the OpenAPI document states the DICOM UID pattern.
- QIDO-RS ``limit`` above radlens' maximum was a 422; PS3.18 8.3.4.4.1 caps it instead.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.app.conftest import Service, assert_problem, dicom_bytes, new_uid

EVRLE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SC = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Objects:
    study: str
    sr: str  # instance URL of an SR
    sc: str  # instance URL of an SC


def _value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


@pytest.fixture(scope="module")
def objects(service: Service) -> Objects:
    study = new_uid()
    explained = service.post(
        dicom_bytes(study=study, seed=4501), "x.dcm", params={"explain": "true"}
    )
    assert explained.status_code == 201, explained.text
    found = service.client.get(f"/dicomweb/studies/{study}/instances")
    assert found.status_code == 200, found.text
    urls = {
        _value(i, "00080016"): (
            f"/dicomweb/studies/{study}/series/{_value(i, '0020000E')}"
            f"/instances/{_value(i, '00080018')}"
        )
        for i in found.json()
    }
    (sr,) = [url for sop_class, url in urls.items() if sop_class != SC]
    return Objects(study, sr, urls[SC])


def _get(service: Service, url: str, accept: str | None) -> Any:
    headers = {"Accept": accept} if accept is not None else {}
    return service.client.get(url, headers=headers)


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        'multipart/related; type="application/dicom"',  # dicomweb-client, retrieve_study
        'multipart/related; type="application/dicom"; transfer-syntax=*',  # OHIF, dicomweb-client
        f"multipart/related; type=application/dicom; transfer-syntax={EVRLE}",
        'multipart/related; type="application/dicom; transfer-syntax=*"',  # the part's own
        "multipart/*",
        # a preference radlens cannot meet, then one it can (PS3.18 8.7.3.5.2's example)
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}, '
        f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}; q=0.5',
    ],
)
def test_instances_are_sent_for_what_viewers_accept(
    service: Service, objects: Objects, accept: str | None
) -> None:
    response = _get(service, objects.sr, accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    assert f"transfer-syntax={EVRLE}".encode() in response.content[:300]


@pytest.mark.parametrize(
    "accept",
    [
        "multipart/related; type=application/octet-stream; transfer-syntax=*",  # OHIF
        'multipart/related; type="*/*"',  # dicomweb-client, retrieve_instance_frames
        'multipart/related; type="application/octet-stream"',
        "image/jpeg;q=0.9, multipart/related; type=application/octet-stream; q=0.5",
    ],
)
def test_frames_are_sent_for_what_viewers_accept(
    service: Service, objects: Objects, accept: str
) -> None:
    response = _get(service, objects.sc + "/frames/1", accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"'
    )


def test_metadata_and_searches_are_sent_as_the_json_type_accepted(
    service: Service, objects: Objects
) -> None:
    for url in (f"/dicomweb/studies/{objects.study}/metadata", "/dicomweb/studies"):
        viewer = _get(service, url, "application/dicom+json, application/json")
        assert viewer.status_code == 200, viewer.text
        assert viewer.headers["content-type"].startswith("application/dicom+json")
        plain = _get(service, url, "application/json")
        assert plain.status_code == 200, plain.text
        assert plain.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("where", "accept", "names"),
    [
        ("sr", f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
         "Explicit VR Little Endian"),
        ("sr", "application/dicom+json", 'type="application/dicom"'),
        ("study", "application/dicom", 'type="application/dicom"'),  # one instance only
        ("sr", f"application/dicom; transfer-syntax={JPEG_BASELINE}", "Explicit VR Little Endian"),
        ("study", 'multipart/related; type="application/dicom"; q=0, */*',
         'type="application/dicom"'),
        ("frames", 'multipart/related; type="image/jpeg"', "application/octet-stream"),
        ("frames", f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}',
         "application/octet-stream"),
        ("frames", "image/png", "application/octet-stream"),
        ("metadata", 'multipart/related; type="application/dicom+xml"', "application/dicom+json"),
        ("search", "application/dicom+xml", "application/dicom+json"),
    ],
)  # fmt: skip
def test_what_radlens_cannot_send_is_a_406_naming_what_it_sends(
    service: Service, objects: Objects, where: str, accept: str, names: str
) -> None:
    url = {
        "study": f"/dicomweb/studies/{objects.study}",
        "sr": objects.sr,
        "frames": objects.sc + "/frames/1",
        "metadata": objects.sr + "/metadata",
        "search": f"/dicomweb/studies/{objects.study}/instances",
    }[where]
    body = assert_problem(_get(service, url, accept), 406, code="not-acceptable")
    assert names in body["title"]
    assert accept[:40] in body["detail"]


def test_negotiation_rules() -> None:
    from radlens.app.routes.wado import FRAMES, INSTANCES, JSON, negotiate, parse_accept

    (ranged,) = parse_accept('multipart/related; type="application/dicom; transfer-syntax=*"')
    assert ranged.params == {"type": "application/dicom", "transfer-syntax": "*"}
    # a quoted comma is no separator; an element that is no media range is ignored
    assert len(parse_accept('text/plain; x="a,b", nonsense, */*; q=0.1')) == 2
    assert negotiate(None, INSTANCES) == INSTANCES[0]
    assert negotiate("garbage", INSTANCES) == INSTANCES[0]  # nothing valid: as if absent
    assert negotiate("application/json;q=0.9, application/dicom+json;q=0.4", JSON) == JSON[1]
    assert negotiate("application/*", JSON) == JSON[0]
    assert negotiate("application/dicom+json;q=0, application/*", JSON) == JSON[1]
    # the most specific range decides: a q=0 on the exact type overrides */*
    assert negotiate('multipart/related; type="application/octet-stream"; q=0, */*', FRAMES) is None
    assert negotiate("*/*;q=nan", FRAMES) == FRAMES[0]  # an invalid q is ignored


def test_a_uid_that_is_no_uid_is_a_422_and_a_stored_uuid_still_retrievable(
    service: Service, objects: Objects
) -> None:
    too_long = "1." + "2" * 70
    body = assert_problem(service.client.get(f"/dicomweb/studies/{too_long}"), 422)
    assert "64" in body["detail"]
    for url in (
        f"/dicomweb/studies/{objects.study}x",
        f"/dicomweb/studies/{objects.study}/series/abc/metadata",
        f"/dicomweb/studies/{objects.study}/series/1.2/instances/1.x/frames/1",
        "/dicomweb/studies/hp/series",  # a search under it (it was a 204)
        f"/dicomweb/studies/{objects.study}/series/1.x/instances",
    ):
        assert_problem(service.client.get(url), 422, code="invalid-uid")
    assert_problem(service.client.get(f"/dicomweb/studies/{new_uid()}"), 404)

    # QA round 18: an anonymiser's UUIDs are stored as received, QIDO-RS lists them
    study = str(uuid.uuid4())
    created = service.post(dicom_bytes(study=study, seed=4502), "x.dcm")
    assert created.status_code == 201, created.text
    assert service.client.get(f"/dicomweb/studies/{study}").status_code == 200
    assert service.client.get(f"/dicomweb/studies/{study}/instances").status_code == 200

    parameters = {
        p["name"]: p["schema"]
        for p in service.client.get("/openapi.json").json()["paths"][
            "/dicomweb/studies/{study}/series/{series}/instances/{instance}"
        ]["get"]["parameters"]
    }
    for name in ("study", "series", "instance"):
        assert parameters[name]["pattern"] == r"^[0-9]+(\.[0-9]+)*$"
        assert parameters[name]["maxLength"] == 64


def _stow(service: Service, body: bytes, boundary: str) -> Any:
    return service.client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )


def test_a_stow_body_cut_short_is_a_400_and_nothing_is_stored(service: Service) -> None:
    boundary = "qa45-" + uuid.uuid4().hex
    study = new_uid()

    def part(data: bytes) -> bytes:
        return f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"

    whole = part(dicom_bytes(study=study, seed=4511)) + part(dicom_bytes(study=study, seed=4512))
    before = service.count()
    for body in (
        whole,  # both parts whole, no closing delimiter
        whole[: len(whole) - 700],  # the second part cut in half
        whole + f"--{boundary}-".encode(),  # cut inside the closing delimiter
    ):
        problem = assert_problem(_stow(service, body, boundary), 400, code="truncated-multipart")
        assert f"--{boundary}--" in problem["detail"]
    assert service.count() == before

    complete = _stow(service, whole + f"--{boundary}--".encode(), boundary)  # no CRLF after
    assert complete.status_code == 200, complete.text
    assert service.count() == before + 2


def test_a_limit_above_the_maximum_is_capped_with_a_warning(
    service: Service, objects: Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app.routes import wado

    assert service.client.get("/dicomweb/studies", params={"limit": 5000}).status_code == 200
    monkeypatch.setattr(wado, "MAX_LIMIT", 1)
    response = service.client.get(
        f"/dicomweb/studies/{objects.study}/instances", params={"limit": 10}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()) == 1
    assert "1 additional results" in response.headers["warning"]


def test_one_instance_asked_for_as_application_dicom_is_sent_as_one_part_10_body(
    service: Service, objects: Objects
) -> None:
    """`Accept: application/dicom` (curl, a simple script) on one instance: the Part 10 file
    itself, not multipart (it was multipart before negotiation, then a 406: QA round 50)."""
    import io

    import pydicom

    response = _get(service, objects.sr, "application/dicom")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom")
    assert pydicom.dcmread(io.BytesIO(response.content)).Modality == "SR"
    default = _get(service, objects.sr, "*/*")  # multipart stays the default
    assert default.headers["content-type"].startswith("multipart/related")
    # anything but multipart: the single part is what is left
    not_multipart = _get(
        service, objects.sr, 'multipart/related; type="application/dicom"; q=0, */*'
    )
    assert not_multipart.headers["content-type"].startswith("application/dicom")

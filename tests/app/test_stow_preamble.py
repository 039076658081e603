"""A STOW-RS body may carry text before its first boundary (RFC 2046 5.1.1's preamble, which
the recipient ignores); before, python-multipart refused it and the whole store was a 400
"the multipart body could not be parsed"."""

from __future__ import annotations

import pytest

from radlens.app.routes.dicomweb import MAX_PREAMBLE_BYTES
from tests.app.conftest import Service, dicom_bytes, new_uid
from tests.app.test_stowrs import multipart_related, parse


@pytest.mark.parametrize(
    "preamble",
    [
        b"This is a multi-part message in MIME format.\r\n",
        b"preamble line one\r\nline two\r\n\r\n",
        b"x" * 60_000 + b"\r\n",  # within MAX_PREAMBLE_BYTES
    ],
    ids=["mime", "two-lines", "long"],
)
def test_a_preamble_before_the_first_boundary_is_ignored(service: Service, preamble: bytes) -> None:
    study = new_uid()
    body, content_type = multipart_related(
        [dicom_bytes(study=study, seed=1), dicom_bytes(study=study, seed=2)]
    )
    response = service.client.post(
        "/dicomweb/studies", content=preamble + body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    assert len(parse(response).ReferencedSOPSequence) == 2


def test_a_body_without_its_boundary_is_a_400_that_names_it(service: Service) -> None:
    _, content_type = multipart_related([b""], boundary="the-boundary")
    body = b"x" * (MAX_PREAMBLE_BYTES + 10)
    response = service.client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "no boundary 'the-boundary' in the body's first 65536 bytes" in response.json()["detail"]
    short = service.client.post(
        "/dicomweb/studies", content=b"no parts here", headers={"Content-Type": content_type}
    )
    assert short.status_code == 400
    assert "has no parts for boundary 'the-boundary'" in short.json()["detail"]

"""A request body sent with Content-Encoding (gzip, deflate, ...) is refused as what it is.

Starlette does not decode request bodies, so a gzip-compressed upload was parsed as it came
and answered 400 "the multipart body could not be parsed" (QA round 26), a reason that sends
the client looking at its multipart framing. It is now 415 naming the encoding, before a byte
of the body is read; an identity encoding is no encoding."""

from __future__ import annotations

import gzip

import pytest

from tests.app.conftest import Service, assert_problem, png_bytes


def _form(data: bytes, boundary: str = "enc") -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP "])
def test_a_compressed_upload_is_a_415_naming_the_encoding(service: Service, encoding: str) -> None:
    stored = service.count()
    body = gzip.compress(_form(png_bytes(seed=4242)))
    response = service.client.post(
        "/v1/predictions",
        content=body,
        headers={
            "Content-Type": "multipart/form-data; boundary=enc",
            "Content-Encoding": encoding,
        },
    )
    assert_problem(response, 415, code="unsupported-media-type")
    assert encoding.strip() in response.json()["detail"]
    assert "uncompressed" in response.json()["title"]
    assert service.count() == stored


def test_stow_rs_too(service: Service) -> None:
    response = service.client.post(
        "/dicomweb/studies",
        content=gzip.compress(b"--x\r\n\r\n--x--\r\n"),
        headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=x',
            "Content-Encoding": "gzip",
        },
    )
    assert_problem(response, 415, code="unsupported-media-type")


def test_identity_is_no_encoding(service: Service) -> None:
    response = service.client.post(
        "/v1/predictions",
        content=_form(png_bytes(seed=4243)),
        headers={
            "Content-Type": "multipart/form-data; boundary=enc",
            "Content-Encoding": "identity",
        },
    )
    assert response.status_code in (200, 201), response.text

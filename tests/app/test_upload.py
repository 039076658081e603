"""The upload route's own request handling (app/upload.py, app/routes/predictions.py).

POST /v1/predictions reads its request itself instead of declaring FastAPI dependencies and
a File parameter; these tests pin what that must keep: the multipart field rules, the order
of the checks (the key before anything about the body), the query parameter's validation,
the audit row of every outcome, and the OpenAPI description Swagger UI draws the form from.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from radlens.app.errors import UnsupportedMediaTypeError
from radlens.app.upload import file_field
from tests.app.conftest import Service, assert_problem, png_bytes
from tests.app.test_audit import audit_rows

CT = "multipart/form-data; boundary=xyz"
# images no other test posts, so each post here is new (201) in the session's database
UNIQUE_SEEDS = {v: 987_000 + i for i, v in enumerate(["true", "1", "yes", "false", "0", "off"])}


def body(*parts: tuple[str, bytes]) -> bytes:
    """A multipart body from (headers, content) pairs, boundary ``xyz``."""
    out = b""
    for headers, content in parts:
        out += b"--xyz\r\n" + headers.encode() + b"\r\n\r\n" + content + b"\r\n"
    return out + b"--xyz--\r\n"


def file_part(name: str = "file", content: bytes = b"IMAGE", filename: str = "a.dcm") -> Any:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/dicom",
        content,
    )


def text_part(name: str, content: bytes) -> Any:
    return (f'Content-Disposition: form-data; name="{name}"', content)


class TestFileField:
    def test_the_file_part_is_returned_byte_for_byte(self) -> None:
        content = bytes(range(256)) * 40 + b"\r\n--xy not the boundary\r\n"
        assert file_field(body(file_part(content=content)), CT) == content

    def test_other_parts_before_and_after_are_ignored(self) -> None:
        data = body(text_part("note", b"hello"), file_part(content=b"THE FILE"), file_part("x"))
        assert file_field(data, CT) == b"THE FILE"

    def test_quoted_boundary_and_header_case(self) -> None:
        data = body(('content-disposition: form-data; name="file"; filename="b.png"', b"PNGDATA"))
        assert file_field(data, 'multipart/form-data; boundary="xyz"') == b"PNGDATA"

    def test_empty_file_is_returned_empty(self) -> None:
        assert file_field(body(file_part(content=b"")), CT) == b""

    @pytest.mark.parametrize(
        "content_type", [None, "", "application/json", "multipart/mixed; boundary=xyz"]
    )
    def test_not_form_data_is_415(self, content_type: str | None) -> None:
        with pytest.raises(UnsupportedMediaTypeError, match="expected multipart/form-data"):
            file_field(body(file_part()), content_type)

    def test_missing_field_is_a_validation_error_on_body_file(self) -> None:
        with pytest.raises(RequestValidationError) as caught:
            file_field(body(file_part("image")), CT)
        (error,) = caught.value.errors()
        assert error["loc"] == ("body", "file") and error["type"] == "missing"

    def test_text_field_named_file_is_a_validation_error(self) -> None:
        with pytest.raises(RequestValidationError) as caught:
            file_field(body(text_part("file", b"just text")), CT)
        (error,) = caught.value.errors()
        assert error["loc"] == ("body", "file") and "no filename" in error["msg"]

    @pytest.mark.parametrize(
        ("data", "content_type", "fragment"),
        [
            (b"garbage", CT, "Invalid multipart"),
            (body(file_part()), "multipart/form-data", "boundary"),
            (
                b"--xyz\r\n" + b"X-Long: " + b"a" * 20_000 + b"\r\n\r\nx\r\n--xyz--\r\n",
                CT,
                "header size",
            ),
            # cut short inside the file's content, and inside its headers: the parser alone
            # reports nothing (the part just never ends), which read as "Field required"
            (body(file_part(content=b"IMAGE" * 100))[:300], CT, "cut short"),
            (body(file_part())[:40], CT, "cut short"),
        ],
        ids=["garbled", "no-boundary", "huge-part-header", "cut-in-content", "cut-in-headers"],
    )
    def test_unreadable_framing_is_400(self, data: bytes, content_type: str, fragment: str) -> None:
        with pytest.raises(StarletteHTTPException) as caught:
            file_field(data, content_type)
        assert caught.value.status_code == 400
        assert fragment in str(caught.value.detail)


class TestRoute:
    def test_the_key_is_checked_before_the_body(self, service: Service) -> None:
        """Without a key, a JSON body is a 401 (not a 415): nothing about the body is looked
        at, or read, before the caller is known."""
        response = service.client.post(
            "/v1/predictions", json={"file": "x"}, headers={"Authorization": ""}
        )
        assert_problem(response, 401, code="unauthorized")

    @pytest.mark.parametrize("value", ["true", "1", "yes", "false", "0", "off"])
    def test_explain_accepts_boolean_spellings(self, service: Service, value: str) -> None:
        response = service.client.post(
            f"/v1/predictions?explain={value}",
            files={"file": ("a.png", png_bytes(seed=UNIQUE_SEEDS[value]), "image/png")},
        )
        assert response.status_code == 201, response.text
        has_link = "link" in response.headers
        assert has_link == (value in ("true", "1", "yes"))

    def test_explain_garbage_is_422_on_query_explain(self, service: Service) -> None:
        before = service.count()
        problem = assert_problem(
            service.client.post(
                "/v1/predictions?explain=perhaps",
                files={"file": ("a.png", png_bytes(), "image/png")},
            ),
            422,
            code="invalid-request",
        )
        assert problem["errors"][0]["loc"] == "query.explain"
        assert "perhaps" in problem["detail"]
        assert service.count() == before

    def test_success_and_repost_are_audited_with_their_status(self, service: Service) -> None:
        image = png_bytes(seed=987_100)
        first = service.client.post("/v1/predictions", files={"file": ("a.png", image)})
        again = service.client.post("/v1/predictions", files={"file": ("a.png", image)})
        assert (first.status_code, again.status_code) == (201, 200)
        prediction_id = first.json()["id"]
        assert again.json()["id"] == prediction_id
        statuses = sorted(
            r["status"]
            for r in audit_rows(service, action="prediction.create", target=prediction_id)
        )
        assert statuses == [200, 201]

    @pytest.mark.parametrize(
        ("kwargs", "status"),
        [
            ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
            ({"files": {"image": ("a.png", b"x")}}, 422),
            ({"files": {"file": ("a.txt", b"not an image")}}, 415),
        ],
        ids=["not-multipart", "no-file-field", "not-an-image"],
    )
    def test_failures_after_the_key_are_audited(
        self, service: Service, kwargs: dict[str, Any], status: int
    ) -> None:
        before = len(audit_rows(service, action="prediction.create", status=status))
        response = service.client.post("/v1/predictions", **kwargs)
        assert_problem(response, status)
        after = audit_rows(service, action="prediction.create", status=status)
        assert len(after) == before + 1
        assert after[-1]["actor"] is not None and after[-1]["target"] is None

    def test_openapi_describes_the_form_the_query_and_the_key(self, service: Service) -> None:
        schema = service.client.get("/openapi.json").json()
        post = schema["paths"]["/v1/predictions"]["post"]
        assert post["security"] == [{"ApiKey": []}]
        (explain,) = [p for p in post["parameters"] if p["name"] == "explain"]
        assert explain["in"] == "query" and explain["schema"]["type"] == "boolean"
        form = post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        upload = schema["components"]["schemas"][form.rsplit("/", 1)[-1]]
        assert upload["required"] == ["file"]
        for status in ("401", "403", "429"):
            assert "application/problem+json" in post["responses"][status]["content"]

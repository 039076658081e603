"""Reading the one file of an upload from a multipart/form-data body.

The upload routes read the whole body first (the size limit applies while it streams, in
app/limits.py) and then take the part named ``file`` out of it with python-multipart's
parser, in one call: no form object, no temporary file, no per-part validation machinery.
The answers match what FastAPI's ``File`` parameter gives for the same bodies:
- a body that is not multipart/form-data: 415;
- a multipart body the parser cannot read (bad boundary, garbled framing), or one that ends
  inside a part (cut short: python-multipart's ``finalize`` does not check this): 400;
- no part named ``file``, or a ``file`` part that is a text field (no filename): 422 with
  ``loc`` ``body.file``, as FastAPI's request validation reports it;
- more than ``MAX_PARTS`` parts: 400, as Starlette's form parser (1,000 fields at most). A body
  of a million tiny parts fits the size limit and took 18 s of the event loop and 500 MiB when
  every part was parsed and kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from radlens.app.errors import UnsupportedMediaTypeError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD = "file"
MAX_PARTS = 1000  # Starlette's default max_fields / max_files


async def read_file(request: Request, field: str = FIELD) -> bytes:
    """The upload's file: 415 unless multipart/form-data (before the body is read), then the
    whole body (the size limit applies while it streams) and the part named ``field``.
    Called by the upload routes after their dependencies, so never before the key check."""
    content_type = request.headers.get("content-type")
    require_multipart(content_type)
    return file_field(await request.body(), content_type, field)


def require_multipart(content_type: str | None) -> None:
    """Raise 415 unless the Content-Type is multipart/form-data."""
    value = content_type or ""
    if value.split(";", 1)[0].strip().lower() != "multipart/form-data":
        shown = value[:80] or "none"
        raise UnsupportedMediaTypeError(
            f"the request's Content-Type is {shown!r}; expected multipart/form-data"
        )


def file_field(body: bytes, content_type: str | None, field: str = FIELD) -> bytes:
    """The content of the first part named ``field`` that carries a file (has a filename).

    Raises:
        UnsupportedMediaTypeError: not multipart/form-data (415).
        starlette HTTPException: 400, the multipart framing cannot be parsed.
        RequestValidationError: 422, no such file part.
    """
    require_multipart(content_type)
    _, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if not boundary:
        raise StarletteHTTPException(
            400, "the multipart/form-data Content-Type has no boundary parameter"
        )
    parts = _Parts()
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise StarletteHTTPException(
            400, f"Invalid multipart/form-data body ({reason}); check the boundary and framing"
        ) from exc
    if parts.open:
        raise StarletteHTTPException(
            400,
            "The multipart/form-data body ended inside a part, before its closing boundary: "
            "the upload was cut short; send the whole body again",
        )
    found_text = False
    for headers, content in parts.done:
        disposition = headers.get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if options.get(b"name", b"").decode("latin-1") != field:
            continue
        if b"filename" in options or b"filename*" in options:
            return content
        found_text = True
    if found_text:
        message = f"expected a file in field '{field}', received a text value (no filename)"
        error = {"type": "value_error", "loc": ("body", field), "msg": message, "input": None}
    else:
        error = {"type": "missing", "loc": ("body", field), "msg": "Field required", "input": None}
    raise RequestValidationError([error])


class _Parts:
    """Collects (headers, content) per part from python-multipart's callbacks."""

    def __init__(self) -> None:
        self.done: list[tuple[dict[bytes, bytes], bytes]] = []
        self.open = False  # a part began and has not ended (yet): at the end, a cut body
        self._headers: dict[bytes, bytes] = {}
        self._name = bytearray()
        self._value = bytearray()
        self._chunks: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        if len(self.done) >= MAX_PARTS:
            raise StarletteHTTPException(
                400,
                f"the multipart/form-data body has more than {MAX_PARTS} parts; send the image "
                f"in one part named '{FIELD}'",
            )
        self.open = True
        self._headers = {}
        self._chunks = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._name).lower()] = bytes(self._value)
        self._name.clear()
        self._value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._chunks.append(data[start:end])

    def _end(self) -> None:
        self.open = False
        content = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self.done.append((self._headers, content))

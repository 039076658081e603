"""A corpus of bad uploads, generated here, against the running service on SQLite and
PostgreSQL (issue 7).

Each input gets its 4xx application/problem+json (never a 5xx), stores no prediction, adds no
audit row claiming success (an audit trail may record the refusal itself, with its status),
and the service answers the next good upload. tests/app/test_api.py::TestUploadErrors already
covers an empty file, a PDF, a DICOM without pixel data, a made-up transfer syntax UID, one
truncated DICOM and PNG, too many pixels, zero rows, JSON and image/png bodies, a missing file
field, malformed multipart and the over-limit body through the ASGI client; this module adds
the rest of the corpus, and over-limit bodies through a real HTTP server (declared
Content-Length, and chunked without one).
"""

from __future__ import annotations

import functools
import http.client
import io
import socket
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tests.app.conftest import (
    TEST_MAX_PIXELS,
    TEST_MAX_UPLOAD_BYTES,
    Service,
    assert_problem,
    dicom_bytes,
    png_bytes,
)

# --- the corpus ---------------------------------------------------------------------------


def random_bytes(size: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).bytes(size)
    # never start with a real signature by chance (DICOM preamble+DICM, PNG, JPEG SOI)
    return b"\x01" + data[1:] if data[:1] in (b"\x89", b"\xff") else data


def zip_of_dicom() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.dcm", dicom_bytes())
    return buf.getvalue()


def _dataset(**changes: Any) -> Any:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(dicom_bytes(rows=16, columns=16)))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _save(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_with(**changes: Any) -> bytes:
    """The small CT instance with some attributes changed (pixel data left as it is)."""
    return _save(_dataset(**changes))


def dicom_raw(**changes: tuple[str, str]) -> bytes:
    """The small CT instance with attributes set to (VR, value) as given, unchecked: how a
    device that breaks the standard writes them (pydicom would refuse or warn on setattr)."""
    from pydicom import config
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    ds = _dataset()
    for keyword, (vr, value) in changes.items():
        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    return _save(ds)


def encapsulated_garbage(transfer_syntax: str, seed: int = 3) -> bytes:
    """A DICOM whose encapsulated pixel data (a compressed transfer syntax) holds random
    fragments instead of a codestream."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    rng = np.random.default_rng(seed)
    ds = _dataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.PixelData = encapsulate([rng.bytes(100), rng.bytes(51)])
    ds["PixelData"].VR = "OB"
    return _save(ds)


def nested_sequences(depth: int = 3000) -> bytes:
    """The small CT instance with a sequence nested ``depth`` deep (undefined lengths, Explicit
    VR Little Endian) before its first element: deeper than pydicom's recursive reader goes,
    as in orthanc-tests' 2026-05-06-Deeply-Nested-Sequence.dcm (QA round 14)."""
    data = dicom_bytes(rows=16, columns=16)
    # the data set starts where the file meta group ends: (0002,0000) holds its length
    first = 144 + struct.unpack_from("<I", data, 140)[0]
    opening = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF)
    opening += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)  # an item of undefined length
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return data[:first] + opening * depth + closing * depth + data[first:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


@functools.cache
def png_bomb(side: int) -> bytes:
    """A valid 8-bit gray PNG of side x side zero pixels: a few hundred KB that inflate to
    side**2 bytes (100 MB at 10,000). Written chunk by chunk, never held uncompressed."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    rows_per_block = max(1, (1 << 20) // len(row))
    parts = []
    for start in range(0, side, rows_per_block):
        parts.append(compressor.compress(row * min(rows_per_block, side - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose data is a few bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


_DICOM = functools.cache(lambda: dicom_bytes(rows=32, columns=32))
_ANY_422 = None  # any 422 code: the file is an image the service cannot use

# (id, make, status, code or None)
CORPUS: list[tuple[str, Callable[[], bytes], int, str | None]] = [
    ("one-byte", lambda: b"\x00", 415, "not-an-image"),
    ("random-17", lambda: random_bytes(17, 1), 415, "not-an-image"),
    ("random-4k", lambda: random_bytes(4096, 2), 415, "not-an-image"),
    ("random-300k", lambda: random_bytes(300_000, 3), 415, "not-an-image"),
    ("zip-renamed-dcm", zip_of_dicom, 415, "not-an-image"),
    ("preamble-only", lambda: _DICOM()[:128], 415, "not-an-image"),
    ("preamble-partial-magic", lambda: _DICOM()[:130], 415, "not-an-image"),
    ("dicom-cut-after-magic", lambda: _DICOM()[:132], 422, "truncated"),
    ("dicom-cut-in-meta", lambda: _DICOM()[:150], 422, "truncated"),
    ("dicom-cut-after-meta", lambda: _DICOM()[:300], 422, "truncated"),
    ("dicom-cut-in-pixels", lambda: _DICOM()[: len(_DICOM()) - 1000], 422, "truncated"),
    ("dicom-cut-last-byte", lambda: _DICOM()[:-1], 422, _ANY_422),
    ("dicom-empty-pixel-data", lambda: dicom_with(PixelData=b""), 422, _ANY_422),
    ("rows-columns-beyond-data", lambda: dicom_with(Rows=1000, Columns=1000), 422, "truncated"),
    (
        "rows-columns-huge",
        lambda: dicom_with(Rows=60000, Columns=60000),
        422,
        "image-too-large",
    ),
    ("frames-beyond-data", lambda: dicom_with(NumberOfFrames=5000), 422, _ANY_422),
    ("bits-allocated-zero", lambda: dicom_with(BitsAllocated=0), 422, _ANY_422),
    ("bits-stored-over-allocated", lambda: dicom_with(BitsStored=40), 422, _ANY_422),
    ("samples-per-pixel-7", lambda: dicom_with(SamplesPerPixel=7), 422, _ANY_422),
    # Type 1 attributes present but empty, as some exports and anonymisers leave them
    (
        "photometric-empty",
        lambda: dicom_with(PhotometricInterpretation=None),
        422,
        "incomplete-pixel-header",
    ),
    ("bits-stored-empty", lambda: dicom_with(BitsStored=None), 422, "incomplete-pixel-header"),
    ("rescale-intercept-empty", lambda: dicom_with(RescaleIntercept=None), 422, "invalid-rescale"),
    ("pixels-blank", lambda: dicom_with(PixelData=bytes(16 * 16 * 2)), 422, "blank-image"),
    ("sequences-nested-too-deep", nested_sequences, 422, "malformed-dicom"),
    (
        "encapsulated-garbage-jpeg-baseline",
        lambda: encapsulated_garbage("1.2.840.10008.1.2.4.50"),
        422,
        _ANY_422,
    ),
    (
        "encapsulated-garbage-jpeg-ls",
        lambda: encapsulated_garbage("1.2.840.10008.1.2.4.80"),
        422,
        _ANY_422,
    ),
    (
        "encapsulated-garbage-jpeg2000",
        lambda: encapsulated_garbage("1.2.840.10008.1.2.4.90"),
        422,
        _ANY_422,
    ),
    (
        "encapsulated-garbage-rle",
        lambda: encapsulated_garbage("1.2.840.10008.1.2.5"),
        422,
        _ANY_422,
    ),
    (
        "unsupported-syntax-mpeg2",
        lambda: encapsulated_garbage("1.2.840.10008.1.2.4.100"),
        422,
        "unsupported-transfer-syntax",
    ),
    ("png-bomb-10k", lambda: png_bomb(10_000), 422, "image-too-large"),
    ("png-declares-30k", lambda: png_declaring(30_000, 30_000), 422, "image-too-large"),
    ("png-declares-zero-width", lambda: png_declaring(0, 10), 422, _ANY_422),
    ("png-header-only", lambda: png_bytes(size=(8, 8))[:33], 422, _ANY_422),
    ("jpeg-soi-only", lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 12, 422, _ANY_422),
    # attributes the prediction records, breaking their value representation (PostgreSQL
    # refused them at the write with a 500; SQLite stored them as they came)
    (
        "study-uid-84-chars",
        lambda: dicom_raw(StudyInstanceUID=("UI", "1.2." + "3" * 80)),
        422,
        "invalid-dicom-attribute",
    ),
    (
        "modality-17-chars",
        lambda: dicom_raw(Modality=("CS", "X" * 17)),
        422,
        "invalid-dicom-attribute",
    ),
    (
        "series-uid-with-nul",
        lambda: dicom_raw(SeriesInstanceUID=("UI", "1.2\x003")),
        422,
        "invalid-dicom-attribute",
    ),
    (
        "modality-with-newline",
        lambda: dicom_raw(Modality=("CS", "CT\nMR")),
        422,
        "invalid-dicom-attribute",
    ),
]


# --- checks ------------------------------------------------------------------------------


def _side_tables(service: Service) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table except predictions (counted separately), by table."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for row in service.rows():
        table = row.pop("table")
        if table != "predictions":
            tables.setdefault(table, []).append(row)
    return tables


class Snapshot:
    """The database before a request; ``check`` says what the request may have changed."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.predictions = service.count()
        self.tables = _side_tables(service)

    def check_nothing_stored(self, status: int, *, audited: bool = False) -> None:
        """No prediction; other tables unchanged, except at most one audit row recording the
        refusal with its status (exactly one when ``audited``: the request reached the route
        with a valid key, and the audit trail records every outcome there)."""
        service = self.service
        assert service.count() == self.predictions, "a refused upload stored a prediction"
        after = _side_tables(service)
        for table, rows in after.items():
            before = self.tables.get(table, [])
            new = [row for row in rows if row not in before]
            if "audit" in table:
                # an audit trail may record the refusal, once, with its error status
                assert len(new) == 1 if audited else len(new) <= 1, (table, new)
                for row in new:
                    assert row.get("status") == status, (table, row)
                    assert row.get("action") == "prediction.create", (table, row)
            else:
                assert new == [], f"{table} gained rows on a refused upload: {new}"


def assert_good_post(service: Service) -> None:
    before = service.count()
    response = service.post(png_bytes(), "after.png")
    assert response.status_code == 201, response.text
    assert service.count() == before + 1


# --- tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "status", "code"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS]
)
def test_bad_upload_is_a_4xx_problem_and_stores_nothing(
    service: Service, make: Callable[[], bytes], status: int, code: str | None
) -> None:
    data = make()
    snapshot = Snapshot(service)
    response = service.post(data, "upload.dcm")
    body = assert_problem(response, status, code=code)
    assert "Traceback" not in body["detail"] and "Traceback" not in response.text
    # the detail quotes what was received (a size, a value, an element, a UID...)
    assert any(ch.isdigit() for ch in body["detail"]), body["detail"]
    snapshot.check_nothing_stored(status, audited=service.api_key is not None)
    assert_good_post(service)


def test_png_renamed_dcm_is_read_by_its_bytes(service: Service) -> None:
    """The format comes from the bytes, never the file name or part content type (the API
    documents this): a PNG named .dcm and labelled application/dicom is predicted as a PNG."""
    response = service.client.post(
        "/v1/predictions", files={"file": ("scan.dcm", png_bytes(), "application/dicom")}
    )
    assert response.status_code == 201, response.text
    assert response.json()["input_format"] == "png"
    truncated = png_bytes(size=(64, 64))[:80]
    snapshot = Snapshot(service)
    assert_problem(
        service.client.post(
            "/v1/predictions", files={"file": ("scan.dcm", truncated, "application/dicom")}
        ),
        422,
        code="truncated",
    )
    snapshot.check_nothing_stored(422)


def test_bomb_sizes_are_what_they_claim() -> None:
    """The corpus is real: the bomb is small on the wire and inflates to 10,000 x 10,000."""
    data = png_bomb(10_000)
    assert len(data) < 1_000_000 < TEST_MAX_UPLOAD_BYTES
    assert TEST_MAX_PIXELS < 10_000 * 10_000
    assert struct.unpack(">II", data[16:24]) == (10_000, 10_000)
    inflater = zlib.decompressobj()
    inflated = 0
    stream = data[41:-16]  # the IDAT payload: after its length and type, before its CRC
    for start in range(0, len(stream), 65536):
        inflated += len(inflater.decompress(stream[start : start + 65536]))
    inflated += len(inflater.flush())
    assert inflated == 10_000 * (10_000 + 1)  # a filter byte and 10,000 pixels per row


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"content-type": "text/plain"}, b"hello", 415, "unsupported-media-type"),
        (
            {"content-type": "application/x-www-form-urlencoded"},
            b"file=abc",
            415,
            "unsupported-media-type",
        ),
        ({"content-type": "application/dicom"}, b"DICM", 415, "unsupported-media-type"),
        ({}, b"", 415, "unsupported-media-type"),
        (
            {"content-type": "multipart/form-data; boundary=b"},
            b"--b--\r\n",  # a multipart body with no parts at all
            422,
            "invalid-request",
        ),
        (
            {"content-type": "multipart/form-data; boundary=b"},
            b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nnot a file\r\n--b--\r\n',
            422,
            "invalid-request",
        ),
    ],
    ids=[
        "text-plain",
        "urlencoded",
        "application-dicom",
        "no-content-type",
        "no-parts",
        "text-part",
    ],
)
def test_bad_request_shapes(
    service: Service, headers: dict[str, str], content: bytes, status: int, code: str
) -> None:
    snapshot = Snapshot(service)
    response = service.client.post("/v1/predictions", content=content, headers=headers)
    assert_problem(response, status, code=code)
    snapshot.check_nothing_stored(status)
    assert_good_post(service)


# --- over-limit bodies through a real HTTP server ------------------------------------------


class _RealServer:
    """uvicorn serving the already-started app on a loopback port (lifespan off: the test
    session's TestClient owns the lifespan). Only refusals go through it; good requests go
    through the TestClient, whose event loop runs the predictor's batching worker."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture()
def real_port(service: Service) -> Iterator[int]:
    with _RealServer(service.app) as port:
        yield port


def _read_problem(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], bytes]:
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_declared_oversize_is_refused_before_the_body_is_sent(
    service: Service, real_port: int
) -> None:
    """A Content-Length over the limit gets 413 as soon as the headers arrive: the client
    has sent no body byte when the answer comes, and the connection is closed."""
    import json

    snapshot = Snapshot(service)
    with socket.create_connection(("127.0.0.1", real_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {TEST_MAX_UPLOAD_BYTES * 4}\r\n\r\n".encode()
        )
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"application/problem+json" in head.lower()
    assert b"connection: close" in head.lower()
    problem = json.loads(body)
    assert problem["type"] == "urn:radlens:problem:payload-too-large"
    assert str(TEST_MAX_UPLOAD_BYTES * 4) in problem["detail"]
    snapshot.check_nothing_stored(413)
    assert_good_post(service)


def test_chunked_oversize_without_content_length_is_413(service: Service, real_port: int) -> None:
    """Transfer-Encoding: chunked, no Content-Length: counted while streaming and refused
    once past the limit; the server does not read the whole (4x limit) body first."""
    import json

    sent = {"bytes": 0}
    chunk = b"0" * (256 * 1024)

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n\r\n'
        for _ in range(4 * TEST_MAX_UPLOAD_BYTES // len(chunk)):
            sent["bytes"] += len(chunk)
            yield chunk
        yield b"\r\n--b--\r\n"

    snapshot = Snapshot(service)
    conn = http.client.HTTPConnection("127.0.0.1", real_port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/predictions")
        conn.putheader("Content-Type", "multipart/form-data; boundary=b")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Authorization", f"Bearer {service.api_key}")  # the key comes first
        conn.endheaders()
        try:
            for piece in body():
                conn.send(f"{len(piece):X}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending: expected
        status, headers, raw = _read_problem(conn)
    finally:
        conn.close()
    assert status == 413, raw[:300]
    assert headers.get("content-type", "").startswith("application/problem+json")
    problem = json.loads(raw)
    assert problem["type"] == "urn:radlens:problem:payload-too-large"
    assert "streaming" in problem["detail"]
    snapshot.check_nothing_stored(413)
    assert_good_post(service)


# --- list filters the database cannot compare (found by the schemathesis fuzz) ---------------


def _cursor(created_at: str) -> str:
    import uuid

    return _raw_cursor([created_at, str(uuid.uuid4())])


def _raw_cursor(fields: list[Any]) -> str:
    """A cursor encoded as the service encodes one, holding whatever ``fields`` are."""
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("model_version=35184372088831", 422, "invalid-request"),  # PostgreSQL int4
        ("model_name=a%00b", 422, "invalid-request"),  # PostgreSQL text has no NUL
        ("label=%00", 422, "invalid-request"),
        ("study_instance_uid=1.2%003", 422, "invalid-request"),
        ("cursor=" + _cursor("0001-01-01T00:00:00+14:00"), 422, "invalid-cursor"),
        ("cursor=" + _cursor("9999-12-31T23:59:59-14:00"), 422, "invalid-cursor"),
        ("cursor=" + _raw_cursor(["2024-01-01T00:00:00+00:00", 5]), 422, "invalid-cursor"),
        ("cursor=" + _raw_cursor(["2024-01-01T00:00:00+00:00", [1]]), 422, "invalid-cursor"),
        ("cursor=" + _raw_cursor([5, "x"]), 422, "invalid-cursor"),
        ("created_after=0001-01-01T00:00:00%2B14:00", 200, None),  # before everything
        ("created_before=9999-12-31T23:59:59-14:00", 200, None),  # after everything
    ],
    ids=[
        "version-over-int32",
        "nul-model-name",
        "nul-label",
        "nul-study",
        "cursor-year-0",
        "cursor-year-10000",
        "cursor-id-a-number",
        "cursor-id-a-list",
        "cursor-time-a-number",
        "after-year-0",
        "before-year-10000",
    ],
)
def test_list_filters_out_of_the_databases_range(
    service: Service, query: str, status: int, code: str | None
) -> None:
    response = service.client.get(f"/v1/predictions?{query}")
    if status == 200:
        assert response.status_code == 200, response.text
        # the clamped bound still filters: everything is after year 1 / before year 10000
        assert response.json()["items"] or service.count() == 0
    else:
        assert_problem(response, status, code=code)
    assert service.client.get("/v1/predictions?limit=1").status_code == 200

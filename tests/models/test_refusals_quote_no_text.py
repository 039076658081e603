"""Refusals do not quote header text or a file's first line (QA round 31): a file that is no
image answered "received 32 bytes starting 5a 5a 50 48 49 4e 41 4d 45 5e ..." (a patient's
name, in hex), and a NumberOfFrames holding an MRN "invalid literal for int() with base 10:
'MRN...'", into problem+json bodies, STOW-RS failure reasons and training skip reasons."""

from __future__ import annotations

import io

import pydicom
import pytest

from radlens.models.errors import InvalidImageError, NotAnImageError
from radlens.models.preprocessing import error_text, preprocess
from tests.app.conftest import dicom_bytes

MARK = "ZZPHIQQMRN"


@pytest.mark.parametrize(
    "data",
    [
        b"ZZPHIQQMRN^ALICE export of 2026-12-01\r\n",
        "PatientName: ZZPHIQQMRN Müller\n".encode(),
        b"<html><body>ZZPHIQQMRN</body></html>",
    ],
    ids=["ascii", "utf-8", "html"],
)
def test_a_text_file_is_refused_without_its_first_bytes(data: bytes) -> None:
    with pytest.raises(NotAnImageError) as caught:
        preprocess(data)
    detail = caught.value.detail
    assert f"received {len(data)} bytes starting with text (not shown)" in detail, detail
    assert MARK not in detail and MARK.encode().hex(" ")[:20] not in detail


def test_a_binary_file_is_still_quoted_in_hex() -> None:
    data = b"\x00\x01\x02\x03" + bytes(range(200, 212))  # no known format
    with pytest.raises(NotAnImageError) as caught:
        preprocess(data)
    assert "starting 00 01 02 03 c8 c9" in caught.value.detail


def _with_frames(text: str) -> bytes:
    """A CT instance (tests/app/conftest.py) whose Number of Frames holds ``text`` (10
    characters: the element keeps its length)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    ds.NumberOfFrames = 1111111111
    out = io.BytesIO()
    ds.save_as(out)
    raw = out.getvalue()
    assert raw.count(b"1111111111") == 1 and len(text) == 10
    return raw.replace(b"1111111111", text.encode())


def test_a_number_of_frames_holding_text_is_refused_unquoted() -> None:
    data = _with_frames(MARK)
    with pytest.raises(InvalidImageError) as caught:
        preprocess(data)
    detail = caught.value.detail
    assert MARK not in detail, detail
    assert "invalid literal for int() with base 10: <value not shown>" in detail


@pytest.mark.parametrize(
    "exc",
    [
        ValueError(f"invalid literal for int() with base 10: '{MARK}'"),
        ValueError(f"could not convert string to float: '{MARK}'"),
    ],
)
def test_error_text_leaves_out_what_a_conversion_quotes(exc: Exception) -> None:
    text = error_text(exc)
    assert MARK not in text and text.endswith(": <value not shown>")


def test_pydicom_is_what_is_read() -> None:  # the fixture is a real DICOM file
    ds = pydicom.dcmread(io.BytesIO(_with_frames("2".ljust(10))))
    assert ds.NumberOfFrames == 2

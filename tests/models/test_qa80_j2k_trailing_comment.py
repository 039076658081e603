"""QA 80: a JPEG 2000 DICOM frame with a comment (COM) segment after its last tile-part decodes.

Found on pylibjpeg-data's 966.dcm (a 2000x2128 CR from pydicom issue 966, encoded by Kakadu
5.0): a COM segment reading "PADDING" sits between the last tile-part and the EOC marker,
where ISO/IEC 15444-1 allows none. OpenJPEG refused the frame ("opj_decode or
opj_end_decompress failed"), and so did every fallback, so the upload was refused as
undecodable after ~3-6 s of decoding, though its image data is whole (pylibjpeg-data's
966_fixed.dcm, the same stream without the segment, decodes). models/codecs.py now drops
such trailing COM segments before OpenJPEG decodes. The fixtures are pydicom's real JPEG 2000
files with that segment added.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from radlens.models import codecs, preprocessing

PADDING = b"\xff\x64\x00\x0b\x00\x01PADDING"  # COM, Lcom 11, Rcom 1 (Latin text), 7 bytes


def _frame(name: str) -> tuple[pydicom.Dataset, bytes]:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is absent")
    ds = pydicom.dcmread(path)
    return ds, next(generate_frames(ds.PixelData, number_of_frames=1))


def _with_trailing_comment(frame: bytes) -> bytes:
    """The comment before the EOC marker (US1_J2KR's frame has a padding byte after it)."""
    eoc = frame.rindex(codecs.END_MARKER)
    return frame[:eoc] + PADDING + frame[eoc:]


def _file_with_frame(ds: pydicom.Dataset, frame: bytes) -> bytes:
    ds.PixelData = encapsulate([frame])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "US1_J2KR.dcm"])
def test_the_frame_decodes_to_the_pixels_without_the_comment(name: str) -> None:
    ds, frame = _frame(name)
    expected = preprocessing.preprocess(_file_with_frame(ds, frame))
    # was UnsupportedTransferSyntaxError: could not decode ... (opj_decode ... failed)
    got = preprocessing.preprocess(_file_with_frame(ds, _with_trailing_comment(frame)))
    np.testing.assert_array_equal(got.pixels, expected.pixels)


class TestJ2kWithoutTrailingComments:
    def test_the_comment_and_only_it_is_dropped(self) -> None:
        _, frame = _frame("MR_small_jp2klossless.dcm")
        assert codecs.j2k_without_trailing_comments(_with_trailing_comment(frame)) == frame

    def test_several_comments_are_dropped(self) -> None:
        _, frame = _frame("MR_small_jp2klossless.dcm")
        twice = _with_trailing_comment(_with_trailing_comment(frame))
        assert codecs.j2k_without_trailing_comments(twice) == frame

    def test_a_conforming_codestream_is_returned_as_it_is(self) -> None:
        _, frame = _frame("MR_small_jp2klossless.dcm")
        assert codecs.j2k_without_trailing_comments(frame) is frame

    def test_a_comment_in_the_main_header_stays(self) -> None:
        """Kakadu's main-header COM segments ("Kakadu-v5.0") are where the standard puts them."""
        _, frame = _frame("MR_small_jp2klossless.dcm")
        siz_end = 4 + int.from_bytes(frame[4:6], "big")  # SOC, then SIZ and its length
        with_header_comment = frame[:siz_end] + PADDING + frame[siz_end:]
        got = codecs.j2k_without_trailing_comments(with_header_comment)
        assert got is with_header_comment

    def test_something_else_before_eoc_is_left_to_the_decoder(self) -> None:
        _, frame = _frame("MR_small_jp2klossless.dcm")
        junk = frame[:-2] + b"\x12\x34" + codecs.END_MARKER
        assert codecs.j2k_without_trailing_comments(junk) is junk

    @pytest.mark.parametrize("data", [b"", b"\xff\x4f\xff\x51", b"\xff\x4f\xff\x51\x00", bytes(64)])
    def test_short_or_foreign_data_is_returned_as_it_is(self, data: bytes) -> None:
        assert codecs.j2k_without_trailing_comments(data) is data

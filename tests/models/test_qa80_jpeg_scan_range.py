"""QA 80: a lossy JPEG DICOM frame whose sequential scan header says Se=0 decodes.

Found on the NEMA WG04 sample MR1_JPLY (a 12-bit JPEG Extended head MR, as dwv's test data
ships it): its scan header has Ss=0, Se=0 where ITU-T T.81 fixes Se=63 for the sequential
processes. libjpeg-turbo ignores the field; pylibjpeg-libjpeg, the decoder of lossy JPEG
DICOM frames here, refused the frame ("scan start must be zero and scan stop must be 63",
error -1038), so the upload was refused as an unsupported transfer syntax although its pixels
are whole. models/codecs.full_spectrum_scans writes 63 there before libjpeg decodes.

pydicom ships the same quirk: JPEG-lossy.dcm is WG04's NM1_JPLY (Se=0 too; refused here, and
one of tests/training/test_pipeline.py's "broken" files, until now) and JPGExtended.dcm its
"fixed version" with Se=63, so the two must now give the same pixels. The other fixtures are
pydicom's conforming JPEG files with that one byte changed, expected to give the pixels of the
unchanged file.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from radlens.models import codecs, preprocessing

SOS = b"\xff\xda"


def _testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is absent")
    with open(path, "rb") as fh:
        return fh.read()


def _se_offset(codestream: bytes | bytearray, sos: int) -> int:
    """Offset of the Se byte in the scan header at ``sos``: the header ends Ss, Se, Ah/Al."""
    return sos + 2 + int.from_bytes(codestream[sos + 2 : sos + 4], "big") - 2


def _with_se(data: bytes, se: int) -> bytes:
    """The DICOM file with Se of its first frame's first scan set to ``se`` (same length)."""
    pixel_data = data.rindex(b"\xe0\x7f\x10\x00")
    changed = bytearray(data)
    offset = _se_offset(changed, data.index(SOS, pixel_data))
    assert changed[offset] == 63, "the fixture's scan was a full-spectrum one"
    changed[offset] = se
    return bytes(changed)


def test_wg04_nm1_jply_decodes_as_its_fixed_version() -> None:
    quirky, fixed = _testdata("JPEG-lossy.dcm"), _testdata("JPGExtended.dcm")
    expected = preprocessing.preprocess(fixed)
    got = preprocessing.preprocess(quirky)  # was InvalidImageError: could not decode ... 4.51
    assert got.metadata.window == expected.metadata.window
    np.testing.assert_array_equal(got.pixels, expected.pixels)


@pytest.mark.parametrize(
    "name",
    [
        "JPGExtended.dcm",  # JPEG Extended, 12-bit gray (1.2.840.10008.1.2.4.51)
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, 8-bit colour, one interleaved scan
    ],
)
def test_a_scan_saying_se_0_decodes_to_the_pixels_of_the_unchanged_file(name: str) -> None:
    original = _testdata(name)
    quirky = _with_se(original, 0)
    expected = preprocessing.preprocess(original)
    got = preprocessing.preprocess(quirky)  # was InvalidImageError/unsupported transfer syntax
    assert got.metadata.window == expected.metadata.window
    np.testing.assert_array_equal(got.pixels, expected.pixels)


def test_the_model_size_decode_takes_the_same_path() -> None:
    original = _testdata("JPGExtended.dcm")
    expected = preprocessing.preprocess(original, size=(32, 32))
    got = preprocessing.preprocess(_with_se(original, 0), size=(32, 32))
    np.testing.assert_array_equal(got.pixels, expected.pixels)


class TestFullSpectrumScans:
    def _frame(self, name: str) -> bytes:
        data = _testdata(name)
        start = data.index(b"\xff\xd8\xff", data.rindex(b"\xe0\x7f\x10\x00"))
        end = data.index(b"\xff\xd9", start) + 2
        return data[start:end]

    def test_a_conforming_frame_is_returned_as_it_is(self) -> None:
        frame = self._frame("JPGExtended.dcm")
        assert codestreams_identical(codecs.full_spectrum_scans(frame), frame)

    def test_only_the_se_byte_changes(self) -> None:
        frame = self._frame("JPGExtended.dcm")
        sos = frame.index(SOS)
        quirky = bytearray(frame)
        quirky[_se_offset(frame, sos)] = 0
        mended = codecs.full_spectrum_scans(bytes(quirky))
        assert mended == frame

    def test_a_lossless_frame_keeps_its_se_0(self) -> None:
        """Lossless JPEG (SOF3) scans carry the predictor in Ss and Se=0 by the standard."""
        frame = self._frame("JPEG-LL.dcm")
        sos = frame.index(SOS)
        assert frame[_se_offset(frame, sos)] == 0
        assert codestreams_identical(codecs.full_spectrum_scans(frame), frame)

    def test_not_a_jpeg_is_returned_as_it_is(self) -> None:
        data = b"\x00" * 32
        assert codestreams_identical(codecs.full_spectrum_scans(data), data)


def codestreams_identical(got: bytes, sent: bytes) -> bool:
    """The very object (no copy) when nothing had to change."""
    return got is sent

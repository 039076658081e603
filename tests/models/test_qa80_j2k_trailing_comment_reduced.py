"""QA 80: at a model's input size a JPEG 2000
frame with a COM segment after its last tile-part gives the pixels of the same frame without
it. models/codecs.py drops the segment for the full decode, but the reduced-resolution decode
(Pillow's OpenJPEG, version "2" on) still gets the raw codestream, fails, and the frame is
decoded in full and resized instead: pylibjpeg-data's 966.dcm at 32 px correlates 0.990 with
966_fixed.dcm (largest difference 0.16 of the gray range). Fixture: pydicom-data's real chest
CR RG1_J2KR.dcm with such a segment added.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from radlens.models import codecs, preprocessing

PADDING = b"\xff\x64\x00\x0b\x00\x01PADDING"


@pytest.mark.parametrize("size", [(32, 32), (224, 224)])
def test_the_model_size_pixels_equal_those_without_the_comment(size: tuple[int, int]) -> None:
    path = get_testdata_file("RG1_J2KR.dcm")
    if path is None:
        pytest.skip("pydicom-data's RG1_J2KR.dcm is absent")
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    eoc = frame.rindex(codecs.END_MARKER)
    files = []
    for codestream in (frame, frame[:eoc] + PADDING + frame[eoc:]):
        ds.PixelData = encapsulate([codestream])
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files.append(buf.getvalue())
    expected = preprocessing.preprocess(files[0], size=size)
    got = preprocessing.preprocess(files[1], size=size)
    np.testing.assert_array_equal(got.pixels, expected.pixels)

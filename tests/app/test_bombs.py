"""Decompression bombs in compressed DICOM (issue 18), on SQLite and PostgreSQL.

Small files that really encode huge images (JPEG 2000, JPEG-LS, JPEG Baseline) behind a small
DICOM header, and headers that lie about the codestream: each a named 422 from the headers,
before any pixel decode starts (recorded, not timed), nothing stored, and the service keeps
serving. The files are made here with imagecodecs and Pillow, never committed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest

from tests.app.conftest import TEST_MAX_PIXELS, TEST_MAX_UPLOAD_BYTES, Service, assert_problem
from tests.app.test_bad_inputs import Snapshot, assert_good_post
from tests.conftest import record_decodes
from tests.models.test_decode import (
    J2K_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LS,
    encapsulated_dicom,
    gradient,
    j2k,
    jpeg_baseline,
    jpeg_ls,
)

SIDE = 8000  # 64 MP: 16 x TEST_MAX_PIXELS, beyond the default 36 MP limit too


@functools.cache
def zeros(side: int) -> np.ndarray:
    return np.zeros((side, side), np.uint8)


@functools.cache
def bomb(codec: str) -> bytes:
    """A DX whose header says 512 x 716 and whose codestream really encodes SIDE x SIDE."""
    if codec == "j2k":
        codestream, syntax = j2k(zeros(SIDE), 8, level=0, numthreads=1), J2K_LOSSLESS
    elif codec == "jpeg-ls":
        codestream, syntax = jpeg_ls(zeros(SIDE)), JPEG_LS
    else:
        codestream, syntax = jpeg_baseline(zeros(SIDE)), JPEG_BASELINE
    return encapsulated_dicom(codestream, syntax, rows=512, columns=716)


def lying_components() -> bytes:
    return encapsulated_dicom(
        jpeg_ls(gradient(64, 64, 8)), JPEG_LS, rows=64, columns=64, samples=3, photometric="RGB"
    )


def lying_bit_depth() -> bytes:
    return encapsulated_dicom(j2k(gradient(64, 64, 12), 12, level=0), J2K_LOSSLESS, rows=64,
                              columns=64)  # fmt: skip


def lying_small_codestream() -> bytes:
    """The header declares more than the codestream holds (a header bomb the other way)."""
    return encapsulated_dicom(jpeg_baseline(gradient(64, 64, 8)), JPEG_BASELINE, rows=1900,
                              columns=1900)  # fmt: skip


CORPUS: list[tuple[str, Callable[[], bytes]]] = [
    ("j2k-8000-behind-716x512", lambda: bomb("j2k")),
    ("jpeg-ls-8000-behind-716x512", lambda: bomb("jpeg-ls")),
    ("jpeg-baseline-8000-behind-716x512", lambda: bomb("jpeg")),
    ("jpeg-ls-1-component-header-says-3", lying_components),
    ("j2k-12-bit-header-allocates-8", lying_bit_depth),
    ("jpeg-64px-header-says-1900", lying_small_codestream),
]


def test_bombs_are_what_they_claim() -> None:
    """Small on the wire, huge when decoded: the corpus is real."""
    import imagecodecs
    import pydicom
    from pydicom.encaps import generate_frames

    assert TEST_MAX_PIXELS < SIDE * SIDE
    for codec, decode in [
        ("j2k", imagecodecs.jpeg2k_decode),
        ("jpeg-ls", imagecodecs.jpegls_decode),
        ("jpeg", imagecodecs.jpeg8_decode),
    ]:
        data = bomb(codec)
        assert len(data) < 2_000_000 < TEST_MAX_UPLOAD_BYTES, (codec, len(data))
        ds = pydicom.dcmread(__import__("io").BytesIO(data))
        assert (ds.Rows, ds.Columns) == (512, 716)
        codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
        assert decode(codestream).shape == (SIDE, SIDE)


@pytest.mark.parametrize("make", [c[1] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_bomb_is_a_named_422_fast_and_stores_nothing(
    service: Service, make: Callable[[], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make()
    snapshot = Snapshot(service)
    decodes = record_decodes(monkeypatch)  # this process runs the app: its decodes
    response = service.post(data, "bomb.dcm")
    body = assert_problem(response, 422, code="codestream-mismatch")
    assert "codestream" in body["detail"] and "Traceback" not in response.text
    assert "cannot be decoded" not in body["title"]  # the old, wrong title
    assert decodes == [], "a refusal from the headers started a decode"  # recorded, not timed
    snapshot.check_nothing_stored(422, audited=service.api_key is not None)
    assert_good_post(service)

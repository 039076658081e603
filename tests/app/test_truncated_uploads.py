"""Uploads whose compressed image is cut short are refused by the service as truncated: 422
application/problem+json, no prediction stored (tests/models/test_truncated_codestreams.py
has the decode paths). Before, each of these was predicted (201)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from tests.app.conftest import Service, assert_problem
from tests.app.test_bad_inputs import Snapshot, assert_good_post
from tests.conftest import shared_data_path


def _rewritten(path: Path, change: Callable[[bytes], bytes]) -> bytes:
    """The DICOM file with its (first) frame's codestream changed, re-encapsulated."""
    ds = dcmread(path)
    frames = [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=1)]
    frame = change(frames[0])
    ds.PixelData = encapsulate([frame + b"\x00" * (len(frame) % 2)])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def half_jpeg_ls() -> bytes:
    """The fuzzer's case: CT1_JLSN.dcm's codestream cut to half its length."""
    path = shared_data_path("dicom", "CT1_JLSN.dcm")
    return _rewritten(path, lambda f: f[: len(f) // 2])


def half_lossless_jpeg() -> bytes:
    path = Path(str(get_testdata_file("JPEG-LL.dcm")))
    return _rewritten(path, lambda f: f[: len(f) // 2])


def baseline_closed_early() -> bytes:
    """JPEG Baseline (colour): half of the scan, then an EOI marker again."""

    def change(frame: bytes) -> bytes:
        scan = frame.rstrip(b"\x00\xff")[:-2]
        return scan[: len(scan) // 2] + b"\xff\xd9"

    return _rewritten(Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))), change)


def jpeg_closed_early() -> bytes:
    """The fuzzer's JPEG: a 512x512 ramp, 10 % of its scan kept, then an EOI marker."""
    ramp = (np.add.outer(np.arange(512), np.arange(512)) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="JPEG", quality=90)
    full = buf.getvalue()
    sos = full.find(b"\xff\xda")
    return full[: sos + (len(full) - sos) // 10] + b"\xff\xd9"


CASES = [half_jpeg_ls, half_lossless_jpeg, baseline_closed_early, jpeg_closed_early]


@pytest.mark.parametrize("make", CASES, ids=[c.__name__ for c in CASES])
def test_a_cut_codestream_is_a_422_truncated_and_stores_nothing(
    service: Service, make: Callable[[], bytes]
) -> None:
    data = make()
    snapshot = Snapshot(service)
    response = service.post(data, "upload.jpg" if data[:2] == b"\xff\xd8" else "upload.dcm")
    body = assert_problem(response, 422, code="truncated")
    assert "truncated" in body["title"].lower()
    snapshot.check_nothing_stored(422, audited=service.api_key is not None)
    assert_good_post(service)

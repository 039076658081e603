"""Uploads that were refused although whole, and others named (QA 105; the decoding side is
tests/models/test_qa105_frame_ends.py and tests/models/test_qa105_other_formats.py).

- A JPEG upload, or a DICOM JPEG frame, whose scan is whole but that lacks its final EOI
  marker was a 422 "The file is truncated"; it is predicted (201). Cut inside its scan it
  stays a 422 truncated, storing nothing.
- A DICOM JPEG 2000 frame with bytes after its EOC marker was a 422 truncated; predicted.
- A file of another format (QOI, DDS, PCX, TGA 1.0, ...) is a 415 problem whose detail names
  it and says what to send, with no traceback and nothing stored.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from tests.app.conftest import Service, assert_problem
from tests.app.test_bad_inputs import Snapshot, assert_good_post
from tests.conftest import shared_data_path
from tests.models.test_qa105_other_formats import NEWLY_NAMED


def _rewritten(path: Path, change: Callable[[bytes], bytes]) -> bytes:
    """The DICOM file with its frame's codestream changed, as a new instance (a new SOP
    Instance UID: not the same instance as another test's upload of the file)."""
    ds = dcmread(path)
    frame = change(next(bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate([frame + b"\x00" * (len(frame) % 2)])
    ds["PixelData"].VR = "OB"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _without_eoi(codestream: bytes) -> bytes:
    stripped = codestream.rstrip(b"\x00\xff")
    assert stripped.endswith(b"\xff\xd9")
    return stripped[:-2]


def _jpeg(seed: int) -> bytes:
    """A chest radiograph of NIH ChestX-ray14 as a JPEG (a seed-dependent corner mark keeps
    each upload a new one)."""
    path = sorted(shared_data_path("nih1000", "train", "0_normal").glob("*.png"))[0]
    with Image.open(path) as image:
        gray = np.asarray(image.convert("L")).copy()
    gray[:4, :4] = seed % 256
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _created(service: Service, data: bytes, filename: str) -> dict[str, object]:
    before = service.count()
    response = service.post(data, filename)
    assert response.status_code == 201, response.text
    assert service.count() == before + 1
    body: dict[str, object] = response.json()
    return body


def test_a_jpeg_upload_without_its_eoi_is_predicted(service: Service) -> None:
    whole = _jpeg(1)
    without = _without_eoi(whole)
    assert without[-2:] != b"\xff\xd9"
    got = _created(service, without, "phone.jpg")
    expected = _created(service, _jpeg(1), "phone.jpg")
    assert got["scores"] == expected["scores"], (got, expected)


@pytest.mark.parametrize("count", [1, 3, 0])
def test_a_jpeg_upload_cut_inside_its_scan_is_still_truncated(service: Service, count: int) -> None:
    body = _without_eoi(_jpeg(2))
    data = body[: len(body) // 2] if count == 0 else body[:-count]
    snapshot = Snapshot(service)
    problem = assert_problem(service.post(data, "cut.jpg"), 422, code="truncated")
    assert "truncated" in problem["title"].lower()
    snapshot.check_nothing_stored(422, audited=service.api_key is not None)
    assert_good_post(service)


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("rsna_chest_cr_jpeg_baseline.dcm", _without_eoi),  # JPEG Baseline
        ("RG2_JPLL.dcm", _without_eoi),  # JPEG Lossless, 2140x1760
        ("TOSHIBA_J2K_OpenJPEGv2Regression.dcm", lambda f: f.rstrip(b"\x00") + b"TRAILER"),
    ],
    ids=["jpeg-baseline-no-eoi", "jpeg-lossless-no-eoi", "j2k-bytes-after-eoc"],
)
def test_a_whole_dicom_frame_without_its_end_marker_is_predicted(
    service: Service, name: str, change: Callable[[bytes], bytes]
) -> None:
    path = shared_data_path("dicom", name)
    _created(service, _rewritten(path, change), "image.dcm")


def test_a_dicom_jpeg_frame_cut_inside_its_scan_is_still_truncated(service: Service) -> None:
    path = shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm")
    data = _rewritten(path, lambda f: _without_eoi(f)[:-3])
    snapshot = Snapshot(service)
    assert_problem(service.post(data, "image.dcm"), 422, code="truncated")
    snapshot.check_nothing_stored(422, audited=service.api_key is not None)


@pytest.mark.parametrize(("kind", "named"), [(k, n) for k, _, n in NEWLY_NAMED])
def test_another_format_is_a_415_that_names_it(service: Service, kind: str, named: str) -> None:
    data = dict((k, make) for k, make, _ in NEWLY_NAMED)[kind]()
    snapshot = Snapshot(service)
    response = service.post(data, f"upload.{kind}")
    body = assert_problem(response, 415, code="not-an-image")
    assert named in body["detail"], body
    said = f"{body['title']}: {body['detail']}"  # what it is, and what to send instead
    assert "send" in said and ("PNG" in said or "DICOM" in said), body
    assert "Traceback" not in response.text, response.text
    snapshot.check_nothing_stored(415, audited=service.api_key is not None)

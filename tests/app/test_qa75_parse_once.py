"""QA 75: an upload to a model with an intended use (RADLENS_GATE=refuse, the default) is
parsed once: the gate reads its header from the dataset preprocessing decodes
(models.preprocessing.parse_dicom), and a multi-frame instance's other frames are read from
that same dataset (it was parsed by the gate, by preprocess and again by preprocess_frames:
2 parses a single-frame upload, 3 a multi-frame one). A refusal still comes before any
pixel is decoded, and the images are the same as preprocess() of the bytes gives."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation

import radlens.models.dicomread as dicomread
import radlens.models.preprocessing as preprocessing
from tests.app.conftest import Databases, assert_problem, dicom_bytes
from tests.app.test_gate import Gated, _app, chest_store  # noqa: F401 (a fixture)
from tests.app.test_series import multiframe_bytes


def chest_dx(data: bytes) -> bytes:
    """The instance as a chest DX (what the chest CR/DX model is for)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def refusing(databases: Databases, chest_store: Path) -> Iterator[Gated]:  # noqa: F811
    yield from _app(databases, chest_store)  # RADLENS_GATE defaults to refuse


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the byte strings pydicom was asked to parse (every reader goes through
    models.dicomread.read_dicom_bytes: the gate's header read and preprocessing's)."""
    seen: list[int] = []
    real = dicomread.read_dicom_bytes

    def spy(data: bytes, **kwargs: Any) -> Any:
        seen.append(len(data))
        return real(data, **kwargs)

    monkeypatch.setattr(dicomread, "read_dicom_bytes", spy)
    return seen


def test_a_single_frame_upload_is_parsed_once(refusing: Gated, parses: list[int]) -> None:
    data = chest_dx(dicom_bytes(rows=32, columns=32, seed=1))
    response = refusing.post(data)
    assert response.status_code == 201, response.text
    assert parses == [len(data)]  # was 2: the gate's header read, then preprocess


def test_a_multi_frame_upload_is_parsed_once(refusing: Gated, parses: list[int]) -> None:
    data = chest_dx(multiframe_bytes(5, seed=7)[0])
    response = refusing.post(data)
    assert response.status_code == 201, response.text
    assert response.json()["frame_result"]["frames"] == list(range(5))
    assert parses == [len(data)]  # was 3: the gate, the middle frame, the other frames


def test_a_refusal_still_comes_before_any_pixel_is_decoded(
    refusing: Gated, parses: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    real = preprocessing._dicom_frame

    def spy(*args: Any, **kwargs: Any) -> Any:
        decoded.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(preprocessing, "_dicom_frame", spy)
    data = multiframe_bytes(3, seed=8)[0]  # a CT: outside a chest CR/DX model's use
    response = refusing.post(data)
    assert_problem(response, 422, code="outside-intended-use")
    assert "CT" in response.json()["detail"]
    assert decoded == []
    assert parses == [len(data)]


def _same(a: preprocessing.PreprocessedImage, b: preprocessing.PreprocessedImage) -> None:
    assert a.metadata == b.metadata
    assert a.pixels.dtype == b.pixels.dtype
    assert np.array_equal(a.pixels, b.pixels)


@pytest.mark.parametrize(
    "name", ["RG1_J2KR.dcm", "eCT_Supplemental.dcm", "emri_small_RLE.dcm", "MR_small.dcm"]
)
def test_a_parsed_dataset_gives_the_same_images_as_the_bytes(name: str) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    data = Path(str(path)).read_bytes()
    dataset = preprocessing.parse_dicom(data)
    for options in ({}, {"size": (64, 64)}, {"size": (64, 64), "version": "1"}):
        first = preprocessing.preprocess(data, dataset=dataset, **options)  # type: ignore[arg-type]
        _same(first, preprocessing.preprocess(data, **options))  # type: ignore[arg-type]
        indices = list(range(first.metadata.frames))[:3]
        got = list(
            preprocessing.preprocess_frames(data, indices, dataset=dataset, **options)  # type: ignore[arg-type]
        )
        want = list(preprocessing.preprocess_frames(data, indices, **options))  # type: ignore[arg-type]
        for a, b in zip(got, want, strict=True):
            _same(a, b)


def test_dataset_is_refused_for_a_png() -> None:
    from tests.app.conftest import png_bytes

    dataset = preprocessing.parse_dicom(dicom_bytes())
    with pytest.raises(preprocessing.InvalidImageError, match="dataset= is for DICOM"):
        preprocessing.preprocess(png_bytes(), dataset=dataset)

"""A multi-frame upload is parsed once for all its frames (models.preprocessing.
preprocess_frames), and predicted exactly as frame-by-frame preprocess() calls would have it:
on pydicom-data's real Enhanced CT (its rescale and window in functional groups) and on a
many-frame CT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import radlens.models.preprocessing as preprocessing
from tests.app.conftest import Service
from tests.app.test_series import multiframe_bytes


def enhanced_ct() -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("eCT_Supplemental.dcm")
    if path is None:
        pytest.skip("eCT_Supplemental.dcm is not installed (pip install pydicom-data)")
    return Path(str(path)).read_bytes()


def model_scores(service: Service, data: bytes, frames: list[int]) -> np.ndarray:
    """The model on each frame as preprocess(data, frame=i) gives it, one call per frame."""
    predictor = service.app.state.resources.predictor
    manifest = predictor.manifest
    inputs = [
        preprocessing.preprocess(
            data,
            size=predictor.input_size,
            window=manifest.window,
            max_pixels=service.app.state.settings.max_pixels,
            version=manifest.preprocessing_version,
            frame=index,
        ).model_input()
        for index in frames
    ]
    return np.stack(
        [np.asarray(predictor.model.predict_on_batch(x[np.newaxis]))[0] for x in inputs]
    )


def test_the_real_enhanced_ct_frames_score_as_per_frame_preprocessing(service: Service) -> None:
    data = enhanced_ct()
    response = service.post(data)
    assert response.status_code == 201, response.text
    result = response.json()["frame_result"]
    assert result["frames"] == [0, 1]
    expected = model_scores(service, data, [0, 1])[:, 1]
    assert result["scores"] == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_multi_frame_upload_is_parsed_once_not_once_per_frame(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = multiframe_bytes(6, seed=11)
    reads: list[int] = []
    real = preprocessing._read_dicom

    def counting(raw: bytes, *args: Any) -> Any:
        reads.append(len(raw))
        return real(raw, *args)

    monkeypatch.setattr(preprocessing, "_read_dicom", counting)
    response = service.post(data)
    assert response.status_code == 201, response.text
    # one parse: the middle frame's prediction (every upload's first step) and the other five
    # frames read from it (twice before QA round 75: the other frames parsed the file again)
    assert reads == [len(data)]
    result = response.json()["frame_result"]
    assert result["frames"] == list(range(6))
    monkeypatch.undo()
    expected = model_scores(service, data, list(range(6)))[:, 1]
    assert result["scores"] == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_frame_that_fails_after_the_middle_one_fails_the_instance(service: Service) -> None:
    """The middle frame decodes (the upload's first step passes), frame 0 does not: the
    instance is refused with a problem, nothing is stored, and the service keeps serving."""
    import io

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(str(get_testdata_file("emri_small_RLE.dcm")))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    frames[0] = b"\x01\x00\x00\x00" + b"\x00" * 60  # an RLE header naming one segment, no data
    ds.PixelData = encapsulate(frames)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert preprocessing.preprocess(data).metadata.frame_index == 5  # the middle frame is fine
    before = service.count()
    response = service.post(data)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert service.count() == before
    assert service.post(multiframe_bytes(2, seed=12)[0]).status_code == 201

"""QA 83: an explained upload (``?explain=true``) is parsed once, and its overlay's title says
the stored label and how the threshold decided it. SQLite and PostgreSQL.

- Grad-CAM's display-size image (app/ingest.py ``Ingestor._explain``) preprocessed the upload
  from its bytes again, a second full parse (every pixel's bytes copied again), although the
  gate and preprocessing had parsed it once: the dataset is now kept for it
  (``Candidate.dataset``) and passed to preprocessing, as the frames of a multi-frame instance
  are read. Before QA 83 an explained DICOM upload was parsed twice.
- The title named the positive class and its score whatever the label ("abnormal 0.4000 ·
  Grad-CAM ..." over a normal result); it now starts with the prediction's label and compares
  its score with its threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from radlens.models import gradcam
from tests.app.conftest import Service, dicom_bytes, new_uid
from tests.app.test_qa75_parse_once import parses  # noqa: F401 (a fixture)
from tests.app.test_series import multiframe_bytes

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"


@pytest.fixture
def titles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every overlay title drawn (models.overlay.render_overlay, drawn as before)."""
    from radlens.models import overlay

    seen: list[str] = []
    real = overlay.render_overlay

    def spy(*args: Any, title: str | None = None, **kwargs: Any) -> bytes:
        seen.append(str(title))
        return real(*args, title=title, **kwargs)

    monkeypatch.setattr(overlay, "render_overlay", spy)
    return seen


def _post(service: Service, data: bytes) -> dict[str, Any]:
    response = service.post(data, "ct.dcm", params={"explain": "true"})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    heatmap = service.client.get(f"/v1/predictions/{body['id']}/heatmap")
    assert heatmap.status_code == 200 and heatmap.content.startswith(b"\x89PNG")
    return body


def _expected_start(body: dict[str, Any]) -> str:
    score, threshold = float(body["scores"]["abnormal"]), float(body["threshold"])
    shown, at = gradcam._apart(score, threshold)
    relation = "≥" if score >= threshold else "<"
    return f"{body['label']} (abnormal score {shown} {relation} threshold {at})"


def test_an_explained_dicom_upload_is_parsed_once(
    service: Service,
    parses: list[int],  # noqa: F811 (the imported fixture)
    titles: list[str],
) -> None:
    data = dicom_bytes(study=new_uid(), sop=new_uid(), rows=40, columns=48, seed=83)
    body = _post(service, data)
    assert parses.count(len(data)) == 1, parses  # was 2: Grad-CAM's display image parsed it
    (title,) = titles
    assert title == f"{_expected_start(body)} · Grad-CAM of abnormal"


def test_a_multi_frame_instance_is_still_parsed_once(
    service: Service,
    parses: list[int],  # noqa: F811 (the imported fixture)
    titles: list[str],
) -> None:
    data = multiframe_bytes(3, seed=83)[0]
    body = _post(service, data)
    assert body["frame_result"]["frames"] == [0, 1, 2]
    assert parses.count(len(data)) == 1, parses
    # the instance's label and aggregate score, whatever the key frame scored alone
    (title,) = titles
    assert title.startswith(_expected_start(body))


def test_a_png_upload_is_titled_with_its_label(service: Service, titles: list[str]) -> None:
    from tests.app.conftest import png_bytes

    response = service.post(png_bytes(seed=83), "x.png", params={"explain": "true"})
    assert response.status_code == 201, response.text
    (title,) = titles
    assert title.startswith(_expected_start(response.json()))


@pytest.mark.parametrize(
    "name",
    ["TOSHIBA_J2K_OpenJPEGv2Regression.dcm", "rsna_chest_cr_jpeg_baseline.dcm", "CT1_JLSN.dcm"],
)
def test_the_display_image_from_the_kept_parse_equals_a_fresh_one(name: str) -> None:
    """The dataset was read at the model's size first (a JPEG 2000 / JPEG frame decoded at a
    reduced resolution for it); read again at display size it gives what a fresh parse does."""
    import numpy as np

    from radlens.app.ingest import preprocess_upload
    from radlens.models.overlay import display_size
    from radlens.models.preprocessing import PREPROCESSING_VERSION, parse_dicom

    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared data set, /work/shared/data/README.md)")
    data = path.read_bytes()
    limit = 100_000_000
    dataset = parse_dicom(data, max_pixels=limit)
    first = preprocess_upload(data, (224, 224), None, limit, PREPROCESSING_VERSION, dataset=dataset)
    size = display_size(first.metadata.rows, first.metadata.columns)
    kept = preprocess_upload(data, size, None, limit, PREPROCESSING_VERSION, dataset=dataset)
    fresh = preprocess_upload(data, size, None, limit, PREPROCESSING_VERSION)
    assert kept.metadata == fresh.metadata
    np.testing.assert_array_equal(kept.pixels, fresh.pixels)

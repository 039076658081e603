"""QA round 73: a prediction's result as a clinician reads it, on /ui, in the API's schema and
in the SR, against the real service (tiny model, SQLite and PostgreSQL).

What the round found, with a ResNet50 trained on nih1000 at 64 px (threshold 0.48616, scores
near 0.5) and real DICOM (a CT and a hip radiograph flagged with RADLENS_GATE=flag, the
2-frame eCT_Supplemental, a series of four DX instances):

- an image out of distribution or outside the intended use was headed "Prediction: normal"
  (or abnormal) with nothing beside it; the warning came after the images and the scores;
- the page gave "Decision threshold: 0.4862" without saying on which class's score, so
  "normal 0.5001, abnormal 0.4999" labelled abnormal read as a contradiction; the list gave no
  threshold at all, and at four decimals a score just below its threshold printed equal to it;
- the page said scores were calibrated "when the model was trained with temperature scaling",
  never whether this one was, and not the operating point's sensitivity and specificity;
- the Grad-CAM caption did not say what the map does not show (a lesion, its extent);
- a multi-frame key frame was given only 0-based, where a viewer numbers frames from 1;
- the SR stated the scores and the label but not the threshold that turned one into the other.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from html import unescape
from typing import Any

import pydicom
from fastapi.testclient import TestClient

from tests.app.conftest import Service, dicom_bytes, new_uid, prediction_row, ui_detail_text


def _store(service: Service, **fields: Any) -> Any:
    """A prediction of the loaded tiny model, stored as the service stores one."""
    row = prediction_row(f"sha256:{uuid.uuid4().hex}")
    for key, value in fields.items():
        setattr(row, key, value)
    with service.app.state.resources.sessionmaker() as session:
        session.add(row)
        session.commit()
    return row


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", page)))


JUST_BELOW = {"normal": 0.513849, "abnormal": 0.486151}  # abnormal: 0.4862 at four decimals
THRESHOLD = 0.486156  # also 0.4862 at four decimals


class TestDecision:
    def test_a_score_just_below_the_threshold_never_prints_equal_to_it(
        self, service: Service, signed_in_ui: TestClient
    ) -> None:
        row = _store(service, scores=JUST_BELOW, threshold=THRESHOLD, label="normal")
        text = _text(ui_detail_text(signed_in_ui, str(row.id)))
        # the score and the threshold at the precision that tells them apart
        assert "0.48615" in text and "0.48616" in text, text
        assert re.search(r"score for abnormal, 0\.48615\d*, is below the threshold", text)
        assert "The threshold, not the higher of the two scores, decides" in text

    def test_the_list_says_which_score_met_which_threshold(
        self, service: Service, signed_in_ui: TestClient
    ) -> None:
        row = _store(service, scores=JUST_BELOW, threshold=THRESHOLD, label="normal")
        page = signed_in_ui.get("/ui/predictions", params={"label": "normal"})
        assert page.status_code == 200
        cells = _text(page.text.split(str(row.id))[0].rsplit("<tr", 1)[1])
        assert "abnormal < 0.48616" in cells, cells
        assert "abnormal 0.48615" in cells, cells

    def test_a_label_decided_by_threshold_against_the_higher_score_is_explained(
        self, service: Service, signed_in_ui: TestClient
    ) -> None:
        row = _store(
            service,
            scores={"normal": 0.5001, "abnormal": 0.4999},
            threshold=0.4862,
            label="abnormal",
        )
        text = _text(ui_detail_text(signed_in_ui, str(row.id)))
        assert (
            "How “abnormal” was decided: the score for abnormal, 0.4999, is at or above the "
            "threshold" in text
        )
        assert "below it normal" in text

    def test_whether_the_scores_are_calibrated_is_said_for_this_model(
        self, service: Service, signed_in_ui: TestClient
    ) -> None:
        row = _store(service, scores={"normal": 0.9, "abnormal": 0.1}, threshold=0.5)
        text = _text(ui_detail_text(signed_in_ui, str(row.id)))
        # the tiny model's manifest has no calibration
        assert "This model's scores were not calibrated" in text
        assert "when the model was trained with temperature scaling" not in text


class TestNotAValidResult:
    def test_out_of_distribution_or_outside_use_is_said_before_the_images(
        self, service: Service, signed_in_ui: TestClient
    ) -> None:
        row = _store(
            service,
            label="normal",
            in_distribution=False,
            ood_score=660.2,
            intended_use_violations=[
                {"attribute": "Modality", "value": "CT", "accepted": ["CR", "DX"]}
            ],
        )
        text = _text(ui_detail_text(signed_in_ui, str(row.id)))
        heading = text.index("Prediction: normal")
        warning = text.index("Do not read “normal” as a result for this image.")
        assert heading < warning < text.index("Image and Grad-CAM") < text.index("Scores")
        assert "not a valid result: out of distribution, outside intended use" in text
        assert "(Modality CT)" in text[warning:]

    def test_the_list_and_the_series_mark_such_a_row_not_valid(
        self, service: Service, signed_in_ui: TestClient
    ) -> None:
        series = new_uid()
        flagged = _store(
            service,
            label="normal",
            series_instance_uid=series,
            study_instance_uid=new_uid(),
            instance_number=2,
            intended_use_violations=[
                {"attribute": "BodyPartExamined", "value": "HIP", "accepted": ["CHEST"]}
            ],
        )
        listed = signed_in_ui.get("/ui/predictions", params={"label": "normal"}).text
        cells = _text(listed.split(f"/ui/predictions/{flagged.id}")[0].rsplit("<tr", 1)[1])
        assert "not a valid result: outside intended use" in cells, cells
        page = signed_in_ui.get(f"/ui/series/{series}")
        assert page.status_code == 200, page.text
        assert "normal not a valid result: outside intended use" in _text(page.text)


class TestImageIdentity:
    def test_the_key_frame_is_given_as_a_viewer_numbers_it(
        self, service: Service, signed_in_ui: TestClient
    ) -> None:
        row = _store(
            service,
            series_instance_uid=new_uid(),
            study_instance_uid=new_uid(),
            frames=2,
            frame_result={
                "aggregation": "max",
                "top_k": 3,
                "class_name": "abnormal",
                "frames": [0, 1],
                "scores": [0.1, 0.2],
                "key_frame": 1,
            },
        )
        text = _text(ui_detail_text(signed_in_ui, str(row.id)))
        assert "In a viewer, which numbers frames from 1: key frame 2 of 2" in text
        series = signed_in_ui.get(f"/ui/series/{row.series_instance_uid}")
        assert series.status_code == 200, series.text
        assert "a viewer, which numbers frames from 1, shows key frame 0 as frame 1" in _text(
            series.text
        )


def test_the_gradcam_text_says_what_the_map_does_not_show(
    service: Service, signed_in_ui: TestClient
) -> None:
    from radlens.app.tables import Explanation

    row = _store(service)
    with service.app.state.resources.sessionmaker() as session:
        session.add(
            Explanation(
                prediction_id=row.id,
                layer="conv4",
                class_index=1,
                class_name="abnormal",
                score=0.1,
                png=b"\x89PNG\r\n\x1a\n",
            )
        )
        session.commit()
    text = _text(ui_detail_text(signed_in_ui, str(row.id)))
    assert "What it does not show: where a finding is, its size or its edges" in text
    assert "a coloured area is not a lesion" in text


def test_the_schema_says_what_decides_and_what_a_score_is(service: Service) -> None:
    schema = service.client.get("/openapi.json").json()["components"]["schemas"]
    fields = schema["PredictionPublic"]["properties"]
    assert "the threshold, not the higher score, decides" in fields["threshold"]["description"]
    assert "not the probability of disease" in fields["scores"]["description"]
    assert "not a valid result" in fields["in_distribution"]["description"]
    assert "UTC" in fields["created_at"]["description"]


def _content_items(ds: Any) -> Iterator[Any]:
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _content_items(item)


def test_the_sr_states_the_decision_rule(service: Service) -> None:
    posted = service.post(dicom_bytes(), "image.dcm")
    assert posted.status_code in (200, 201), posted.text
    sr = service.client.get(f"/v1/predictions/{posted.json()['id']}/dicom/sr")
    assert sr.status_code == 200, sr.text
    ds = pydicom.dcmread(io.BytesIO(sr.content))
    parameters = [
        i.TextValue
        for i in _content_items(ds)
        if i.ValueType == "TEXT"
        and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]
    assert any(p.startswith("Decision: abnormal when its score >= 0.5") for p in parameters), (
        parameters
    )

"""QA round 77: the DICOM outputs as a radiologist reads them in a PACS, where the Secondary
Capture's picture and the SR's content items are all there is (no /ui page beside them).

What the round found:

- the SC of an image out of distribution or outside the model's intended use looked like any
  other: its title named a class and a score ("abnormal 0.9300 · Grad-CAM conv4"), nothing in
  the picture or its tags said the result was not valid (/ui says "not a valid result");
- the series SR gave the series score and label but neither the threshold nor how the score
  was aggregated from the instances, where the instance SR states its decision rule;
- neither SR said "not for clinical use" in its content (only the series description did),
  and an SR of an invalid result had no statement that its Finding is not a result;
- a binary model's SC explains its positive class whatever the label, so a "normal" image's
  overlay is titled "abnormal 0.1000": its Image Comments now say how the label was decided.

The SC tests decode the DICOM pixel data of an overlay rendered for real (matplotlib, a real CT
from ../shared/data) and look for the red band.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.app.conftest import Service, dicom_bytes, new_uid, prediction_row
from tests.conftest import shared_data_path

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BANNER_RGB = (170, 0, 0)  # models.overlay.BANNER_RGB
NOT_FOR_CLINICAL_USE = "Research use only, not for clinical use."
OUTSIDE_USE = [{"attribute": "Modality", "value": "MR", "accepted": ["CR", "DX"]}]


# --- fixtures: a real overlay, stored-like predictions -----------------------------------------


@pytest.fixture(scope="module")
def overlay_png() -> bytes:
    """The overlay as the service renders it: a real CT at display size beside the model
    input, a Grad-CAM-like map, the explained class and score in the title."""
    from radlens.models.overlay import display_size, render_overlay

    path = shared_data_path("dicom", "ct_image.dcm")
    if not path.exists():
        pytest.skip(f"real data not found: {path} (../shared/data)")
    image = pydicom.dcmread(path).pixel_array.astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    from PIL import Image

    height, width = display_size(*image.shape)
    display = np.asarray(Image.fromarray(image, mode="F").resize((width, height)), np.float32)
    small = np.asarray(Image.fromarray(image, mode="F").resize((32, 32)), np.float32)
    yy, xx = np.mgrid[0:32, 0:32]
    heat = np.exp(-((yy - 12.0) ** 2 + (xx - 20.0) ** 2) / 40.0).astype(np.float32)
    return render_overlay(
        np.clip(small, 0, 1),
        heat / heat.max(),
        title="abnormal 0.9300 · Grad-CAM conv4",
        display=np.clip(display, 0, 1),
    )


def _row(**fields: Any) -> Any:
    """A stored-like binary prediction (normal/abnormal, threshold 0.5) of a DICOM source."""
    row = prediction_row(f"sha256:{uuid.uuid4().hex}")
    row.study_instance_uid = fields.pop("study", new_uid())
    row.series_instance_uid = fields.pop("series", new_uid())
    row.sop_instance_uid = new_uid()
    row.sop_class_uid = CT_IMAGE_STORAGE
    row.modality = "CT"
    row.created_at = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    for key, value in fields.items():
        setattr(row, key, value)
    return row


POSITIVE = {"label": "abnormal", "scores": {"normal": 0.1, "abnormal": 0.9}}
NEGATIVE = {"label": "normal", "scores": {"normal": 0.9, "abnormal": 0.1}}
CASES = {
    "positive": {**POSITIVE, "in_distribution": True},
    "negative": {**NEGATIVE, "in_distribution": True},
    "ood": {**POSITIVE, "in_distribution": False},
    "outside-use": {**NEGATIVE, "intended_use_violations": OUTSIDE_USE},
    "both": {**POSITIVE, "in_distribution": False, "intended_use_violations": OUTSIDE_USE},
}
INVALID = {
    "ood": "out of distribution",
    "outside-use": "outside intended use (Modality MR)",
    "both": "out of distribution; outside intended use (Modality MR)",
}


def _sc(row: Any, png: bytes) -> pydicom.Dataset:
    from radlens.app.dicom_outputs import build_sc, source_from_prediction

    return pydicom.dcmread(io.BytesIO(build_sc(row, source_from_prediction(row), png)))


def _band_rows(pixels: np.ndarray) -> int:
    """How many rows from the top are the warning band's: red at both edges (its margins)."""
    edges = np.concatenate([pixels[:, :3], pixels[:, -3:]], axis=1)
    red = np.all(edges == np.array(BANNER_RGB, np.uint8), axis=(1, 2))
    rows = 0
    while rows < len(red) and red[rows]:
        rows += 1
    return rows


# --- the Secondary Capture ---------------------------------------------------------------------


class TestSecondaryCapturePicture:
    @pytest.mark.parametrize("case", sorted(INVALID))
    def test_an_invalid_result_carries_the_warning_in_its_pixels(
        self, case: str, overlay_png: bytes
    ) -> None:
        from radlens.app.dicom_outputs import overlay_rgb

        sc = _sc(_row(**CASES[case]), overlay_png)
        pixels = sc.pixel_array  # decoded from the DICOM, as a viewer decodes it
        figure = overlay_rgb(overlay_png)
        band = _band_rows(pixels)
        assert band >= 40, f"no red band above the overlay ({band} rows)"
        assert pixels.shape == (band + figure.shape[0], figure.shape[1], 3)
        np.testing.assert_array_equal(pixels[band:], figure)  # the overlay below, unchanged
        # white text on the band, on three lines at least (headline, what not to read, RUO)
        white = np.all(pixels[:band] == 255, axis=-1)
        assert white.sum() > 500
        text_rows = np.flatnonzero(white.any(axis=1))
        lines = 1 + int((np.diff(text_rows) > 1).sum())
        assert lines >= 3, lines

    def test_the_band_says_not_valid_and_not_to_read_the_label(self, overlay_png: bytes) -> None:
        """The band's text, drawn again from the wording it must carry, is what the SC shows."""
        from radlens.app.dicom_outputs import overlay_rgb
        from radlens.models.overlay import add_banner

        sc = _sc(_row(**CASES["both"]), overlay_png)
        expected = add_banner(
            overlay_rgb(overlay_png),
            [
                "NOT A VALID RESULT: " + INVALID["both"],
                "Do not read the label 'abnormal', its score or this map as a result for this "
                "image: the model gives every image a label, a normal one included.",
                NOT_FOR_CLINICAL_USE,
            ],
        )
        np.testing.assert_array_equal(sc.pixel_array, expected)

    @pytest.mark.parametrize("case", ["positive", "negative"])
    def test_a_valid_result_is_the_overlay_alone(self, case: str, overlay_png: bytes) -> None:
        from radlens.app.dicom_outputs import overlay_rgb

        sc = _sc(_row(**CASES[case]), overlay_png)
        assert _band_rows(sc.pixel_array) == 0
        np.testing.assert_array_equal(sc.pixel_array, overlay_rgb(overlay_png))

    def test_a_result_never_scored_for_distribution_has_no_band(self, overlay_png: bytes) -> None:
        sc = _sc(_row(**POSITIVE, in_distribution=None), overlay_png)
        assert _band_rows(sc.pixel_array) == 0


class TestSecondaryCaptureText:
    @pytest.mark.parametrize("case", sorted(INVALID))
    def test_an_invalid_result_says_so_first(self, case: str, overlay_png: bytes) -> None:
        sc = _sc(_row(**CASES[case]), overlay_png)
        warning = f"NOT A VALID RESULT ({INVALID[case]})"
        assert sc.DerivationDescription.startswith(warning + ": Grad-CAM overlay")
        label = CASES[case]["label"]
        assert sc.ImageComments.startswith(
            f"{warning}: do not read the label '{label}', its score or the map as a result for "
            "this image"
        )
        assert NOT_FOR_CLINICAL_USE in sc.ImageComments

    def test_a_positive_says_how_it_was_decided(self, overlay_png: bytes) -> None:
        sc = _sc(_row(**CASES["positive"]), overlay_png)
        assert sc.ImageComments.startswith(
            "Label abnormal: the abnormal score 0.9000 is at or above the threshold 0.5000."
        )
        assert "not a finding's position or outline" in sc.ImageComments
        assert NOT_FOR_CLINICAL_USE in sc.ImageComments
        assert "NOT A VALID" not in sc.DerivationDescription + sc.ImageComments

    def test_a_negative_titled_with_the_positive_class_says_its_label(
        self, overlay_png: bytes
    ) -> None:
        """A binary model's map explains its positive class: the title of a normal image's
        overlay reads "abnormal ...", and the comments say the label and why."""
        sc = _sc(_row(**CASES["negative"]), overlay_png)
        assert sc.ImageComments.startswith(
            "Label normal: the abnormal score 0.1000 is below the threshold 0.5000."
        )

    def test_a_score_just_below_its_threshold_does_not_print_equal_to_it(
        self, overlay_png: bytes
    ) -> None:
        row = _row(label="normal", scores={"normal": 0.513849, "abnormal": 0.486151})
        row.threshold = 0.486156
        sc = _sc(row, overlay_png)
        assert "the abnormal score 0.48615 is below the threshold 0.48616" in sc.ImageComments

    def test_two_findings_are_not_read_as_a_binary_decision(self, overlay_png: bytes) -> None:
        """A multi-label model with two findings has two scores too, each with its own
        threshold: "Label Effusion: the Mass score 0.1000 is below ..." would be wrong."""
        from radlens.app.dicom_outputs import build_sr, source_from_prediction

        row = _row(label="Effusion", scores={"Effusion": 0.8, "Mass": 0.1}, in_distribution=True)
        comments = _sc(row, overlay_png).ImageComments
        assert comments.startswith("Label Effusion. The map shows")
        sr = _round_trip(build_sr(row, source_from_prediction(row)))
        assert not any(p.startswith("Decision:") for p in _parameters(sr))
        assert NOT_FOR_CLINICAL_USE in _parameters(sr)

    def test_through_the_service(self, service: Service, overlay_png: bytes) -> None:
        """GET .../dicom/secondary-capture of a stored out-of-distribution prediction."""
        from radlens.app.tables import Explanation

        row = _row(**CASES["ood"])
        with service.app.state.resources.sessionmaker() as session:
            session.add(row)
            session.flush()
            session.add(
                Explanation(
                    prediction_id=row.id,
                    layer="conv4",
                    class_index=1,
                    class_name="abnormal",
                    score=0.9,
                    png=overlay_png,
                )
            )
            session.commit()
        response = service.client.get(f"/v1/predictions/{row.id}/dicom/secondary-capture")
        assert response.status_code == 200, response.text
        sc = pydicom.dcmread(io.BytesIO(response.content))
        assert _band_rows(sc.pixel_array) >= 40
        assert sc.ImageComments.startswith("NOT A VALID RESULT (out of distribution)")


# --- the instance SR -------------------------------------------------------------------------


def _content_items(ds: Any) -> Iterator[Any]:
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _content_items(item)


def _parameters(ds: Any) -> list[str]:
    return [
        i.TextValue
        for i in _content_items(ds)
        if i.ValueType == "TEXT"
        and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]


def _validity(ds: Any) -> list[str]:
    return [
        i.ConceptCodeSequence[0].CodeMeaning
        for i in _content_items(ds)
        if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeMeaning == "Result validity"
    ]


def _round_trip(data: bytes) -> pydicom.Dataset:
    """Read back with pydicom and parsed again by highdicom, as the SR tests do."""
    import highdicom as hd

    ds = pydicom.dcmread(io.BytesIO(data))
    parsed = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert parsed.content.get_image_measurement_groups()
    return ds


class TestInstanceSR:
    @pytest.mark.parametrize("case", sorted(CASES))
    def test_every_sr_says_not_for_clinical_use(self, case: str) -> None:
        from radlens.app.dicom_outputs import build_sr, source_from_prediction

        row = _row(**CASES[case])
        ds = _round_trip(build_sr(row, source_from_prediction(row)))
        parameters = _parameters(ds)
        assert NOT_FOR_CLINICAL_USE in parameters
        assert any(p.startswith("Decision: abnormal when its score >= 0.5") for p in parameters)

    @pytest.mark.parametrize("case", sorted(INVALID))
    def test_an_invalid_result_is_marked_next_to_its_finding(self, case: str) -> None:
        from radlens.app.dicom_outputs import build_sr, source_from_prediction

        row = _row(**CASES[case])
        ds = _round_trip(build_sr(row, source_from_prediction(row)))
        assert _validity(ds) == ["Not a valid result: the Finding is not a result"]
        label = CASES[case]["label"]
        assert (
            f"NOT A VALID RESULT ({INVALID[case]}): do not read the label '{label}' or its "
            "scores as a result for this image; the model gives every image a label, a normal "
            "one included."
        ) in _parameters(ds)

    @pytest.mark.parametrize("case", ["positive", "negative"])
    def test_a_valid_result_is_not_marked(self, case: str) -> None:
        from radlens.app.dicom_outputs import build_sr, source_from_prediction

        row = _row(**CASES[case])
        ds = _round_trip(build_sr(row, source_from_prediction(row)))
        assert _validity(ds) == []
        assert not any("NOT A VALID" in p for p in _parameters(ds))


# --- the series SR -------------------------------------------------------------------------------


def _series_rows(scores: list[float], **fields: Any) -> list[Any]:
    study, series = new_uid(), new_uid()
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    rows = []
    for n, score in enumerate(scores):
        row = _row(
            study=study,
            series=series,
            label="abnormal" if score >= 0.5 else "normal",
            scores={"normal": 1 - score, "abnormal": score},
            created_at=start + timedelta(seconds=n),
            instance_number=n + 1,
        )
        rows.append(row)
    for key, value in fields.items():
        setattr(rows[0], key, value)
    return rows


def _series_sr(result: Any, aggregation: str) -> pydicom.Dataset:
    from radlens.app.dicom_outputs import build_series_sr, source_from_prediction

    sources = [source_from_prediction(i.prediction) for i in result.key_instances]
    data = build_series_sr(
        result, sources, aggregation=aggregation, series_uid=new_uid(), sop_uid=new_uid()
    )
    return _round_trip(data)


class TestSeriesSR:
    @pytest.mark.parametrize(
        ("method", "how"),
        [
            ("max", "the highest of the 4 instance scores for abnormal"),
            ("mean_top_k", "the mean of the 2 highest of the 4 instance scores for abnormal"),
            (
                "noisy_or",
                "noisy-OR, 1 - product of (1 - score), over the 4 instance scores for abnormal",
            ),
        ],
    )
    def test_states_the_aggregation_and_the_decision_rule(self, method: str, how: str) -> None:
        from radlens.app.series import model_result

        result = model_result(_series_rows([0.2, 0.7, 0.4, 0.1]), method, 2)
        parameters = _parameters(_series_sr(result, method))
        assert f"Series score: {how} (RADLENS_SERIES_AGGREGATION {method})" in parameters
        assert (
            "Decision: abnormal when the series score >= 0.5 (the threshold its instances were "
            "decided at), else normal"
        ) in parameters
        assert NOT_FOR_CLINICAL_USE in parameters

    def test_a_series_threshold_is_named_as_such(self) -> None:
        from radlens.app.series import model_result

        rows = _series_rows([0.2, 0.7, 0.4])
        result = model_result(rows, "max", 3, {("tiny", 1): (0.5, 0.8125)})
        assert result.threshold_source == "series" and result.label == "normal"
        parameters = _parameters(_series_sr(result, "max"))
        assert (
            "Decision: abnormal when the series score >= 0.8125 (the series threshold the "
            "model's training chose on validation series for this aggregation), else normal"
        ) in parameters

    def test_instances_decided_at_different_thresholds_are_named(self) -> None:
        from radlens.app.series import model_result

        rows = _series_rows([0.2, 0.7])
        rows[0].threshold = 0.4
        result = model_result(rows, "max", 3)
        assert any(
            p.startswith("The instances were decided at different thresholds")
            for p in _parameters(_series_sr(result, "max"))
        )

    def test_a_multi_class_series_has_no_threshold(self) -> None:
        from radlens.app.series import model_result

        rows = _series_rows([0.2, 0.7])
        for row, spread in zip(rows, (0.1, 0.3), strict=True):
            row.scores = {"a": 0.5 - spread, "b": 0.2 + spread, "c": 0.3}
            row.threshold = None
        result = model_result(rows, "max", 3)
        assert "Decision: the class with the highest series score; no threshold" in _parameters(
            _series_sr(result, "max")
        )

    def test_each_finding_of_a_multi_label_series_states_its_rule(self) -> None:
        from radlens.app.series import model_result
        from radlens.app.tables import PredictionFinding

        rows = _series_rows([0.2, 0.7])
        findings = {}
        for row, (effusion, mass) in zip(rows, ((0.3, 0.1), (0.8, 0.2)), strict=True):
            row.scores = {"Effusion": effusion, "Mass": mass}
            row.label = "Effusion" if effusion >= 0.6 else "No Finding"
            findings[row.id] = [
                PredictionFinding(
                    prediction_id=row.id, finding="Effusion", score=effusion, threshold=0.6,
                    positive=effusion >= 0.6,
                ),
                PredictionFinding(
                    prediction_id=row.id, finding="Mass", score=mass, threshold=0.25,
                    positive=mass >= 0.25,
                ),
            ]  # fmt: skip
        result = model_result(rows, "max", 3, findings=findings)
        parameters = _parameters(_series_sr(result, "max"))
        assert any(p.startswith("Decision: each finding is positive when") for p in parameters)
        assert "Decision: Effusion present when its series score >= 0.6 (the threshold its " \
            "instances were decided at)" in parameters  # fmt: skip
        assert "Decision: Mass present when its series score >= 0.25 (the threshold its " \
            "instances were decided at)" in parameters  # fmt: skip
        assert "Series score: the highest of the 2 instance scores for Mass " \
            "(RADLENS_SERIES_AGGREGATION max)" in parameters  # fmt: skip

    def test_a_series_with_a_flagged_instance_is_not_a_valid_result(self) -> None:
        from radlens.app.series import model_result

        result = model_result(_series_rows([0.2, 0.7, 0.4], in_distribution=False), "max", 3)
        ds = _series_sr(result, "max")
        assert _validity(ds) == ["Not a valid result: 1 of 3 instances flagged"]
        assert (
            "NOT A VALID RESULT: 1 of 3 instances out of distribution or outside the intended "
            "use; do not read the label 'abnormal' or the series score as a result for this "
            "series"
        ) in _parameters(ds)

    def test_a_clean_series_is_not_marked(self) -> None:
        from radlens.app.series import model_result

        ds = _series_sr(model_result(_series_rows([0.2, 0.7]), "max", 3), "max")
        assert _validity(ds) == []

    def test_through_the_service(self, service: Service) -> None:
        study, series = new_uid(), new_uid()
        for seed in range(3):
            posted = service.post(dicom_bytes(study=study, series=series, seed=seed + 40))
            assert posted.status_code in (200, 201), posted.text
        response = service.client.get(f"/v1/series/{series}/dicom/sr")
        assert response.status_code == 200, response.text
        parameters = _parameters(_round_trip(response.content))
        assert any(
            p.startswith("Series score: the highest of the 3 instance scores for abnormal")
            for p in parameters
        ), parameters
        assert any(
            p.startswith("Decision: abnormal when the series score >= ") for p in parameters
        ), parameters
        assert NOT_FOR_CLINICAL_USE in parameters

"""QA round 70: DICOM tags the intended-use gate ignored for a chest CR/DX model.

- BodyPartExamined terms DICOM defines (PS3.16 Annex L) for regions outside the chest -- a
  wrist, an elbow, an ankle CR -- were "not known" and let through to the image score; a hip
  or knee was refused. Terms whose region takes in the chest stay not known.
- A model trained on PNG/JPEG films (no ViewPosition to survey) accepted a lateral whatever it
  was stated for: the statement could not name views.
"""

from __future__ import annotations

import pytest

from radlens.models.intended_use import (
    IntendedUse,
    check_stated,
    from_record,
    intended_use_record,
    normalise_body_part,
    survey,
    violations,
)

CHEST_CR = IntendedUse(modalities=("CR", "DX"), body_parts=("CHEST",))
PNG_TRAINING = survey([{"format": "png", "rows": 64, "columns": 64}] * 3)


@pytest.mark.parametrize(
    "written",
    [
        "WRIST",
        "ELBOW",
        "ANKLE",
        "FOREARM",
        "Upper_Arm",
        "FEMUR",
        "TIBIA",
        "FINGER",
        "NECK",
        "PANCREAS",
        "ABDOMENPELVIS",
        "hand-wrist",
        "MANDIBLE",
    ],
)
def test_chest_model_refuses_other_annex_l_regions(written: str) -> None:
    found = violations({"Modality": "CR", "BodyPartExamined": written}, CHEST_CR)
    assert [v.attribute for v in found] == ["BodyPartExamined"]
    assert written in str(found[0]) and "CHEST" in str(found[0])


@pytest.mark.parametrize(
    "written",
    [
        "RIB",
        "STERNUM",
        "CLAVICLE",
        "CHESTABDOMEN",
        "NECKCHEST",
        "WHOLEBODY",
        "HEART",
        "MEDIASTINUM",
        "TOTAL B",
    ],
)
def test_regions_that_take_in_the_chest_stay_not_known(written: str) -> None:
    assert normalise_body_part(written) is None
    assert violations({"Modality": "DX", "BodyPartExamined": written}, CHEST_CR) == []


def test_a_model_trained_on_wrists_accepts_wrists() -> None:
    record = intended_use_record(
        survey([{"format": "dicom", "Modality": "CR", "BodyPartExamined": "WRIST"}])
    )
    assert record["accepts"]["body_parts"] == ["WRIST"]
    use = from_record(record)
    assert violations({"Modality": "CR", "BodyPartExamined": "wrist"}, use) == []
    assert [v.attribute for v in violations({"BodyPartExamined": "ELBOW"}, use)] == [
        "BodyPartExamined"
    ]


def test_stated_views_gate_a_lateral_for_a_png_trained_model() -> None:
    stated = check_stated(["CR", "DX"], ["CHEST"], ["PA", "AP"])
    assert stated["view_positions"] == ["FRONTAL"]
    record = intended_use_record(PNG_TRAINING, stated)
    assert record["accepts"]["view_positions"] == ["FRONTAL"]
    use = from_record(record)
    for lateral in ("LL", "RL", "LATERAL", "lat"):
        found = violations(
            {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": lateral}, use
        )
        assert [v.attribute for v in found] == ["ViewPosition"], lateral
    for frontal in ("PA", "AP", "", None, "junk"):
        assert violations({"Modality": "CR", "ViewPosition": frontal}, use) == [], frontal


def test_without_a_view_statement_nothing_changes() -> None:
    stated = check_stated(["CR", "DX"], ["CHEST"])
    assert "view_positions" not in stated
    record = intended_use_record(PNG_TRAINING, stated)
    assert record["accepts"]["view_positions"] == []
    assert violations({"Modality": "CR", "ViewPosition": "LL"}, from_record(record)) == []


def test_an_unknown_stated_view_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'sideways' is not a known view position.*FRONTAL"):
        check_stated([], [], ["sideways"])


def test_a_model_surveyed_before_the_annex_l_terms_keeps_accepting_them() -> None:
    """A hand model trained, before this vocabulary, on HAND and WRIST films (the wrists
    surveyed as "unknown") accepted HAND only and let wrists through: it still does."""
    older = {
        "stated": None,
        "observed": {"body_parts": {"HAND": 10, "unknown": 5}},
        "accepts": {"modalities": ["CR"], "body_parts": ["HAND"], "view_positions": []},
        "source": "training data",
    }
    use = from_record(older)
    assert violations({"Modality": "CR", "BodyPartExamined": "WRIST"}, use) == []
    assert [v.attribute for v in violations({"BodyPartExamined": "KNEE"}, use)] == [
        "BodyPartExamined"
    ]
    # the same record surveyed now counts the wrists and refuses what it never saw
    now = intended_use_record(
        survey(
            [
                {"format": "dicom", "Modality": "CR", "BodyPartExamined": p}
                for p in ("HAND", "WRIST")
            ]
        )
    )
    assert now["body_part_terms"] == 2
    assert now["accepts"]["body_parts"] == ["HAND", "WRIST"]
    assert [v.attribute for v in violations({"BodyPartExamined": "ELBOW"}, from_record(now))] == [
        "BodyPartExamined"
    ]


def test_an_older_chest_statement_refuses_the_annex_l_terms() -> None:
    """A stated body part is the model's word: an older chest model refuses a wrist too."""
    older = {
        "stated": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]},
        "observed": {"body_parts": {"unknown": 40}},
        "accepts": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"], "view_positions": []},
        "source": "stated",
    }
    found = violations({"Modality": "CR", "BodyPartExamined": "WRIST"}, from_record(older))
    assert [v.attribute for v in found] == ["BodyPartExamined"]

from radlens.models.intended_use import (
    IntendedUse,
    normalise_body_part,
    normalise_modality,
    violations,
)

CHEST_CR = IntendedUse(modalities=("CR", "DX"), body_parts=("CHEST",))


def test_messy_body_parts_normalise() -> None:
    assert normalise_body_part("chest") == "CHEST"
    assert normalise_body_part(" THORAX ") == "CHEST"
    assert normalise_body_part("Chest_PA") == "CHEST"
    assert normalise_body_part("HIP") == "HIP"


def test_junk_and_empty_body_parts_are_unknown() -> None:
    for junk in ("", None, "JPEG 2000 Compressed Image", "UNKNOWN", "xyz123"):
        assert normalise_body_part(junk) is None


def test_modality_synonyms() -> None:
    assert normalise_modality("dr") == "DX"
    assert normalise_modality("OT") is None
    assert normalise_modality("") is None


def test_ct_and_hip_violate_chest_cr_model() -> None:
    ct = violations({"Modality": "CT"}, CHEST_CR)
    assert [(v.attribute, v.value) for v in ct] == [("Modality", "CT")]
    hip = violations({"Modality": "RG", "BodyPartExamined": "HIP"}, CHEST_CR)
    assert {v.attribute for v in hip} == {"Modality", "BodyPartExamined"}
    assert "CHEST" in str(next(v for v in hip if v.attribute == "BodyPartExamined"))


def test_junk_is_never_refused_and_empty_intended_use_accepts_all() -> None:
    junk = {"Modality": "CR", "BodyPartExamined": "JPEG 2000 Compressed Image"}
    assert violations(junk, CHEST_CR) == []
    assert violations({"Modality": "CT", "BodyPartExamined": "HIP"}, IntendedUse()) == []


def test_rt_plan_sop_class_violates() -> None:
    plan = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.481.5", "Modality": "RTPLAN"}
    assert {v.attribute for v in violations(plan, CHEST_CR)} == {"SOPClassUID", "Modality"}
    cr_image = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1", "Modality": "CR"}
    assert violations(cr_image, CHEST_CR) == []

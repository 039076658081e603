import pytest

from radlens.models.intended_use import (
    IntendedUse,
    non_image_kind,
    normalise_body_part,
    normalise_modality,
    normalise_view_position,
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


def test_every_modality_term_dicom_defines_is_known_but_other() -> None:
    """SM (slide microscopy) and SEG were "not known" and passed a chest CR model's gate."""
    assert normalise_modality("SM") == "SM" and normalise_modality("seg") == "SEG"
    assert normalise_modality("RTIMAGE") == "RTIMAGE" and normalise_modality("KO") == "KO"
    assert normalise_modality("PA") is None  # a view position in the wrong tag, not a modality
    assert [str(v) for v in violations({"Modality": "SM"}, CHEST_CR)] == [
        "Modality 'SM' (model accepts CR, DX)"
    ]
    assert violations({"Modality": "OT"}, CHEST_CR) == []


@pytest.mark.parametrize(
    ("sop_class", "kind"),
    [
        ("1.2.840.10008.5.1.4.1.1.66.4", "a segmentation, registration, fiducials or raw data"),
        ("1.2.840.10008.5.1.4.1.1.66", "a segmentation, registration, fiducials or raw data"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "a presentation state"),
        ("1.2.840.10008.5.1.4.1.1.9.1.1", "a waveform"),
        ("1.2.840.10008.5.1.4.1.1.104.1", "an encapsulated document"),
        ("1.2.840.10008.5.1.4.1.1.88.59", "a structured report"),
        ("1.2.840.10008.5.1.4.1.1.481.10", "an RT dose, structure set, plan or record"),
        ("1.2.840.10008.5.1.4.1.1.481.1", None),  # RT Image: a portal radiograph
        ("1.2.840.10008.5.1.4.1.1.481.23", None),  # Enhanced RT Image: one too
        ("1.2.840.10008.5.1.4.1.1.481.24", None),  # Enhanced Continuous RT Image
        ("1.2.840.10008.5.1.4.1.1.1", None),  # CR
        ("1.2.840.10008.5.1.4.1.1.1.1", None),  # DX for presentation
        ("1.2.840.10008.5.1.4.1.1.77.1.6", None),  # VL whole slide microscopy: an image
        ("1.2.840.10008.5.1.4.1.1.90", None),  # not the prefix 9
        ("", None),
        (None, None),
    ],
)
def test_sop_classes_that_hold_no_picture(sop_class: str | None, kind: str | None) -> None:
    assert non_image_kind(sop_class) == kind


def test_rt_plan_sop_class_violates() -> None:
    plan = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.481.5", "Modality": "RTPLAN"}
    assert {v.attribute for v in violations(plan, CHEST_CR)} == {"SOPClassUID", "Modality"}
    cr_image = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1", "Modality": "CR"}
    assert violations(cr_image, CHEST_CR) == []


# --- the manifest's record (survey, statement, what the gate accepts) -------------------------

from radlens.models.intended_use import (  # noqa: E402
    NOT_STATED,
    check_stated,
    from_record,
    intended_use_record,
    survey,
)


def test_survey_counts_normalised_values_and_sizes() -> None:
    headers = [
        {
            "format": "dicom",
            "rows": 2048,
            "columns": 1800,
            "Modality": "CR",
            "BodyPartExamined": "Chest",
            "ViewPosition": "pa",
            "PhotometricInterpretation": "MONOCHROME1",
        },
        {
            "format": "dicom",
            "rows": 1024,
            "columns": 1024,
            "Modality": "DR",
            "BodyPartExamined": "JPEG 2000 Compressed Image",
            "ViewPosition": "",
            "PhotometricInterpretation": "MONOCHROME2",
        },
        {"format": "png", "rows": 64, "columns": 64},
    ]
    record = survey(headers)
    assert record["images"] == 3 and record["formats"] == {"dicom": 2, "png": 1}
    assert record["modalities"] == {"CR": 1, "DX": 1}
    assert record["body_parts"] == {"CHEST": 1, "unknown": 1}
    assert record["view_positions"] == {"PA": 1, "unknown": 1}
    assert record["photometric_interpretations"] == {"MONOCHROME1": 1, "MONOCHROME2": 1}
    assert record["rows"] == [64, 2048] and record["columns"] == [64, 1800]


def test_the_gate_accepts_the_statement_else_what_training_saw() -> None:
    observed = survey([{"format": "dicom", "Modality": "CR", "BodyPartExamined": "junk"}])
    seen = intended_use_record(observed)
    assert seen["accepts"] == {"modalities": ["CR"], "body_parts": [], "view_positions": []}
    assert from_record(seen) == IntendedUse(modalities=("CR",), counts=from_record(seen).counts)
    stated = intended_use_record(observed, check_stated(["dr", "CR"], []))
    assert stated["accepts"]["modalities"] == ["CR", "DX"] and stated["source"] == "stated"
    png_only = intended_use_record(survey([{"format": "png", "rows": 8, "columns": 8}]))
    assert from_record(png_only).empty


def test_a_manifest_without_a_record_states_nothing() -> None:
    assert from_record(None).empty and NOT_STATED == "not stated"
    ct = {"Modality": "CT", "BodyPartExamined": "HIP"}
    assert violations(ct, from_record(None)) == []


def test_unknown_statements_are_refused_quoting_them() -> None:
    import pytest

    with pytest.raises(ValueError, match=r"'XR' is not a known modality"):
        check_stated(["CR", "XR"], [])
    with pytest.raises(ValueError, match=r"'banana' is not a known body part"):
        check_stated([], ["banana"])


@pytest.mark.parametrize(
    ("value", "family"),
    [
        ("PA", "FRONTAL"),  # rsna_chest_cr_*.dcm, RG1_*.dcm
        ("AP", "FRONTAL"),  # RG3_*.dcm
        ("pa", "FRONTAL"),
        ("Postero-anterior", "FRONTAL"),
        ("LL", "LATERAL"),
        ("RL", "LATERAL"),
        ("lateral", "LATERAL"),
        ("Left_Lateral", "LATERAL"),
        ("LAT", "LATERAL"),
        ("RLD", "DECUBITUS"),
        ("LLO", "OBLIQUE"),
        ("MLO", "MLO"),
        ("", None),  # RG2_JLSL.dcm (a hip): empty
        (None, None),
        ("JPEG 2000 Compressed Image", None),
        ("??", None),
        ("VIEW 3", None),
    ],
)
def test_view_positions_normalise_to_projection_families(value: object, family: object) -> None:
    assert normalise_view_position(value) == family


def test_a_lateral_violates_a_frontal_model_and_junk_never_does() -> None:
    observed = survey(
        [
            {"format": "dicom", "Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": v}
            for v in ("PA", "AP", "", "junk")
        ]
    )
    record = intended_use_record(observed)
    assert record["accepts"]["view_positions"] == ["FRONTAL"]
    frontal = from_record(record)
    chest = {"Modality": "CR", "BodyPartExamined": "CHEST"}
    (found,) = violations({**chest, "ViewPosition": "LL"}, frontal)
    assert (found.attribute, found.value, found.accepted) == ("ViewPosition", "LL", ("FRONTAL",))
    assert violations({**chest, "ViewPosition": "lateral"}, frontal)
    for ok in ("PA", "AP", "ap", "", None, "JPEG 2000 Compressed Image", "xyz"):
        assert violations({**chest, "ViewPosition": ok}, frontal) == [], ok
    # training DICOM without a known view position: no view constraint
    unknown = survey([{"format": "dicom", "Modality": "CR", "ViewPosition": "junk"}])
    assert violations({"ViewPosition": "LL"}, from_record(intended_use_record(unknown))) == []
    # a manifest recorded before view positions were gated accepts every view
    older = {"accepts": {"modalities": ["CR"], "body_parts": ["CHEST"]}, "observed": {}}
    assert violations({**chest, "ViewPosition": "LL"}, from_record(older)) == []


# --- a Modality that says nothing: the SOP class stands in (QA round 14) ----------------------
# A CT whose Modality had been deleted was predicted by a chest CR/DX model: its SOP class (CT
# Image Storage) said what it was, but the gate read the SOP class only for non-image classes.

from pydicom import uid as pydicom_uids  # noqa: E402


@pytest.mark.parametrize(
    ("keyword", "modality"),
    [
        ("CTImageStorage", "CT"),
        ("EnhancedCTImageStorage", "CT"),
        ("LegacyConvertedEnhancedCTImageStorage", "CT"),
        ("MRImageStorage", "MR"),
        ("EnhancedMRColorImageStorage", "MR"),
        ("UltrasoundImageStorage", "US"),
        ("UltrasoundMultiFrameImageStorage", "US"),
        ("EnhancedUSVolumeStorage", "US"),
        ("ComputedRadiographyImageStorage", "CR"),
        ("DigitalXRayImageStorageForPresentation", "DX"),
        ("DigitalXRayImageStorageForProcessing", "DX"),
        ("DigitalMammographyXRayImageStorageForPresentation", "MG"),
        ("BreastTomosynthesisImageStorage", "MG"),
        ("BreastProjectionXRayImageStorageForProcessing", "MG"),
        ("DigitalIntraOralXRayImageStorageForPresentation", "IO"),
        ("XRayAngiographicImageStorage", "XA"),
        ("EnhancedXAImageStorage", "XA"),
        ("XRay3DAngiographicImageStorage", "XA"),
        ("XRayRadiofluoroscopicImageStorage", "RF"),
        ("EnhancedXRFImageStorage", "RF"),
        ("NuclearMedicineImageStorage", "NM"),
        ("PositronEmissionTomographyImageStorage", "PT"),
        ("EnhancedPETImageStorage", "PT"),
        ("LegacyConvertedEnhancedPETImageStorage", "PT"),
        ("RTImageStorage", "RTIMAGE"),
        ("VLWholeSlideMicroscopyImageStorage", "SM"),
        ("OphthalmicPhotography8BitImageStorage", "OP"),
        ("OphthalmicTomographyImageStorage", "OPT"),
        ("SecondaryCaptureImageStorage", None),  # a capture of any picture
        ("MultiFrameGrayscaleWordSecondaryCaptureImageStorage", None),
        ("MultiFrameTrueColorSecondaryCaptureImageStorage", None),
        ("ParametricMapStorage", None),
    ],
)
def test_image_sop_classes_imply_their_modality(keyword: str, modality: str | None) -> None:
    from radlens.models.intended_use import implied_modality

    assert implied_modality(getattr(pydicom_uids, keyword)) == modality


def test_unknown_or_empty_sop_classes_imply_nothing() -> None:
    from radlens.models.intended_use import implied_modality

    for uid in ("", None, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2.99", " "):
        assert implied_modality(uid) is None, uid
    assert implied_modality(" 1.2.840.10008.5.1.4.1.1.2 ") == "CT"  # padded as read


def test_every_implied_modality_is_a_term_the_gate_knows() -> None:
    from radlens.models.intended_use import sop_class_modalities

    table = sop_class_modalities()
    assert len(table) > 40
    assert {normalise_modality(m) for m in table.values()} == set(table.values())


CT_CLASS = str(pydicom_uids.CTImageStorage)


@pytest.mark.parametrize(
    ("written", "said"),
    [({"Modality": ""}, "Modality is empty"), ({}, "Modality is absent")],
)
def test_a_ct_sop_class_without_modality_violates_naming_the_sop_class(
    written: dict[str, str], said: str
) -> None:
    (found,) = violations({"SOPClassUID": CT_CLASS, **written}, CHEST_CR)
    assert (found.attribute, found.value, found.accepted) == ("Modality", "CT", ("CR", "DX"))
    assert found.implied_by == f"SOP Class 'CT Image Storage' ({CT_CLASS})"
    assert str(found) == (
        f"{said}; SOP Class 'CT Image Storage' ({CT_CLASS}) implies 'CT', which this model is "
        "not for (model accepts CR, DX)"
    )


def test_a_modality_the_gate_does_not_know_gives_way_to_the_sop_class() -> None:
    """ "OT" or junk says nothing of what was imaged, as an empty Modality says nothing."""
    (found,) = violations({"SOPClassUID": CT_CLASS, "Modality": "OT"}, CHEST_CR)
    assert str(found).startswith("Modality 'OT' is not a known modality; SOP Class 'CT Image")
    assert violations({"SOPClassUID": CT_CLASS, "Modality": "xyz"}, CHEST_CR)


def test_cr_and_dx_sop_classes_without_modality_pass_a_chest_cr_dx_model() -> None:
    for keyword in (
        "ComputedRadiographyImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "DigitalXRayImageStorageForProcessing",
    ):
        uid = str(getattr(pydicom_uids, keyword))
        assert violations({"SOPClassUID": uid, "Modality": ""}, CHEST_CR) == [], keyword
        assert violations({"SOPClassUID": uid, "BodyPartExamined": "CHEST"}, CHEST_CR) == []


def test_a_secondary_capture_without_modality_is_not_gated_by_modality() -> None:
    sc = str(pydicom_uids.SecondaryCaptureImageStorage)
    assert violations({"SOPClassUID": sc, "Modality": ""}, CHEST_CR) == []
    assert violations({"SOPClassUID": sc}, CHEST_CR) == []


def test_a_written_modality_decides_over_the_sop_class() -> None:
    """Modality is the acquiring device's word; a converter re-wrapping a radiograph in
    another IOD keeps it (documented in models/intended_use.py)."""
    assert violations({"SOPClassUID": CT_CLASS, "Modality": "CR"}, CHEST_CR) == []
    cr_class = str(pydicom_uids.ComputedRadiographyImageStorage)
    (found,) = violations({"SOPClassUID": cr_class, "Modality": "CT"}, CHEST_CR)
    assert str(found) == "Modality 'CT' (model accepts CR, DX)" and found.implied_by is None


def test_an_intended_use_without_modalities_is_not_gated_by_the_sop_class() -> None:
    chest_only = IntendedUse(body_parts=("CHEST",))
    assert violations({"SOPClassUID": CT_CLASS}, chest_only) == []


def test_survey_counts_the_modality_a_sop_class_implies() -> None:
    headers = [
        {"format": "dicom", "SOPClassUID": CT_CLASS, "Modality": ""},
        {"format": "dicom", "SOPClassUID": CT_CLASS},
        {"format": "dicom", "SOPClassUID": str(pydicom_uids.SecondaryCaptureImageStorage)},
        {"format": "dicom", "SOPClassUID": CT_CLASS, "Modality": "MR"},  # Modality decides
    ]
    assert survey(headers)["modalities"] == {"CT": 2, "MR": 1, "unknown": 1}

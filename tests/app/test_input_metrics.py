"""The manufacturer label of ``radlens_inputs_total`` (app/metrics.py): real files' Manufacturer
values map to a bounded vendor list, and junk, blank or identifying text never becomes a label
value of its own."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from tests.conftest import shared_data_path

# real files and the Manufacturer each carries, as pydicom and ../shared/data ship them
PYDICOM_FILES = {
    "CT_small.dcm": ("GE MEDICAL SYSTEMS", "ge"),
    "JPEG2000.dcm": ("GE Medical Systems", "ge"),
    "MR_small.dcm": ("TOSHIBA_MEC", "canon"),
    "examples_overlay.dcm": ("SIEMENS", "siemens"),
    "examples_palette.dcm": ("Philips Medical Systems", "philips"),
    "SC_rgb_jpeg.dcm": ("debug", "other"),
    "emri_small.dcm": (None, "unknown"),
}
SHARED_FILES = {
    "RG2_JPLL.dcm": ("Fuji Photo Film Co.,Ltd.", "fujifilm"),
    "dx_image.dcm": ("FUJIFILM Corporation", "fujifilm"),
    "TOSHIBA_J2K_OpenJPEGv2Regression.dcm": ("TOSHIBA", "canon"),
    "ct_image.dcm": ("GE MEDICAL SYSTEMS", "ge"),
    "rsna_chest_cr_jpeg_baseline.dcm": (None, "unknown"),
}


def _read(path: Path) -> tuple[str | None, str]:
    from radlens.app.metrics import manufacturer_label
    from radlens.models.preprocessing import preprocess

    meta = preprocess(path.read_bytes(), size=(32, 32)).metadata
    return meta.manufacturer, manufacturer_label(meta.manufacturer)


@pytest.mark.parametrize("name", sorted(PYDICOM_FILES))
def test_pydicom_files(name: str) -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom / pydicom-data test files)")
    assert _read(Path(str(path))) == PYDICOM_FILES[name]


@pytest.mark.parametrize("name", sorted(SHARED_FILES))
def test_shared_data_files(name: str) -> None:
    assert _read(shared_data_path("dicom", name)) == SHARED_FILES[name]


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("GE HEALTHCARE", "ge"),
        ("G.E. Medical Systems", "ge"),
        ("  ge   medical systems  ", "ge"),
        ("General Electric", "ge"),
        ("Siemens Healthineers", "siemens"),
        ("SIEMENS", "siemens"),
        ("PHILIPS", "philips"),
        ("Canon Medical Systems", "canon"),
        ("Carestream Health", "carestream"),
        ("KODAK", "carestream"),
        ("Agfa-Gevaert", "agfa"),
        ("KONICA MINOLTA", "konica-minolta"),
        ("HOLOGIC, Inc.", "hologic"),
        ("Hitachi Aloka", "hitachi"),
        ("UIH", "united-imaging"),
        ("United Imaging Healthcare", "united-imaging"),
        # words, not substrings: these are not GE
        ("AGE Imaging", "other"),
        ("Gemini Scans", "other"),
        ("Manufacturer name here", "other"),
        # blank, punctuation only, control characters
        (None, "unknown"),
        ("", "unknown"),
        ("   ", "unknown"),
        ("\x00\x00", "unknown"),
        ("...--^^", "unknown"),
    ],
)
def test_vendor_rules(value: str | None, label: str) -> None:
    from radlens.app.metrics import manufacturer_label

    assert manufacturer_label(value) == label


def test_free_text_never_becomes_a_label_value() -> None:
    """Ten thousand distinct random strings, identifying-looking text and an oversized value
    give only labels of the fixed list: the series count cannot grow with the input."""
    from radlens.app.metrics import MANUFACTURER_LABELS, manufacturer_label

    rng = random.Random(0)
    alphabet = string.printable + "éü^\\\x00\x1b"
    values = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(10_000)
    ]
    values += ["Doe^Jane^Q", "MRN-998877", "St. Elsewhere Radiology, Room 4", "X" * 100_000]
    labels = {manufacturer_label(value) for value in values}
    assert labels <= set(MANUFACTURER_LABELS)
    assert {"other", "unknown"} <= labels
    assert manufacturer_label("Doe^Jane^Q") == "other"
    assert len(MANUFACTURER_LABELS) == len(set(MANUFACTURER_LABELS)) <= 20


@pytest.mark.parametrize(
    ("modality", "body_part", "photometric", "labels"),
    [
        ("CR", "CHEST", "MONOCHROME1", ("CR", "CHEST", "MONOCHROME1")),
        ("dx", "Chest_PA", "monochrome2 ", ("DX", "CHEST", "MONOCHROME2")),
        # QA round 15: a name typed into Modality and Body Part Examined was a label value
        ("SMITHJ", "JOHN SMITH 1970", "MRN 0042", ("other", "other", "other")),
        (None, "", " ", ("unknown", "unknown", "unknown")),
    ],
)
def test_modality_body_part_and_photometric_labels_are_terms_not_free_text(
    modality: str | None, body_part: str | None, photometric: str | None, labels: tuple[str, ...]
) -> None:
    from radlens.app.metrics import body_part_label, modality_label, photometric_label

    assert (
        modality_label(modality),
        body_part_label(body_part),
        photometric_label(photometric),
    ) == labels


def test_free_text_in_any_header_label_never_becomes_a_label_value() -> None:
    from radlens.app.metrics import (
        PHOTOMETRIC_INTERPRETATIONS,
        body_part_label,
        modality_label,
        photometric_label,
    )
    from radlens.models.intended_use import normalise_body_part, normalise_modality

    rng = random.Random(1)
    values = [
        "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
        for _ in range(5_000)
    ] + ["Doe^Jane^Q", "MRN-998877", "X" * 100_000]
    for value in values:
        assert modality_label(value) in {"other", "unknown", normalise_modality(value)}
        assert body_part_label(value) in {"other", "unknown", normalise_body_part(value)}
        assert photometric_label(value) in PHOTOMETRIC_INTERPRETATIONS | {"other", "unknown"}
    assert modality_label("Doe^Jane^Q") == body_part_label("MRN-998877") == "other"

"""QA 40: training leaves out the colour images the served model would refuse.

The service's colour rule (a model whose intended use accepts only gray modalities refuses an
image with more than 5% of its pixels in colour: app/gate.py ``check_colour``) lived in app/,
which training does not import. ``radlens train`` on a CR folder holding pydicom's
palette-colour ``OT-PAL-8-face.dcm`` (or a colour photograph) trained on it as an image of its
class, and the model it exported then refused that very file with 422 "the image is in
colour". The rule is now ``models.intended_use.colour_violation``, applied by both.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.intended import drop_colour, intended_use_for
from radlens.training.data.sources import check_decodable, drop_undecodable, open_data
from tests.training.data_fixtures import random_gray, write_png

FACE = "OT-PAL-8-face.dcm"  # pydicom's palette-colour secondary capture (Modality OT)


def _face() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(FACE)
    if path is None:  # pragma: no cover - pydicom-data not installed
        pytest.skip(f"pydicom's test file {FACE} is not installed (pydicom-data)")
    return Path(str(path))


def write_dicom(
    path: Path,
    *,
    seed: int,
    modality: str = "CR",
    bright: bool = False,
    patient: str | None = None,
) -> Path:
    """A small gray radiograph (CR by default, DX: Digital X-Ray) written by pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    sop_class = (
        DigitalXRayImageStorageForPresentation
        if modality == "DX"
        else ComputedRadiographyImageStorage
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.PatientID = patient or f"P{seed}"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = random_gray(np.random.default_rng(seed), 32, bright=bright).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    return path


def colour_png(path: Path, seed: int) -> Path:
    """A colour photograph stand-in: every pixel's channels far apart."""
    rng = np.random.default_rng(seed)
    red = rng.integers(150, 256, size=(32, 32), dtype=np.uint8)
    rgb = np.dstack([red, red // 4, 255 - red]).astype(np.uint8)
    return write_png(path, rgb)


def cr_folder(root: Path, per_class: int = 6) -> Path:
    """normal/ and abnormal/ of gray CR DICOMs."""
    for c, name in enumerate(("normal", "abnormal")):
        for i in range(per_class):
            seed = 100 * c + i
            write_dicom(root / name / f"cr{i}.dcm", seed=seed, bright=c == 1)
    return root


def _decoded(root: Path, **stated: list[str]):  # type: ignore[no-untyped-def]
    opened = open_data(root)
    kept, _ = drop_colour(drop_undecodable(opened), **stated)
    return opened, kept


def test_a_palette_colour_dicom_in_a_cr_folder_is_skipped_with_why(tmp_path: Path) -> None:
    root = cr_folder(tmp_path / "data")
    shutil.copy(_face(), root / "abnormal" / "face.dcm")
    opened, kept = _decoded(root)
    check_decodable(opened, kept)
    assert not any(e.key.endswith("face.dcm") for e in kept.examples)
    assert len(kept.examples) == 12
    (skip,) = [s for s in kept.skipped if s.path.endswith("face.dcm")]
    assert "in colour (59% of the pixels" in skip.reason, skip.reason
    assert "model of CR images, which are gray" in skip.reason
    assert "convert it to gray" in skip.reason and "leave it out" in skip.reason


def test_a_colour_photograph_is_skipped_the_gray_ones_kept(tmp_path: Path) -> None:
    root = cr_folder(tmp_path / "data")
    colour_png(root / "normal" / "photo.png", 7)
    write_png(root / "normal" / "gray.png", random_gray(np.random.default_rng(8), 32))
    kept = _decoded(root)[1]
    keys = {Path(e.key).name for e in kept.examples}
    assert "photo.png" not in keys and "gray.png" in keys
    assert [Path(s.path).name for s in kept.skipped] == ["photo.png"]


def test_the_manifest_survey_does_not_count_the_skipped_images(tmp_path: Path) -> None:
    root = cr_folder(tmp_path / "data")
    shutil.copy(_face(), root / "abnormal" / "face.dcm")
    opened = open_data(root)
    kept, headers = drop_colour(drop_undecodable(opened))
    record = intended_use_for(kept, kept.examples, headers=headers)
    assert record["observed"]["images"] == 12
    assert record["observed"]["modalities"] == {"CR": 12}


def test_a_class_whose_every_image_is_in_colour_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(4):
        write_dicom(root / "normal" / f"cr{i}.dcm", seed=i)
        colour_png(root / "abnormal" / f"photo{i}.png", 10 + i)
    opened, kept = _decoded(root)
    with pytest.raises(ConfigurationError) as caught:
        check_decodable(opened, kept)
    message = str(caught.value)
    assert "class 'abnormal'" in message and "all 4 were skipped" in message
    assert "in colour" in message and "convert it to gray" in message


def test_colour_is_kept_where_the_model_would_accept_it(tmp_path: Path) -> None:
    """PNG/JPEG only (no modality: the gate accepts colour), or a colour modality in the set
    (an ultrasound: the gate accepts colour for a model of CR and US)."""
    from pydicom import examples

    photos = tmp_path / "photos"
    for c, name in enumerate(("normal", "abnormal")):
        for i in range(3):
            colour_png(photos / name / f"{i}.png", 10 * c + i)
    assert len(_decoded(photos)[1].examples) == 6

    mixed = cr_folder(tmp_path / "mixed", per_class=3)
    shutil.copy(examples.get_path("palette_color"), mixed / "abnormal" / "us.dcm")
    colour_png(mixed / "normal" / "photo.png", 5)
    assert len(_decoded(mixed)[1].examples) == 8


def test_a_stated_gray_intended_use_skips_colour_even_without_dicom(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for c, name in enumerate(("normal", "abnormal")):
        for i in range(3):
            write_png(root / name / f"g{i}.png", random_gray(np.random.default_rng(10 * c + i)))
        colour_png(root / name / "photo.png", 50 + c)
    assert len(_decoded(root)[1].examples) == 8  # nothing stated: colour accepted
    kept = _decoded(root, modalities=["CR", "DX"])[1]
    assert len(kept.examples) == 6
    assert all("model of CR, DX images" in s.reason for s in kept.skipped)


def test_data_check_counts_the_colour_images_as_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radlens.cli.main import main

    root = cr_folder(tmp_path / "data")
    shutil.copy(_face(), root / "abnormal" / "face.dcm")
    assert main(["data-check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "class abnormal: 6" in out, out
    assert "face.dcm: in colour" in out, out
    # a statement data-check cannot check is refused as train refuses it
    assert main(["data-check", str(root), "--intended-modalities", "XRAY"]) == 2
    assert "not a known modality" in capsys.readouterr().err

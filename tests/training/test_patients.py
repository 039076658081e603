"""Patient-level splits for every source: DICOM PatientID / StudyInstanceUID, hashed at read
time; the leakage check; --resplit; a data set too small to calibrate; a test-only npz."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import (
    check_leakage,
    check_splits,
    describe_split,
    hash_patient_id,
    open_data,
    patient_hash_key,
    split_source,
)

from .data_fixtures import png_folder, random_gray, write_csv, write_npz, write_png

pydicom = pytest.importorskip("pydicom")


def _template() -> object:
    """A real CT slice from pydicom's test files (CT_small.dcm, 128x128, 16-bit)."""
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def write_series(
    folder: Path,
    *,
    patient_id: str,
    study_uid: str | None,
    slices: int,
    seed: int = 0,
    bright: bool = False,
) -> list[Path]:
    """One series: ``slices`` DICOM files with one StudyInstanceUID and SeriesInstanceUID and
    their own SOPInstanceUIDs, written from a real CT slice with its pixels replaced (so the
    classes differ). ``study_uid=None`` deletes StudyInstanceUID."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    base = _template()
    paths = []
    for i in range(slices):
        ds = copy.deepcopy(base)
        ds.PatientID = patient_id
        ds.PatientName = f"Name^{patient_id}" if patient_id else ""
        if study_uid is None:
            del ds.StudyInstanceUID
        else:
            ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        pixels = random_gray(rng, 128, bright=bright).astype(np.int16) * 8
        ds.PixelData = pixels.tobytes()
        path = folder / f"{series_uid[-12:]}_{i:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def series_folder(root: Path, *, per_class: int = 6, slices: int = 3) -> dict[str, list[str]]:
    """A two-class folder of DICOM series; half of the series have an empty PatientID.

    Returns {series name: [file paths]} and the raw identifiers under "_raw"."""
    from pydicom.uid import generate_uid

    series: dict[str, list[str]] = {"_raw": []}
    for label, cls in enumerate(("normal", "abnormal")):
        for k in range(per_class):
            pid = f"RAWPID{label}{k:03d}" if k % 2 == 0 else ""
            study = generate_uid()
            files = write_series(
                root / cls / f"s{k}",
                patient_id=pid,
                study_uid=study,
                slices=slices,
                seed=100 * label + k,
                bright=bool(label),
            )
            series[f"{cls}/{k}"] = [str(f) for f in files]
            series["_raw"] += [v for v in (pid, study) if v]
    return series


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("series") / "data"
    return root, series_folder(root)


class TestDicomPatients:
    def test_every_slice_of_a_series_has_one_hashed_patient(
        self, dicom_series: tuple[Path, dict[str, list[str]]]
    ) -> None:
        root, series = dicom_series
        source = open_data(root)
        assert source.patient_source == "PatientID/StudyInstanceUID"
        patient_of = {e.key: e.patient_id for e in source.examples}
        raw = set(series["_raw"])
        for name, files in series.items():
            if name == "_raw":
                continue
            ids = {patient_of[f] for f in files}
            assert len(ids) == 1 and None not in ids, name
            assert not ids & raw  # hashed, never the raw PatientID / UID
        assert len({e.patient_id for e in source.examples}) == 12

    @pytest.mark.parametrize("seed", range(8))
    def test_slices_of_one_series_never_straddle_splits(
        self, dicom_series: tuple[Path, dict[str, list[str]]], seed: int
    ) -> None:
        root, series = dicom_series
        splits = split_source(open_data(root), val_fraction=0.3, test_fraction=0.3, seed=seed)
        split_of = {e.key: name for name, items in splits.items() for e in items}
        for name, files in series.items():
            if name != "_raw":
                assert len({split_of[f] for f in files}) == 1, (name, seed)
        assert check_leakage(splits) == {"passed": True, "patients_in_two_splits": 0}

    def test_same_patient_id_across_studies_is_one_patient(self, tmp_path: Path) -> None:
        from pydicom.uid import generate_uid

        a = write_series(tmp_path / "normal/a", patient_id="P1", study_uid=generate_uid(), slices=2)
        b = write_series(tmp_path / "normal/b", patient_id="P1", study_uid=generate_uid(), slices=2)
        c = write_series(
            tmp_path / "abnormal/c", patient_id="", study_uid=generate_uid(), slices=2, bright=True
        )
        source = open_data(tmp_path)
        ids = {e.key: e.patient_id for e in source.examples}
        assert len({ids[str(p)] for p in a + b}) == 1
        assert ids[str(c[0])] == ids[str(c[1])] != ids[str(a[0])]

    def test_the_hash_is_keyed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        one = hash_patient_id("PatientID:P1")
        assert one == hash_patient_id("PatientID:P1") and one.startswith("p-")
        monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "another-key")
        assert hash_patient_id("PatientID:P1") != one

    def test_without_a_key_a_random_one_is_made_once_outside_the_run(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("RADLENS_PATIENT_HASH_KEY")
        monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY_FILE", str(tmp_path / "k" / "key"))
        key = patient_hash_key()
        assert len(key) == 64 and (tmp_path / "k" / "key").stat().st_mode & 0o777 == 0o600
        assert patient_hash_key() == key

    def test_every_file_without_patient_information_is_refused(self, tmp_path: Path) -> None:
        for cls, bright in (("normal", False), ("abnormal", True)):
            write_series(tmp_path / cls, patient_id="", study_uid=None, slices=2, bright=bright)
        with pytest.raises(ConfigurationError, match=r"none of the 4 DICOM file\(s\) .* carries"):
            open_data(tmp_path)

    def test_png_folder_says_it_has_no_patients(self, tmp_path: Path) -> None:
        source = open_data(png_folder(tmp_path / "d", n_per_class=4))
        assert source.patient_source == "none" and not source.has_patients
        splits = split_source(source)
        record = describe_split(source, splits, resplit=False)
        assert record["method"] == "by image" and record["patients"] is None


# --- leakage ----------------------------------------------------------------------------


def _leaky_csv(tmp_path: Path, n_patients: int = 12) -> Path:
    """Two images per patient; patient 0 and patient 1 have one image in train, one in val."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_patients):
        label = "abnormal" if p % 2 else "normal"
        base = "train" if p < n_patients // 2 else ("val" if p < 3 * n_patients // 4 else "test")
        for i in range(2):
            rel = f"img/{p}_{i}.png"
            write_png(tmp_path / rel, random_gray(rng, 16, bright=p % 2 == 1))
            split = ("val" if i else "train") if p < 2 else base
            rows.append({"path": rel, "label": label, "patient_id": f"PAT{p}", "split": split})
    return write_csv(tmp_path / "labels.csv", rows)


class TestLeakage:
    def test_a_leaking_given_split_is_refused_with_counts(self, tmp_path: Path) -> None:
        splits = split_source(open_data(_leaky_csv(tmp_path)))
        with pytest.raises(
            ConfigurationError,
            match=r"2 patient\(s\) have images in more than one split \(train\+val: 2\).*--resplit",
        ):
            check_leakage(splits)

    def test_resplit_redoes_it_by_patient(self, tmp_path: Path) -> None:
        source = open_data(_leaky_csv(tmp_path))
        splits = split_source(source, keep_given=False)
        assert check_leakage(splits)["passed"]
        assert describe_split(source, splits, resplit=True)["method"].startswith("by patient")

    def test_the_message_names_no_patient(self, tmp_path: Path) -> None:
        splits = split_source(open_data(_leaky_csv(tmp_path)))
        with pytest.raises(ConfigurationError) as info:
            check_leakage(splits)
        assert "PAT" not in str(info.value) and "p-" not in str(info.value)

    def test_real_nih_labels_leak_and_resplit_fixes_it(self) -> None:
        labels = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "nih1000"
        if not (labels / "labels.csv").is_file():
            pytest.skip("real data ../shared/data/nih1000 is absent")
        source = open_data(labels)
        with pytest.raises(ConfigurationError, match=r"30 patient\(s\) have images"):
            check_leakage(split_source(source))
        assert check_leakage(split_source(source, keep_given=False))["passed"]


def test_too_small_to_calibrate_is_refused(tmp_path: Path) -> None:
    source = open_data(png_folder(tmp_path / "d", n_per_class=10))
    splits = split_source(source, val_fraction=0.3, test_fraction=0.0)
    check_splits(source, splits)  # trainable ...
    with pytest.raises(ConfigurationError, match=r"too small to calibrate: .* 3 image\(s\) of"):
        check_splits(source, splits, min_calibration_positives=10)  # ... not calibratable


def test_npz_with_only_a_test_split_opens(tmp_path: Path) -> None:
    source = open_data(write_npz(tmp_path / "t.npz", n={"test": 8}))
    assert {e.split for e in source.examples} == {"test"}
    assert len(split_source(source)["test"]) == 8

"""QA round 53: DICOM media exports (IHE PDI: a hospital's CD, DVD or USB stick) in folder data.

An export holds a DICOMDIR at its root (the media's index, a DICOM file without an image),
the images in nested folders without an extension (PT000000/ST000000/SE000000/IM000000, as
pydicom's FileSet writes them), and a viewer, AUTORUN.INF, README.TXT, desktop.ini, macOS
``._`` files. Found before: the images were read by content, but an export given as the data
set made its patient folders the classes (``data-check`` reported classes PT000000 ..
PT000003 and exit 0); a DICOMDIR was skipped as "DICOM file has no pixel data" (and, at a
data set's root, as an image "not in a class sub-folder"), and one whose images had not been
copied said nothing of it. The fixtures are written with pydicom (FileSet), pydicom's own
real DICOMDIR set, and the real files of ../shared/data/dicom.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import drop_undecodable, open_source
from tests.conftest import shared_data_path

DICOMDIR_SAID = "a DICOMDIR, the index of a DICOM media export"
JUNK = ("AUTORUN.INF", "README.TXT", "VIEWER.EXE", "EMPTY")  # skipped, each with a reason
IGNORED = ("desktop.ini", "._DICOMDIR", "._IM000000", ".hidden")  # not even named


def _dataset(patient: str, study: str, series: str, instance: int, seed: int) -> object:
    """A 32 px CT Image Storage instance with the attributes FileSet's records need."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = np.random.default_rng(seed).integers(0, 2000, (32, 32), dtype=np.uint16)
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.Modality = "CT"
    ds.PatientID, ds.PatientName = patient, f"TEST^{patient}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, instance
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = pixels.tobytes()
    return ds


def _add_junk(root: Path) -> None:
    """What a hospital's CD carries beside its DICOM files."""
    (root / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER.EXE\n")
    (root / "README.TXT").write_text("Patient images. Start VIEWER.EXE to view them.\n")
    (root / "VIEWER.EXE").write_bytes(b"MZ\x90\x00" + bytes(200))
    (root / "EMPTY").write_bytes(b"")
    (root / "desktop.ini").write_text("[.ShellClassInfo]\nIconResource=viewer.ico\n")
    (root / "._DICOMDIR").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # AppleDouble
    (root / ".hidden").write_text("x")
    first = next(root.rglob("IM000000"))
    (first.parent / "._IM000000").write_bytes(b"\x00\x05\x16\x07" + bytes(80))


def write_export(
    root: Path, patients: Sequence[str], *, seed: int, slices: int = 3, junk: bool = True
) -> list[Path]:
    """A media export written by pydicom's FileSet: a DICOMDIR and one series of ``slices``
    images per patient (PT000000/ST000000/SE000000/IM00000n), plus the usual non-DICOM files.
    Returns the image files."""
    from pydicom.fileset import FileSet
    from pydicom.uid import generate_uid

    fileset = FileSet()
    for p, patient in enumerate(patients):
        study, series = generate_uid(), generate_uid()
        for i in range(slices):
            fileset.add(_dataset(patient, study, series, i + 1, seed * 1000 + p * 10 + i))
    fileset.write(root)
    fileset.clear()  # its staging folder, else removed (with a ResourceWarning) on collection
    fileset._stage["t"].cleanup()
    if junk:
        _add_junk(root)
    return sorted(p for p in root.rglob("IM*") if not p.name.startswith("."))


def media_data_set(root: Path, n_patients: int = 4) -> dict[str, list[Path]]:
    """DATA/<class>/<export>/...: one export per class, ``n_patients`` patients each."""
    return {
        cls: write_export(root / cls / "CD", [f"{cls[:2]}{i}" for i in range(n_patients)], seed=s)
        for s, cls in enumerate(("normal", "nodule"), start=1)
    }


def _reasons(source: object) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in source.skipped}  # type: ignore[attr-defined]


class TestExportsUnderClassFolders:
    def test_images_found_dicomdir_and_junk_skipped_with_reasons(self, tmp_path: Path) -> None:
        images = media_data_set(tmp_path / "data")
        source = open_source(tmp_path / "data")
        assert source.class_names == ["normal", "nodule"]
        assert sorted(e.key for e in source.examples) == sorted(
            str(p) for paths in images.values() for p in paths
        )
        assert len(source.examples) == 24  # 2 classes x 4 patients x 3 slices, no extension
        assert source.has_patients
        reasons = _reasons(source)
        assert DICOMDIR_SAID in reasons["DICOMDIR"]
        assert "no pixel data" not in reasons["DICOMDIR"]
        assert "missing" not in reasons["DICOMDIR"]  # every listed file is there
        assert set(reasons) == {"DICOMDIR", *JUNK}
        assert len(source.skipped) == 2 * (1 + len(JUNK))
        assert not set(IGNORED) & set(reasons)
        decoded = drop_undecodable(source)
        assert len(decoded.examples) == 24

    def test_a_dicomdir_counts_the_files_it_lists_that_are_missing(self, tmp_path: Path) -> None:
        media_data_set(tmp_path / "data")
        cd = tmp_path / "data" / "normal" / "CD"
        (cd / "PT000000" / "ST000000" / "SE000000" / "IM000001").unlink()
        # copied through a tool that lower-cases names: still the listed files, not missing
        (cd / "PT000001").rename(cd / "pt000001")
        (cd / "pt000001" / "ST000000" / "SE000000" / "IM000002").rename(
            cd / "pt000001" / "ST000000" / "SE000000" / "im000002"
        )
        source = open_source(tmp_path / "data")
        assert source.class_counts() == {"normal": 11, "nodule": 12}
        reasons = {s.path: s.reason for s in source.skipped}
        said = reasons[str(cd / "DICOMDIR")]
        assert DICOMDIR_SAID in said
        assert "1 of the 12 file(s) it lists are missing: an incomplete copy" in said
        other = reasons[str(tmp_path / "data" / "nodule" / "CD" / "DICOMDIR")]
        assert "missing" not in other

    def test_nothing_usable_names_the_dicomdir_and_its_missing_files(self, tmp_path: Path) -> None:
        media_data_set(tmp_path / "data")
        cd = tmp_path / "data" / "nodule" / "CD"
        for folder in cd.glob("PT*"):  # only the DICOMDIR and the viewer were copied
            shutil.rmtree(folder)
        with pytest.raises(ConfigurationError) as caught:
            open_source(tmp_path / "data")
        message = str(caught.value)
        assert "contains no readable DICOM/PNG/JPEG image" in message
        assert f"e.g. {cd / 'DICOMDIR'}: {DICOMDIR_SAID}" in message
        assert "12 of the 12 file(s) it lists are missing" in message
        assert "\n" not in message


class TestAnExportIsNoClassFolderDataSet:
    def test_an_export_given_as_the_data_set_is_refused(self, tmp_path: Path) -> None:
        cd = tmp_path / "CD"
        write_export(cd, ["P1", "P2", "P3", "P4"], seed=3)
        with pytest.raises(ConfigurationError, match="is a DICOM media export") as caught:
            open_source(cd)
        message = str(caught.value)
        assert "lists 12 file(s) of 4 patient(s) in 4 sub-folder(s)" in message
        assert "DATA/<class>/<export>" in message and "CSV manifest" in message
        assert "P1" not in message and "TEST^" not in message  # no patient identifier

    def test_the_image_folder_of_an_export_is_refused(self, tmp_path: Path) -> None:
        cd = tmp_path / "CD"
        write_export(cd, ["P1", "P2"], seed=4)
        with pytest.raises(ConfigurationError, match="is the image folder of the DICOM media"):
            open_source(cd / "PT000000")

    def test_the_refusal_reaches_multi_label_folders_too(self, tmp_path: Path) -> None:
        from radlens.training.data.sources import MultiLabelSpec

        cd = tmp_path / "CD"
        write_export(cd, ["P1", "P2"], seed=5)
        with pytest.raises(ConfigurationError, match="is a DICOM media export"):
            open_source(cd, multi_label=MultiLabelSpec())

    def test_pydicoms_real_export_is_refused(self, tmp_path: Path) -> None:
        from pydicom.data import get_testdata_file

        found = get_testdata_file("DICOMDIR")
        real = Path(str(found)).parent if found else None
        if real is None or not (real / "77654033").is_dir():
            pytest.skip("pydicom's dicomdirtests export is not installed")
        cd = tmp_path / "CD"
        cd.mkdir()
        shutil.copy(real / "DICOMDIR", cd / "DICOMDIR")
        for folder in ("77654033", "98892001", "98892003"):  # study folders, not classes
            shutil.copytree(real / folder, cd / folder)
        with pytest.raises(ConfigurationError, match="is a DICOM media export") as caught:
            open_source(cd)
        assert "lists 31 file(s) of 2 patient(s) in 3 sub-folder(s)" in str(caught.value)

    def test_a_dicomdir_over_class_folders_is_no_export(self, tmp_path: Path) -> None:
        """A DICOMDIR indexing class folders of several patients each (a data set burnt to
        a disc): the folders stay classes, the DICOMDIR is skipped as the index it is."""
        import pydicom

        data = tmp_path / "data"
        write_export(data, [f"P{i}" for i in range(6)], seed=6, junk=False)
        # relist PT00000p/ST000000/... as <class>/ST00000p/...: names of equal length, so the
        # records' offsets stay valid
        ds = pydicom.dcmread(data / "DICOMDIR")
        for record in ds.DirectoryRecordSequence:
            if "ReferencedFileID" not in record:
                continue
            parts = list(record.ReferencedFileID)
            p = int(parts[0][2:])
            new = ["NEGATIVE" if p < 3 else "POSITIVE", f"ST{p:06d}", *parts[2:]]
            target = data.joinpath(*new)
            target.parent.mkdir(parents=True, exist_ok=True)
            data.joinpath(*parts).rename(target)
            record.ReferencedFileID = new
        ds.save_as(data / "DICOMDIR")
        for folder in data.glob("PT*"):
            shutil.rmtree(folder)
        source = open_source(data)
        assert source.class_names == ["NEGATIVE", "POSITIVE"]
        assert source.class_counts() == {"NEGATIVE": 9, "POSITIVE": 9}
        reasons = _reasons(source)
        assert set(reasons) == {"DICOMDIR"}
        assert DICOMDIR_SAID in reasons["DICOMDIR"] and "missing" not in reasons["DICOMDIR"]
        assert "class sub-folder" not in reasons["DICOMDIR"]


def test_real_files_in_a_media_layout(tmp_path: Path) -> None:
    """The real DICOM files of ../shared/data/dicom (JPEG-LS, JPEG Lossless, JPEG 2000,
    uncompressed CT and DX) written as two exports by pydicom's FileSet: every one is found
    without its extension and decodes as training decodes it."""
    from pydicom.fileset import FileSet

    real = shared_data_path("dicom")
    names = {
        "normal": ["ct_image.dcm", "dx_image.dcm", "RG2_JLSL.dcm"],
        "abnormal": ["CT1_JLSN.dcm", "TOSHIBA_J2K_OpenJPEGv2Regression.dcm", "RG2_JPLL.dcm"],
    }
    for cls, files in names.items():
        if not all((real / f).is_file() for f in files):
            pytest.skip(f"a file of {files} is absent from {real}")
        fileset = FileSet()
        for name in files:
            fileset.add(real / name)
        fileset.write(tmp_path / "data" / cls / "USB")
        fileset.clear()
        fileset._stage["t"].cleanup()
        _add_junk(tmp_path / "data" / cls / "USB")
        # RSNA's CR has no Study ID, which a DICOMDIR record needs: copied beside the
        # indexed images, as exports carry files their index leaves out
        shutil.copy(real / "rsna_chest_cr_jpeg_baseline.dcm", tmp_path / "data" / cls / "USB" / "X")
    source = open_source(tmp_path / "data")
    assert source.class_counts() == {"normal": 4, "abnormal": 4}
    assert all("." not in Path(e.key).name for e in source.examples)  # no extensions
    decoded = drop_undecodable(source)
    assert decoded.class_counts() == {"normal": 4, "abnormal": 4}
    reasons = {
        Path(s.path).parent.parent.name + "/" + Path(s.path).name: s.reason for s in decoded.skipped
    }
    assert set(reasons) == {f"{c}/{n}" for c in names for n in ("DICOMDIR", *JUNK)}
    assert all(DICOMDIR_SAID in reasons[f"{c}/DICOMDIR"] for c in names)


def test_a_series_folder_that_is_an_export(tmp_path: Path) -> None:
    """series_path naming a one-series export: its slices, the DICOMDIR and the viewer's
    files skipped with their reasons."""
    import csv

    from radlens.training.data.sources import open_data

    rows = []
    for n, (cls, patient) in enumerate(
        [("normal", "A"), ("normal", "B"), ("nodule", "C"), ("nodule", "D")]
    ):
        write_export(tmp_path / f"cd{n}", [patient], seed=10 + n, slices=4)
        rows.append({"series_path": f"cd{n}", "label": cls, "patient_id": patient})
    with (tmp_path / "series.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    source = open_data(tmp_path / "series.csv")
    assert source.has_series
    assert source.class_counts() == {"normal": 8, "nodule": 8}
    reasons = _reasons(source)
    assert set(reasons) == {"DICOMDIR", *JUNK}
    assert DICOMDIR_SAID in reasons["DICOMDIR"]

"""QA round 64: a DICOMDIR over an anonymised class-folder data set is no media export.

Found (QA 62, /work/scratch/qa62/test_media_anon.py): ``check_not_media_export`` took any
DICOMDIR whose sub-folders each held one patient for an export. An anonymised data set
burnt to a disc -- one constant PatientID ("ANONYMOUS") for everyone, or a DICOMDIR whose
records pydicom's FileSet cannot link (no patients at all) -- has exactly that shape, so
``data/NEGATIVE``, ``data/POSITIVE`` was refused (exit 2). Now the sub-folders' names and
the records' studies decide: writer-made names (``DICOM``, ``PA000000``, ``ST000001``,
``77654033``), one sub-folder only, or folders named for their patients are an export
(refused, the message saying how to go on when the folders really are classes); label
names are classes, the DICOMDIR ignored with a one-line note. Real exports of one patient
(the common CD) stay refused. Fixtures are written with pydicom's FileSet (QA 53's helper).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.media import listed_files
from radlens.training.data.sources import open_source
from tests.training.test_qa53_media_export import DICOMDIR_SAID, write_export

if TYPE_CHECKING:
    from radlens.training.data.media import SubFolder

NOTE = "a DICOMDIR was found and ignored"
Relist = Callable[[list[str]], list[str]]


def _relist(data: Path, new_parts: Relist, *, unlink: bool = False) -> None:
    """Move every file the DICOMDIR of ``data`` lists to ``new_parts(old parts)`` and list it
    there (names of the same length keep the records' offsets valid). ``unlink``: drop the
    PATIENT, STUDY and SERIES records, so FileSet cannot link the files to patients."""
    import pydicom

    ds = pydicom.dcmread(data / "DICOMDIR")
    for record in ds.DirectoryRecordSequence:
        if "ReferencedFileID" not in record:
            continue
        parts = list(record.ReferencedFileID)
        new = new_parts(parts)
        target = data.joinpath(*new)
        target.parent.mkdir(parents=True, exist_ok=True)
        data.joinpath(*parts).rename(target)
        record.ReferencedFileID = new
    if unlink:
        ds.DirectoryRecordSequence = [
            r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"
        ]
    ds.save_as(data / "DICOMDIR")
    for folder in data.iterdir():
        if folder.is_dir() and not any(folder.rglob("IM*")):
            shutil.rmtree(folder)


def _anonymised_classes(data: Path, studies: int = 6, *, unlink: bool = False) -> None:
    """NEGATIVE/ and POSITIVE/, ``studies // 2`` studies each, every one of the patient
    "ANONYMOUS" (FileSet writes them as PT000000/ST00000k/...)."""
    write_export(data, ["ANONYMOUS"] * studies, seed=64, slices=2, junk=False)

    def to_class(parts: list[str]) -> list[str]:
        k = int(parts[1][2:])
        return ["NEGATIVE" if k < studies // 2 else "POSITIVE", *parts[1:]]

    _relist(data, to_class, unlink=unlink)


def _refused(root: Path) -> str:
    with pytest.raises(ConfigurationError) as caught:
        open_source(root)
    message = str(caught.value)
    assert "\n" not in message
    return message


class TestAnonymisedClassFoldersUnderADicomdir:
    def test_the_qa62_reproducer_is_read_as_classes(self, tmp_path: Path) -> None:
        """One series of 6 images, split 3/3 into NEGATIVE and POSITIVE, patient ANONYMOUS."""
        data = tmp_path / "data"
        write_export(data, ["ANONYMOUS"], seed=6, slices=6, junk=False)
        order = iter(range(6))
        _relist(data, lambda p: ["NEGATIVE" if next(order) < 3 else "POSITIVE", *p[1:]])
        source = open_source(data)
        assert source.class_names == ["NEGATIVE", "POSITIVE"]
        assert source.class_counts() == {"NEGATIVE": 3, "POSITIVE": 3}

    def test_constant_patient_id_several_studies_per_class(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        data = tmp_path / "data"
        _anonymised_classes(data)
        files = listed_files(data / "DICOMDIR")
        assert files and {f.patient for f in files} == {"ANONYMOUS"}  # linked, one patient
        with caplog.at_level(logging.WARNING, logger="radlens.training.data.media"):
            source = open_source(data)
        assert source.class_counts() == {"NEGATIVE": 6, "POSITIVE": 6}
        reasons = {Path(s.path).name: s.reason for s in source.skipped}
        assert set(reasons) == {"DICOMDIR"} and DICOMDIR_SAID in reasons["DICOMDIR"]
        notes = [r.getMessage() for r in caplog.records if NOTE in r.getMessage()]
        assert notes == [
            f"{data / 'DICOMDIR'}: {NOTE}: its 2 sub-folder(s) are read as classes, as their "
            "names and patients do not show an export (a media export given as the data set "
            "would be refused)"
        ]
        assert "ANONYMOUS" not in notes[0]  # nothing of the patient

    def test_a_dicomdir_without_patient_links(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        _anonymised_classes(data, unlink=True)
        files = listed_files(data / "DICOMDIR")
        assert files and len(files) == 12
        assert {f.patient for f in files} == {None} and {f.study for f in files} == {None}
        assert open_source(data).class_counts() == {"NEGATIVE": 6, "POSITIVE": 6}

    @pytest.mark.parametrize("patients", [["ANONYMOUS"] * 2, ["PATIENT1", "PATIENT2"]])
    def test_two_classes_each_of_one_study(self, tmp_path: Path, patients: list[str]) -> None:
        """Anonymised to one PatientID, or one (distinct) patient per class: label names,
        nothing that shows an export."""
        data = tmp_path / "data"
        write_export(data, patients, seed=7, slices=3, junk=False)
        anonymised = len(set(patients)) == 1  # one PATIENT record, studies ST000000/1

        def to_class(parts: list[str]) -> list[str]:
            k = int(parts[1 if anonymised else 0][2:])
            return ["normal01" if k == 0 else "abnormal", "ST000000", *parts[2:]]

        _relist(data, to_class)
        assert open_source(data).class_counts() == {"abnormal": 3, "normal01": 3}


class TestRealExportsStayRefused:
    def test_one_patient_in_pa000000(self, tmp_path: Path) -> None:
        """The common CD of one patient (two studies): its one folder holds every file."""
        cd = tmp_path / "CD"
        write_export(cd, ["12345678", "12345678"], seed=8)
        _relist(cd, lambda p: ["PA000000", *p[1:]])
        message = _refused(cd)
        assert "is a DICOM media export" in message
        assert "lists 6 file(s) of 1 patient(s) in 1 sub-folder(s)" in message
        assert "12345678" not in message

    def test_one_patient_under_dicom(self, tmp_path: Path) -> None:
        """IHE PDI's DICOM/PA000000/...: one first-level folder (the lengthened names also
        break the records' links: no patients are known)."""
        cd = tmp_path / "CD"
        write_export(cd, ["12345678"], seed=9)
        _relist(cd, lambda p: ["DICOM", "PA000000", *p[1:]])
        assert (cd / "DICOM" / "PA000000" / "ST000000" / "SE000000" / "IM000000").is_file()
        message = _refused(cd)
        assert "lists 3 file(s) in 1 sub-folder(s)" in message
        assert "is the image folder of the DICOM media export" in _refused(cd / "DICOM")

    def test_one_patient_with_study_folders_at_the_top(self, tmp_path: Path) -> None:
        """Study folders would be taken as classes: writer-made names, an export."""
        cd = tmp_path / "CD"
        write_export(cd, ["12345678"] * 3, seed=10)
        _relist(cd, lambda p: [p[1], p[0], *p[2:]])  # ST00000k/PT000000/SE000000/IM...
        assert sorted(d.name for d in cd.iterdir() if d.is_dir()) == [
            "ST000000",
            "ST000001",
            "ST000002",
        ]
        assert "lists 9 file(s) of 1 patient(s) in 3 sub-folder(s)" in _refused(cd)

    def test_an_anonymised_export_of_several_patients(self, tmp_path: Path) -> None:
        """PT000000..PT000003 whose PATIENT records all say ANONYMOUS: still an export."""
        import pydicom

        cd = tmp_path / "CD"
        write_export(cd, [f"PATIENT{i}X" for i in range(4)], seed=11)
        ds = pydicom.dcmread(cd / "DICOMDIR")
        for record in ds.DirectoryRecordSequence:
            if record.DirectoryRecordType == "PATIENT":
                # of the same lengths as PATIENT0X and TEST^PATIENT0X, keeping the offsets
                record.PatientID, record.PatientName = "ANONYMOUS", "ANONYMOUS^ANON"
        ds.save_as(cd / "DICOMDIR")
        assert {f.patient for f in listed_files(cd / "DICOMDIR") or []} == {"ANONYMOUS"}
        assert "lists 12 file(s) of 1 patient(s) in 4 sub-folder(s)" in _refused(cd)

    def test_patient_folders_named_for_their_patients(self, tmp_path: Path) -> None:
        """Folders named as some viewers export them (the patient's name): an export."""
        cd = tmp_path / "CD"
        write_export(cd, ["JANE", "JOHN"], seed=12)  # PatientName TEST^JANE, TEST^JOHN
        _relist(cd, lambda p: ["JANE_DOE" if p[0] == "PT000000" else "JOHN_ROE", *p[1:]])
        message = _refused(cd)
        assert "of 2 patient(s) in 2 sub-folder(s)" in message
        assert "JANE" not in message and "TEST^" not in message


def test_the_refusal_says_how_to_go_on_when_the_folders_are_classes(tmp_path: Path) -> None:
    cd = tmp_path / "CD"
    write_export(cd, ["P1", "P2"], seed=13)
    message = _refused(cd)
    assert "if its sub-folders really are classes, move " in message
    assert f"{str(cd / 'DICOMDIR')!r} out of the way" in message
    assert "CSV manifest (path, label, patient_id)" in message


def _folder(
    name: str, patients: set[str], studies: set[str], words: frozenset[str] = frozenset()
) -> SubFolder:
    from radlens.training.data.media import SubFolder  # new in QA round 64: imported here,
    # so the tests above run (and fail) on the code before it

    return SubFolder(name, patients, set(words), studies)


def media_verdict(folders: list[SubFolder]) -> bool | None:
    from radlens.training.data import media

    return media.media_verdict(folders)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["DICOM"], True),
        (["PA000000", "PA000001"], True),
        (["PA1", "PA2"], True),
        (["77654033", "98892001"], True),
        (["S0000001", "S0000002"], True),
        (["A1B2C3D4", "0F9E8D7C"], True),  # hash-like
        (["0", "1"], None),  # class names, not counters
        (["KL0", "KL1"], None),
        (["covid19", "normal"], None),
        (["NEGATIVE", "POSITIVE"], None),
    ],
)
def test_verdict_on_names_of_constant_patient_folders(
    names: list[str], expected: bool | None
) -> None:
    folders = [_folder(n, {"ANON"}, {f"1.2.{i}"}, {"anon"}) for i, n in enumerate(names)]
    assert media_verdict(folders) is expected


def test_verdict_on_patients_and_studies() -> None:
    several = [_folder("a", {"P1", "P2"}, {"1"}), _folder("b", {"P3"}, {"2"})]
    assert media_verdict(several) is False  # QA 53: a class folder of several patients
    split = [_folder("a", {"X"}, {"1", "2"}), _folder("b", {"X"}, {"2"})]
    assert media_verdict(split) is False  # a study in two folders: labels
    named = [_folder("SMITH_J", {"1"}, {"1"}, {"smith"}), _folder("ROE_R", {"2"}, {"2"}, {"roe"})]
    assert media_verdict(named) is True
    assert media_verdict([_folder("a", set(), set()), _folder("b", set(), set())]) is None

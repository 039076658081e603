"""DICOM media exports (IHE PDI: a CD, DVD or USB stick a hospital hands over) in folder data.

Such an export holds a ``DICOMDIR`` at its root -- the index of the media, a DICOM file with
no image -- and the images in nested folders without a file extension
(``DICOM/PA000000/ST000000/SE000000/IM000000``), beside a viewer, ``AUTORUN.INF``, a
``README.TXT`` and the like. Folder data sets read the images by content, so an export can
sit anywhere below a class folder (``ROOT/<class>/<export>/...``); this module adds what
the DICOMDIR tells:

- :func:`dicomdir_reason`: the skip reason of a DICOMDIR (it is the index, not an image),
  with how many of the files it lists are missing -- an incomplete copy of the media. The
  listed paths are matched without regard to case (an ISO 9660 disc lists ``IM000000``;
  copied through some tools or mounted on Linux, the file is ``im000000``).
- :func:`check_not_media_export`: a folder given as a class-folder data set that is itself
  an export (a DICOMDIR at its root), or the image folder of one (a DICOMDIR beside it),
  would make the export's patient or study folders the classes; it is refused with a
  one-line :class:`~models.errors.ConfigurationError`. A DICOMDIR over a real class-folder
  data set (a data set burnt to a disc, often anonymised to one constant PatientID) is
  ignored with a one-line note: see :func:`media_verdict` for the evidence weighed.

The DICOMDIR is read with pydicom's :class:`~pydicom.fileset.FileSet` (its records give
each listed file's patient); nothing here writes to the media.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from radlens.models.errors import ConfigurationError

log = logging.getLogger(__name__)

DICOMDIR = "DICOMDIR"
MISSING_SAID = "file(s) it lists are missing"  # in a DICOMDIR's skip reason


@dataclass(frozen=True)
class ListedFile:
    """One file a DICOMDIR lists: its path components as listed (relative to the DICOMDIR's
    folder), the file found for them (matched without regard to case) or None, the raw
    patient of its PATIENT record, the words of that patient's ID and name (casefolded) and
    its study's Study Instance UID -- all for comparing only: never logged or stored. The
    last three are None/empty when pydicom's FileSet cannot link the records."""

    parts: tuple[str, ...]
    found: Path | None
    patient: str | None
    patient_words: frozenset[str] = frozenset()
    study: str | None = None


def _plain(name: str) -> str:
    """A file name as a DICOMDIR lists it: case-folded, without an ISO 9660 version
    (``;1``) or a trailing dot, as discs read without their extensions show them."""
    return name.split(";", 1)[0].rstrip(".").casefold()


def is_dicomdir_name(name: str) -> bool:
    """Whether ``name`` is the name DICOM gives a media index (DICOMDIR, in any case)."""
    return _plain(name) == DICOMDIR.casefold()


def is_dicomdir(path: Path) -> bool:
    """Whether ``path`` is a DICOMDIR: its file meta names the Media Storage Directory SOP
    class (read alone, as pydicom reads it; the name is not enough)."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import MediaStorageDirectoryStorage

    if not path.is_file():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = read_file_meta_info(path)
    except Exception:  # third-party parser boundary: no or broken file meta
        return False
    return bool(meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage)


def find_dicomdir(folder: Path) -> Path | None:
    """The DICOMDIR directly in ``folder`` (named so in any case and read as one), or None."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for name in names:
        if is_dicomdir_name(name) and is_dicomdir(folder / name):
            return folder / name
    return None


class _Resolver:
    """Path components -> the file under a root, each matched exactly or else without regard
    to case (one listing per folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listings: dict[Path, dict[str, str]] = {}

    def __call__(self, parts: Sequence[str]) -> Path | None:
        here = self.root
        for part in parts:
            exact = here / part
            if exact.exists():
                here = exact
                continue
            if here not in self._listings:
                try:
                    names = sorted(os.listdir(here))
                except OSError:
                    names = []
                self._listings[here] = {_plain(n): n for n in reversed(names)}
            match = self._listings[here].get(_plain(part))
            if match is None:
                return None
            here = here / match
        return here if here.is_file() else None


def _components(value: object) -> tuple[str, ...]:
    """A Referenced File ID (one value or several) as its path components (a value holding
    ``/``, which some writers put in one component, split too)."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    try:
        parts = [part for v in values for part in str(v).split("/")]  # type: ignore[attr-defined]
    except TypeError:
        return ()
    return tuple(part for part in parts if part)


def listed_files(dicomdir: Path) -> list[ListedFile] | None:
    """Every file ``dicomdir`` lists (each record with a Referenced File ID), or None when it
    cannot be read as a DICOMDIR.

    pydicom's FileSet drops the records whose file it does not find under the exact listed
    name; their components are then taken from the directory records themselves, so a file
    present in another case still counts as found, and a missing one as missing.
    """
    import pydicom
    from pydicom.fileset import FileSet

    from radlens.models.dicomread import ignore_value_validation

    ignore_value_validation()
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    fileset: FileSet | None = None
    linked: dict[tuple[str, ...], tuple[str | None, frozenset[str], str | None]] = {}
    try:
        # FileSet logs and warns once per record whose file is missing: those are counted
        # below, and reported as one line by the caller
        pydicom_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(dicomdir, force=True)
                records = list(ds.get("DirectoryRecordSequence", []))
            except Exception:  # third-party parser boundary: not a readable DICOMDIR
                return None
            fileset = FileSet()
            try:
                fileset.load(ds)
            except Exception:  # records FileSet cannot link: their files, without patients
                log.debug("%s: its records do not form a file-set tree", dicomdir)
            else:
                linked = {
                    _components(getattr(inst, "ReferencedFileID", None)): (
                        _patient(inst),
                        _patient_words(inst),
                        _text(inst, "StudyInstanceUID"),
                    )
                    for inst in fileset
                }
    finally:
        pydicom_log.setLevel(level)
        _discard(fileset)
    resolve = _Resolver(dicomdir.parent)
    files: list[ListedFile] = []
    for record in records:
        parts = _components(record.get("ReferencedFileID"))
        if not parts:
            continue
        patient, words, study = linked.get(parts, (None, frozenset(), None))
        files.append(ListedFile(parts, resolve(parts), patient, words, study))
    return files


def _text(instance: object, keyword: str) -> str | None:
    """A record attribute of a FileSet instance (looked up in its record and those above)."""
    try:
        value = str(getattr(instance, keyword, "") or "").strip()
    except Exception:  # third-party parser boundary: an unparsable value
        return None
    return value or None


def _patient(instance: object) -> str | None:
    return _text(instance, "PatientID")


def _words(text: str) -> set[str]:
    """The words of a name (casefolded letters and digits, two characters or more)."""
    return {w for w in re.split(r"[^0-9a-z]+", text.casefold()) if len(w) > 1}


def _patient_words(instance: object) -> frozenset[str]:
    """The words of a patient's ID and name (``SMITH^JOHN`` -> smith, john)."""
    return frozenset(
        w for key in ("PatientID", "PatientName") for w in _words(_text(instance, key) or "")
    )


def _discard(fileset: object) -> None:
    """Remove the staging folder a FileSet makes when it is created (it is only used when a
    file-set is written): left to the garbage collector, it warns (ResourceWarning)."""
    stage = getattr(fileset, "_stage", None)
    folder = stage.get("t") if isinstance(stage, dict) else None
    cleanup = getattr(folder, "cleanup", None)
    if callable(cleanup):
        cleanup()


def dicomdir_reason(path: Path) -> str:
    """The skip reason of a DICOMDIR: the index of a media export, no image; and how many
    of the files it lists are missing, when any are."""
    reason = (
        "a DICOMDIR, the index of a DICOM media export (no image; the images it lists are "
        "read from their own files)"
    )
    files = listed_files(path)
    if files:
        missing = sum(f.found is None for f in files)
        if missing:
            reason += (
                f"; {missing} of the {len(files)} {MISSING_SAID}: an incomplete copy of the media?"
            )
    return reason


# A first-level folder name a media writer makes, not a label: the DICOM folder of IHE PDI
# media; a counter or ID such as PA000000, PT000000, ST000001, P0001, 77654033 (a prefix of
# up to four letters and three digits or more; PA/PT/ST/SE/... with any digits, e.g. PA1);
# or a hash-like 8-character name with three digits or more (A1B2C3D4)
_WRITER_NAME = re.compile(
    r"DICOM|IMAGES?|(?:PA|PT|PAT|ST|STU|SE|SER)_?\d+|[A-Z]{0,4}_?\d{3,}"
    r"|(?=(?:[A-Z]*\d){3})[A-Z0-9]{8}",
    re.IGNORECASE,
)


@dataclass
class SubFolder:
    """What a DICOMDIR lists under one sub-folder of the folder given."""

    name: str
    patients: set[str]
    patient_words: set[str]
    studies: set[str]


def media_verdict(folders: Sequence[SubFolder]) -> bool | None:
    """Whether the sub-folders a DICOMDIR lists files in are an export's own structure
    (True), a data set's class folders (False), or cannot be told apart (None).

    An export (True):
      - all the files are in one sub-folder: ``DICOM/``, or the one patient's ``PA000000/``
        (the common CD of one patient), or a single study's folder;
      - every sub-folder is named as media writers name them (:data:`_WRITER_NAME`:
        ``DICOM``, ``PA000000``, ``ST000001``, ``77654033``, ...), whatever the patients --
        an anonymised export's patient folders included;
      - each sub-folder is named for its own patient (a word of its PatientID or name).
    Class folders (False): a sub-folder holds two patients or more, or a study is split
    across sub-folders (an export keeps a study under one patient or study folder) -- what a
    class-folder data set shows even when anonymised to one constant PatientID.
    Anything else (label-like names, no patient links or one constant PatientID) is None.
    """
    if len(folders) == 1:
        return True
    if all(_WRITER_NAME.fullmatch(f.name) for f in folders):
        return True
    if any(len(f.patients) > 1 for f in folders):
        return False
    seen: dict[str, str] = {}
    for f in folders:
        for study in f.studies:
            if seen.setdefault(study, f.name) != f.name:
                return False
    if all(f.patients and _words(f.name) & f.patient_words for f in folders):
        return True
    return None


def check_not_media_export(root: Path) -> None:
    """Refuse ``root`` as a folder of class sub-folders when it is a DICOM media export (a
    DICOMDIR at its root) or the image folder of one (a DICOMDIR in its parent listing files
    under it): its sub-folders are then the export's patient, study or image folders, not
    classes.

    :func:`media_verdict` weighs the sub-folders the DICOMDIR lists files in; a DICOMDIR
    over what reads as (or may be) class folders is ignored with a one-line log warning.

    Raises:
        models.errors.ConfigurationError: one line: what the folder is, what to give, and
            how to go on when its sub-folders really are classes.
    """
    for base in dict.fromkeys((root, root.parent)):
        dicomdir = find_dicomdir(base)
        if dicomdir is None:
            continue
        files = listed_files(dicomdir)
        if not files:
            continue
        folders: dict[str, SubFolder] = {}
        under: list[ListedFile] = []
        for file in files:
            parts = file.parts
            if base != root:
                if len(parts) < 2 or _plain(parts[0]) != _plain(root.name):
                    continue  # listed beside root, not under it
                parts = parts[1:]
            if len(parts) < 2:
                continue  # directly in root, in no sub-folder
            folder = folders.setdefault(_plain(parts[0]), SubFolder(parts[0], set(), set(), set()))
            if file.patient is not None:
                folder.patients.add(file.patient)
            folder.patient_words.update(file.patient_words)
            if file.study is not None:
                folder.studies.add(file.study)
            under.append(file)
        if not folders:
            continue
        verdict = media_verdict(list(folders.values()))
        if not verdict:
            log.warning(
                "%s: a DICOMDIR was found and ignored: its %d sub-folder(s) are read as classes"
                "%s (a media export given as the data set would be refused)",
                dicomdir,
                len(folders),
                "" if verdict is False else ", as their names and patients do not show an export",
            )
            continue
        n_patients = len({f.patient for f in under if f.patient is not None})
        of = f" of {n_patients} patient(s)" if n_patients else ""
        what = (
            f"{str(root)!r} is a DICOM media export (a DICOMDIR at its root"
            if base == root
            else f"{str(root)!r} is the image folder of the DICOM media export "
            f"{str(base)!r} (its DICOMDIR"
        )
        raise ConfigurationError(
            f"{what} lists {len(under)} file(s){of} in "
            f"{len(folders)} sub-folder(s)), not a folder of class sub-folders: its folders "
            "would be taken for classes. Put each class's exports under a folder named for "
            "the class (DATA/<class>/<export>/...) and give DATA, or give a CSV manifest "
            "(path, label, patient_id); if its sub-folders really are classes, move "
            f"{str(dicomdir)!r} out of the way (the images are read without it)"
        )

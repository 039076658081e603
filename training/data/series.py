"""Series-labelled CSVs: one row labels a whole DICOM series; each of its slices inherits it.

A CT data set is usually labelled per series ("this scan shows a nodule"), not per slice.
:func:`open_series_csv` turns such a CSV into the ordinary :class:`~.sources.DataSource`
of slices, so the training pipeline, the patient split and the service's preprocessing stay
the ones every other source uses; each :class:`~.sources.Example` also carries ``series``
(``"<csv name>:<line>"``), which series-level evaluation (``training.series``) groups by.

Columns
    ``series_path`` -- a folder of the series' DICOM files (relative to the CSV's folder, or
    absolute; files at any depth), and/or ``series_uid`` -- its SeriesInstanceUID, found by
    scanning the DICOM root (``dicom_root``, default the CSV's folder) once. With both, the
    folder's files of that UID are used. ``patient_id`` (required: splits are by patient),
    the label column (``label``; multi-label: the spec's column, several findings joined by
    its separator, as :class:`~.sources.MultiLabelSpec` says) and ``split`` (optional:
    ``train``/``val``/``test``, empty = assigned by :func:`~.sources.split_source`).

Slices
    Every DICOM file of the series with pixel data is one example; a multi-frame instance
    gives one example per frame (key ``<path>#frame=<i>``, decoded with
    ``models.preprocessing.preprocess(..., frame=i)``). A file that is not a readable DICOM
    image is skipped and reported, as in any other source.

Errors (each a one-line :class:`~models.errors.ConfigurationError`, so the CLI exits 2)
    a series with no readable slice; a SeriesInstanceUID found in two folders (or not
    found); a folder holding several series without a ``series_uid`` to pick one; the same
    series on two rows; slices of one series that disagree on Modality or Rows x Columns
    (what the service refuses as ``series-mismatch``); a label not in the given class or
    finding list; a row without a patient id. A patient whose series sit in two given splits
    is refused by ``check_leakage`` when a run starts (``--resplit`` redoes the split).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radlens.models.errors import ConfigurationError
from radlens.training.data import sources as src

log = logging.getLogger(__name__)

SERIES_COLUMNS = ("series_path", "series_uid")
FRAME_SUFFIX = re.compile(r"#frame=(\d+)$")


def is_series_csv(columns: Sequence[str]) -> bool:
    """True for a series-labelled CSV: a ``series_path`` or ``series_uid`` column and no
    per-file ``path`` column."""
    return "path" not in columns and any(c in columns for c in SERIES_COLUMNS)


def frame_key(path: Path | str, frame: int) -> str:
    """The example key of one frame of a multi-frame file."""
    return f"{path}#frame={frame}"


def split_frame_key(key: str) -> tuple[str, int | None]:
    """``"<path>#frame=<i>"`` -> (path, i); any other key -> (key, None)."""
    match = FRAME_SUFFIX.search(key)
    if match is None:
        return key, None
    return key[: match.start()], int(match.group(1))


@dataclass(frozen=True)
class _Slice:
    """One readable DICOM file of a series, with what its series must agree on."""

    path: Path
    series_uid: str
    modality: str
    rows: int
    columns: int
    frames: int


def _read_header(path: Path) -> _Slice | None:
    """The header attributes of a DICOM file, or None when it is not a DICOM dataset."""
    import pydicom

    from radlens.models.dicomread import ignore_value_validation

    ignore_value_validation()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # third-party parser boundary: not a DICOM dataset
        return None
    if "SOPClassUID" not in ds and "Rows" not in ds:  # force=True parses junk as empty
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return _Slice(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip(),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        frames=max(frames, 1),
    )


class _UidIndex:
    """SeriesInstanceUID -> the folders holding its files, scanned once under a root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: dict[str, set[Path]] | None = None
        self._scanned = 0  # DICOM files with a SeriesInstanceUID found under root

    @property
    def scanned(self) -> int:
        if self._folders is None:
            self._folders = self._scan()
        return self._scanned

    def folders(self, uid: str) -> set[Path]:
        if self._folders is None:
            self._folders = self._scan()
        return self._folders.get(uid, set())

    def _scan(self) -> dict[str, set[Path]]:
        import pydicom

        from radlens.models.dicomread import ignore_value_validation

        ignore_value_validation()

        if not self.root.is_dir():
            raise ConfigurationError(
                f"the DICOM root {str(self.root)!r} is not a folder; give --dicom-root"
            )
        found: dict[str, set[Path]] = defaultdict(set)
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not src._is_hidden(d))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if src._is_hidden(name) or src._file_kind(path) != "dicom":
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ds = pydicom.dcmread(
                            path,
                            stop_before_pixels=True,
                            force=True,
                            specific_tags=["SeriesInstanceUID"],
                        )
                except Exception:  # third-party parser boundary: unreadable, not indexed
                    continue
                uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
                if uid:
                    found[uid].add(path.parent)
                    self._scanned += 1
        return found


def open_series_csv(
    csv_path: Path,
    *,
    class_names: Sequence[str] | None = None,
    multi_label: src.MultiLabelSpec | None = None,
    dicom_root: str | Path | None = None,
    validate: bool = True,
) -> src.DataSource:
    """Open a series-labelled CSV as a data source of slices (see the module docstring).

    Args:
        csv_path: the CSV.
        class_names: single-label: the allowed labels in index order (a model's or the
            config's list); an unlisted label is an error. None: from the data.
        multi_label: read the labels as sets of findings; ``spec.findings`` (when given)
            is the allowed list.
        dicom_root: where ``series_uid`` values are looked up (default: the CSV's folder).
        validate: read each slice's header and skip files that are not usable images.

    Raises:
        models.errors.ConfigurationError: one line naming the row and the problem.
    """
    label_column = multi_label.column if multi_label is not None else "label"
    columns, rows = src._read_csv(csv_path, extra=(label_column,))
    src.require_columns(
        csv_path,
        columns,
        (label_column, "patient_id"),
        f"series_path and/or series_uid, {label_column} and patient_id (optional: split) "
        "for a series CSV",
    )
    base = csv_path.parent
    index = _UidIndex(Path(dicom_root) if dicom_root is not None else base)
    _check_series_found(csv_path, rows, index, root_given=dicom_root is not None)
    names, label_of, order = _labels(csv_path, rows, class_names, multi_label)
    key = src.patient_hash_key()
    examples: list[src.Example] = []
    skipped: list[src.SkippedFile] = []
    ignored: Counter[str] = Counter()
    seen: dict[tuple[str, ...], int] = {}
    for line, row in zip(src.csv_lines(rows), rows, strict=True):
        where = f"{csv_path.name} line {line}"
        raw_patient = row.get("patient_id", "").strip()
        if not raw_patient:
            raise ConfigurationError(
                f"empty patient_id at {where}; every series needs one (splits are by patient)"
            )
        slices, bad = _series_slices(row, base, index, where, validate=validate, ignored=ignored)
        skipped.extend(bad)
        identity = tuple(sorted(str(s.path) for s in slices))
        if identity in seen:
            raise ConfigurationError(
                f"the series at {where} is the one of line {seen[identity]}; list each series once"
            )
        seen[identity] = line
        label, findings = label_of(row, where)
        patient = src.hash_patient_id(f"PatientID:{raw_patient}", key)
        split = src._normalise_split(row.get("split"), where=where)
        series_id = f"{csv_path.name}:{line}"
        for item in slices:
            keys = (
                [str(item.path)]
                if item.frames == 1
                else [frame_key(item.path, i) for i in range(item.frames)]
            )
            examples.extend(
                src.Example(k, label, patient, split, findings, series=series_id) for k in keys
            )
    source = src.DataSource(
        names,
        examples,
        "csv",
        csv_path,
        skipped,
        patient_source="patient_id column",
        multi_label=multi_label is not None,
        none_name=multi_label.none_name if multi_label is not None else None,
        class_order=order,
        ignored=dict(ignored),
    )
    if multi_label is not None:
        src._check_findings(source, str(csv_path))
    else:
        src._check_classes(source, str(csv_path))
    return source


def _check_series_found(
    csv_path: Path, rows: Sequence[src.CsvRow], index: _UidIndex, *, root_given: bool
) -> None:
    """Refuse a series CSV none of whose series exists, saying where they were looked for, as
    a labels CSV none of whose paths exists is refused (QA round 103): the first row's folder
    was refused alone ("series folder ... does not exist"), not saying that folders are read
    relative to the CSV's folder, nor that none of the others exists either (QA round 106).
    Only the folder written and counts are shown: no patient id, no UID."""
    base = csv_path.parent
    written = [row.get("series_path", "").strip() for row in rows]
    folders = [w for w in written if w]
    if folders:
        if any((Path(w) if Path(w).is_absolute() else base / w).is_dir() for w in folders):
            return
        relative = [w for w in folders if not Path(w).is_absolute()]
        if not relative:
            raise ConfigurationError(
                f"none of the {len(folders)} series folder(s) in {str(csv_path)!r} exists, "
                f"e.g. {folders[0]!r}; check the series_path column"
            )
        here = sum(Path(w).is_dir() for w in relative)
        found_here = (
            f"; {here} of them exist relative to the current folder instead"
            if here and base.resolve() != Path.cwd().resolve()
            else ""
        )
        raise ConfigurationError(
            f"none of the {len(folders)} series folder(s) in {str(csv_path)!r} exists: "
            f"series_path is read relative to the CSV's folder {str(base)!r}, e.g. "
            f"{relative[0]!r} as {str(base / relative[0])!r}{found_here}; write the folders "
            "relative to that folder, or as absolute paths"
        )
    uids = [row.get("series_uid", "").strip() for row in rows]
    uids = [u for u in uids if u]
    if not uids or any(index.folders(u) for u in uids):
        return
    which = "--dicom-root" if root_given else "the CSV's folder, as no --dicom-root was given"
    raise ConfigurationError(
        f"none of the {len(uids)} series_uid value(s) in {str(csv_path)!r} was found under the "
        f"DICOM root {str(index.root)!r} ({which}; {index.scanned} DICOM file(s) with a "
        "SeriesInstanceUID there, of other series): give --dicom-root the folder holding the "
        "series, or a series_path column"
    )


def _labels(
    csv_path: Path,
    rows: Sequence[src.CsvRow],
    class_names: Sequence[str] | None,
    spec: src.MultiLabelSpec | None,
) -> tuple[list[str], Any, str]:
    """Class (or finding) names, row -> (label, findings or None), and how the names were
    ordered (``DataSource.class_order``)."""
    if spec is None:
        names, index_of, order = src._csv_labels(csv_path, rows, class_names)

        def single(row: dict[str, str], where: str) -> tuple[int, tuple[int, ...] | None]:
            return index_of(row, where), None

        return names, single, order
    parsed = [
        spec.parse(row[spec.column], where=f"{csv_path.name} line {line}")
        for line, row in zip(src.csv_lines(rows), rows, strict=True)
    ]
    seen = sorted({name for found in parsed for name in found})
    if spec.findings is None:  # as a file manifest: "no finding" is not a finding
        src._one_spelling([*seen, spec.none_name], str(csv_path))
    names = list(spec.findings) if spec.findings is not None else seen
    unknown = sorted(set(seen) - set(names))
    if unknown:
        raise ConfigurationError(
            f"finding(s) {unknown!r} in {str(csv_path)!r} are not in the finding list "
            f"{names!r}; add them to the list or fix the labels"
        )
    position = {name: i for i, name in enumerate(names)}

    def multi(row: dict[str, str], where: str) -> tuple[int, tuple[int, ...] | None]:
        found = tuple(sorted(position[n] for n in spec.parse(row[spec.column], where=where)))
        return int(bool(found)), found

    return names, multi, "given"


def _series_slices(
    row: dict[str, str],
    base: Path,
    index: _UidIndex,
    where: str,
    *,
    validate: bool,
    ignored: Counter[str] | None = None,
) -> tuple[list[_Slice], list[src.SkippedFile]]:
    """The readable slices of one row's series (refusing what cannot be one series), and the
    files skipped with their reason; system files passed by are counted in ``ignored``."""
    folder_value = row.get("series_path", "").strip()
    uid = row.get("series_uid", "").strip()
    if not folder_value and not uid:
        raise ConfigurationError(f"no series_path or series_uid at {where}")
    if folder_value:
        folder = Path(folder_value) if Path(folder_value).is_absolute() else base / folder_value
        if not folder.is_dir():
            relative = "" if Path(folder_value).is_absolute() else f" ({str(folder)!r})"
            raise ConfigurationError(
                f"series folder {folder_value!r} at {where} does not exist or is not a folder"
                f"{relative}: series_path is read relative to the CSV's folder"
            )
        folders = [folder]
    else:
        found = sorted(index.folders(uid))
        if not found:
            raise ConfigurationError(
                f"series_uid at {where} was not found under the DICOM root "
                f"{str(index.root)!r}; give --dicom-root or a series_path"
            )
        if len(found) > 1:
            shown = ", ".join(repr(str(f)) for f in found[:3])
            raise ConfigurationError(
                f"series_uid at {where} is found in {len(found)} folders ({shown}); one series "
                "must sit in one folder: give series_path to choose, or remove the copy"
            )
        folders = found
    slices: list[_Slice] = []
    skipped: list[src.SkippedFile] = []
    for folder in folders:
        if folder_value:
            files, unnamed = src._walk_files(folder, ignored)
            skipped.extend(unnamed)
        else:
            files = _files_in(folder, ignored)
        for file in files:
            reason = src._probe_file(file) if validate else src._probe_kind_only(file)
            header = _read_header(file) if reason is None else None
            if reason is None and header is None:
                reason = "not a DICOM file (a series holds DICOM slices only)"
            if reason is not None or header is None:
                skipped.append(src.SkippedFile(str(file), reason or "unreadable"))
                log.warning("skipping %s: %s", file, reason)
                continue
            if uid and header.series_uid != uid:
                continue  # another series in the same folder: not this row's
            slices.append(header)
    if not slices:
        what = f"folder {folder_value!r}" if folder_value else "series_uid"
        if folder_value and uid:
            what += " with the given series_uid"
        raise ConfigurationError(
            f"the series at {where} ({what}) has no readable DICOM slice"
            + (f" ({len(skipped)} file(s) skipped)" if skipped else "")
        )
    _check_one_series(slices, where, picked=bool(uid))
    return slices, skipped


def _files_in(folder: Path, ignored: Counter[str] | None = None) -> list[Path]:
    """The files directly in ``folder`` (a UID's folder from the index) but system and hidden
    ones (``sources.ignored_kind``: a Thumbs.db was skipped as "not a DICOM file"), which are
    counted in ``ignored``."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not src._is_hidden(p.name, ignored)
    )


def _check_one_series(slices: Sequence[_Slice], where: str, *, picked: bool) -> None:
    """Refuse slices that cannot be one series: several SeriesInstanceUIDs (unless the row's
    series_uid picked one), or disagreeing Modality or Rows x Columns."""
    uids = {s.series_uid for s in slices if s.series_uid}
    if not picked and len(uids) > 1:
        raise ConfigurationError(
            f"the series folder at {where} holds {len(uids)} series (different "
            "SeriesInstanceUIDs); give series_uid to choose one, or one folder per series"
        )
    first = slices[0]
    for s in slices[1:]:
        if s.modality != first.modality:
            raise ConfigurationError(
                f"the slices of the series at {where} disagree on Modality ({first.modality!r} "
                f"in {first.path.name}, {s.modality!r} in {s.path.name}); one series has one"
            )
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise ConfigurationError(
                f"the slices of the series at {where} disagree on Rows x Columns "
                f"({first.rows}x{first.columns} in {first.path.name}, {s.rows}x{s.columns} in "
                f"{s.path.name}); one series has one size"
            )


def series_counts(source: src.DataSource, examples: Sequence[src.Example]) -> dict[str, Any]:
    """Series, slices and patients in ``examples``, overall and per class (multi-label: per
    finding, a series counted under each of its findings). JSON-ready, no identifier."""
    by_series: dict[str, src.Example] = {}
    for e in examples:
        if e.series is not None:
            by_series.setdefault(e.series, e)
    slices_of: dict[str, int] = defaultdict(int)
    for e in examples:
        if e.series is not None:
            slices_of[e.series] += 1
    per_class: dict[str, dict[str, int]] = {}
    for i, name in enumerate(source.class_names):
        members = [
            s
            for s, e in by_series.items()
            if (i in (e.findings or ()) if source.multi_label else e.label == i)
        ]
        per_class[name] = {
            "series": len(members),
            "slices": sum(slices_of[s] for s in members),
            "patients": len({by_series[s].patient_id for s in members}),
        }
    return {
        "series": len(by_series),
        "slices": sum(slices_of.values()),
        "patients": len({e.patient_id for e in by_series.values()}),
        "per_class": per_class,
    }

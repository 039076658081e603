"""Training data sources: a folder of class sub-folders, a CSV manifest, or a MedMNIST .npz.

Every source is opened into one :class:`DataSource`: ``class_names``, a list of
:class:`Example` (a key, an integer label, an optional patient id and an optional given
split) and the files that were skipped, with the reason. Pixels are always produced by
``models.preprocessing`` -- the same call the service makes -- so training and serving see
identical arrays for the same file.

Folder layout
    ``ROOT/<class>/.../<file>``: the class names are the sorted names of the direct
    sub-folders of ROOT (hidden ones ignored) -- except that in a two-class set a negative
    name (``normal``, ``negative``, ``healthy``, ``benign``, ``no_finding``) comes first,
    so class 1 is the positive class (see :func:`order_class_names`); ``class_names=``
    sets the order explicitly. Files may sit at any depth below their class folder.
    Every non-hidden file is recognised **by content**, by the service's own
    ``models.preprocessing.sniff_format`` (DICOM with or without its preamble, the PNG
    signature, the JPEG SOI marker); a ``.dcm``/``.dicom`` file it does not recognise is
    still accepted when pydicom can parse its header. A file that is not
    recognised, or whose header is unusable (no pixel data, zero-size image), is reported
    as a :class:`SkippedFile` and left out -- it never stops the scan. Hidden files and
    folders (a leading ``.``) are ignored, and so are operating-system, office and NAS
    metadata (``__MACOSX``, ``@eaDir``, ``Thumbs.db``, ``desktop.ini``, ``~$`` lock files,
    ...: :func:`ignored_kind`), counted by kind in ``DataSource.ignored``. A DICOM
    media export (a CD's DICOMDIR and extensionless images) sits below its class folder as
    it is; a folder that is one, given as ROOT, is refused (``training.data.media``).

CSV manifest
    Columns ``path`` and ``label`` (required), ``patient_id`` and ``split`` (optional),
    named in any case and spacing (``Path``, `` LABEL ``, ``Patient ID``: :func:`_csv_columns`);
    UTF-8 with or without Excel's byte-order mark, or UTF-16 with its mark; fields separated
    by ``,`` or -- when the header holds none -- ``;`` or a tab, or as an Excel ``sep=`` first
    line says (:data:`CSV_SEPARATORS`); rows of empty cells are blank lines.
    Paths are relative to the CSV's folder. Labels are class names (ordered like folder
    names, or as ``class_names=`` says), or -- when every label is an integer -- class
    indices 0..K-1 (``1.0`` as pandas writes them too), named from a ``label_name`` column
    when present,
    else ``class_0``, ``class_1``, .... Split values ``train``, ``val`` (also ``valid``,
    ``validation``), ``test``; an empty cell means "not assigned".

Series-labelled CSV
    Columns ``series_path`` and/or ``series_uid`` instead of ``path``, with ``label``,
    ``patient_id`` and an optional ``split``: one row labels a whole DICOM series and each
    of its slices (each frame of a multi-frame file) becomes an example carrying the series'
    label and ``Example.series``. See ``training.data.series``.

MedMNIST .npz
    Keys ``<split>_images``/``<split>_labels`` for at least one of train, val, test (a file
    holding only ``test_*`` serves ``radlens evaluate --split test``; training needs train) (labels
    of shape (N, 1) or (N,)); the key of an example is ``npz:<split>:<index>``. Class names
    default to ``class_0``.. unless ``class_names=`` is given.

Patients
    Every patient id is replaced at read time by a keyed hash (:func:`hash_patient_id`,
    HMAC-SHA256 with the key of :func:`patient_hash_key`), so no raw identifier reaches a
    run folder, a log, a manifest or TensorBoard. A DICOM file in a folder data set takes
    its patient from PatientID and, where that is empty, from StudyInstanceUID (so the
    slices of one series stay together). CSV ``patient_id`` cells are hashed the same way.
    PNG/JPEG files in a folder carry no patient information (``patient_source`` says so).

Layout problems (a path that does not exist, an empty class folder, a single class, a
missing label column, an unknown label) raise :class:`models.errors.ConfigurationError`
at :func:`open_source` time, with a one-line message naming the problem.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import hmac
import itertools
import logging
import os
import random
import re
import secrets
import tempfile
import unicodedata
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO

import numpy as np

from radlens.models import preprocessing
from radlens.models.errors import (
    BlankImageError,
    ConfigurationError,
    NotAnImageError,
    RadlensError,
    TruncatedDataError,
)
from radlens.models.intended_use import non_image_kind
from radlens.training.data import media

log = logging.getLogger(__name__)

SourceKind = Literal["folder", "csv", "npz"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})

HEAD_BYTES = 132  # enough for sniff_format: DICOM's preamble and "DICM" prefix
TAIL_BYTES = 18  # and a TGA's signature at its end, which sniff_format also looks at
MISSING_FILE = "file does not exist"  # the skip reason of a manifest row naming no file
# a manifest kept as a spreadsheet, or exported as text under another suffix: said so
SPREADSHEET_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".ods", ".numbers"})
TEXT_TABLE_SUFFIXES = frozenset({".tsv", ".tab", ".txt"})

PATIENT_KEY_ENV = "RADLENS_PATIENT_HASH_KEY"
PATIENT_KEY_FILE_ENV = "RADLENS_PATIENT_HASH_KEY_FILE"
# as the service's HMAC keys (RADLENS_UID_PSEUDONYM_KEY, RADLENS_DEDUPE_KEY); shorter ones are
# warned of, not refused: a split drawn under a key is only reproduced with that key
MIN_PATIENT_KEY_LENGTH = 16
_WARNED_SHORT_KEYS: set[str] = set()  # sha256 of each short key warned of (once a process)


def patient_key_file() -> Path:
    """Where the per-user random patient-hash key lives when the environment gives none:
    ``$RADLENS_PATIENT_HASH_KEY_FILE``, else ``$XDG_CONFIG_HOME/radlens/patient-hash.key``
    (``~/.config/...``) -- outside every run folder and model store."""
    given = os.environ.get(PATIENT_KEY_FILE_ENV)
    if given:
        return Path(given)
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "radlens" / "patient-hash.key"


def patient_hash_key() -> bytes:
    """The key of the patient-id hash.

    ``$RADLENS_PATIENT_HASH_KEY`` when set (share it between machines that must split the
    same data alike); else a random 32-byte key created once, mode 0600, in
    :func:`patient_key_file`. The key must stay the same between ``radlens train`` and
    ``radlens evaluate`` of a data set, since the split is drawn from the hashed ids.
    """
    env = os.environ.get(PATIENT_KEY_ENV)
    if env:
        seen = hashlib.sha256(env.encode()).hexdigest()
        if len(env) < MIN_PATIENT_KEY_LENGTH and seen not in _WARNED_SHORT_KEYS:
            _WARNED_SHORT_KEYS.add(seen)
            log.warning(
                "%s is %d characters long: the run's splits.csv keeps each patient's hash and "
                "the manifest a check digest of the key, so a short key can be found by trying "
                "keys, and the patient ids by trying ids; use at least %d random characters "
                "(the same for train and evaluate of a data set)",
                PATIENT_KEY_ENV,
                len(env),
                MIN_PATIENT_KEY_LENGTH,
            )
        return env.encode()
    path = patient_key_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole under another name, then linked into place: a process reading the
        # key meanwhile (two trainings, two test workers) never sees an empty file
        fd, staged = tempfile.mkstemp(prefix=".patient-hash-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:  # mkstemp: mode 0600
                fh.write(secrets.token_hex(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process made it first
                os.link(staged, path)
        finally:
            os.unlink(staged)
    key = path.read_text().strip()
    if not key:
        raise ConfigurationError(
            f"the patient-hash key file {str(path)!r} is empty; delete it or set {PATIENT_KEY_ENV}"
        )
    return key.encode()


def patient_key_check(key: bytes | None = None) -> str:
    """A short keyed digest of a constant: tells whether two runs used the same key (a split
    drawn from hashed ids is only reproduced with the same key), revealing neither."""
    digest = hmac.new(patient_hash_key() if key is None else key, b"radlens-key-check", "sha256")
    return digest.hexdigest()[:12]


def hash_patient_id(raw: str, key: bytes | None = None) -> str:
    """``"p-"`` + 16 hex digits of HMAC-SHA256(key, raw id): stable, not reversible."""
    digest = hmac.new(patient_hash_key() if key is None else key, raw.encode(), "sha256")
    return "p-" + digest.hexdigest()[:16]


@dataclass(frozen=True)
class Example:
    """One labelled image: ``key`` is a file path or ``"npz:<split>:<index>"``.

    In a multi-label source ``findings`` holds the indices of the image's findings (empty:
    none) and ``label`` is 1 when it has any finding, else 0 (what splits stratify on).
    """

    key: str
    label: int
    patient_id: str | None = None
    split: str | None = None
    findings: tuple[int, ...] | None = None
    # series-labelled sources (training.data.series): the series this slice belongs to
    # ("<csv name>:<line>"), what series-level evaluation groups by; None elsewhere
    series: str | None = None


@dataclass(frozen=True)
class MultiLabelSpec:
    """How a multi-label data set writes its findings.

    ``column``: the CSV column holding them (``label`` by default; NIH ChestX-ray14 calls it
    ``nih_finding_labels``); ``separator`` joins several findings in one cell
    (``Effusion|Infiltration``); ``none_name`` is the cell of an image without any finding
    (``No Finding``); ``findings``: the allowed finding names in output order (None: every
    name the data holds, sorted). Folder layouts name each class folder the same way
    (``Effusion+Infiltration/`` with ``separator="+"``).
    """

    column: str = "label"
    separator: str = "|"
    none_name: str = "No Finding"
    findings: tuple[str, ...] | None = None
    # findings left out of the model: dropped from every label (an image keeps its other
    # findings; each remaining finding's negatives stay true negatives)
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.separator or self.separator.strip() != self.separator:
            raise ConfigurationError(
                "the finding separator (--label-separator; label_separator: in a --config "
                f"file) must be non-empty, without spaces; got {self.separator!r}"
            )
        if not self.none_name.strip():
            raise ConfigurationError(
                "the no-finding name (--no-finding; no_finding: in a --config file) must not be "
                "empty"
            )
        if not self.column.strip():
            raise ConfigurationError(
                "the finding label column (--label-column; label_column: in a --config file) "
                "must not be empty"
            )

    def parse(self, value: str, *, where: str) -> list[str]:
        """The finding names of one label cell (``[]`` for the no-finding name).

        Raises:
            ConfigurationError: an empty cell, or the no-finding name joined to findings.
        """
        text = value.strip()
        if not text:
            raise ConfigurationError(f"empty finding label at {where}")
        if text == self.none_name:
            return []
        names = [part.strip() for part in text.split(self.separator) if part.strip()]
        if self.none_name in names:
            raise ConfigurationError(
                f"{self.none_name!r} is joined to findings at {where}: {value!r}"
            )
        kept = [name for name in names if name not in self.ignore]
        return sorted(set(kept), key=kept.index)


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of a data set, and why (for the CLI to print)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class DataSource:
    """A labelled data set: class names, examples and the files that were skipped."""

    class_names: list[str]
    examples: list[Example]
    kind: SourceKind
    root: Path
    skipped: list[SkippedFile] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # where patient ids came from: "PatientID/StudyInstanceUID" (DICOM), "patient_id column"
    # (CSV), "none" (no patient information: splits are per image)
    patient_source: str = "none"
    # multi-label: class_names are the finding names, each example carries ``findings``
    multi_label: bool = False
    none_name: str | None = None  # the multi-label "no finding" name
    # every example decoded once (``drop_undecodable``): the undecodable are in ``skipped``
    decode_checked: bool = False
    # what that decode saw, per example key: a sha256 of the pixels (decoded at the check size;
    # an npz image's stored array), so identical images under two names are known as copies
    digests: dict[str, str] = field(default_factory=dict, repr=False)
    # what that decode saw of each colour image, per example key: its share of pixels in
    # colour (ImageMetadata.colour_fraction); gray images are not listed
    colours: dict[str, float] = field(default_factory=dict, repr=False)
    # the colour images the intended use refuses were left out (training.data.intended)
    colour_checked: bool = False
    # how class_names were ordered: "names" (order_class_names: a negative-sounding name
    # first, else alphabetical), "index" (integer labels, npz), "given" (class_names=)
    class_order: str = "given"
    # the system and hidden files and folders a folder scan passed by, per kind
    # (ignored_kind: .DS_Store, Thumbs.db, ~$ lock files, ...): not images, never read
    ignored: dict[str, int] = field(default_factory=dict)

    @property
    def has_patients(self) -> bool:
        """True when at least one example carries a (hashed) patient id."""
        return any(e.patient_id is not None for e in self.examples)

    @property
    def has_series(self) -> bool:
        """True for a series-labelled source: examples are slices grouped by ``series``."""
        return any(e.series is not None for e in self.examples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self, examples: Iterable[Example] | None = None) -> dict[str, int]:
        """Images per class name (of ``examples``, default all); multi-label: images with
        each finding."""
        items = self.examples if examples is None else examples
        if self.multi_label:
            counts = Counter(i for e in items for i in e.findings or ())
        else:
            counts = Counter(e.label for e in items)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def targets(self, examples: Sequence[Example]) -> np.ndarray:
        """Training targets: int32 labels (N,), or float32 multi-hot (N, findings)."""
        if not self.multi_label:
            return np.asarray([e.label for e in examples], dtype=np.int32)
        hot = np.zeros((len(examples), self.num_classes), dtype=np.float32)
        for row, e in enumerate(examples):
            hot[row, list(e.findings or ())] = 1.0
        return hot

    def raw_array(self, example: Example) -> np.ndarray:
        """The stored 2-D pixel array of an npz example (uint8/uint16 gray)."""
        split, index = _parse_npz_key(example.key)
        images = self.arrays.get(split)
        if images is None or not 0 <= index < len(images):
            raise ConfigurationError(f"no such npz example: {example.key!r}")
        return np.asarray(images[index])

    def read_bytes(self, example: Example) -> bytes:
        """The file bytes of a folder/CSV example (what a client would upload)."""
        if self.kind == "npz":
            raise ConfigurationError(f"npz examples have no file bytes: {example.key!r}")
        from radlens.training.data.series import split_frame_key

        return Path(split_frame_key(example.key)[0]).read_bytes()

    def load_pixels(
        self,
        example: Example,
        *,
        size: int | tuple[int, int] | None,
        window: str | None = None,
        version: str | None = None,
    ) -> np.ndarray:
        """Model-ready pixels, float32 (H, W, 1) in [0, 1], via ``models.preprocessing``.

        Files go through ``preprocess(bytes, size=, window=).model_input()`` -- the exact
        call the service makes. npz arrays go through ``preprocess_array(array, size=)``,
        which is defined to equal ``preprocess`` of the PNG bytes of the array; ``window``
        (a CT window preset in HU) does not apply to these 8/16-bit gray arrays and is
        ignored for them.

        ``version``: the preprocessing version to reproduce (a stored model's manifest says
        which; None: the current one), as the service feeds that model.

        Raises:
            models.errors.PreprocessingError: the file could not be decoded, or is blank
                (BlankImageError: every stored pixel one value, which the service refuses).
            OSError: the file could not be read.
        """
        return self.decode(example, size=size, window=window, version=version)[0]

    def decode(
        self,
        example: Example,
        *,
        size: int | tuple[int, int] | None,
        window: str | None = None,
        version: str | None = None,
    ) -> tuple[np.ndarray, float | None]:
        """:meth:`load_pixels`, and the image's colour fraction (``ImageMetadata.
        colour_fraction``; None for a gray image or an npz array), which the intended-use
        colour rule reads (models.intended_use.colour_violation)."""
        hw = as_size(size)
        if self.kind == "npz":
            pixels = preprocessing.preprocess_array(
                self.raw_array(example),
                size=hw,
                version=version or preprocessing.PREPROCESSING_VERSION,
            )
            return np.asarray(pixels, dtype=np.float32)[..., np.newaxis], None
        from radlens.training.data.series import split_frame_key

        data = self.read_bytes(example)
        # a DICOM file is parsed as the service parses an upload (parse_dicom: a Siemens
        # mosaic, many slices in one picture, is refused there, so skipped here)
        dataset = (
            preprocessing.parse_dicom(data) if preprocessing.sniff_format(data) == "dicom" else None
        )
        image = preprocessing.preprocess(
            data,
            size=hw,
            window=window,
            version=version or preprocessing.PREPROCESSING_VERSION,
            frame=split_frame_key(example.key)[1],  # one frame of a multi-frame slice
            dataset=dataset,
        )
        if image.metadata.blank:  # what the service refuses is not trained or evaluated on
            raise preprocessing.blank_image_error(image.metadata)
        pixels = np.asarray(image.model_input(), dtype=np.float32)
        return pixels, image.metadata.colour_fraction


def as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``64`` or ``(64, 64)`` -> ``(height, width)``; None stays None."""
    if size is None:
        return None
    if isinstance(size, int | np.integer):
        hw = (int(size), int(size))
    else:
        values = tuple(int(v) for v in size)
        if len(values) != 2:
            raise ConfigurationError(f"size must be an int or (height, width); got {size!r}")
        hw = (values[0], values[1])
    if hw[0] < 1 or hw[1] < 1:
        raise ConfigurationError(f"size must be positive; got {size!r}")
    return hw


# --- opening -----------------------------------------------------------------------------


def open_source(
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    validate: bool = True,
    multi_label: MultiLabelSpec | None = None,
    dicom_root: str | Path | None = None,
) -> DataSource:
    """Open a folder of class sub-folders, a ``.csv`` manifest or a ``.npz`` file.

    Args:
        path: the folder, CSV or npz file.
        class_names: the class names in index order. Folder: must name exactly the
            sub-folders; CSV: the allowed labels (an unlisted label is an error); npz:
            names for label 0, 1, ... (default ``class_0``, ...).
        validate: read each file's header at scan time (cheap) and skip files that cannot
            be images. When False, every candidate file is kept and unreadable ones are
            skipped during decoding instead.
        multi_label: open the labels as sets of findings (see :class:`MultiLabelSpec`):
            a CSV column or class-folder names; not for npz files.
        dicom_root: a series-labelled CSV (``training.data.series``: ``series_path`` /
            ``series_uid`` columns instead of ``path``) looks its ``series_uid`` values up
            under this folder (default: the CSV's folder).

    Raises:
        models.errors.ConfigurationError: the path does not exist, or the layout or labels
            are unusable (the message names the problem).
    """
    p = Path(path)
    if not p.exists():
        raise ConfigurationError(f"data path does not exist: {str(p)!r}")
    _check_folder_readable(p)
    if p.is_dir():  # a CD export's patient folders are no classes (QA round 53)
        media.check_not_media_export(p)
    if p.is_file() and p.suffix.lower() == ".csv" and _is_series_csv(p):
        from radlens.training.data.series import open_series_csv

        source = open_series_csv(
            p,
            class_names=class_names,
            multi_label=multi_label,
            dicom_root=dicom_root,
            validate=validate,
        )
    elif multi_label is not None:
        source = _open_multi_label(p, multi_label, validate=validate)
    elif p.is_dir():
        source = _open_folder(p, class_names=class_names, validate=validate)
    elif p.suffix.lower() == ".csv":
        source = _open_csv(p, class_names=class_names, validate=validate)
    elif p.suffix.lower() == ".npz":
        source = _open_npz(p, class_names=class_names)
    elif p.suffix.lower() in SPREADSHEET_SUFFIXES:
        raise ConfigurationError(
            f"{str(p)!r} is a spreadsheet, which radlens does not read: save it as a .csv "
            "manifest (Excel: Save As 'CSV UTF-8 (Comma delimited)') and give that"
        )
    elif p.suffix.lower() in TEXT_TABLE_SUFFIXES:
        raise ConfigurationError(
            f"a manifest is read by its .csv suffix (fields separated by ',', ';' or tabs); "
            f"{str(p)!r} ends in {p.suffix}: rename it to .csv"
        )
    else:
        raise ConfigurationError(
            f"data path must be a folder, a .csv manifest or a .npz file; got {str(p)!r}"
        )
    if source.skipped:
        log.warning("%d file(s) skipped in %s", len(source.skipped), p)
    return source


def _is_series_csv(csv_path: Path) -> bool:
    """Whether a CSV labels series (``training.data.series``) rather than files."""
    from radlens.training.data.series import is_series_csv

    with _reading_csv(csv_path), _open_csv_text(csv_path) as fh:
        reader, _ = _csv_reader(fh)
        header: list[str] = next(reader, [])
    return is_series_csv(_csv_columns(csv_path, header))


@contextlib.contextmanager
def _reading_csv(csv_path: Path) -> Iterator[None]:
    """A CSV manifest that is not UTF-8 text, or not CSV (e.g. a field over the csv module's
    limit: a binary blob), refused naming the file."""
    try:
        yield
    except UnicodeError as exc:
        raise ConfigurationError(
            f"CSV manifest {str(csv_path)!r} is not UTF-8 text; save it as UTF-8 (Excel: "
            "'CSV UTF-8 (Comma delimited)')"
        ) from exc
    except csv.Error as exc:
        raise ConfigurationError(
            f"CSV manifest {str(csv_path)!r} cannot be read as CSV ({exc}); check the file"
        ) from exc


def _open_csv_text(csv_path: Path) -> TextIO:
    """A manifest opened as text: UTF-8, with or without the byte-order mark Excel writes, or
    UTF-16 when it starts with that encoding's mark (Excel's "Unicode Text")."""
    with csv_path.open("rb") as fh:
        start = fh.read(2)
    encoding = "utf-16" if start in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    return csv_path.open(newline="", encoding=encoding)


_EXCEL_SEP_LINE = re.compile(r"sep=(.)")
CSV_SEPARATORS = (",", ";", "\t")
"""The field separators a manifest may use: ``,``, or -- when the header holds no ``,`` --
``;`` (Excel where the decimal mark is a comma) or a tab (Excel's "Unicode Text")."""


def _csv_reader(fh: TextIO) -> tuple[Any, int]:
    """A csv reader over a manifest, reading its fields as its header separates them (see
    :data:`CSV_SEPARATORS`; an Excel ``sep=;`` first line says so itself and is passed), and
    how many lines precede the header (for the line numbers the messages name)."""
    first = fh.readline()
    said = _EXCEL_SEP_LINE.fullmatch(first.strip("\r\n\ufeff"))
    if said is not None:
        return csv.reader(fh, delimiter=said.group(1)), 1
    separator = next((s for s in CSV_SEPARATORS if s in first), ",")
    return csv.reader(itertools.chain([first], fh), delimiter=separator), 0


class CsvRow(dict[str, str]):
    """One manifest row (keys stripped) and ``line``, the file line it starts on: blank lines
    (skipped) and quoted line breaks make that other than its row number + 1."""

    line: int = 0


def csv_lines(rows: Sequence[Mapping[str, str]]) -> list[int]:
    """The file line of each row (:class:`CsvRow`), as the messages naming a line quote it."""
    return [row.line if isinstance(row, CsvRow) else i for i, row in enumerate(rows, start=2)]


MANIFEST_COLUMNS = (
    "path",
    "label",
    "patient_id",
    "split",
    "label_name",
    "series_path",
    "series_uid",
)
"""The columns radlens reads from a manifest (a multi-label one adds its label column). A
header naming one in another case, with spaces around it, or its words separated otherwise
(``Path``, ``PATH``, `` label ``, ``Patient ID``, ``PatientID``) is read as it
(:func:`_csv_columns`)."""


def _column_key(name: str) -> str:
    """A column name as compared with radlens' names: case, Unicode width, spaces, ``_`` and
    ``-`` aside (``Patient ID``, ``PatientID`` and ``patient-id`` are ``patient_id``)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(folded.replace("_", " ").replace("-", " ").split())


def _csv_columns(csv_path: Path, header: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """A manifest's column names, stripped (spaces, a stray byte-order mark), each one radlens
    reads (:data:`MANIFEST_COLUMNS` and ``extra``, a multi-label set's label column) under
    radlens' spelling of it.

    Raises:
        ConfigurationError: two columns that are both one of radlens' (``Label`` and
            ``label``): which one holds the labels cannot be told.
    """
    columns = [c.strip().strip("\ufeff").strip() for c in header]
    wanted = {_column_key(name): name for name in (*MANIFEST_COLUMNS, *extra)}
    spellings: dict[str, list[str]] = defaultdict(list)
    for column in columns:
        if _column_key(column) in wanted:
            spellings[_column_key(column)].append(column)
    clash = next((found for found in spellings.values() if len(found) > 1), None)
    if clash is not None:
        name = wanted[_column_key(clash[0])]
        how = (
            "twice" if len(set(clash)) == 1 else "in spellings that differ only in case or spacing"
        )
        raise ConfigurationError(
            f"CSV manifest {str(csv_path)!r} has the {name!r} column {how} ("
            f"{', '.join(repr(c) for c in clash)}): which one to read cannot be told; remove or "
            "rename all but one"
        )
    return [wanted.get(_column_key(c), c) for c in columns]


def require_columns(
    csv_path: Path, columns: Sequence[str], required: Sequence[str], expected: str
) -> None:
    """Refuse a manifest lacking one of ``required``, in one line naming the columns found
    and those expected (``expected``, e.g. "path and label, optionally patient_id, split")."""
    missing = [name for name in required if name not in columns]
    if not missing:
        return
    found = ", ".join(repr(c) for c in columns if c) or "none"
    raise ConfigurationError(
        f"CSV manifest {str(csv_path)!r} has no {missing[0]!r} column; columns found: {found}; "
        f"expected: {expected}, in any case: rename the columns"
    )


def _csv_table(csv_path: Path, extra: Sequence[str] = ()) -> tuple[list[str], list[CsvRow]]:
    """A manifest's columns and rows, keyed by radlens' names (:func:`_csv_columns`; ``extra``:
    a multi-label set's label column) and values as written."""
    rows: list[CsvRow] = []
    with _reading_csv(csv_path), _open_csv_text(csv_path) as fh:
        reader, before = _csv_reader(fh)
        columns = _csv_columns(csv_path, next(reader, []), extra)
        for values in reader:
            if not any(v.strip() for v in values):  # a blank line, or a spreadsheet's ",,,"
                continue
            row = CsvRow({c: values[i] if i < len(values) else "" for i, c in enumerate(columns)})
            breaks = sum(v.count("\n") for v in values)  # quoted ones
            row.line = reader.line_num + before - breaks
            rows.append(row)
    return columns, rows


NEGATIVE_CLASS_NAMES = frozenset(
    {
        "normal",
        "negative",
        "healthy",
        "benign",
        "no finding",
        "no findings",
        "control",
        "controls",
        "none",
        "no",
    }
)
"""Names (case, ``_``/``-``/spaces and a leading number such as ``0_`` aside) that read as the
negative class of a two-class set; so does a name whose first word is one of the first four
(``Normal_lung``) or that negates the other name (``non-COVID`` beside ``COVID``)."""

_NEGATIVE_FIRST_WORDS = frozenset({"normal", "negative", "healthy", "benign"})
# the names read as negative before QA round 37, exactly (stripped, lower-case); they still
# decide a set where both names read as negative, so such a set trains as it did
_FIRST_NEGATIVE_NAMES = frozenset({"normal", "negative", "healthy", "benign", "no_finding"})
_NEGATIONS = ("no", "non", "not", "without")


def _check_folder_readable(p: Path) -> None:
    """Refuse a data folder that this user cannot list or enter, naming that folder: probing
    it for a ``labels.csv`` reported a permission error on that file, which the user never
    named (QA round 60)."""
    try:
        if not p.is_dir():
            return
        with os.scandir(p) as entries:  # listing needs read permission
            next(entries, None)
        (p / "labels.csv").is_file()  # a file's status needs search (x) permission
    except OSError as exc:
        raise ConfigurationError(
            f"the data folder {str(p)!r} cannot be read ({exc.strerror or exc}): radlens lists "
            "it and reads the files in it; give your user read and search permission on it "
            "(e.g. chmod -R a+rX, or ask its owner), or run radlens as a user who can read it"
        ) from exc


def check_dicom_root(path: str | Path, dicom_root: str | Path | None) -> None:
    """Refuse a ``dicom_root`` given for data that is not a series-labelled CSV (a folder's
    ``labels.csv`` counts, as :func:`open_data` reads it): nothing else reads it, and an
    option that changes nothing would be ignored silently.

    Raises:
        models.errors.ConfigurationError: ``dicom_root`` is set and the data is not a series
            CSV (the message says to drop it).
    """
    if dicom_root is None:
        return
    p = Path(path)
    _check_folder_readable(p)
    csv_path = p / "labels.csv" if p.is_dir() and (p / "labels.csv").is_file() else p
    if csv_path.is_file() and csv_path.suffix.lower() == ".csv" and _is_series_csv(csv_path):
        return
    raise ConfigurationError(
        f"--dicom-root {str(dicom_root)!r} is where a series-labelled CSV (series_path or "
        f"series_uid columns) finds its series; {str(path)!r} is not one, so nothing would "
        "read it: drop --dicom-root"
    )


def open_data(
    path: str | Path,
    class_names: Sequence[str] = (),
    *,
    multi_label: MultiLabelSpec | None = None,
    dicom_root: str | Path | None = None,
) -> DataSource:
    """Open a training/evaluation data set.

    A folder holding a ``labels.csv`` is opened through that manifest (it carries patient ids
    and splits, as the demo data does); any other folder by its class sub-folders; ``.csv`` and
    ``.npz`` files directly. ``class_names`` fixes the label order (index 1 = the positive
    class of a binary model); empty lets the data decide (see ``training.data.sources``).

    Raises:
        models.errors.ConfigurationError: missing path, unusable layout, fewer than 2 classes.
    """
    p = Path(path)
    _check_folder_readable(p)
    if p.is_dir() and (p / "labels.csv").is_file():
        p = p / "labels.csv"
    source = open_source(
        p, class_names=list(class_names) or None, multi_label=multi_label, dicom_root=dicom_root
    )
    if source.num_classes < 2:
        raise ConfigurationError(
            f"a classifier needs at least 2 classes; {str(path)!r} has {source.class_names!r}"
        )
    return source


def order_class_names(names: Iterable[str]) -> list[str]:
    """Sorted class names; in a two-class set a negative name (``normal``...) comes first.

    Binary problems treat class index 1 as the positive class (the decision threshold
    applies to its score), so ``{"abnormal", "normal"}`` becomes ``["normal", "abnormal"]``
    rather than the alphabetical order. Names like ``0_normal``/``1_abnormal`` sort right
    by themselves.
    """
    ordered = sorted(set(names))
    if len(ordered) == 2:
        negative = [reads_negative(a, b) for a, b in (ordered, ordered[::-1])]
        if negative == [False, True]:  # exactly one reads as negative, and it sorted second
            ordered.reverse()
        elif all(negative) and ordered[1].strip().lower() in _FIRST_NEGATIVE_NAMES:
            ordered.reverse()  # both do (benign beside normal): as radlens always ordered them
    return ordered


def _name_words(name: str) -> list[str]:
    """``name`` as lower-case words, split at spaces, ``_``, ``-`` and ``.``, without a leading
    number (``0_normal`` -> ``["normal"]``)."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    words = [w for w in folded.replace("_", " ").replace("-", " ").replace(".", " ").split() if w]
    if len(words) > 1 and words[0].isdigit():
        words = words[1:]
    return words


def reads_negative(name: str, other: str | None = None) -> bool:
    """Whether class ``name`` reads as the negative class of a two-class set (beside
    ``other``): ``normal``, ``No Finding``, ``no_finding``, ``Normal_lung``, ``control``,
    ``non-COVID`` beside ``COVID``, ... (see :data:`NEGATIVE_CLASS_NAMES`)."""
    words = _name_words(name)
    if not words:
        return False
    if " ".join(words) in NEGATIVE_CLASS_NAMES or "".join(words) in {"nofinding", "nofindings"}:
        return True
    if words[0] in _NEGATIVE_FIRST_WORDS:
        return True
    if other is None:
        return False
    rest = _name_words(other)
    if not rest:
        return False
    if words[0] in _NEGATIONS and words[1:] == rest:  # "no nodule", "non-COVID"
        return True
    joined, negated = "".join(words), "".join(rest)
    return any(joined == f"{neg}{negated}" for neg in _NEGATIONS)  # "NonCOVID"


def positive_class_guessed(source: DataSource) -> bool:
    """True for a single-label two-class ``source`` whose positive class is only the
    alphabetical order of its names: neither reads as negative, or both do, and nothing
    (``class_names``, integer labels) gave the order."""
    names = source.class_names
    if source.multi_label or len(names) != 2 or source.class_order != "names":
        return False
    first, second = names
    return not (reads_negative(first, second) and not reads_negative(second, first))


def positive_class_note(source: DataSource) -> str | None:
    """For a single-label two-class ``source``: which class is the positive one (class 1, the
    one whose score the decision threshold applies to, and sensitivity counts) and why; None
    for other sources. When the order comes from the names and neither reads as negative,
    it is alphabetical, and the note says how to choose it."""
    names = source.class_names
    if source.multi_label or len(names) != 2:
        return None
    first, second = names
    if positive_class_guessed(source):
        return (
            f"positive class: {second!r} (class 1, in alphabetical order: neither name reads "
            f"as a negative class such as 'normal'); the threshold, sensitivity and "
            f"specificity are about {second!r}. If {first!r} is the finding, set "
            f"class_names: [{second!r}, {first!r}] in a --config file"
        )
    why = {
        "names": f"{first!r} reads as the negative class",
        "index": "as the integer labels number them",
        "given": "as class_names gives them",
    }.get(source.class_order, "as the data orders them")
    return f"positive class: {second!r} (class 1; {why})"


def _nfc(name: str) -> str:
    """``name`` with its accents in one encoding (Unicode NFC): ``í`` typed, or pasted from a
    macOS file name as ``i`` plus a combining mark (NFD), is one name."""
    return unicodedata.normalize("NFC", name)


def _one_spelling(names: Iterable[str], where: str) -> None:
    """Refuse class (or finding) names that differ only in case, as ``Normal`` and
    ``normal``, in spacing (``Normal  Lung``), or in how an accent is encoded (``í`` as one
    character or as ``i`` plus a combining mark: Unicode NFC and NFD, which print alike; macOS
    file names are NFD): one class spelled two ways would train as two."""
    spellings: dict[str, set[str]] = defaultdict(set)
    for name in names:
        spellings[" ".join(unicodedata.normalize("NFKC", name).casefold().split())].add(name)
    clash = next((sorted(v) for v in spellings.values() if len(v) > 1), None)
    if clash is None:
        return
    if len({name.casefold() for name in clash}) == 1:
        how, shown = "in case", repr(clash)
    elif len({" ".join(name.casefold().split()) for name in clash}) == 1:
        how, shown = "in spacing (a doubled, leading or trailing space)", repr(clash)
    else:  # ascii(): the two encodings print alike
        how, shown = "in how an accent is encoded (Unicode NFC/NFD)", ascii(clash)
    raise ConfigurationError(
        f"labels {shown} in {where!r} differ only {how}: one class spelled two ways would "
        "train as two; use one spelling"
    )


# Operating-system, office and NAS metadata, never images of a class: ignored as hidden files
# are, whatever their case (Windows and macOS file systems do not tell cases apart, and write
# some of these names in more than one). ``@eaDir`` holds real JPEG thumbnails that would
# otherwise train as images of their folder's class, and ``__MACOSX`` beside the class folders
# would be taken for a class; ``System Volume Information`` and ``$RECYCLE.BIN`` (NTFS writes
# ``$Recycle.Bin``) sit at the root of a Windows-formatted drive.
_IGNORED_KINDS = {
    ".ds_store": ".DS_Store (macOS Finder)",
    "thumbs.db": "Thumbs.db (Windows thumbnails)",
    "thumbs.db:encryptable": "Thumbs.db (Windows thumbnails)",  # its NTFS stream, copied off
    "ehthumbs.db": "Thumbs.db (Windows thumbnails)",  # Windows Media Center's
    "ehthumbs_vista.db": "Thumbs.db (Windows thumbnails)",
    "icon\r": "Icon\\r (macOS custom folder icon)",
    "desktop.ini": "desktop.ini (Windows folder settings)",
    "__macosx": "__MACOSX (macOS zip metadata)",
    "@eadir": "@eaDir (NAS thumbnails)",
    "system volume information": "Windows drive folder",
    "$recycle.bin": "Windows drive folder",
}


def ignored_kind(name: str) -> str | None:
    """Why a file or folder named ``name`` is ignored in a data folder (what a desktop, an
    office program or a NAS leaves beside the images), or None when it is read."""
    folded = name.casefold()
    if folded in _IGNORED_KINDS:
        return _IGNORED_KINDS[folded]
    if name.startswith("._"):
        return "._* (macOS AppleDouble)"
    if name.startswith("~$"):  # Word/Excel's "owner" file beside a document open in it
        return "~$* (Office lock file)"
    if name.startswith("."):
        return "hidden (name starting with '.')"
    return None


def _is_hidden(name: str, ignored: Counter[str] | None = None) -> bool:
    """Whether ``name`` is ignored (:func:`ignored_kind`); counted by kind in ``ignored``."""
    kind = ignored_kind(name)
    if kind is not None and ignored is not None:
        ignored[kind] += 1
    return kind is not None


def describe_ignored(ignored: Mapping[str, int]) -> str:
    """One line for the system files and folders a scan ignored ("" for none): how many, of
    which kinds."""
    if not ignored:
        return ""
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(ignored.items(), key=lambda i: -i[1]))
    return (
        f"{sum(ignored.values())} system or hidden file(s)/folder(s) ignored, never read as "
        f"images: {kinds}"
    )


def _open_folder(root: Path, *, class_names: Sequence[str] | None, validate: bool) -> DataSource:
    ignored: Counter[str] = Counter()
    dirs = {d.name: d for d in root.iterdir() if d.is_dir() and not _is_hidden(d.name, ignored)}
    if len(dirs) < 2:
        raise ConfigurationError(
            f"a folder data set needs at least 2 class sub-folders; "
            f"{str(root)!r} has {sorted(dirs)!r}"
        )
    _one_spelling(dirs, str(root))
    if class_names is not None:
        # a model's class names match folders whose names encode accents otherwise (macOS NFD)
        by_form = {_nfc(name): folder for name, folder in dirs.items()}
        given = [_nfc(name) for name in class_names]
        if sorted(given) != sorted(by_form) or len(set(given)) != len(given):
            raise ConfigurationError(
                f"class_names={list(class_names)!r} (a --config file's class_names, or the "
                f"model's classes when evaluating) must name exactly the sub-folders of "
                f"{str(root)!r}: {sorted(dirs)!r}"
            )
        names = list(class_names)
        class_dirs = [by_form[_nfc(name)] for name in names]
    else:
        names = order_class_names(dirs)
        class_dirs = [dirs[name] for name in names]
    examples: list[Example] = []
    skipped: list[SkippedFile] = _stray_files(root, ignored)
    key = None
    n_dicom = 0
    first_seen: dict[str, tuple[int, Path]] = {}  # real path -> (label, the path met first)
    for label, class_dir in enumerate(class_dirs):
        found_any = False
        ignored_before = ignored.total()
        files, unnamed = _walk_files(class_dir, ignored)
        skipped_before = len(skipped)
        skipped.extend(unnamed)
        for file in files:
            real = os.path.realpath(file)
            if real in first_seen:  # one file reached twice, through a link
                other_label, other = first_seen[real]
                if other_label != label:
                    raise ConfigurationError(
                        f"{str(file)!r} and {str(other)!r} are one file (a link) in two "
                        f"classes, {names[label]!r} and {names[other_label]!r}: one image "
                        "cannot have two labels; remove the link"
                    )
                # the kind first (skip_kind groups by it), the other path after it
                again = f"reached again through a link (the same file as {other}): read once"
                skipped.append(SkippedFile(str(file), again))
                log.warning("skipping %s: %s", file, again)
                continue
            first_seen[real] = (label, file)
            reason = _probe_file(file) if validate else _probe_kind_only(file)
            if reason is not None:
                skipped.append(SkippedFile(str(file), reason))
                log.warning("skipping %s: %s", file, reason)
                continue
            found_any = True
            patient = None
            if _file_kind(file) == "dicom":
                readable, raw = _dicom_header_patient(file)
                n_dicom += readable  # an unreadable header is skipped at decode time
                if raw is not None:
                    key = patient_hash_key() if key is None else key
                    patient = hash_patient_id(raw, key)
            examples.append(Example(key=str(file), label=label, patient_id=patient))
        if not found_any:
            why = _skipped_hint(skipped[skipped_before:])  # e.g. names that are not UTF-8
            if ignored.total() > ignored_before:  # a folder of .DS_Store and Thumbs.db only
                why += (
                    f"; {ignored.total() - ignored_before} system or hidden file(s) ignored "
                    "there (.DS_Store, Thumbs.db, ...)"
                )
            raise ConfigurationError(
                f"class folder {str(class_dir)!r} contains no readable DICOM/PNG/JPEG image{why}"
                f"; every sub-folder of {str(root)!r} is a class: add its images, or move the "
                "folder out"
            )
    with_patient = sum(e.patient_id is not None for e in examples)
    if n_dicom and not with_patient:
        raise _no_patients_error(n_dicom, root)
    return DataSource(
        class_names=names,
        examples=examples,
        kind="folder",
        root=root,
        skipped=skipped,
        patient_source="PatientID/StudyInstanceUID" if with_patient else "none",
        class_order="given" if class_names is not None else "names",
        ignored=dict(ignored),
    )


def _no_patients_error(n_dicom: int, root: Path) -> ConfigurationError:
    return ConfigurationError(
        f"none of the {n_dicom} DICOM file(s) in {str(root)!r} carries a PatientID or "
        "StudyInstanceUID, so images of one patient could reach two splits; give a CSV "
        "manifest with path, label and patient_id columns instead"
    )


def _listed_once(listed: dict[str, int], file: Path, line: int, csv_name: str) -> None:
    """Refuse a manifest naming one file twice: its two rows could give it two labels or
    two splits (an image in train and in test)."""
    real = os.path.realpath(file)
    if real in listed:
        raise ConfigurationError(
            f"{str(file)!r} is listed twice in {csv_name} (lines {listed[real]} and {line}); "
            "list each file once, with one label and one split"
        )
    listed[real] = line


def _ends(fh: BinaryIO) -> bytes:
    """A file's first HEAD_BYTES and, when it is longer, its last TAIL_BYTES after them: what
    :func:`sniff_format` reads (it looks only at the start and at the end)."""
    head = fh.read(HEAD_BYTES)
    if len(head) < HEAD_BYTES:
        return head
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(HEAD_BYTES, size - TAIL_BYTES))
    return head + fh.read(TAIL_BYTES)


def _file_kind(path: Path) -> str | None:
    if not path.is_file():  # a named pipe, socket or device is not opened (it may block)
        return None
    try:
        with path.open("rb") as fh:
            kind = sniff_format(_ends(fh))
    except OSError:
        return None
    if kind is None and path.suffix.lower() in DICOM_EXTENSIONS:
        return "dicom"
    return kind


def dicom_patient(path: Path) -> str | None:
    """The raw patient of a DICOM file: PatientID, else StudyInstanceUID, else None.

    Only the header is read (pydicom stops before the pixel data). The value is for
    :func:`hash_patient_id` only; never log or store it.
    """
    return _dicom_header_patient(path)[1]


def _dicom_header_patient(path: Path) -> tuple[bool, str | None]:
    """(whether the header could be read as a DICOM dataset, the raw patient or None)."""
    import pydicom

    from radlens.models.dicomread import ignore_value_validation

    ignore_value_validation()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # third-party parser boundary: unreadable headers, no patient
        return False, None
    if "SOPClassUID" not in ds and "Rows" not in ds:  # force=True parses junk as empty
        return False, None
    for keyword in ("PatientID", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return True, f"{keyword}:{value}"
    return True, None


def _walk_files(
    folder: Path, ignored: Counter[str] | None = None
) -> tuple[list[Path], list[SkippedFile]]:
    """The non-hidden files under ``folder``, sub-folders and linked sub-folders included (a
    folder reached twice, as by a link loop, is read once), and the files left out, with why:
    a name that is not UTF-8 cannot be recorded in splits.csv, the manifest or the logs. The
    system files and folders passed by (:func:`ignored_kind`) are counted in ``ignored``."""
    files: list[Path] = []
    skipped: list[SkippedFile] = []
    seen: set[str] = set()

    def unreadable(error: OSError) -> None:  # a folder os.walk cannot list (too deep, ...)
        reason = f"folder cannot be read ({error.strerror or error}); its files are left out"
        skipped.append(_skipped_name(error.filename, reason))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d, ignored))
        for name in sorted(filenames):
            if _is_hidden(name, ignored):
                continue
            path = Path(dirpath) / name
            if _printable(path) != str(path):  # a byte the file system gave that is not UTF-8
                reason = "its name is not UTF-8 text; rename the file (or its folder)"
                skipped.append(_skipped_name(path, reason))
                continue
            files.append(path)
    return files, skipped


def _printable(path: object) -> str:
    """A path as text that can be printed, logged and written as UTF-8 (bytes that are not
    UTF-8 shown as ``\\udcXX`` escapes)."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _skipped_name(path: object, reason: str) -> SkippedFile:
    """A file (or folder) left out by name, logged as the other skips are."""
    shown = _printable(path)
    log.warning("skipping %s: %s", shown, reason)
    return SkippedFile(shown, reason)


def _stray_files(root: Path, ignored: Counter[str] | None = None) -> list[SkippedFile]:
    """Images directly in a class-folder data set's root: in no class, so not used (other
    files there, a README or a manifest, are not named; system files are counted in
    ``ignored``)."""
    reason = "not in a class sub-folder (each image must sit in its class's folder)"
    return [
        _skipped_name(path, media.dicomdir_reason(path) if media.is_dicomdir(path) else reason)
        for path in sorted(root.iterdir())
        if not path.is_dir() and not _is_hidden(path.name, ignored) and _file_kind(path) is not None
    ]


def sniff_format(head: bytes) -> str | None:
    """``"dicom"``, ``"png"``, ``"jpeg"`` from a file's first bytes, else None.

    The service's own rule (``models.preprocessing.sniff_format``), so training finds every
    file the service accepts -- a DICOM dataset written without preamble and file meta
    included -- and None where the service would answer "not an image".
    """
    try:
        return preprocessing.sniff_format(head)
    except NotAnImageError:
        return None


def _head_said(head: bytes) -> str:
    """What a file that is no image starts with, for its skip reason (which train.log and
    result.json keep): its first bytes when they are binary (a format's signature), but not
    when they are text, which may be a report's or an export's first line, a patient's name
    or ID (QA round 31: "starts with b'DOE^JOHN'")."""
    first = head[:8]
    if not first:
        return "empty: a copy or export that did not finish?"
    # text in any encoding (ASCII, Latin-1, UTF-8, ISO 2022's escapes): no control byte else
    if first and all(byte >= 0x20 or byte in b"\t\r\n\x1b" for byte in first):
        return "starts with text, not shown"
    return f"starts with {first!r}"


def _probe_kind_only(path: Path) -> str | None:
    """Reason to skip ``path`` judged by its first bytes only, or None."""
    if path.exists() and not path.is_file():  # opening a named pipe would wait forever
        return "not a regular file (a named pipe, socket or device): only image files are read"
    try:
        with path.open("rb") as fh:
            head = _ends(fh)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if sniff_format(head) is None and path.suffix.lower() not in DICOM_EXTENSIONS:
        # a TIFF, GIF, ... named, with what to do
        named = preprocessing.other_format_said(head)
        return f"not a DICOM, PNG or JPEG file ({_head_said(head)}){named}"
    return None


def _probe_file(path: Path) -> str | None:
    """Reason to skip ``path`` after a cheap header read, or None when it looks usable."""
    reason = _probe_kind_only(path)
    if reason is not None:
        return reason
    with path.open("rb") as fh:
        kind = sniff_format(_ends(fh))
    if kind in (None, "dicom"):
        return _probe_dicom(path, sniffed=kind == "dicom")
    return _probe_raster(path)


# identifying, patient, acquisition, relationship and image pixel groups: a DICOM image
# without a preamble (read by force) has elements of some of them
_IMAGE_GROUPS = frozenset({0x0008, 0x0010, 0x0018, 0x0020, 0x0028})


def _probe_dicom(path: Path, *, sniffed: bool) -> str | None:
    from pydicom.errors import InvalidDicomError

    from radlens.models.dicomread import read_dicom_bytes, read_dicom_file

    force = sniffed or path.suffix.lower() in DICOM_EXTENSIONS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd headers warn; the verdict is what counts
            if _is_deflated(path):  # pydicom inflates a deflated dataset whole: bounded
                ds = read_dicom_bytes(
                    path.read_bytes(), max_pixels=preprocessing.DEFAULT_MAX_PIXELS, force=force
                )
            else:  # defer_size: large values (the pixel data) are located, not read
                ds = read_dicom_file(path, defer_size=1024, force=force)
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except RadlensError as exc:  # the deflate bound, a Transfer Syntax UID that is no UID
        return str(exc)
    except InvalidDicomError as exc:
        return f"not a readable DICOM file ({exc})"
    except Exception as exc:  # third-party parser boundary: any failure means unreadable
        # error_text: the skip reason goes to train.log; pydicom's text may quote file bytes
        return f"not a readable DICOM file ({preprocessing.error_text(exc)})"
    if not sniffed and not _IMAGE_GROUPS.intersection(tag.group for tag in list(ds.keys())):
        # force=True reads any bytes as a dataset (of no or garbage elements): a .dcm name on
        # another kind of file, no preamble, and nothing of the groups every image has
        with path.open("rb") as fh:
            head = fh.read(16)
        named = preprocessing.other_format_said(head)  # a TIFF named .dcm, ...: say so
        return f"not a DICOM file ({path.stat().st_size} bytes, {_head_said(head)}){named}"
    has_pixels = any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels and media.is_dicomdir(path):  # a media export's index
        return media.dicomdir_reason(path)
    if not has_pixels:
        return _no_pixels_reason(path)
    # an RT dose grid or a segmentation has pixels, but no picture
    if (kind := non_image_kind(ds.get("SOPClassUID"))) is not None:
        return (
            f"{kind} (SOP class {ds.get('SOPClassUID')}): no image a classifier reads (the "
            "service refuses it for a model that states its intended use)"
        )
    absent = [f"{name} {tag}" for name, tag in _SIZE_TAGS if ds.get(name) in (None, "")]
    if absent:  # said as the service says it (incomplete-pixel-header), not "zero size"
        return (
            "DICOM header lacks an attribute needed to read the pixels: "
            f"{' and '.join(absent)} absent or empty (Rows={ds.get('Rows')}, "
            f"Columns={ds.get('Columns')}); re-export the image with its Image Pixel attributes"
        )
    if rows < 1 or cols < 1:
        return f"DICOM image has zero size ({rows}x{cols})"
    return None


# an image's size; a file without one was "zero size (0x32)" to data-check (QA round 80)
_SIZE_TAGS = (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)"))


_WHOLE_READ_BYTES = 64 * 1024 * 1024


def _no_pixels_reason(path: Path) -> str:
    """Why a DICOM file without pixel data is skipped: it has none, or it was cut short
    before them (the service's reason, which names where the data ends). A large file (an
    encapsulated document, say) is not read whole to find out."""
    try:
        if path.stat().st_size > _WHOLE_READ_BYTES:
            return "DICOM file has no pixel data"
        preprocessing.preprocess(path.read_bytes(), size=(8, 8))
    except TruncatedDataError as exc:
        return str(exc)
    except (RadlensError, OSError):  # a report, a plan: no pixel data at all
        pass
    return "DICOM file has no pixel data"


def _is_deflated(path: Path) -> bool:
    """Whether the file meta information says Deflated Explicit VR Little Endian (read alone,
    as pydicom reads it); a file without one is not inflated by pydicom either."""
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        syntax = read_file_meta_info(path).get("TransferSyntaxUID")
    except Exception:  # third-party parser boundary: no or broken file meta
        return False
    return bool(syntax == DeflatedExplicitVRLittleEndian)


def drop_undecodable(
    source: DataSource, *, size: int = 32, version: str | None = None
) -> DataSource:
    """The source without the examples whose file does not decode, each moved to ``skipped``
    with the reason training gives when it skips it (``load_pixels`` at ``size``, the call
    training makes, caught as training catches it). The header probe at scan time reads no
    pixels, so a cut codestream, a blanking rescale or a deflate bomb passes it; after this,
    what ``radlens data-check`` counts is what ``radlens train`` trains on. An npz source's
    arrays always decode; its blank ones are dropped (:func:`_drop_blank_arrays`), as the
    service refuses a blank image. ``version``: the preprocessing version to
    decode with (a stored model's, to rebuild its training run's split; None: the current)."""
    if source.decode_checked:
        return source
    if source.kind == "npz":
        return _drop_blank_arrays(source)
    kept: list[Example] = []
    skipped = list(source.skipped)
    digests: dict[str, str] = {}
    colours: dict[str, float] = {}
    for example in source.examples:
        try:
            pixels, colour = source.decode(example, size=size, version=version)
        except (RadlensError, OSError) as exc:
            reason = str(exc) if isinstance(exc, RadlensError) else f"cannot be read ({exc})"
            skipped.append(SkippedFile(example.key, reason))
        else:
            kept.append(example)
            digests[example.key] = pixel_digest(pixels)
            if colour is not None:
                colours[example.key] = colour
    return replace(
        source,
        examples=kept,
        skipped=skipped,
        decode_checked=True,
        digests=digests,
        colours=colours,
    )


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and values: equal for equal pixels only."""
    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _drop_blank_arrays(source: DataSource) -> DataSource:
    """The npz source without its blank images (every pixel one value), each moved to
    ``skipped`` with the reason the service refuses such an upload with."""
    blank: dict[str, np.ndarray] = {}
    for split, images in source.arrays.items():
        flat = np.asarray(images).reshape(len(images), -1) if len(images) else None
        blank[split] = (
            flat.max(axis=1) == flat.min(axis=1) if flat is not None else np.zeros(0, bool)
        )
    kept: list[Example] = []
    skipped = list(source.skipped)
    digests: dict[str, str] = {}
    for example in source.examples:
        split, index = _parse_npz_key(example.key)
        if blank[split][index]:
            height, width = source.arrays[split].shape[1:3]
            error = BlankImageError(
                f"every pixel of the {height}x{width} array {example.key} has the same value"
            )
            skipped.append(SkippedFile(example.key, str(error)))
        else:
            kept.append(example)
            digests[example.key] = pixel_digest(source.arrays[split][index])
    return replace(source, examples=kept, skipped=skipped, decode_checked=True, digests=digests)


def check_decodable(before: DataSource, after: DataSource) -> None:
    """Refuse what ``drop_undecodable`` left unusable, naming it: a class (or finding) whose
    every image was skipped at decode (all blank, all cut short), a series with no slice that
    decodes, or fewer than 2 classes left. The header checks at scan time passed these, and a
    model trained without one class's images would still export with an AUC it cannot have.

    Raises:
        models.errors.ConfigurationError: the first such problem, with a skipped file's reason.
    """
    where = str(before.root)
    reasons = {s.path: s.reason for s in after.skipped}

    def first_reason(keys: Iterable[str]) -> str:
        return next((f"{k}: {reasons[k]}" for k in keys if k in reasons), "")

    if before.has_series:
        kept = {e.series for e in after.examples}
        for series in dict.fromkeys(e.series for e in before.examples):
            if series not in kept:
                keys = [e.key for e in before.examples if e.series == series]
                raise ConfigurationError(
                    f"series {series} has no slice that decodes ({len(keys)} skipped; first "
                    f"{first_reason(keys)}); fix or leave out the series"
                )
    counts = after.class_counts()
    for index, (name, count) in enumerate(before.class_counts().items()):
        if count and not counts[name]:
            keys = [
                e.key
                for e in before.examples
                if (index in (e.findings or ()) if before.multi_label else e.label == index)
            ]
            what = "finding" if before.multi_label else "class"
            raise ConfigurationError(
                f"{what} {name!r} of {where!r} has no image to train on: all {count} were "
                f"skipped (first {first_reason(keys)}); fix those files or leave the {what} out"
            )
    if after.multi_label:
        _check_findings(after, where)
    else:
        _check_classes(after, where)


def _probe_raster(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        refusal = _raster_refusal(path)
        if refusal == "":  # Pillow's header read failed where the decoder reads the file
            return None
        return refusal or f"not a readable PNG/JPEG file ({type(exc).__name__}: {exc})"
    if width < 1 or height < 1:
        return f"image has zero size ({width}x{height})"
    return None


def _raster_refusal(path: Path) -> str | None:
    """Why the service refuses a PNG or JPEG whose header Pillow could not read, in its words:
    what the file is and what to send instead (a JPEG-LS or 12-bit JPEG: "convert it to PNG
    or send the DICOM"; a file cut short: "send the complete file"), where Pillow's own error
    named neither (QA round 69: "UnidentifiedImageError: cannot identify image file"). ``""``
    when the file decodes after all, None when it cannot be read again."""
    try:
        preprocessing.preprocess(path.read_bytes(), size=(8, 8))
    except RadlensError as exc:
        return str(exc)
    except OSError:
        return None
    return ""


def _normalise_split(value: str | None, *, where: str) -> str | None:
    if value is None or not value.strip():
        return None
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise ConfigurationError(
            f"unknown split {value!r} at {where}; use one of train, val (valid), test"
        )
    return split


def _open_csv(csv_path: Path, *, class_names: Sequence[str] | None, validate: bool) -> DataSource:
    columns, rows = _csv_table(csv_path)
    require_columns(
        csv_path,
        columns,
        ("path", "label"),
        "path and label (optional: patient_id, split, label_name; a series CSV has "
        "series_path or series_uid instead of path)",
    )
    if not rows:
        raise ConfigurationError(f"CSV manifest {str(csv_path)!r} has no rows")

    names, label_of, order = _csv_labels(csv_path, rows, class_names)
    key = patient_hash_key() if any(r.get("patient_id", "").strip() for r in rows) else b""
    base = csv_path.parent
    examples: list[Example] = []
    skipped: list[SkippedFile] = []
    listed: dict[str, int] = {}
    for line, row in zip(csv_lines(rows), rows, strict=True):
        where = f"{csv_path.name} line {line}"
        rel = row["path"]
        file, reason = _locate(base, rel, where, validate=validate)
        _listed_once(listed, file, line, csv_path.name)
        if reason is not None:
            skipped.append(SkippedFile(str(file), reason))
            log.warning("skipping %s: %s", file, reason)
            continue
        raw_patient = row.get("patient_id", "").strip()
        patient = hash_patient_id(f"PatientID:{raw_patient}", key) if raw_patient else None
        split = _normalise_split(row.get("split"), where=where)
        examples.append(Example(str(file), label_of(row, where), patient, split))

    source = DataSource(names, examples, "csv", csv_path, skipped, class_order=order)
    if any(e.patient_id is not None for e in examples):
        source.patient_source = "patient_id column"
    _check_paths_found(csv_path, rows, examples, skipped)
    _check_classes(source, str(csv_path))
    return source


def _check_paths_found(
    csv_path: Path,
    rows: Sequence[Mapping[str, str]],
    examples: Sequence[Example],
    skipped: Sequence[SkippedFile],
) -> None:
    """Refuse a manifest none of whose paths exists, saying that paths are read relative to
    the CSV's folder: paths written relative to the current folder otherwise met "needs
    images of at least 2 classes ... has only []" (QA round 102). Only the path is shown."""
    missing = sum(s.reason == MISSING_FILE for s in skipped)
    if examples or not rows or missing < len(rows):
        return
    base = csv_path.parent
    written = [r["path"].strip() for r in rows]
    relative = [w for w in written if not Path(w).is_absolute()]
    if not relative:
        raise ConfigurationError(
            f"none of the {len(rows)} path(s) in {str(csv_path)!r} exists ({missing} of "
            f"{len(rows)} rows' files are missing), e.g. {written[0]!r}"
        )
    here = sum(Path(w).exists() for w in relative)
    found_here = (
        f"; {here} of them exist relative to the current folder instead"
        if here and base.resolve() != Path.cwd().resolve()
        else ""
    )
    raise ConfigurationError(
        f"none of the {len(rows)} path(s) in {str(csv_path)!r} exists ({missing} of "
        f"{len(rows)} rows' files are missing): paths are read relative to the CSV's folder "
        f"{str(base)!r}, e.g. {relative[0]!r} as {str(base / relative[0])!r}{found_here}; "
        "write them relative to that folder, or as absolute paths"
    )


def _csv_labels(
    csv_path: Path, rows: Sequence[Mapping[str, str]], class_names: Sequence[str] | None
) -> tuple[list[str], Any, str]:
    """Class names for a manifest, a function row -> label index, and how the names were
    ordered (``DataSource.class_order``)."""
    raw = [r["label"].strip() for r in rows]
    for line, value in zip(csv_lines(rows), raw, strict=True):
        if not value:
            raise ConfigurationError(f"empty label at {csv_path.name} line {line}")
    all_int = all(_integer_label(v) is not None for v in raw)

    if class_names is not None:
        names = list(class_names)
        index = {_nfc(n): i for i, n in enumerate(names)}  # however a label encodes accents

        def by_given(row: dict[str, str], where: str) -> int:
            value = row["label"].strip()
            if _nfc(value) in index:
                return index[_nfc(value)]
            number = _integer_label(value)
            if number is not None and 0 <= number < len(names):
                _index_named_alike(row, number, names, index, where)
                return number
            raise ConfigurationError(f"unknown label {value!r} at {where}; classes are {names!r}")

        return names, by_given, "given"

    if all_int:
        values = sorted({int(_integer_label(v) or 0) for v in raw})
        if values[0] < 0:
            raise ConfigurationError(
                f"integer labels must be class indices >= 0; got {values[0]} in {csv_path.name}"
            )
        n = values[-1] + 1
        unused = sorted(set(range(n)) - set(values))
        if unused:  # 1-based labels, or a gap: that class would train with no image
            shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
            raise ConfigurationError(
                f"integer labels are class indices counted from 0, but no row of "
                f"{csv_path.name} has label {unused[0]} (labels used: {shown}): that class "
                f"would have no image. Number the classes 0 to {len(values) - 1}, or label "
                "the rows with class names"
            )
        names = [f"class_{i}" for i in range(n)]
        if "label_name" in rows[0]:
            seen: dict[int, set[str]] = defaultdict(set)
            for r in rows:
                if r.get("label_name", "").strip():
                    seen[int(_integer_label(r["label"]) or 0)].add(r["label_name"].strip())
            if all(len(seen.get(i, ())) == 1 for i in range(n)):
                names = [next(iter(seen[i])) for i in range(n)]

        def by_index(row: dict[str, str], where: str) -> int:
            return int(_integer_label(row["label"]) or 0)

        return names, by_index, "index"

    _one_spelling(raw, str(csv_path))
    names = order_class_names(raw)
    index = {n: i for i, n in enumerate(names)}

    def by_name(row: dict[str, str], where: str) -> int:
        return index[row["label"].strip()]

    return names, by_name, "names"


_INTEGRAL = re.compile(r"-?\d+(?:\.0*)?")


def _integer_label(value: str) -> int | None:
    """A label cell as a class index: ``1``, or ``1.0`` as pandas writes a column of integers
    that had an empty cell and a spreadsheet one formatted as a number (these were read as
    the class names ``0.0`` and ``1.0``, their label_name unused); None when it is no whole
    number."""
    text = value.strip()
    return int(text.split(".")[0]) if _INTEGRAL.fullmatch(text) else None


def _index_named_alike(
    row: Mapping[str, str], label: int, names: Sequence[str], index: Mapping[str, int], where: str
) -> None:
    """Refuse an integer label whose ``label_name`` names another of ``names`` (a model's or
    the config's classes): the CSV numbers the classes otherwise (0 = abnormal where the
    model's class 0 is normal), and reading the index would invert every label, silently."""
    named = _nfc(row.get("label_name", "").strip())
    if named in index and index[named] != label:
        raise ConfigurationError(
            f"label {label} at {where} is {named!r} by its label_name, but class {label} is "
            f"{names[label]!r} in the order it is read with (the model's classes, or the "
            f"config's class_names): {list(names)!r}. The CSV numbers the classes otherwise: "
            "write the labels as class names, or renumber them in that order"
        )


def _open_multi_label(path: Path, spec: MultiLabelSpec, *, validate: bool) -> DataSource:
    """A CSV (``spec.column``) or a folder (class-folder names) read as sets of findings."""
    skipped: list[SkippedFile] = []
    ignored: Counter[str] = Counter()
    if path.is_dir():
        dirs = sorted(
            d.name for d in path.iterdir() if d.is_dir() and not _is_hidden(d.name, ignored)
        )
        skipped.extend(_stray_files(path, ignored))
        rows = []
        for name in dirs:
            files, unnamed = _walk_files(path / name, ignored)
            skipped.extend(unnamed)
            rows += [
                {"path": str(file.relative_to(path)), spec.column: name, "split": ""}
                for file in files
            ]
        if not rows:
            raise ConfigurationError(f"no files under the class folders of {str(path)!r}")
        columns = list(rows[0])
    elif path.suffix.lower() == ".csv":
        columns, table = _read_csv(path, extra=(spec.column,))
        rows = list(table)
        require_columns(
            path,
            columns,
            ("path", spec.column),
            f"path and {spec.column} (the findings' column, --label-column; optional: "
            "patient_id, split)",
        )
    else:
        raise ConfigurationError(
            f"multi-label data must be a .csv manifest or a folder; got {str(path)!r}"
        )
    csv_name = path.name
    parsed = [
        spec.parse(row[spec.column], where=f"{csv_name} line {line}")
        for line, row in zip(csv_lines(rows), rows, strict=True)
    ]
    seen = sorted({name for names in parsed for name in names})
    if spec.findings is not None:
        names = list(spec.findings)
        unknown = sorted(set(seen) - set(names))
        if unknown:
            raise ConfigurationError(
                f"finding(s) {unknown!r} in {str(path)!r} are not in the finding list "
                f"{names!r} (--findings; findings: in a --config file; evaluate: the model's); "
                "add them to the list or fix the labels"
            )
    else:
        _one_spelling([*seen, spec.none_name], str(path))  # "no finding" is not a finding
        names = seen
    index = {name: i for i, name in enumerate(names)}
    key = patient_hash_key() if any(r.get("patient_id", "").strip() for r in rows) else b""
    base = path if path.is_dir() else path.parent
    examples: list[Example] = []
    n_dicom = 0
    listed: dict[str, int] = {}
    for line, row, found in zip(csv_lines(rows), rows, parsed, strict=True):
        where = f"{csv_name} line {line}"
        file, reason = _locate(base, row["path"], where, validate=validate)
        _listed_once(listed, file, line, csv_name)
        if reason is not None:
            skipped.append(SkippedFile(str(file), reason))
            log.warning("skipping %s: %s", file, reason)
            continue
        raw_patient = row.get("patient_id", "").strip()
        patient = hash_patient_id(f"PatientID:{raw_patient}", key) if raw_patient else None
        if path.is_dir() and _file_kind(file) == "dicom":  # a folder: the DICOM header's
            readable, raw = _dicom_header_patient(file)
            n_dicom += readable
            if raw is not None:
                key = key or patient_hash_key()
                patient = hash_patient_id(raw, key)
        split = _normalise_split(row.get("split"), where=where)
        findings = tuple(sorted(index[name] for name in found))
        examples.append(Example(str(file), int(bool(findings)), patient, split, findings))
    source = DataSource(
        names,
        examples,
        "folder" if path.is_dir() else "csv",
        path,
        skipped,
        multi_label=True,
        none_name=spec.none_name,
        ignored=dict(ignored),
    )
    if any(e.patient_id is not None for e in examples):
        source.patient_source = (
            "PatientID/StudyInstanceUID" if path.is_dir() else "patient_id column"
        )
    elif n_dicom:
        raise _no_patients_error(n_dicom, path)
    if not path.is_dir():
        _check_paths_found(path, rows, examples, skipped)
    _check_findings(source, str(path))
    return source


def _read_csv(csv_path: Path, extra: Sequence[str] = ()) -> tuple[list[str], list[CsvRow]]:
    columns, rows = _csv_table(csv_path, extra)
    if not rows:
        raise ConfigurationError(f"CSV manifest {str(csv_path)!r} has no rows")
    return columns, rows


def _locate(base: Path, value: str, where: str, *, validate: bool) -> tuple[Path, str | None]:
    """The file a manifest row names, and why to skip it (None: usable)."""
    rel = value.strip()
    if not rel:
        raise ConfigurationError(f"empty path at {where}")
    if "\x00" in rel:  # no file system has such a name (os calls raise ValueError)
        raise ConfigurationError(f"path at {where} holds a NUL character; fix the manifest")
    file = Path(rel) if Path(rel).is_absolute() else base / rel
    reason: str | None = "not a file" if file.exists() else MISSING_FILE
    if not file.exists() and "\\" in rel and (base / rel.replace("\\", "/")).exists():
        reason = "file does not exist: the manifest separates folders with '\\'; write '/'"
    elif not file.exists():
        other = _other_case(file)
        if other is not None:  # a manifest written on Windows or macOS, which ignore case
            reason = (
                f"file name differs only in case: its folder holds {other!r}; write the name "
                "as the file system spells it (Linux tells cases apart)"
            )
    if file.is_file():
        reason = _probe_file(file) if validate else _probe_kind_only(file)
    return file, reason


def _other_case(file: Path) -> str | None:
    """The name of a file beside ``file`` that differs from its name in case only, if any."""
    folder = file.parent
    try:
        stamp = folder.stat().st_mtime_ns
    except OSError:
        return None
    return _names_by_case(str(folder), stamp).get(file.name.casefold())


@functools.lru_cache(maxsize=16)
def _names_by_case(folder: str, stamp: int) -> dict[str, str]:
    """A folder's file names by their case-folded form (listed once per folder and change:
    a manifest naming thousands of files of one folder in another case lists it once)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name.casefold(): entry.name for entry in entries}
    except OSError:
        return {}


def _check_findings(source: DataSource, where: str) -> None:
    """A multi-label set needs 2+ findings, each on some image, and images without each."""
    if source.num_classes < 2:
        raise ConfigurationError(
            f"a multi-label data set needs at least 2 finding names; {where!r} has "
            f"{source.class_names!r}"
        )
    counts = source.class_counts()
    absent = [name for name, c in counts.items() if c == 0]
    if absent:
        raise ConfigurationError(
            f"finding(s) {absent!r} have no image in {where!r}; leave them out of the finding "
            "list (--findings), or name them in --ignore-findings"
        )
    everywhere = [name for name, c in counts.items() if c == len(source.examples)]
    if everywhere:
        raise ConfigurationError(
            f"finding(s) {everywhere!r} are on every image of {where!r}: nothing to tell apart"
        )


def finding_cooccurrence(source: DataSource, examples: Iterable[Example] | None = None) -> Any:
    """Images with both findings i and j (int64 (F, F); the diagonal counts each finding).

    Raises:
        ConfigurationError: ``source`` is not multi-label.
    """
    if not source.multi_label:
        raise ConfigurationError("co-occurrence needs a multi-label data set")
    items = list(source.examples if examples is None else examples)
    hot = source.targets(items).astype(np.int64)
    return hot.T @ hot


def _open_npz(path: Path, *, class_names: Sequence[str] | None) -> DataSource:
    # np.load reads anything: a .npy array (no context manager), or "pickled data" for a
    # file that is not numpy's at all (with advice to unpickle it): an npz is a zip archive
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ConfigurationError(
            f"cannot read npz file {str(path)!r}: it is not an npz archive (a zip of named "
            "arrays, as numpy.savez writes: train_images, train_labels, ...); check the "
            "file, or re-save it with numpy.savez"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigurationError(f"cannot read npz file {str(path)!r}: {exc}") from exc
    with data:
        keys = set(data.files)
        if not any(f"{split}_images" in keys for split in SPLITS):
            raise ConfigurationError(
                f"npz file {str(path)!r} needs images of at least one split (train_images, "
                f"val_images or test_images, with their _labels); has {sorted(keys)!r}"
            )
        arrays: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        for split in SPLITS:
            if f"{split}_images" not in keys:
                continue
            if f"{split}_labels" not in keys:
                raise ConfigurationError(f"npz file {str(path)!r} has {split}_images but no labels")
            images = _npz_array(data, f"{split}_images", path)
            raw = _npz_array(data, f"{split}_labels", path)
            if images.dtype not in (np.uint8, np.uint16):
                raise ConfigurationError(
                    f"{split}_images in {str(path)!r} holds {images.dtype} values; npz images "
                    "must be uint8 or uint16 gray, as stored pixels are (MedMNIST's are uint8)"
                )
            if raw.dtype.kind not in "iub" and not (
                raw.dtype.kind == "f" and np.isfinite(raw).all() and (raw == np.round(raw)).all()
            ):
                raise ConfigurationError(
                    f"{split}_labels in {str(path)!r} must be whole class indices; "
                    f"they are {raw.dtype} values such as {raw.ravel()[:3].tolist()!r}"
                )
            if images.ndim == 4 and images.shape[-1] == 1:
                images = images[..., 0]
            if images.ndim != 3:
                raise ConfigurationError(
                    f"{split}_images must be (N, H, W) gray; got shape {images.shape}"
                )
            if raw.ndim == 2 and raw.shape[1] == 1:
                raw = raw[:, 0]
            if raw.ndim != 1 or len(raw) != len(images):
                raise ConfigurationError(
                    f"{split}_labels must be (N,) or (N, 1) with N={len(images)}; "
                    f"got shape {raw.shape}"
                )
            arrays[split] = images
            labels[split] = raw.astype(np.int64)
    observed = sorted({int(v) for lab in labels.values() for v in lab})
    if observed and observed[0] < 0:
        raise ConfigurationError(f"npz labels must be >= 0; found {observed[0]}")
    n = max(observed[-1] + 1 if observed else 0, len(class_names or ()))
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(n)]
    if observed and observed[-1] >= len(names):
        raise ConfigurationError(
            f"unknown label {observed[-1]} in {str(path)!r}; class_names has {len(names)} names"
        )
    examples = [
        Example(f"npz:{split}:{i}", int(lab), None, split)
        for split in SPLITS
        if split in labels
        for i, lab in enumerate(labels[split])
    ]
    source = DataSource(
        names, examples, "npz", path, [], arrays, class_order="given" if class_names else "index"
    )
    _check_classes(source, str(path))
    return source


def _npz_array(data: Any, key: str, path: Path) -> np.ndarray:
    """One array of an npz file; an object array (pickled Python objects) is refused: it is
    never loaded, as it could run code."""
    try:
        return np.asarray(data[key])
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ConfigurationError(
            f"cannot read {key} in npz file {str(path)!r} ({exc}); store plain numeric arrays "
            "(numpy.savez with uint8 images and integer labels)"
        ) from exc


def _parse_npz_key(key: str) -> tuple[str, int]:
    parts = key.split(":")
    if len(parts) != 3 or parts[0] != "npz" or not parts[2].isdigit():
        raise ConfigurationError(f"not an npz example key: {key!r}")
    return parts[1], int(parts[2])


def _skipped_hint(skipped: Sequence[object]) -> str:
    """``"; N file(s) skipped, e.g. <the first, with its reason>"``, or "" for none. A
    DICOMDIR whose listed images are missing is the example when there is one: it says why."""
    if not skipped:
        return ""
    shown = next((s for s in skipped if media.MISSING_SAID in str(s)), skipped[0])
    return f"; {len(skipped)} file(s) skipped, e.g. {shown}"


def _check_classes(source: DataSource, where: str) -> None:
    if len(source.class_names) < 2:
        raise ConfigurationError(
            f"a data set needs at least 2 classes; {where!r} has {source.class_names!r}"
        )
    counts = source.class_counts()
    present = [name for name, c in counts.items() if c > 0]
    if len(present) < 2:
        # the rows or files of the missing classes were skipped: say why, as for one class
        why = _skipped_hint(source.skipped)
        raise ConfigurationError(
            f"a data set needs images of at least 2 classes; {where!r} has only {present!r}{why}"
        )


# --- splits ------------------------------------------------------------------------------


def split_source(
    source: DataSource,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    keep_given: bool = True,
    copies_together: bool = True,
) -> dict[str, list[Example]]:
    """Split examples into ``train``/``val``/``test`` (always all three keys).

    Given splits (CSV ``split`` column, npz keys) are kept when ``keep_given``; examples
    without one are assigned here. Assignment is by **patient** when patient ids exist (all
    images of a patient land in one split; a patient who already has a given split joins
    it), otherwise per image. With ``copies_together`` (and a decode-checked source, whose
    ``digests`` say which images are identical) copies are one group too: identical images
    under two names, and every image of their patients, land in one split, joining a given
    split one of them has. Groups are shuffled with ``seed`` and allocated per label
    (stratified by the group's majority label; multi-label: by each image's rarest finding)
    so each split gets about the requested fraction of each class's images. The same inputs
    and seed always give the same splits, and data without copies splits as it did before
    copies were grouped.

    Raises:
        models.errors.ConfigurationError: fractions outside [0, 1) or summing to >= 1.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            option = "--" + name.replace("_", "-")  # as training.config names them
            raise ConfigurationError(f"{name} must be in [0, 1); got {value!r} (option {option})")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigurationError(
            f"val_fraction + test_fraction must be < 1; got {val_fraction} + {test_fraction} "
            "(options --val-fraction, --test-fraction): leave images to train on"
        )
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    pending: list[Example] = []
    for ex in source.examples:
        if keep_given and ex.split is not None:
            splits[ex.split].append(ex)
        else:
            pending.append(ex)
    if not pending:
        return splits

    # an image follows the given split of its patient when that patient has exactly one; else
    # that of its group (its patient's images joined with their copies' groups) when that has
    # exactly one. A copy across two given splits (PneumoniaMNIST's official split holds such)
    # joins two groups seen in two splits: each patient's images still follow their own split
    group_of = _split_groups(source, copies_together)
    own_given: dict[str, set[str]] = defaultdict(set)
    group_given: dict[str, set[str]] = defaultdict(set)
    for split, items in splits.items():
        for ex in items:
            own_given[_own_group(ex)].add(split)
            group_given[group_of(ex)].add(split)
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in pending:
        gid = group_of(ex)
        follows = [
            found
            for found in (own_given.get(_own_group(ex)), group_given.get(gid))
            if found and len(found) == 1
        ]
        if follows:
            splits[next(iter(follows[0]))].append(ex)
            continue
        groups[gid].append(ex)

    stratum = _stratum(source)
    by_label: dict[int, list[str]] = defaultdict(list)
    for gid in sorted(groups):
        labels = Counter(stratum(e) for e in groups[gid])
        majority = min(labels, key=lambda lab: (-labels[lab], lab))
        by_label[majority].append(gid)
    rng = random.Random(seed)
    for label in sorted(by_label):
        gids = by_label[label]
        rng.shuffle(gids)
        total = sum(len(groups[g]) for g in gids)
        targets = {"test": test_fraction * total, "val": val_fraction * total}
        filled = {"test": 0, "val": 0}
        for gid in gids:
            size = len(groups[gid])
            dest = "train"
            for split in ("test", "val"):
                if filled[split] + size / 2 <= targets[split]:
                    dest = split
                    break
            if dest != "train":
                filled[dest] += size
            splits[dest].extend(groups[gid])
    for split in SPLITS:
        splits[split].sort(key=lambda e: e.key)
    return splits


def _split_groups(source: DataSource, copies_together: bool) -> Callable[[Example], str]:
    """The split group of an example: its patient's (``p:<id>``), else its own (``k:<key>``);
    with ``copies_together`` the groups of identical images are merged, named by the least id
    of those merged (an image without a copy keeps its own group's name, so its data splits
    exactly as without copies)."""
    parent: dict[str, str] = {}

    def root(gid: str) -> str:
        while parent.get(gid, gid) != gid:
            gid = parent[gid]
        return gid

    if copies_together:
        for group in copy_groups(source):
            roots = sorted({root(_own_group(ex)) for ex in group})
            for other in roots[1:]:
                parent[other] = roots[0]
    return lambda ex: root(_own_group(ex))


def _own_group(ex: Example) -> str:
    """An image's split group before copies are joined: its patient's, else its own."""
    return f"p:{ex.patient_id}" if ex.patient_id is not None else f"k:{ex.key}"


def copy_groups(
    source: DataSource, examples: Iterable[Example] | None = None
) -> list[list[Example]]:
    """The examples (of ``examples``, default all) that have an identical copy, grouped by
    their pixels (``source.digests``: a decode-checked source), each group in source order.
    Empty for a source not decode-checked."""
    by_digest: dict[str, list[Example]] = defaultdict(list)
    for ex in source.examples if examples is None else examples:
        digest = source.digests.get(ex.key)
        if digest is not None:
            by_digest[digest].append(ex)
    return [group for group in by_digest.values() if len(group) > 1]


def check_copies(source: DataSource) -> None:
    """Refuse identical images that carry different labels (classes, finding sets): one
    of them is mislabelled, and training on both teaches the model nothing but noise.

    Raises:
        models.errors.ConfigurationError: how many such groups, the first few named with
            their labels, and what to do.
    """

    def label(ex: Example) -> str:
        if source.multi_label:
            names = [source.class_names[i] for i in ex.findings or ()]
            return "+".join(names) or str(source.none_name)
        return source.class_names[ex.label]

    conflicts = [g for g in copy_groups(source) if len({label(ex) for ex in g}) > 1]
    if not conflicts:
        return

    def one_per_label(group: list[Example]) -> str:  # a long group named by one file per label
        first = {label(ex): ex for ex in reversed(group)}
        named = " = ".join(f"{_printable(ex.key)} ({name})" for name, ex in reversed(first.items()))
        others = len(group) - len(first)
        return named + (
            f" (and {others} more cop{'y' if others == 1 else 'ies'})" if others else ""
        )

    shown = "; ".join(one_per_label(group) for group in conflicts[:3])
    more = f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
    raise ConfigurationError(
        f"{len(conflicts)} group(s) of identical images (the same pixels under two names) in "
        f"{str(source.root)!r} carry different labels: {shown}{more}; an image cannot be both, "
        "so remove the wrong copy or correct its label"
    )


def copies_report(source: DataSource, splits: Mapping[str, Iterable[Example]]) -> dict[str, Any]:
    """Copies in a split, JSON-ready: groups of identical images, the images in them, and
    the groups found in more than one split (a given split can hold those; they inflate the
    figures of the splits other than train), with the splits each such group spans."""
    split_of = {ex.key: name for name, items in splits.items() for ex in items}
    groups = copy_groups(source)
    across: Counter[str] = Counter()
    for group in groups:
        found = sorted({split_of[ex.key] for ex in group if ex.key in split_of}, key=_split_order)
        if len(found) > 1:
            across["+".join(found)] += 1
    return {
        "groups": len(groups),
        "images": sum(len(g) for g in groups),
        "groups_across_splits": sum(across.values()),
        "spanning": dict(sorted(across.items())),
    }


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def _stratum(source: DataSource) -> Any:
    """What a split stratifies on: the label; multi-label, the image's rarest finding (0: no
    finding), so rare findings reach every split rather than only the most common ones."""
    if not source.multi_label:
        return lambda e: e.label
    counts = Counter(i for e in source.examples for i in e.findings or ())
    rank = {i: r for r, i in enumerate(sorted(counts, key=lambda i: (counts[i], i)), start=1)}

    def rarest(e: Example) -> int:
        return min((rank[i] for i in e.findings or ()), default=0)

    return rarest


def leakage_report(splits: Mapping[str, Iterable[Example]]) -> dict[str, list[str]]:
    """Patient ids found in more than one split: ``{patient_id: [split, ...]}``.

    Examples without a patient id are not considered. An empty dict means no leakage.
    """
    seen: dict[str, set[str]] = defaultdict(set)
    for split, examples in splits.items():
        for ex in examples:
            if ex.patient_id is not None:
                seen[ex.patient_id].add(split)
    order = {s: i for i, s in enumerate(SPLITS)}
    return {
        pid: sorted(found, key=lambda s: (order.get(s, len(order)), s))
        for pid, found in sorted(seen.items())
        if len(found) > 1
    }


def check_leakage(splits: Mapping[str, Iterable[Example]]) -> dict[str, Any]:
    """Refuse splits that put one patient in two splits; return the check's record.

    Raises:
        ConfigurationError: naming how many patients leak and between which splits, and
            what to do (``--resplit`` redoes a given split at patient level).
    """
    leaks = leakage_report(splits)
    if leaks:
        pairs = Counter("+".join(found) for found in leaks.values())
        where = ", ".join(f"{k}: {v}" for k, v in sorted(pairs.items()))
        raise ConfigurationError(
            f"{len(leaks)} patient(s) have images in more than one split ({where}), so the "
            "figures would be inflated; pass --resplit to redo the split at patient level, "
            "or fix the split column"
        )
    return {"passed": True, "patients_in_two_splits": 0}


def describe_split(
    source: DataSource, splits: Mapping[str, Sequence[Example]], *, resplit: bool
) -> dict[str, Any]:
    """How a run's split was made: JSON-ready, no patient id (counts only)."""
    unit = "patient" if source.has_patients else "image"
    given = 0 if resplit else sum(e.split is not None for e in source.examples)
    if resplit:
        method = f"by {unit} (--resplit: the given split was redone)"
    elif given == len(source.examples):
        method = "given (split column / npz keys)"
    elif given:
        method = f"given, the rest by {unit}"
    else:
        method = f"by {unit}"
    patients = {
        name: len({e.patient_id for e in items if e.patient_id is not None})
        for name, items in splits.items()
    }
    return {
        "method": method,
        "patient_source": source.patient_source,
        "patient_ids": "keyed hash (HMAC-SHA256)" if source.has_patients else "none",
        "sizes": {name: len(items) for name, items in splits.items()},
        "patients": patients if source.has_patients else None,
        "images_without_patient": sum(e.patient_id is None for e in source.examples),
        "patient_key_check": patient_key_check() if source.has_patients else None,
        "test_split": bool(splits.get("test")),
    }


def split_counts(splits: Mapping[str, Sequence[Example]]) -> dict[str, int]:
    """Number of examples per split."""
    return {name: len(items) for name, items in splits.items()}


# the option a user typed, and the field a --config file sets (QA round 60)
_VAL_FRACTION = "--val-fraction (val_fraction: in a --config file)"


def check_splits(
    source: DataSource,
    splits: Mapping[str, Sequence[Example]],
    *,
    min_calibration_positives: int = 0,
) -> None:
    """Refuse splits a run cannot train on: a class without a training image, validation
    with fewer than 2 classes (the best epoch and the threshold are chosen on it), or (with
    ``min_calibration_positives``) too few positives in validation to fit the temperature.

    Raises:
        ConfigurationError: naming the counts found.
    """
    if source.multi_label:
        _check_finding_splits(source, splits)
        return
    names = source.class_names
    totals = source.class_counts(e for items in splits.values() for e in items)
    n_splits = max(2, sum(1 for items in splits.values() if items))  # train, val (and test)
    train_counts = source.class_counts(splits["train"])
    missing = [n for n, c in train_counts.items() if c == 0]
    if missing:
        raise ConfigurationError(
            f"class(es) {missing!r} have no training image; train split counts {train_counts}"
            f"{_too_few(missing, totals, n_splits)}"
        )
    val_counts = source.class_counts(splits["val"])
    present = [n for n, c in val_counts.items() if c > 0]
    if len(present) < 2:
        absent = [n for n, c in val_counts.items() if c == 0]
        if _split_all_given(source, splits):  # val_fraction applies to no image
            todo = (
                "Every image's split is given by its npz key, so --val-fraction assigns none: "
                "add val_images/val_labels, or pass --resplit"
                if source.kind == "npz"
                else "Every row's split is given by the split column, so --val-fraction assigns "
                "none: mark images of each class val, leave some rows' split empty for radlens "
                "to assign, or pass --resplit"
            )
        else:
            todo = _one_patient_todo(source, splits) or f"Add data or raise {_VAL_FRACTION}"
        raise ConfigurationError(
            "the validation split needs images of at least 2 classes to choose the best epoch "
            f"and the threshold; it has {val_counts} (classes {names!r}). "
            f"{todo}{_too_few(absent, totals, n_splits)}"
        )
    if min_calibration_positives:
        if len(names) > 2:
            rarest = min(names, key=lambda n: (val_counts[n], names.index(n)))
            what = f"{rarest!r} (its rarest class)"
        else:
            rarest = names[1]
            what = f"{rarest!r} (positive)"
        fewest = val_counts[rarest]
        if fewest < min_calibration_positives:
            more = (
                "give more images the split val (or pass --resplit)"
                if _split_all_given(source, splits)  # val_fraction applies to no image
                else f"raise {_VAL_FRACTION}"
            )
            # at 1 there is nothing lower to go to (QA round 102: "lower" was said at 1 too)
            todo = (
                f"Add data, {more}, or lower --min-calibration-positives "
                "(min_calibration_positives: in a --config file)"
                if min_calibration_positives > 1
                else f"Add data or {more} (--min-calibration-positives is 1, its lowest)"
            )
            raise ConfigurationError(
                f"too small to calibrate: the validation split has {fewest} image(s) of "
                f"{what}; temperature scaling needs at least {min_calibration_positives}. "
                f"{todo}{_too_few([rarest], totals, n_splits)}"
            )


def _one_patient_todo(source: DataSource, splits: Mapping[str, Sequence[Example]]) -> str:
    """Why validation is empty and what to do when every image has one and the same patient
    ("" otherwise). Anonymisers often write one constant PatientID for everyone; the split
    keeps a patient's images together, so it makes one group that goes to train whatever
    --val-fraction says (QA round 66). Only explained, not split otherwise: that would change
    the splits of existing runs. The patient is never named (the hash holds a real ID maybe).
    """
    examples = [e for items in splits.values() for e in items]
    patients = {e.patient_id for e in examples}
    if len(examples) < 2 or len(patients) != 1 or None in patients:
        return ""
    if _split_all_given(source, splits):  # the split column decides, not the patients
        return ""
    if source.kind == "folder":
        same = (
            "the same patient in their DICOM headers (PatientID, or StudyInstanceUID where "
            "that is empty)"
        )
        todo = (
            "give a CSV manifest instead (a labels.csv in the folder, or --data FILE.csv) with "
            "path and label columns and either patient_id (each image's real patient) or split "
            "(train, val or test for each image); radlens has no option to split by study or "
            "by image"
        )
    else:
        same = f"the same patient ({source.patient_source})"
        todo = (
            "fill the manifest's patient_id column with each image's real patient, or give "
            "its split column (train, val or test)"
        )
    return (
        f"All {len(examples)} images carry {same}, as when an anonymiser writes one constant "
        "for everyone; the split keeps each patient's images together, so it puts them all "
        f"in one split and no --val-fraction can make val or test: {todo}"
    )


def _split_all_given(source: DataSource, splits: Mapping[str, Sequence[Example]]) -> bool:
    """Whether every example carries a given split and ``splits`` kept it (no --resplit)."""
    return (
        bool(source.examples)
        and all(e.split == name for name, items in splits.items() for e in items)
        and all(e.split is not None for e in source.examples)
    )


def _too_few(names: Sequence[str], totals: Mapping[str, int], n_splits: int) -> str:
    """What to say of the classes among ``names`` that have too few images in the whole data
    set to reach every split: a class of one image (a typo in one label, often) cannot train
    and be validated."""
    short = [n for n in names if totals.get(n, 0) < n_splits]
    if not short:
        return ""
    shown = ", ".join(f"{n!r} {totals.get(n, 0)}" for n in short)
    return (
        f". Too few images in all: {shown} (each class needs at least one image in each of "
        f"the {n_splits} splits, and enough in validation to calibrate); add images of it, or "
        "fix its label if it is a typo"
    )


def _check_finding_splits(source: DataSource, splits: Mapping[str, Sequence[Example]]) -> None:
    """Multi-label: every finding needs a training image; validation needs, for at least one
    finding, images with and without it. A finding validation cannot judge (no positive or no
    negative there) keeps the 0.5 threshold and an undefined AUC; training says so."""
    train_counts = source.class_counts(splits["train"])
    missing = [n for n, c in train_counts.items() if c == 0]
    if missing:
        raise ConfigurationError(
            f"finding(s) {missing!r} have no training image; train split counts {train_counts}. "
            "Leave them out (--ignore-findings) or add data"
        )
    val = list(splits["val"])
    val_counts = source.class_counts(val)
    judged = [n for n, c in val_counts.items() if 0 < c < len(val)]
    if not judged:
        raise ConfigurationError(
            "the validation split needs images with and without at least one finding to "
            f"choose the best epoch and the thresholds; it has {len(val)} image(s), finding "
            f"counts {val_counts}. "
            + (_one_patient_todo(source, splits) or f"Add data or raise {_VAL_FRACTION}")
        )


def data_fingerprint(source: DataSource, splits: Mapping[str, Sequence[Example]]) -> str:
    """sha256 over the sorted (split, key relative to the data root, label) lines."""
    root = Path(source.root)
    base = root if root.is_dir() else root.parent
    lines = []
    for split, examples in splits.items():
        for e in examples:
            key = e.key
            if not key.startswith("npz:"):
                with contextlib.suppress(ValueError):  # outside the root: keep it absolute
                    key = Path(key).resolve().relative_to(base.resolve()).as_posix()
            label = e.label if e.findings is None else "|".join(map(str, e.findings))
            lines.append(f"{split}\t{key}\t{label}")
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(lines)).encode())
    return f"sha256:{digest.hexdigest()}"


def unique_skipped(skipped: Sequence[SkippedFile]) -> list[SkippedFile]:
    """``skipped`` with each path once (the first reason), in order."""
    seen: dict[str, SkippedFile] = {}
    for item in skipped:
        seen.setdefault(item.path, item)
    return list(seen.values())


# --- reporting skipped files --------------------------------------------------------------
# A hospital's CD export holds a viewer (hundreds of program and text files) beside the
# images: one line per skipped file buried the run's own output (QA round 60). Commands print
# a few examples and the count per kind of reason; the full list goes to a file.

SKIPPED_FILE = "skipped.csv"  # the full list: a run folder's, an `evaluate --out` folder's
MAX_SKIPPED_SHOWN = 10  # example lines a command prints
SKIP_LOG_MESSAGES = ("skipping %s: %s", "%d file(s) skipped in %s")  # the per-file lines
_SKIP_LOGGERS = (
    "radlens.training.data.sources",
    "radlens.training.data.series",
    "radlens.training.data.pipeline",
)


@contextlib.contextmanager
def skip_lines_held() -> Iterator[list[SkippedFile]]:
    """Hold back the per-file "skipping" warnings (and the count line) that opening and
    decoding a data set log, so the caller reports them once, summarised
    (:func:`skipped_report`). Yields the files so held back, as logged; other records pass."""
    held: list[SkippedFile] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.msg not in SKIP_LOG_MESSAGES:
            return True
        if record.msg == SKIP_LOG_MESSAGES[0] and isinstance(record.args, tuple):
            held.append(SkippedFile(*(str(a) for a in record.args[:2])))
        return False

    loggers = [logging.getLogger(name) for name in _SKIP_LOGGERS]
    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield held
    finally:
        for logger in loggers:
            logger.removeFilter(keep)


def skip_kind(reason: str) -> str:
    """The kind of a skip reason, to count skipped files by: its words up to the first
    detail (``(``, ``;`` or ``:``), e.g. "not a DICOM, PNG or JPEG file", "the file is
    truncated". Never a file's path or contents (details come after those marks)."""
    cut = min((i for i in (reason.find(m) for m in (" (", ";", ":")) if i > 0), default=None)
    kind = " ".join(reason[:cut].split()) or "unreadable"
    if kind[1:2].islower():  # "The file ..." as "the file ...", not "DICOM" as "dICOM"
        kind = kind[:1].lower() + kind[1:]
    if kind.startswith("the "):
        kind = kind[4:]
    return kind if len(kind) <= 80 else kind[:77] + "..."


def skip_kinds(skipped: Sequence[SkippedFile]) -> dict[str, int]:
    """Skipped files counted by :func:`skip_kind`, the most frequent first (ties: first seen)."""
    counts = Counter(skip_kind(s.reason) for s in unique_skipped(skipped))
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def describe_skip_kinds(kinds: Mapping[str, int]) -> str:
    """``"290 not a DICOM, PNG or JPEG file, 20 DICOM file has no pixel data"``."""
    return ", ".join(f"{count} {kind}" for kind, count in kinds.items())


def skip_examples(
    skipped: Sequence[SkippedFile], limit: int = MAX_SKIPPED_SHOWN
) -> list[SkippedFile]:
    """At most ``limit`` skipped files to show: the first of each kind, then the others in
    order (a truncated image is shown, not buried under 300 viewer files); in list order."""
    items = unique_skipped(skipped)
    chosen: set[int] = set()
    seen: set[str] = set()
    for i, item in enumerate(items):
        kind = skip_kind(item.reason)
        if kind not in seen and len(chosen) < limit:
            seen.add(kind)
            chosen.add(i)
    for i in range(len(items)):
        if len(chosen) >= limit:
            break
        chosen.add(i)
    return [items[i] for i in sorted(chosen)]


def skipped_report(
    skipped: Sequence[SkippedFile], *, full_list: str, limit: int = MAX_SKIPPED_SHOWN
) -> list[str]:
    """The lines a command prints about skipped files ([] for none): the count by kind,
    up to ``limit`` examples ("  skipped <path>: <reason>"), and, when some are not shown,
    where the full list is (``full_list``: "the full list: runs/x/skipped.csv")."""
    items = unique_skipped(skipped)
    if not items:
        return []
    lines = [f"{len(items)} file(s) skipped: {describe_skip_kinds(skip_kinds(items))}"]
    shown = skip_examples(items, limit)
    lines += [f"  skipped {item}" for item in shown]
    if len(shown) < len(items):
        lines.append(f"  ... and {len(items) - len(shown)} more; {full_list}")
    return lines


def skipped_csv(skipped: Sequence[SkippedFile]) -> bytes:
    """The skipped files as CSV (``path``, ``kind``, ``reason`` columns; each file once). The
    paths are those the data set gave; the reasons quote no file contents (QA round 31)."""
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("path", "kind", "reason"))
    writer.writerows((s.path, skip_kind(s.reason), s.reason) for s in unique_skipped(skipped))
    return text.getvalue().encode("utf-8")


def write_skipped_csv(path: Path, skipped: Sequence[SkippedFile]) -> Path:
    """Write :func:`skipped_csv` to ``path`` and return it."""
    path.write_bytes(skipped_csv(skipped))
    return path

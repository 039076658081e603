"""QA 106: manifests and folders as a hospital export or a spreadsheet leaves them.

1. A manifest whose header spells radlens' columns in another case or with spaces (``Path``,
   ``PATH``, `` label ``, ``Patient ID``), written by Excel with a byte-order mark, a ``sep=;``
   first line, ``;`` between fields or as UTF-16 "Unicode Text", was refused ("has no 'path'
   column"); it is read. Two columns that are both ``label`` to radlens (``Label`` and
   ``label``) are refused, naming them; a missing column names those found and expected.
2. A series CSV none of whose folders exists was refused at its first row alone, without
   saying that series_path is read relative to the CSV's folder (a labels CSV says so, QA 103);
   so was one none of whose series_uid values is under the DICOM root.
3. Files a desktop leaves in the class folders (.DS_Store, Thumbs.db, desktop.ini, ``._*``,
   ``~$`` lock files) are counted by kind (``DataSource.ignored``); a ``~$`` lock file was
   reported as a skipped image, and a Thumbs.db in a series folder found by series_uid as a
   skipped "not a DICOM file".
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import open_data
from tests.training.data_fixtures import png_folder, random_gray, write_png
from tests.training.series_fixtures import read_rows, series_dataset, write_rows

HEADER = ["path", "label", "patient_id", "split"]


@pytest.fixture(autouse=True)
def _patient_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def _rows(root: Path, n: int = 8) -> list[list[str]]:
    rng = np.random.default_rng(106)
    rows = []
    for i in range(n):
        write_png(root / "imgs" / f"img{i}.png", random_gray(rng, 16, bright=i % 2 == 1))
        rows.append([f"imgs/img{i}.png", ["normal", "abnormal"][i % 2], f"P{i}", ""])
    return rows


def _write(
    path: Path,
    header: list[str],
    rows: list[list[str]],
    *,
    sep: str = ",",
    encoding: str = "utf-8",
    sep_line: bool = False,
) -> Path:
    with path.open("w", newline="", encoding=encoding) as fh:
        if sep_line:
            fh.write(f"sep={sep}\r\n")
        writer = csv.writer(fh, delimiter=sep, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("header", "options"),
    [
        (["Path", "Label", "Patient_ID", "Split"], {}),
        (["PATH", "LABEL", "PATIENT_ID", "SPLIT"], {}),
        ([" path ", " label ", "patient_id ", " split"], {}),
        (["Path", "Label", "Patient ID", "Split"], {}),  # a spreadsheet's heading
        (["Path", "Label", "PatientID", "Split"], {}),  # as DICOM names it
        (["Path", "Label", "Patient_ID", "Split"], {"encoding": "utf-8-sig"}),  # Excel's BOM
        (HEADER, {"sep": ";", "encoding": "utf-8-sig"}),  # Excel where ',' is the decimal mark
        (HEADER, {"sep": ";", "sep_line": True, "encoding": "utf-8-sig"}),  # "sep=;" first
        (["Path", "Label", "Patient ID", "Split"], {"sep": "\t", "encoding": "utf-16"}),
    ],
)
def test_header_variants_are_read(tmp_path: Path, header: list[str], options: dict) -> None:
    path = _write(tmp_path / "labels.csv", header, _rows(tmp_path), **options)
    source = open_data(path)
    assert source.class_names == ["normal", "abnormal"]
    assert len(source.examples) == 8
    assert source.patient_source == "patient_id column"
    assert all(e.patient_id for e in source.examples)


def test_lines_are_named_after_a_sep_line(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    rows[2][1] = ""  # row 3: file line 5 after "sep=;" and the header
    path = _write(tmp_path / "labels.csv", HEADER, rows, sep=";", sep_line=True)
    with pytest.raises(ConfigurationError, match=r"empty label at labels\.csv line 5$"):
        open_data(path)


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        (["path", "Label", "label", "patient_id"], "('Label', 'label')"),
        (["path", "label", "label", "patient_id"], "twice ('label', 'label')"),
        (["Path", "PATH ", "label", "patient_id"], "('Path', 'PATH')"),
    ],
)
def test_two_columns_radlens_reads_alike_are_refused(
    tmp_path: Path, header: list[str], shown: str
) -> None:
    rows = [[*row[:2], row[1], row[2]] for row in _rows(tmp_path)]
    path = _write(tmp_path / "labels.csv", header, rows)
    with pytest.raises(ConfigurationError) as caught:
        open_data(path)
    message = str(caught.value)
    assert shown in message and "cannot be told" in message
    assert "\n" not in message


def test_a_missing_column_names_the_columns_found_and_expected(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    path = _write(tmp_path / "labels.csv", ["File", "Diagnosis", "patient_id", "split"], rows)
    with pytest.raises(ConfigurationError) as caught:
        open_data(path)
    message = str(caught.value)
    assert "has no 'path' column; columns found: 'File', 'Diagnosis', 'patient_id', 'split'" in (
        message
    )
    assert "expected: path and label" in message and "\n" not in message


# --- series CSVs whose series are not where they are looked for -----------------------------


def test_series_folders_written_relative_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_path = series_dataset(tmp_path / "ds", patients=2)
    moved = tmp_path / "ds" / "lists" / "series.csv"
    moved.parent.mkdir()
    shutil.move(csv_path, moved)
    rows = read_rows(moved)
    for row in rows:  # written as seen from ds/, the folder the export was made in
        assert not Path(row["series_path"]).is_absolute()
    monkeypatch.chdir(tmp_path / "ds")
    with pytest.raises(ConfigurationError) as caught:
        open_data(moved)
    message = str(caught.value)
    first = rows[0]["series_path"]
    assert f"none of the {len(rows)} series folder(s) in {str(moved)!r} exists" in message
    assert f"relative to the CSV's folder {str(moved.parent)!r}" in message
    assert f"e.g. {first!r} as {str(moved.parent / first)!r}" in message
    assert f"{len(rows)} of them exist relative to the current folder instead" in message
    # the folder written is shown (this export names folders by patient); no patient_id cell
    rest = message.replace(str(moved.parent / first), "").replace(first, "")
    assert all(row["patient_id"] not in rest for row in rows)


def test_one_missing_series_folder_says_where_it_was_looked_for(tmp_path: Path) -> None:
    csv_path = series_dataset(tmp_path / "ds", patients=2)
    rows = read_rows(csv_path)
    rows[1]["series_path"] = "nowhere/series9"
    with pytest.raises(ConfigurationError) as caught:
        open_data(write_rows(csv_path, rows))
    message = str(caught.value)
    assert "series folder 'nowhere/series9' at series.csv line 3 does not exist" in message
    assert str(csv_path.parent / "nowhere" / "series9") in message
    assert "relative to the CSV's folder" in message


def test_no_series_uid_under_the_dicom_root(tmp_path: Path) -> None:
    csv_path = series_dataset(tmp_path / "ds", patients=2, by="uid")
    moved = tmp_path / "elsewhere" / "series.csv"
    moved.parent.mkdir()
    shutil.move(csv_path, moved)
    rows = read_rows(moved)
    with pytest.raises(ConfigurationError) as caught:
        open_data(moved)
    message = str(caught.value)
    assert f"none of the {len(rows)} series_uid value(s)" in message
    assert f"DICOM root {str(moved.parent)!r} (the CSV's folder" in message
    assert "give --dicom-root the folder holding the series" in message
    assert all(row["series_uid"] not in message for row in rows)
    assert all(row["patient_id"] not in message for row in rows)


# --- what a desktop leaves in the folders -----------------------------------------------------


def _desktop_litter(folder: Path) -> None:
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 40)
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\r\n")
    (folder / "~$notes.docx").write_bytes(b"\x0bradiologist" + b"\0" * 40)
    (folder / "._normal_000.png").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 60)


def test_desktop_files_are_ignored_and_counted(tmp_path: Path) -> None:
    root = png_folder(tmp_path / "data", n_per_class=3)
    _desktop_litter(root / "normal")
    _desktop_litter(root / "abnormal" / "deep")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 40)
    (root / "normal" / "Icon\r").write_bytes(b"")  # a Finder folder icon (resource fork)
    source = open_data(root)
    assert len(source.examples) == 6
    assert not source.skipped  # the ~$ lock file was skipped as "not a recognised image"
    assert source.ignored == {
        ".DS_Store (macOS Finder)": 3,
        "Thumbs.db (Windows thumbnails)": 2,
        "desktop.ini (Windows folder settings)": 2,
        "~$* (Office lock file)": 2,
        "._* (macOS AppleDouble)": 2,
        "Icon\\r (macOS custom folder icon)": 1,
    }
    from radlens.training.data.sources import describe_ignored

    line = describe_ignored(source.ignored)
    assert line.startswith("12 system or hidden file(s)/folder(s) ignored, never read as images")
    assert "3 .DS_Store (macOS Finder)" in line


def test_a_series_folder_found_by_uid_ignores_desktop_files(tmp_path: Path) -> None:
    csv_path = series_dataset(tmp_path / "ds", patients=2, by="uid")
    before = open_data(csv_path)
    folder = next((tmp_path / "ds" / "dicom").glob("*/series*"))
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    (folder / "~$report.docx").write_bytes(b"\x0bradiologist" + b"\0" * 40)
    source = open_data(csv_path)
    assert len(source.examples) == len(before.examples)
    assert not source.skipped
    assert source.ignored == {"Thumbs.db (Windows thumbnails)": 1, "~$* (Office lock file)": 1}


# --- more of what spreadsheets and other machines write ----------------------------------------


def test_a_spreadsheets_empty_rows_are_blank_lines(tmp_path: Path) -> None:
    """Excel writes rows once formatted, now empty, as ",,,": refused as "empty label at
    line 10"; they hold nothing, as a blank line."""
    rows = [*_rows(tmp_path), ["", "", "", ""], ["  ", "", "", ""]]
    source = open_data(_write(tmp_path / "labels.csv", HEADER, rows))
    assert len(source.examples) == 8 and not source.skipped


def test_a_name_in_another_case_says_so(tmp_path: Path) -> None:
    """A manifest written on Windows or macOS (which ignore case) naming ``IMG3.PNG`` for
    ``img3.png`` was skipped as "file does not exist"."""
    rows = _rows(tmp_path)
    rows[3][0] = "imgs/IMG3.PNG"
    source = open_data(_write(tmp_path / "labels.csv", HEADER, rows))
    assert len(source.examples) == 7
    (skipped,) = source.skipped
    assert skipped.reason.startswith("file name differs only in case: its folder holds 'img3.png'")


def test_integer_labels_written_as_decimals(tmp_path: Path) -> None:
    """pandas writes an integer column that had an empty cell as 0.0/1.0: read as the class
    names '0.0' and '1.0', the positive class by alphabet, the label_name column unused."""
    rows = [
        [path, f"{i % 2}.0", patient, "", ["normal", "abnormal"][i % 2]]
        for i, (path, _, patient, _) in enumerate(_rows(tmp_path))
    ]
    path = _write(tmp_path / "labels.csv", [*HEADER, "label_name"], rows)
    source = open_data(path)
    assert source.class_names == ["normal", "abnormal"]
    assert [e.label for e in source.examples] == [i % 2 for i in range(8)]


def test_a_class_folder_of_system_files_only_says_so(tmp_path: Path) -> None:
    root = png_folder(tmp_path / "data", n_per_class=2, classes=("normal", "abnormal", "other"))
    for image in (root / "other").rglob("*.png"):
        image.unlink()
    _desktop_litter(root / "other")
    with pytest.raises(ConfigurationError) as caught:
        open_data(root)
    message = str(caught.value)
    assert "contains no readable DICOM/PNG/JPEG image; 5 system or hidden file(s) ignored" in (
        message
    )


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("labels.xlsx", "is a spreadsheet, which radlens does not read: save it as a .csv"),
        ("labels.tsv", "ends in .tsv: rename it to .csv"),
        ("labels.txt", "ends in .txt: rename it to .csv"),
    ],
)
def test_a_spreadsheet_or_text_table_says_what_to_do(tmp_path: Path, name: str, said: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04" if name.endswith("x") else b"path\tlabel\n")
    with pytest.raises(ConfigurationError, match=said):
        open_data(path)

"""Manifests as spreadsheets and other machines write them (QA round 27, on NIH chest X-rays
copied into messy layouts): class names one reader takes for two, and CSV line numbers.

- A label typed as ``Pneumonía`` on one row and pasted from a macOS file name (``i`` plus a
  combining accent: Unicode NFD) on another printed as the same word twice (``class Pneumonía:
  25`` on two lines of data-check) and trained a three-class model; ``Normal  Lung`` with a
  doubled space did the same. Both are one class spelled two ways, refused as ``Normal`` and
  ``normal`` already were, the accent case quoted with ``ascii()`` so the two differ on screen.
- A manifest with a blank line (or a quoted line break) named the row after it by its row
  number + 1, so "empty label at labels.csv line 102" pointed one line above the bad row.
- A manifest saved with ``;`` or tab between fields (Excel in locales with a decimal comma) was
  refused as having "no 'path' column", quoting the whole header as one column name (QA 106:
  read as its header separates it).
- A manifest written on Windows (``imgs\\a.png``) skipped every file as "file does not exist".
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import open_data
from tests.training.data_fixtures import random_gray, write_png

ACCENTED = "Pneumon\u00eda"  # NFC: one character for the accented i


def _images(root: Path, labels: list[str]) -> list[list[str]]:
    """One PNG per label under ``root/imgs`` and its manifest rows (path, label, patient)."""
    rng = np.random.default_rng(27)
    rows = []
    for i, label in enumerate(labels):
        write_png(root / "imgs" / f"img{i}.png", random_gray(rng, bright=i % 2 == 1))
        rows.append([f"imgs/img{i}.png", label, f"P{i}"])
    return rows


def _write(path: Path, rows: list[list[str]], *, sep: str = ",", blank_after: int = -1) -> Path:
    lines = [sep.join(["path", "label", "patient_id"])]
    for i, row in enumerate(rows):
        lines.append(sep.join(row))
        if i == blank_after:
            lines.append("")
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


class TestOneClassSpelledTwoWays:
    def test_nfc_and_nfd_accents_are_refused_and_shown_apart(self, tmp_path: Path) -> None:
        nfd = unicodedata.normalize("NFD", ACCENTED)
        assert nfd != ACCENTED
        rows = _images(tmp_path, ["Normal", ACCENTED, "Normal", nfd, "Normal", ACCENTED])
        path = _write(tmp_path / "labels.csv", rows)
        with pytest.raises(ConfigurationError, match=r"how an accent is encoded") as info:
            open_data(path)
        assert ascii(nfd)[1:-1] in str(info.value)  # the combining mark is visible
        assert ascii(ACCENTED)[1:-1] in str(info.value)

    def test_a_doubled_space_is_refused(self, tmp_path: Path) -> None:
        rows = _images(tmp_path, ["Normal Lung", "Pneumonia", "Normal  Lung", "Pneumonia"])
        with pytest.raises(ConfigurationError, match=r"differ only in spacing"):
            open_data(_write(tmp_path / "labels.csv", rows))

    def test_class_folders_in_two_unicode_forms_are_refused(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(1)
        for i, name in enumerate(("normal", ACCENTED, unicodedata.normalize("NFD", ACCENTED))):
            write_png(tmp_path / "ds" / name / f"{i}.png", random_gray(rng))
        with pytest.raises(ConfigurationError, match=r"how an accent is encoded"):
            open_data(tmp_path / "ds")

    def test_case_alone_keeps_its_message(self, tmp_path: Path) -> None:
        rows = _images(tmp_path, ["Normal", "Pneumonia", "normal", "Pneumonia"])
        with pytest.raises(ConfigurationError, match=r"\['Normal', 'normal'\] .* only in case"):
            open_data(_write(tmp_path / "labels.csv", rows))

    def test_distinct_accented_names_still_train(self, tmp_path: Path) -> None:
        rows = _images(tmp_path, ["Normal", ACCENTED, "Normal", ACCENTED])
        source = open_data(_write(tmp_path / "labels.csv", rows))
        assert source.class_names == ["Normal", ACCENTED]


class TestManifestLines:
    def test_a_blank_line_does_not_shift_the_line_named(self, tmp_path: Path) -> None:
        rows = _images(tmp_path, ["normal", "abnormal", "normal", "abnormal"])
        rows[3][1] = ""  # file line 6: header, 2 rows, a blank line, row 3, then this one
        with pytest.raises(ConfigurationError, match=r"empty label at labels\.csv line 6$"):
            open_data(_write(tmp_path / "labels.csv", rows, blank_after=1))

    def test_a_quoted_line_break_does_not_shift_the_line_named(self, tmp_path: Path) -> None:
        rows = _images(tmp_path, ["normal", "abnormal", "normal", "abnormal"])
        path = tmp_path / "labels.csv"
        text = "path,label,patient_id,comment\n"
        text += f'{rows[0][0]},normal,P0,"two\nlines"\n'  # lines 2-3
        text += f"{rows[1][0]},abnormal,P1,\n{rows[2][0]},normal,P2,\n"  # lines 4, 5
        text += f"{rows[1][0]},abnormal,P3,\n"  # line 6: the file of line 4 again
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigurationError, match=r"\(lines 4 and 6\)"):
            open_data(path)

    @pytest.mark.parametrize("sep", [";", "\t"])
    def test_another_field_separator_is_read(self, tmp_path: Path, sep: str) -> None:
        """QA 106: a header holding no ',' but ';' or a tab says how the fields are separated,
        unambiguously; the manifest was refused ("save it comma-separated"), now it is read."""
        rows = _images(tmp_path, ["normal", "abnormal", "normal", "abnormal"])
        source = open_data(_write(tmp_path / "labels.csv", rows, sep=sep))
        assert source.class_names == ["normal", "abnormal"] and len(source.examples) == 4

    def test_windows_folder_separators_are_named(self, tmp_path: Path) -> None:
        rows = _images(tmp_path, ["normal", "abnormal", "normal", "abnormal"])
        rows = [[row[0].replace("/", "\\"), *row[1:]] for row in rows]
        with pytest.raises(ConfigurationError, match=re.escape("folders with '\\'; write '/'")):
            open_data(_write(tmp_path / "labels.csv", rows))


class TestAModelsClassNamesMatchEitherEncoding:
    """`radlens evaluate --model M --data FOLDER` with M trained on ``Pneumonía`` typed in a
    CSV and FOLDER copied from a Mac (folder ``Pneumonía`` in NFD) stopped with
    "class_names=['Normal Lung', 'Pneumonía'] must name exactly the sub-folders of ...:
    ['Normal Lung', 'Pneumonía']": the same names on both sides of the message."""

    def test_a_folder_named_in_nfd(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(2)
        for i, name in enumerate(("Normal", unicodedata.normalize("NFD", ACCENTED)) * 2):
            write_png(tmp_path / "ds" / name / f"{i}.png", random_gray(rng, bright=i % 2 == 1))
        source = open_data(tmp_path / "ds", ["Normal", ACCENTED])
        assert source.class_names == ["Normal", ACCENTED]  # the model's, as it spells them
        assert sorted(e.label for e in source.examples) == [0, 0, 1, 1]

    def test_csv_labels_in_nfd(self, tmp_path: Path) -> None:
        nfd = unicodedata.normalize("NFD", ACCENTED)
        rows = _images(tmp_path, ["Normal", nfd, "Normal", ACCENTED])
        source = open_data(_write(tmp_path / "labels.csv", rows), ["Normal", ACCENTED])
        assert [e.label for e in source.examples] == [0, 1, 0, 1]

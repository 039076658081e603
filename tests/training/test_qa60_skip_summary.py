"""QA round 60: `radlens train` and `radlens evaluate` printed one "skipping ..." line per
skipped file while they opened the data: a hospital's CD export with its viewer folder is
hundreds of files, so hundreds of lines. They log the count per kind of reason and at most
ten examples (the first of each kind among them); the full list is a file: ``skipped.csv``
in the run folder, or in the ``evaluate --out`` folder.

(Under pytest a log handler is installed, so the warnings are read from caplog; a command
without one shows the same records on stderr.)
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from radlens.training.data.sources import SkippedFile
from tests.training.conftest import tiny_config

N_JUNK = 30


def _with_viewer(data: Path) -> Path:
    """``data`` as a folder of class folders (no labels.csv) holding a CD viewer's files, and
    a cut DICOM (another kind of reason) sorted after them."""
    (data / "labels.csv").unlink()
    viewer = data / "normal" / "VIEWER"
    viewer.mkdir()
    for i in range(N_JUNK):
        (viewer / f"a{i:03d}.dll").write_bytes(b"MZ\x90\x00" + bytes(60))
    one = sorted((data / "normal").rglob("*.dcm"))[0]
    (viewer / "zz_cut.dcm").write_bytes(one.read_bytes()[:-300])
    return data


def _per_file_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ".dll" in r.getMessage()]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class TestSummary:
    def test_kinds_leave_details_and_paths_out(self) -> None:
        from radlens.training.data.sources import skip_kind

        assert skip_kind("not a DICOM, PNG or JPEG file (starts with b'MZ')") == (
            "not a DICOM, PNG or JPEG file"
        )
        assert skip_kind("The file is truncated; send the complete file: ends") == (
            "file is truncated"
        )
        assert skip_kind("The DICOM file has no pixel data; send an image") == (
            skip_kind("DICOM file has no pixel data")
        )
        assert skip_kind("reached again through a link (the same file as /a/b.dcm): x") == (
            "reached again through a link"
        )

    def test_each_kind_is_shown_and_the_rest_counted(self) -> None:
        from radlens.training.data.sources import skip_examples, skip_kinds, skipped_report

        items = [SkippedFile(f"v/{i}.dll", "not a DICOM, PNG or JPEG file (x)") for i in range(50)]
        items.append(SkippedFile("c/cut.dcm", "The file is truncated; send it: y"))
        assert [s.path for s in skip_examples(items)][-1] == "c/cut.dcm"
        assert skip_kinds(items) == {"not a DICOM, PNG or JPEG file": 50, "file is truncated": 1}
        lines = skipped_report(items, full_list="the full list: L")
        assert (
            lines[0] == "51 file(s) skipped: 50 not a DICOM, PNG or JPEG file, 1 file is truncated"
        )
        assert len(lines) == 12 and lines[-1] == "  ... and 41 more; the full list: L"


def test_train_summarises_and_writes_the_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from radlens.training.data.demo import write_demo_dataset
    from radlens.training.run import train

    data = tmp_path / "data"
    write_demo_dataset(data, n_per_class=20, size=32, seed=0)
    _with_viewer(data)
    caplog.set_level(logging.WARNING)
    result = train(tiny_config(data, tmp_path, epochs_head=1, histogram_freq=0), verbose=0)
    before_log = [r for r in caplog.records if r.name == "radlens.training.run"]
    listed = result.run_dir / "skipped.csv"
    summary = f"{N_JUNK + 1} file(s) skipped: {N_JUNK} not a DICOM, PNG or JPEG file, 1 "
    assert any(r.getMessage().startswith(summary) for r in before_log), caplog.text
    assert any(r.getMessage().endswith(f"the full list: {listed}") for r in before_log)
    # no line per file as the data is opened, ten examples (the finished run then lists every
    # one, "skipped <path>: <reason>", in train.log, where its log handler sends them)
    messages = _per_file_records(caplog)
    assert not any(m.startswith("skipping ") for m in messages), messages[:3]
    shown = [r.getMessage() for r in before_log if r.getMessage().startswith("  skipped ")]
    assert len(shown) == 10 and "zz_cut.dcm: " in shown[-1], shown
    rows = _rows(listed)
    assert len(rows) == N_JUNK + 1
    assert {r["kind"] for r in rows} == {"not a DICOM, PNG or JPEG file", "file is truncated"}
    assert all(Path(r["path"]).is_relative_to(data) for r in rows)

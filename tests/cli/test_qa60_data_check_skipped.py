"""QA round 60: `radlens data-check` listed every skipped file: a hospital's CD export with its
viewer (hundreds of program and text files) buried the report under one line per file. It
prints the count per kind of reason and ten examples (the first of each kind among them, so
a truncated image is not hidden behind the viewer's files); --all-skipped lists every one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from tests.training.data_fixtures import png_bytes, png_folder

N_JUNK = 40


def _export(tmp_path: Path) -> Path:
    root = png_folder(tmp_path / "ds", n_per_class=6)
    viewer = root / "normal" / "VIEWER"
    viewer.mkdir()
    for i in range(N_JUNK):  # a viewer's DLLs, sorted before the cut image below
        (viewer / f"a{i:03d}.dll").write_bytes(b"MZ\x90\x00" + bytes(60))
    image = png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    (viewer / "zz_cut.png").write_bytes(image[: len(image) // 2])
    return root


def test_many_skipped_files_are_summarised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _export(tmp_path)
    assert main(["data-check", str(root), "--min-calibration-positives", "0"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    shown = [line for line in out.splitlines() if line.startswith("  skipped ")]
    assert len(shown) == 10, out
    assert any("zz_cut.png" in line for line in shown), out  # the other kind is shown
    assert f"... and {N_JUNK + 1 - 10} more; --all-skipped lists every one" in out
    assert f"{N_JUNK + 1} file(s) skipped (every image decoded as training decodes it): " in out
    assert f"{N_JUNK} not a DICOM, PNG or JPEG file, 1 " in out
    assert "a000.dll" not in captured.err  # no per-file warning on stderr either


def test_all_skipped_lists_every_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _export(tmp_path)
    code = main(["data-check", str(root), "--min-calibration-positives", "0", "--all-skipped"])
    assert code == 0
    out = capsys.readouterr().out
    shown = [line for line in out.splitlines() if line.startswith("  skipped ")]
    assert len(shown) == N_JUNK + 1 and "more;" not in out

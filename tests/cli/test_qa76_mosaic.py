"""QA 76: ``radlens inspect`` and ``radlens filter`` refuse a Siemens mosaic (nibabel's real
ones) in one line, exit 2, no traceback, with the service's reason; they showed its metadata
and statistics, and filtered it, as one picture of many tiled slices."""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.cli.main import main
from tests.cli.test_imaging import one_error_line
from tests.conftest import mosaic_paths

MOSAICS = [pytest.param(p, id=p.name) for p in mosaic_paths()]


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("path", MOSAICS)
def test_inspect_refuses_a_mosaic(
    path: Path, as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["inspect", str(path), *(["--json"] if as_json else [])]
    assert main(args) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "Siemens mosaic" in line and "MOSAIC" in line and "separate instances" in line
    assert captured.out == ""


@pytest.mark.parametrize("path", MOSAICS)
def test_filter_refuses_a_mosaic_and_writes_nothing(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "edges.png"
    assert main(["filter", str(path), "--kind", "sobel_h", "--out", str(out)]) == 2
    assert "Siemens mosaic" in one_error_line(capsys.readouterr().err)
    assert not out.exists()

"""QA 76: ``--size`` of ``radlens inspect`` / ``filter`` states and checks the limit
preprocessing applies (H x W at most DEFAULT_MAX_PIXELS, 36 MP; one constant, in
models/dicomread.py), not its own 1..8192 per side: 8192x8192 (67 MP) passed the CLI and was
refused by preprocessing, and 100x9000 (0.9 MP) was refused by the CLI alone."""

from __future__ import annotations

import json

import pytest
from pydicom.data import get_testdata_file

import radlens.models.preprocessing as pp
from radlens.cli.common import CliError
from radlens.cli.imaging import parse_size
from radlens.cli.main import main
from radlens.models.errors import InvalidImageError
from tests.cli.test_imaging import one_error_line

CT_SMALL = str(get_testdata_file("CT_small.dcm"))


def test_one_limit_for_frames_model_inputs_and_the_cli() -> None:
    from radlens.models import dicomread

    assert getattr(dicomread, "DEFAULT_MAX_PIXELS", None) == pp.DEFAULT_MAX_PIXELS == 36_000_000


@pytest.mark.parametrize(
    "text, size",
    [("6000", (6000, 6000)), ("1x36000000", (1, 36_000_000)), ("100x9000", (100, 9000))],
)
def test_the_cli_accepts_what_preprocessing_accepts(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size
    assert pp._check_size(size) == size


@pytest.mark.parametrize(
    "text, size", [("6001", (6001, 6001)), ("8192", (8192, 8192)), ("2x18000001", (2, 18_000_001))]
)
def test_the_cli_refuses_what_preprocessing_refuses(text: str, size: tuple[int, int]) -> None:
    with pytest.raises(CliError, match=r"at most 36,000,000 pixels \(36 MP, e\.g\. 6000x6000\)"):
        parse_size(text)
    with pytest.raises(InvalidImageError, match="exceeds 36000000 pixels"):
        pp._check_size(size)


def test_a_long_thin_size_beyond_8192_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", CT_SMALL, "--json", "--size", "100x9000"]) == 0
    assert json.loads(capsys.readouterr().out)["pixels"]["shape"] == [100, 9000]


def test_a_size_over_the_limit_is_one_line_saying_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", CT_SMALL, "--size", "8192"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--size" in line and "36,000,000 pixels" in line and "67,108,864 pixels" in line


@pytest.mark.parametrize("command", ["inspect", "filter"])
def test_the_help_states_the_limit(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "8192" not in shown
    assert "H x W at most 36,000,000 pixels (36 MP, e.g. 6000x6000)" in shown
    assert "frames of at most 36,000,000 pixels" in shown

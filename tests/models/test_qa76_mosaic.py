"""QA 76: ``preprocess(bytes)`` and ``preprocess_frames(bytes)`` -- what reads a file given
alone (``radlens inspect``, ``radlens filter``, a series' slices) -- refuse a Siemens mosaic with
the reason ``parse_dicom`` gives (QA 75 refused it there only: preprocess read the tiled slices
as one picture). nibabel's three real mosaics and a written one; other MR images still read."""

from __future__ import annotations

from pathlib import Path

import pytest

import radlens.models.preprocessing as pp
from radlens.models.errors import InvalidImageError
from tests.conftest import mosaic_paths
from tests.models.test_qa75_mosaic import mosaic_bytes


def _reason(call: object) -> str:
    with pytest.raises(InvalidImageError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code == "invalid-image"
    return str(caught.value)


def test_the_corpus_has_nibabels_three_mosaics() -> None:
    assert sorted(p.name for p in mosaic_paths()) == ["0.dcm", "1.dcm", "csa_slice_norm.dcm"]


@pytest.mark.parametrize("path", mosaic_paths(), ids=lambda p: p.name)
def test_a_real_mosaic_is_refused_by_every_entry_with_one_reason(path: Path) -> None:
    data = path.read_bytes()
    parsed = _reason(lambda: pp.parse_dicom(data))
    assert "Siemens mosaic" in parsed and "separate instances" in parsed
    assert _reason(lambda: pp.preprocess(data)) == parsed
    assert _reason(lambda: pp.preprocess(data, size=(64, 64), version="1")) == parsed
    assert _reason(lambda: pp.preprocess_frames(data)) == parsed  # before any frame
    assert _reason(lambda: pp.preprocess_frames(data, [0], size=(32, 32))) == parsed


def test_the_slice_count_is_named_when_the_file_records_it() -> None:
    (first, *_) = [p for p in mosaic_paths() if p.name == "0.dcm"]
    assert "48 slices" in _reason(lambda: pp.preprocess(first.read_bytes()))


@pytest.mark.parametrize("implicit", [False, True])
def test_a_written_mosaic_is_refused_by_preprocess(implicit: bool) -> None:
    data = mosaic_bytes(implicit=implicit)
    message = _reason(lambda: pp.preprocess(data, size=(8, 8)))
    assert "4 slices" in message and "ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC" in message
    assert message == _reason(lambda: pp.parse_dicom(data))


def test_an_mr_that_is_no_mosaic_still_reads_through_preprocess() -> None:
    data = mosaic_bytes(("ORIGINAL", "PRIMARY", "M", "ND", "NORM"), tiles=None)
    assert pp.preprocess(data).pixels.shape == (16, 16)
    assert [i.pixels.shape for i in pp.preprocess_frames(data)] == [(16, 16)]

"""QA 85: a JPEG 2000 frame that holds other bytes than its EOC marker after its last
tile-part is refused after one decoder, not four.

OpenJPEG decodes every tile of such a frame and only then fails, where it expects SOT or EOC.
imagecodecs refused it; pydicom's default pick then ran imagecodecs again, pylibjpeg-openjpeg
and Pillow (the last two holding the GIL), each failing the same way: 2.0 s of CPU to refuse
a corrupted copy of pydicom-data's RG1_J2KR chest CR, 0.5 s now (docs/benchmarks/
preprocess.md). The fixtures are pydicom's real JPEG 2000 files with bytes added before EOC
(a stray marker segment, plain text); a frame whose main header is corrupt (pydicom's own
JPEG2000-embedded-sequence-delimiter.dcm) fails in milliseconds and keeps the whole chain.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import DecodeRunner

from radlens.models import codecs, preprocessing
from radlens.models.errors import UnsupportedTransferSyntaxError
from tests.models.test_qa80_j2k_trailing_comment import _file_with_frame as _to_bytes

STRAY = {
    "text": b"PADDING\x00",  # not a marker at all
    "COD segment": b"\xff\x52\x00\x0c" + bytes(10),  # a main-header segment after the tiles
}
FILES = ("MR_small_jp2klossless.dcm", "US1_J2KR.dcm", "JPEG2000.dcm")


def _file(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is absent (pydicom-data not installed)")
    return pydicom.dcmread(path)


def _frame(ds: pydicom.Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _with_stray(frame: bytes, stray: bytes) -> bytes:
    eoc = frame.rindex(codecs.END_MARKER)
    return frame[:eoc] + stray + frame[eoc:]


@pytest.fixture
def plugins_called(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the pydicom decoding plugins called, in order."""
    called: list[str] = []
    original = DecodeRunner.set_decoders

    def set_decoders(self: DecodeRunner, decoders: dict) -> None:
        def spy(name: str, func):  # type: ignore[no-untyped-def]
            def wrapper(src, runner):  # type: ignore[no-untyped-def]
                called.append(name)
                return func(src, runner)

            return wrapper

        original(self, {name: spy(name, func) for name, func in decoders.items()})

    monkeypatch.setattr(DecodeRunner, "set_decoders", set_decoders)
    return called


@pytest.mark.parametrize("name", FILES)
def test_the_real_frames_have_nothing_after_their_tile_parts(name: str) -> None:
    frame = _frame(_file(name))
    assert codecs.j2k_bytes_after_tile_parts(frame) == 0
    # a trailing comment is dropped before decoding (QA 80), not counted
    padding = b"\xff\x64\x00\x0b\x00\x01PADDING"
    assert codecs.j2k_bytes_after_tile_parts(_with_stray(frame, padding)) == 0


@pytest.mark.parametrize("stray", STRAY.values(), ids=STRAY.keys())
def test_stray_bytes_after_the_tile_parts_are_counted(stray: bytes) -> None:
    frame = _frame(_file("US1_J2KR.dcm"))
    assert codecs.j2k_bytes_after_tile_parts(_with_stray(frame, stray)) == len(stray)


def test_a_codestream_the_walk_does_not_understand_counts_nothing() -> None:
    frame = _frame(_file("US1_J2KR.dcm"))
    assert codecs.j2k_bytes_after_tile_parts(b"\x00" + frame) == 0  # not SOC, SIZ
    assert codecs.j2k_bytes_after_tile_parts(frame[: len(frame) // 2] + b"\xff\xd9") == 0


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("stray", STRAY.values(), ids=STRAY.keys())
@pytest.mark.parametrize("size", [None, (224, 224)], ids=["native", "224"])
def test_refused_by_imagecodecs_alone(
    name: str, stray: bytes, size: tuple[int, int] | None, plugins_called: list[str]
) -> None:
    ds = _file(name)
    label = f"{ds.file_meta.TransferSyntaxUID} ({ds.file_meta.TransferSyntaxUID.name})"
    data = _to_bytes(ds, _with_stray(_frame(ds), stray))
    with pytest.raises(UnsupportedTransferSyntaxError) as caught:
        preprocessing.preprocess(data, size=size)
    # was: imagecodecs, then pydicom's default pick (pylibjpeg, pillow, imagecodecs again)
    assert plugins_called == [codecs.PLUGIN]
    detail = caught.value.detail
    assert detail.startswith(f"could not decode the {label} pixel data (RuntimeError: ")
    assert "imagecodecs: opj_decode or opj_end_decompress failed" in detail
    assert detail.endswith(
        f"the codestream holds {len(stray)} bytes after its last tile-part, where only its "
        "EOC marker may be"
    )
    assert caught.value.transfer_syntax == label


def test_a_corrupt_main_header_still_gets_every_decoder(plugins_called: list[str]) -> None:
    """OpenJPEG refuses it before decoding anything (milliseconds): left as it was."""
    path = get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm")
    with open(path, "rb") as handle:
        data = handle.read()
    with pytest.raises(UnsupportedTransferSyntaxError, match="pylibjpeg: Error decoding"):
        preprocessing.preprocess(data, size=(224, 224))
    assert plugins_called[0] == codecs.PLUGIN and "pylibjpeg" in plugins_called


@pytest.mark.parametrize("name", FILES)
def test_whole_frames_decode_as_before(name: str, plugins_called: list[str]) -> None:
    ds = _file(name)
    expected = np.asarray(ds.pixel_array)
    plugins_called.clear()  # pydicom's own pick read `expected`
    out = preprocessing.preprocess(_to_bytes(ds, _frame(ds)))
    assert out.pixels.shape[:2] == expected.shape[:2]
    assert set(plugins_called) == {codecs.PLUGIN}

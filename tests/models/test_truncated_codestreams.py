"""A compressed frame cut short is refused as truncated, never decoded with a filled-in rest.

Found by fuzzing: a DICOM whose single JPEG-LS, lossless JPEG or JPEG Baseline fragment was
cut to half its length was predicted (pylibjpeg-libjpeg and libjpeg-turbo decode a partial
stream without an error; imagecodecs' refusal fell back to them), and a JPEG whose scan was
cut short but closed with an EOI marker again decoded with its rest grey (Pillow drops
libjpeg's "premature end of data segment" warning). The fixtures are made here from
pydicom's test files and ../shared/data/dicom (skipped when absent); models/codecs.py
explains the checks.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.decoders.base import Decoder

from radlens.models import codecs
from radlens.models import preprocessing as pp
from radlens.models.errors import PreprocessingError, TruncatedDataError
from radlens.models.preprocessing import preprocess, preprocess_frames
from tests.conftest import real_dicom_paths, shared_data_path

SIZES = [None, (224, 224), (32, 32)]  # native (full decode); reduced decodes at model sizes


def pydicom_file(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def source(name: str) -> Path:
    """A pydicom test file by name, or ``shared/<name>`` from ../shared/data/dicom."""
    if name.startswith("shared/"):
        return shared_data_path("dicom", name.removeprefix("shared/"))
    return pydicom_file(name)


def frames_of(path: Path) -> tuple[Any, list[bytes]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path)
        count = int(ds.get("NumberOfFrames") or 1)
        return ds, [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=count)]


def rewritten(path: Path, change: Callable[[bytes], bytes], frame: int = 0) -> bytes:
    """The file with frame ``frame``'s codestream changed, re-encapsulated one fragment per
    frame (even lengths, Pixel Data VR OB), as the fuzzer wrote its cases."""
    ds, frames = frames_of(path)
    frames[frame] = change(frames[frame])
    ds.PixelData = encapsulate([f + b"\x00" * (len(f) % 2) for f in frames])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def half(codestream: bytes) -> bytes:
    return codestream[: len(codestream) // 2]


def body(codestream: bytes) -> bytes:
    """The codestream without its end marker and padding."""
    stripped = codestream.rstrip(b"\x00\xff")
    assert stripped.endswith(b"\xff\xd9")
    return stripped[:-2]


def cut_closed(keep: float) -> Callable[[bytes], bytes]:
    """Keep ``keep`` of the codestream, then close it with an EOI marker again."""

    def change(codestream: bytes) -> bytes:
        kept = body(codestream)
        return kept[: int(len(kept) * keep)] + b"\xff\xd9"

    return change


@pytest.fixture()
def no_decoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every decode: pydicom's decoders (any plugin) and the reduced decodes."""
    calls: list[str] = []
    real = Decoder.as_array

    def as_array(self, src, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(f"pydicom:{kwargs.get('decoding_plugin', '')}")
        return real(self, src, *args, **kwargs)

    monkeypatch.setattr(Decoder, "as_array", as_array)
    for name in ("_decode_jpeg_reduced", "_decode_j2k_reduced"):
        real_reduced = getattr(pp, name)

        def reduced(*args, _name=name, _real=real_reduced, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(pp, name, reduced)
    return calls


# the fuzzer's files, and one of each other encapsulated syntax family
CUT = [
    "shared/CT1_JLSN.dcm",  # JPEG-LS near-lossless
    "JPEG-LL.dcm",  # lossless JPEG (process 14)
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, colour
    "shared/rsna_chest_cr_jpeg_baseline.dcm",  # JPEG Baseline, gray: reduced at model size
    "MR_small_jp2klossless.dcm",  # JPEG 2000
    "JPGExtended.dcm",  # JPEG Extended
]


class TestCutCodestream:
    @pytest.mark.parametrize("size", SIZES, ids=["native", "224", "32"])
    @pytest.mark.parametrize("name", CUT)
    def test_half_a_codestream_is_refused_before_any_decode(
        self, name: str, size: tuple[int, int] | None, no_decoder: list[str]
    ) -> None:
        data = rewritten(source(name), half)
        with pytest.raises(TruncatedDataError, match=r"does not end with its EO[IC] marker"):
            preprocess(data, size=size)
        assert no_decoder == []

    def test_the_original_files_still_decode(self) -> None:
        for name in CUT:
            path = source(name)
            for size in SIZES:
                assert preprocess(path.read_bytes(), size=size).pixels.size > 0

    @pytest.mark.parametrize("size", SIZES, ids=["native", "224", "32"])
    def test_one_cut_frame_of_a_multi_frame_file(self, size: tuple[int, int] | None) -> None:
        path = pydicom_file("emri_small_jpeg_ls_lossless.dcm")  # 10 frames
        data = rewritten(path, half, frame=0)
        with pytest.raises(TruncatedDataError):
            preprocess(data, size=size, frame=0)
        frames = preprocess_frames(data, size=size)
        with pytest.raises(TruncatedDataError):
            next(frames)
        # the other frames are whole and decode exactly as in the original file
        original = list(preprocess_frames(path.read_bytes(), size=size))
        for index, image in enumerate(frames, start=1):
            np.testing.assert_array_equal(image.pixels, original[index].pixels)

    def test_the_imagecodecs_plugin_refuses_it_on_its_own(self) -> None:
        """No decoder behind models/codecs.py's plugin sees a stream without its end marker
        (CharLS spends seconds on one), and its "truncated" stops the fallback."""
        from types import SimpleNamespace

        ds, frames = frames_of(source("shared/CT1_JLSN.dcm"))
        runner = SimpleNamespace(transfer_syntax=ds.file_meta.TransferSyntaxUID)
        with pytest.raises(codecs.TruncatedCodestreamError, match="truncated"):
            codecs._decode_frame(half(frames[0]), runner)  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "SC_rgb_rle.dcm", "emri_small_RLE.dcm"])
    @pytest.mark.parametrize("change", [half, lambda f: f[:-2]], ids=["half", "minus-2-bytes"])
    def test_a_cut_rle_frame_is_truncated(
        self, name: str, change: Callable[[bytes], bytes]
    ) -> None:
        with pytest.raises(TruncatedDataError):
            preprocess(rewritten(pydicom_file(name), change), size=(32, 32), frame=0)


class TestPrematureEoi:
    """A scan cut short and closed with an EOI marker again (what JPEG "repair" tools do)."""

    @pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
    @pytest.mark.parametrize("size", SIZES, ids=["native", "224", "32"])
    @pytest.mark.parametrize(
        "name",
        [
            "shared/rsna_chest_cr_jpeg_baseline.dcm",  # gray: reduced through Pillow at 224/32
            "SC_rgb_jpeg_dcmtk.dcm",  # colour: full decode through pylibjpeg-libjpeg
            "SC_jpeg_no_color_transform.dcm",  # RGB components, no colour transform
        ],
    )
    def test_dicom_jpeg_baseline(
        self, name: str, size: tuple[int, int] | None, keep: float
    ) -> None:
        data = rewritten(source(name), cut_closed(keep))
        with pytest.raises(TruncatedDataError, match="truncated"):
            preprocess(data, size=size)

    def test_dicom_jpeg_baseline_multi_frame(self) -> None:
        path = pydicom_file("color3d_jpeg_baseline.dcm")  # 120 colour frames
        data = rewritten(path, cut_closed(0.5), frame=60)
        with pytest.raises(TruncatedDataError):
            preprocess(data, size=(32, 32))  # the middle frame, 60
        assert preprocess(data, size=(32, 32), frame=59).pixels.size > 0

    @staticmethod
    def jpeg(**options: object) -> bytes:
        ramp = (np.add.outer(np.arange(512), np.arange(512)) % 256).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(ramp).save(buf, format="JPEG", quality=90, **options)
        return buf.getvalue()

    @pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
    def test_jpeg_upload(self, keep: float) -> None:
        """The fuzzer's case (keep=0.1): 10 % of the scan and an EOI decoded with the bottom
        half a uniform grey, and was predicted; without the EOI it was refused."""
        full = self.jpeg()
        sos = full.find(b"\xff\xda")
        cut = full[: sos + int((len(full) - sos) * keep)] + b"\xff\xd9"
        for data in (cut, cut[:-2]):
            with pytest.raises(TruncatedDataError):
                preprocess(data, size=(32, 32))

    @pytest.mark.parametrize("missing", range(1, 9))
    def test_a_jpeg_upload_missing_its_last_bytes_and_its_eoi(self, missing: int) -> None:
        """Found by the second fuzzing round: with 8 zero bytes appended where no marker
        ended the scan, a scan short of 1-8 bytes decoded with its last blocks wrong."""
        full = self.jpeg()
        assert full.endswith(b"\xff\xd9")
        with pytest.raises(TruncatedDataError):
            preprocess(full[: -(2 + missing)], size=(32, 32))

    @pytest.mark.parametrize("size", SIZES, ids=["native", "224", "32"])
    @pytest.mark.parametrize(
        "name", ["shared/rsna_chest_cr_jpeg_baseline.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
    )
    def test_a_dicom_frame_with_bytes_after_its_eoi(
        self, name: str, size: tuple[int, int] | None
    ) -> None:
        """A wrapper that copies a JPEG byte for byte keeps what followed its EOI (found by the
        second fuzzing round: refused as truncated although whole). The same pixels as
        without; cut short under the same trailer it is still refused."""
        trailer = b"PACS-TRAILER"
        whole = preprocess(rewritten(source(name), lambda f: f), size=size).pixels
        with_trailer = rewritten(source(name), lambda f: f.rstrip(b"\x00\xff") + trailer)
        np.testing.assert_array_equal(preprocess(with_trailer, size=size).pixels, whole)
        for cut in (lambda f: half(f) + trailer, lambda f: cut_closed(0.5)(f) + trailer):
            with pytest.raises(TruncatedDataError):
                preprocess(rewritten(source(name), cut), size=size)

    @pytest.mark.parametrize("options", [{}, {"optimize": True}, {"progressive": True}])
    def test_a_whole_jpeg_upload_decodes_as_before(self, options: dict[str, object]) -> None:
        data = self.jpeg(**options)
        with Image.open(io.BytesIO(data)) as image:
            expected = np.asarray(image.convert("L"), dtype=np.float32) / 255
        np.testing.assert_array_equal(preprocess(data).pixels, expected)
        trailer = data + b"trailing bytes after the EOI"  # e.g. a camera's appended data
        np.testing.assert_array_equal(preprocess(trailer).pixels, expected)

    def test_jpeg_ls_is_refused_and_never_reaches_pylibjpeg(self, no_decoder: list[str]) -> None:
        """CharLS refuses it; pylibjpeg-libjpeg (pydicom's default pick after pyjpegls)
        decoded it."""
        data = rewritten(source("shared/CT1_JLSN.dcm"), cut_closed(0.5))
        with pytest.raises(PreprocessingError):
            preprocess(data, size=(32, 32))
        assert "pydicom:pylibjpeg" not in no_decoder
        assert "pydicom:" not in no_decoder  # no default pick either


# --- the checks on every real file ---------------------------------------------------------


@functools.cache
def real_frames() -> list[tuple[str, str, bytes]]:
    """(file name, transfer syntax, codestream) of every frame of every good encapsulated
    file; read when a test first asks, not at collection."""
    found = []
    for path in real_dicom_paths("*.dcm"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path)
                tsyntax = ds.file_meta.TransferSyntaxUID
                if not tsyntax.is_encapsulated or "PixelData" not in ds:
                    continue
                ds.pixel_array  # noqa: B018  pydicom decodes it: a good file
                count = int(ds.get("NumberOfFrames") or 1)
                frames = [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=count)]
        except Exception:  # not DICOM, or deliberately broken: not this test's business
            continue
        found += [(path.name, str(tsyntax), frame) for frame in frames]
    return found


def test_every_real_frame_passes_the_structure_checks() -> None:
    """pydicom's test files, pydicom-data and ../shared/data: every JPEG, JPEG-LS and JPEG
    2000 frame ends with its marker (some with one padding byte 00 or FF), every RLE frame's
    segments lie inside it."""
    from pydicom.uid import RLELossless

    checked = 0
    for name, tsyntax, frame in real_frames():
        if tsyntax == RLELossless:
            assert not codecs.rle_segments_missing(frame), name
        elif tsyntax in pp._codestream_syntaxes():
            assert not codecs.missing_end_marker(frame), name
        checked += 1
    assert checked > 200, checked


def test_every_real_sequential_jpeg_frame_decodes_the_same_through_scan_for_pillow() -> None:
    from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

    checked = 0
    for name, tsyntax, frame in real_frames():
        if tsyntax not in (JPEGBaseline8Bit, JPEGExtended12Bit):
            continue
        prepared = codecs.scan_for_pillow(frame)
        try:
            with Image.open(io.BytesIO(frame)) as image:
                expected = np.asarray(image)
        except Exception:  # 12-bit: Pillow does not decode it either way
            # JPEG-lossy.dcm (its scan's Se=0) decodes since QA round 80: JPGExtended.dcm's twin
            assert prepared is frame or name in ("JPGExtended.dcm", "JPEG-lossy.dcm"), name
            continue
        assert prepared is not frame, name  # all of them are single-scan sequential
        with Image.open(io.BytesIO(prepared)) as image:
            np.testing.assert_array_equal(np.asarray(image), expected, err_msg=name)
        codecs.check_scan(frame)
        checked += 1
    assert checked > 150, checked


class TestEndMarker:
    def test_padding_after_the_marker(self) -> None:
        stream = b"\xff\xd8" + bytes(range(100)) + b"\xff\xd9"
        for tail in (b"", b"\x00", b"\xff", b"\x00\x00", b"\xff\x00", b"\x00" * 200):
            assert not codecs.missing_end_marker(stream + tail), tail
        for cut in (stream[:-1], stream[:-2], stream[:50], stream[:-1] + b"\x00"):
            assert codecs.missing_end_marker(cut), cut[-4:]

    def test_bytes_after_the_eoi_of_a_scan(self) -> None:
        """After the first scan's data an EOI closes the image, whatever follows it; an EOI
        in a header segment before the scan (an EXIF thumbnail's) does not count."""
        sof = b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"
        sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        thumbnail = b"\xff\xe1\x00\x08Exif\xff\xd9"  # an APP1 segment holding FF D9
        stream = b"\xff\xd8" + thumbnail + sof + sos + bytes(range(1, 90))
        assert not codecs.missing_end_marker(stream + b"\xff\xd9" + b"trailer")
        assert codecs.missing_end_marker(stream + b"trailer")  # no EOI after the scan
        assert codecs.missing_end_marker(stream[:-10])
        j2k = b"\xff\x4f\xff\x51" + bytes(60) + b"\xff\xd9"
        assert codecs.missing_end_marker(j2k + b"trailer")  # JPEG 2000: no trailer allowed

    def test_jp2_wrapped_codestream(self) -> None:
        def box(kind: bytes, content: bytes) -> bytes:
            return (8 + len(content)).to_bytes(4, "big") + kind + content

        codestream = b"\xff\x4f\xff\x51" + bytes(60) + b"\xff\xd9"
        head = codecs._JP2_SIGNATURE + box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ")
        assert not codecs.missing_end_marker(head + box(b"jp2c", codestream))
        assert not codecs.missing_end_marker(
            head + box(b"jp2c", codestream) + box(b"xml ", b"<a/>")
        )
        assert codecs.missing_end_marker(
            head + box(b"jp2c", codestream[:-2]) + box(b"xml ", b"<a/>")
        )
        assert codecs.missing_end_marker((head + box(b"jp2c", codestream))[:-10])  # box runs past

"""Whole images that were refused as truncated (QA 105).

1. A JPEG whose scan is whole but that lacks only its final EOI marker (FF D9), as some
   modalities, phones and export tools write it: an upload, or a DICOM JPEG Baseline, Extended
   or Lossless frame. It was refused as truncated; it decodes now, to the pixels of the same
   file with its EOI. A JPEG cut inside its scan (by one byte or by half) stays refused as
   truncated: models/preprocessing.py's ``_scan_whole`` decodes the scan followed by two
   opposite fills, and a cut scan takes bits from them.
2. A JPEG 2000 frame with other bytes than padding after its EOC marker was refused as "cut
   short"; it is whole (OpenJPEG stops at EOC: the three bindings here decode it to the
   pixels of the codestream without those bytes, checked below), and is decoded up to its
   EOC. One without its EOC stays refused.

Fixtures are made here from ../shared/data (skipped when absent), pydicom's test files and
generated images; the EOI/EOC is stripped or bytes are appended at the boundary only.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from radlens.models import preprocessing as pp
from radlens.models.errors import TruncatedDataError
from radlens.models.preprocessing import preprocess, preprocess_frames
from tests.conftest import real_dicom_paths, shared_data_path

SIZES = [None, (224, 224)]  # the full decode, and the reduced one at a model size


def source(name: str) -> Path:
    """A pydicom test file by name, or ``shared/<name>`` from ../shared/data/dicom."""
    if name.startswith("shared/"):
        return shared_data_path("dicom", name.removeprefix("shared/"))
    return Path(str(get_testdata_file(name)))


def frames_of(path: Path) -> list[bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path)
        count = int(ds.get("NumberOfFrames") or 1)
        return [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=count)]


def rewritten(path: Path, change: Callable[[bytes], bytes], frame: int = 0) -> bytes:
    """The file with frame ``frame``'s codestream changed, one fragment a frame (even)."""
    ds = dcmread(path)
    frames = frames_of(path)
    frames[frame] = change(frames[frame])
    ds.PixelData = encapsulate([f + b"\x00" * (len(f) % 2) for f in frames])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def without_eoi(codestream: bytes) -> bytes:
    """The codestream without its end marker and the padding after it."""
    stripped = codestream.rstrip(b"\x00\xff")
    assert stripped.endswith(b"\xff\xd9")
    return stripped[:-2]


def cut(count: int) -> Callable[[bytes], bytes]:
    """Without its EOI and its last ``count`` scan bytes (``0``: half of it)."""

    def change(codestream: bytes) -> bytes:
        body = without_eoi(codestream)
        return body[: len(body) // 2] if count == 0 else body[:-count]

    return change


def ramp_jpeg(**options: object) -> bytes:
    ramp = (np.add.outer(np.arange(512), np.arange(512)) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).convert(str(options.pop("mode", "L"))).save(
        buf, format="JPEG", quality=90, **options
    )
    return buf.getvalue()


def chest_jpeg() -> bytes:
    """A real chest radiograph as a JPEG file: the RSNA CR's JPEG Baseline frame."""
    return frames_of(source("shared/rsna_chest_cr_jpeg_baseline.dcm"))[0].rstrip(b"\x00")


def nih_jpeg() -> bytes:
    """A real NIH ChestX-ray14 PNG saved as a JPEG by Pillow (libjpeg-turbo)."""
    path = sorted(shared_data_path("nih1000", "train", "1_abnormal").glob("*.png"))[0]
    buf = io.BytesIO()
    with Image.open(path) as image:
        image.convert("L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


UPLOADS = {
    "ramp": lambda: ramp_jpeg(),
    "ramp-optimized": lambda: ramp_jpeg(optimize=True),
    "ramp-colour-420": lambda: ramp_jpeg(mode="RGB", subsampling=2),
    "ramp-restart-markers": lambda: ramp_jpeg(restart_marker_blocks=5),
    "chest-cr": chest_jpeg,
    "nih": nih_jpeg,
}


class TestJpegUploadWithoutEoi:
    @pytest.mark.parametrize("name", UPLOADS)
    def test_decodes_to_the_pixels_of_the_file_with_its_eoi(self, name: str) -> None:
        whole = UPLOADS[name]()
        body = without_eoi(whole)
        for size in (None, (224, 224)):
            expected = preprocess(whole, size=size).pixels
            for data in (body, body + b"\xff"):  # no EOI; its first byte only
                np.testing.assert_array_equal(preprocess(data, size=size).pixels, expected)

    @pytest.mark.parametrize("name", UPLOADS)
    @pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 8, 16, 0])
    def test_cut_inside_its_scan_is_still_truncated(self, name: str, count: int) -> None:
        data = cut(count)(UPLOADS[name]())
        with pytest.raises(TruncatedDataError):
            preprocess(data, size=(32, 32))

    def test_a_progressive_jpeg_without_eoi_stays_refused(self) -> None:
        """A progressive JPEG cut between two scans lacks scans that no decode of the ones it
        has can tell: refused as truncated, as before."""
        with pytest.raises(TruncatedDataError):
            preprocess(without_eoi(ramp_jpeg(progressive=True)))

    def test_a_large_jpeg_decoded_reduced(self) -> None:
        """Beyond the pixel limit a JPEG is decoded at 1/2-1/8 (libjpeg's DCT scaling): the
        scan check decodes at that size too."""
        whole = ramp_jpeg()
        expected = preprocess(whole, max_pixels=512 * 512 // 4).pixels
        got = preprocess(without_eoi(whole), max_pixels=512 * 512 // 4).pixels
        np.testing.assert_array_equal(got, expected)
        with pytest.raises(TruncatedDataError):
            preprocess(cut(3)(whole), max_pixels=512 * 512 // 4)

    def test_a_jpeg_with_its_eoi_is_handed_over_unchanged(self) -> None:
        whole = ramp_jpeg()
        assert pp._upload_jpeg_closed(whole, pp.DEFAULT_MAX_PIXELS) is whole


# DICOM JPEG Baseline (gray, reduced at model size through Pillow; colour), Extended (12-bit,
# its scan's Se=0), Lossless (pydicom's, and the NEMA WG04 hip CR)
DICOM_JPEG = [
    "shared/rsna_chest_cr_jpeg_baseline.dcm",
    "shared/rsna_chest_cr_tagged_monochrome1.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPGExtended.dcm",
    "JPEG-LL.dcm",
    "shared/RG2_JPLL.dcm",
]


class TestDicomJpegFrameWithoutEoi:
    @pytest.mark.parametrize("size", SIZES, ids=["native", "224"])
    @pytest.mark.parametrize("name", DICOM_JPEG)
    def test_decodes_to_the_pixels_of_the_file_with_its_eoi(
        self, name: str, size: tuple[int, int] | None
    ) -> None:
        path = source(name)
        expected = preprocess(path.read_bytes(), size=size).pixels
        for change in (without_eoi, lambda f: without_eoi(f) + b"\xff"):
            got = preprocess(rewritten(path, change), size=size).pixels
            np.testing.assert_array_equal(got, expected)

    @pytest.mark.parametrize("count", [2, 3, 8, 0])
    @pytest.mark.parametrize("name", DICOM_JPEG)
    def test_cut_inside_its_scan_is_still_truncated(self, name: str, count: int) -> None:
        data = rewritten(source(name), cut(count))
        for size in SIZES:
            with pytest.raises(TruncatedDataError, match="does not end with its EOI marker"):
                preprocess(data, size=size)

    def test_one_frame_of_a_multi_frame_file(self) -> None:
        path = source("color3d_jpeg_baseline.dcm")  # 120 colour frames: the middle one, 60
        expected = preprocess(path.read_bytes(), size=(32, 32)).pixels
        np.testing.assert_array_equal(
            preprocess(rewritten(path, without_eoi, frame=60), size=(32, 32)).pixels, expected
        )
        with pytest.raises(TruncatedDataError):
            preprocess(rewritten(path, cut(8), frame=60), size=(32, 32))
        frames = preprocess_frames(rewritten(path, without_eoi, frame=0), size=(16, 16))
        original = preprocess(path.read_bytes(), size=(16, 16), frame=0).pixels
        np.testing.assert_array_equal(next(frames).pixels, original)

    def test_jpeg_ls_without_eoi_stays_refused(self) -> None:
        with pytest.raises(TruncatedDataError, match="does not end with its EOI marker"):
            preprocess(rewritten(source("shared/CT1_JLSN.dcm"), without_eoi), size=(32, 32))


@functools.cache
def real_jpeg_frames() -> list[tuple[str, bytes]]:
    """(file name, codestream) of every good JPEG Baseline, Extended and Lossless frame of
    pydicom's test files, pydicom-data and ../shared/data (the first frame of each)."""
    from radlens.models.codecs import JPEG_LOSSLESS_SYNTAXES, LOSSY_JPEG_SYNTAXES

    found = []
    for path in real_dicom_paths("*.dcm"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=False)
                tsyntax = ds.file_meta.TransferSyntaxUID
                if tsyntax not in (*LOSSY_JPEG_SYNTAXES, *JPEG_LOSSLESS_SYNTAXES):
                    continue
                ds.pixel_array  # noqa: B018  pydicom decodes it: a good file
                count = int(ds.get("NumberOfFrames") or 1)
                frames = list(generate_frames(ds.PixelData, number_of_frames=count))[:1]
        except Exception:  # not DICOM, or deliberately broken: not this test's business
            continue
        found += [(path.name, bytes(f)) for f in frames]
    return found


CUTS = (1, 2, 3, 4, 6, 8, 16, 40)  # scan bytes cut (then no EOI)


def test_every_real_jpeg_frame_without_eoi_is_whole_and_cut_ones_are_not() -> None:
    """The scan check on every real frame: without its EOI it is whole; cut by half it is
    not; cut by 1-40 bytes (CUTS) it is not, or (an encoder's bytes after the scan's last bit) the
    closed frame decodes to the very pixels of the whole one. With two fills (0x55, 0xAA)
    instead of _SCAN_FILLS, 30 cut frames passed that decoded otherwise."""
    checked = refused_small_cuts = 0
    for name, frame in real_jpeg_frames():
        whole = imagecodecs.jpeg8_decode(frame)
        closed = pp._jpeg_closed(without_eoi(frame))
        assert closed is not None, name
        assert pp._scan_whole(closed, pp._jpeg8_pixels), name
        np.testing.assert_array_equal(pp._jpeg8_pixels(closed), whole, err_msg=name)
        half = pp._jpeg_closed(cut(0)(frame))
        # (None: a small frame's half ends in its headers, refused all the same)
        assert half is None or not pp._scan_whole(half, pp._jpeg8_pixels), name
        for count in CUTS:
            closed = pp._jpeg_closed(cut(count)(frame))
            if closed is None or not pp._scan_whole(closed, pp._jpeg8_pixels):
                refused_small_cuts += 1
            else:
                np.testing.assert_array_equal(pp._jpeg8_pixels(closed), whole, err_msg=name)
        checked += 1
    assert checked > 30, checked
    assert refused_small_cuts > (len(CUTS) - 1) * checked, (refused_small_cuts, checked)


@pytest.mark.parametrize(
    "options",
    [
        {"restart_marker_blocks": 1, "mode": "RGB"},
        {"restart_marker_blocks": 3},
        {"restart_marker_rows": 1},
    ],
    ids=["every-mcu-colour", "every-3-mcus", "every-row"],
)
def test_restart_intervals(options: dict[str, object]) -> None:
    """A scan with restart markers cut at the end of an interval lacks the next RSTn, and
    libjpeg passes over any fill that is not a marker there: without the fills that start
    with that RSTn, 6 of these cuts passed and decoded with their last intervals grey."""
    whole = ramp_jpeg(**options)
    expected = preprocess(whole).pixels
    np.testing.assert_array_equal(preprocess(without_eoi(whole)).pixels, expected)
    for count in range(1, 41):
        try:
            got = preprocess(cut(count)(whole)).pixels
        except TruncatedDataError:
            continue
        np.testing.assert_array_equal(got, expected, err_msg=str(count))


# --- JPEG 2000: bytes after the EOC --------------------------------------------------------

J2K = [
    "shared/TOSHIBA_J2K_OpenJPEGv2Regression.dcm",
    "MR_small_jp2klossless.dcm",
    "US1_J2KR.dcm",  # colour
    "RG1_J2KI.dcm",  # pydicom-data's chest CR, lossy: reduced at model size
]
TRAILERS = {
    "text": b"PACS-TRAILER",
    "text-then-eoc": b"PACS-TRAILER\xff\xd9",
    "another-codestream": b"\xff\x4f\xff\x51" + bytes(40) + b"\xff\xd9",
}


def _j2k_source(name: str) -> Path:
    if name == "RG1_J2KI.dcm" and get_testdata_file(name) is None:
        pytest.skip("RG1_J2KI.dcm comes with pydicom-data, which is not installed")
    return source(name)


class TestJ2kBytesAfterEoc:
    @pytest.mark.parametrize("trailer", TRAILERS)
    @pytest.mark.parametrize("name", J2K)
    def test_decoded_up_to_its_eoc(self, name: str, trailer: str) -> None:
        path = _j2k_source(name)
        for size in SIZES:
            expected = preprocess(path.read_bytes(), size=size).pixels
            data = rewritten(path, lambda f: f.rstrip(b"\x00") + TRAILERS[trailer])
            np.testing.assert_array_equal(preprocess(data, size=size).pixels, expected)

    @pytest.mark.parametrize("name", J2K)
    def test_every_openjpeg_binding_stops_at_eoc(self, name: str) -> None:
        """The evidence: imagecodecs, pylibjpeg-openjpeg and Pillow (OpenJPEG each) decode the
        codestream followed by other bytes to its pixels without them."""
        import openjpeg

        codestream = frames_of(_j2k_source(name))[0].rstrip(b"\x00")
        decoders: dict[str, Callable[[bytes], np.ndarray]] = {
            "imagecodecs": lambda d: imagecodecs.jpeg2k_decode(d, numthreads=1),
            "pylibjpeg-openjpeg": lambda d: np.asarray(openjpeg.decode(d)),
            "Pillow": lambda d: np.asarray(Image.open(io.BytesIO(d), formats=["JPEG2000"])),
        }
        for label, decode in decoders.items():
            expected = decode(codestream)
            for trailer in TRAILERS.values():
                got = decode(codestream + trailer)
                np.testing.assert_array_equal(got, expected, err_msg=label)

    def test_a_last_tile_part_of_psot_0_runs_to_the_first_eoc(self) -> None:
        """Psot 0 (the last tile-part runs to EOC): OpenJPEG then reads the tile-part to the
        end of the data, so a trailer reaches Pillow's decode and breaks it; radlens hands
        the decoders the codestream up to its EOC only."""
        codestream = frames_of(source("shared/TOSHIBA_J2K_OpenJPEGv2Regression.dcm"))[0]
        codestream = codestream.rstrip(b"\x00")
        sot = codestream.index(b"\xff\x90")
        open_ended = codestream[: sot + 6] + bytes(4) + codestream[sot + 10 :]  # Psot = 0
        assert pp._j2k_eoc_end(open_ended) == len(open_ended)
        assert pp._j2k_eoc_end(open_ended + b"TRAILER\xff\xd9x") == len(open_ended)
        assert pp._j2k_eoc_end(open_ended[:-2]) is None
        path = source("shared/TOSHIBA_J2K_OpenJPEGv2Regression.dcm")
        for size in SIZES:
            expected = preprocess(path.read_bytes(), size=size).pixels
            data = rewritten(path, lambda f: open_ended + b"TRAILER\xff\xd9x")
            np.testing.assert_array_equal(preprocess(data, size=size).pixels, expected)

    @pytest.mark.parametrize("name", J2K)
    def test_without_its_eoc_it_is_still_cut_short(self, name: str) -> None:
        data = rewritten(_j2k_source(name), without_eoi)
        with pytest.raises(TruncatedDataError, match="does not end with its EOC marker"):
            preprocess(data, size=(32, 32))
        data = rewritten(_j2k_source(name), lambda f: without_eoi(f)[:-100] + b"PACS-TRAILER")
        with pytest.raises(TruncatedDataError, match="does not end with its EOC marker"):
            preprocess(data, size=(32, 32))

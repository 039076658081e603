"""Reduced-resolution decoding (issue 15) and codestream checks before decoding (issue 18).

Real files: pydicom-data's chest CR RG1 in JPEG 2000 lossless and lossy (1955 x 1841, 15-bit)
and the RSNA JPEG Baseline chest in ../shared/data; crafted codestreams (made here with
imagecodecs and Pillow, never committed) for the bombs and the lying headers.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import (
    CodestreamMismatchError,
    InvalidImageError,
    PreprocessingError,
    TruncatedDataError,
)
from radlens.models.preprocessing import (
    PREPROCESSING_VERSION,
    SUPPORTED_PREPROCESSING_VERSIONS,
    decode_reduction,
    preprocess,
    resize_image,
)
from tests.conftest import record_decodes

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LS = "1.2.840.10008.1.2.4.80"


def pydicom_data(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data)")
    return Path(str(path)).read_bytes()


def shared(name: str) -> bytes:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared real-data folder)")
    return path.read_bytes()


def encapsulated_dicom(
    codestream: bytes,
    transfer_syntax: str,
    *,
    rows: int,
    columns: int,
    bits_allocated: int = 8,
    bits_stored: int = 8,
    samples: int = 1,
    photometric: str = "MONOCHROME2",
) -> bytes:
    """A DX instance whose one frame is ``codestream``, with the header values given (which
    may disagree with the codestream: that is the point of some tests)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def j2k(array: np.ndarray, bits: int, **kwargs: object) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpeg2k_encode(array, codecformat="J2K", bitspersample=bits, **kwargs))


def jpeg_baseline(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def jpeg_ls(array: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegls_encode(array))


def gradient(rows: int, columns: int, bits: int) -> np.ndarray:
    """A smooth, non-constant test image of the given bit depth."""
    y, x = np.mgrid[0:rows, 0:columns]
    values = (x + 2 * y) * (2**bits - 1) / (columns + 2 * rows)
    return values.astype(np.uint16 if bits > 8 else np.uint8)


# --- the rule ------------------------------------------------------------------------------


class TestDecodeReduction:
    @pytest.mark.parametrize(
        ("rows", "columns", "size", "limit", "expected"),
        [
            (1955, 1841, (224, 224), 5, 3),  # 245 x 231 >= 224
            (1955, 1841, (64, 64), 5, 4),  # limited by 1841 < 64 * 32
            (1955, 1841, (64, 64), 2, 2),  # the codestream offers 2 levels
            (1024, 1024, (224, 224), 3, 2),  # 256 >= 224; 1/8 would be 128
            (447, 2000, (224, 224), 3, 0),  # 447 < 448: one axis forbids 1/2
            (448, 448, (224, 224), 3, 1),
            (512, 512, (224, 224), 0, 0),  # no levels: full decode
        ],
    )
    def test_largest_reduction_keeping_the_model_size(
        self, rows: int, columns: int, size: tuple[int, int], limit: int, expected: int
    ) -> None:
        reduction = decode_reduction(rows, columns, size, limit=limit)
        assert reduction == expected
        factor = 1 << reduction
        assert -(-rows // factor) >= size[0] and -(-columns // factor) >= size[1]


# --- versions ------------------------------------------------------------------------------


class TestVersions:
    def test_current_version_is_5_and_1_to_4_are_still_reproduced(self) -> None:
        assert PREPROCESSING_VERSION == "6"
        assert SUPPORTED_PREPROCESSING_VERSIONS == ("1", "2", "3", "4", "5", "6")

    def test_unknown_version_is_refused_by_name(self) -> None:
        with pytest.raises(InvalidImageError, match=r"unknown preprocessing version '7'"):
            preprocess(pydicom_data("RG1_J2KI.dcm"), size=(64, 64), version="7")

    @pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG1_J2KI.dcm"])
    def test_version_1_is_full_decode_then_resize(self, name: str) -> None:
        data = pydicom_data(name)
        full = preprocess(data).pixels  # size None: never reduced, in either version
        old = preprocess(data, size=(224, 224), version="1").pixels
        np.testing.assert_array_equal(old, resize_image(full, (224, 224)))


# --- JPEG 2000 at reduced resolution -------------------------------------------------------


class TestJpeg2000Reduced:
    @pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG1_J2KI.dcm"])
    @pytest.mark.parametrize("size", [(224, 224), (64, 64)])
    def test_real_chest_cr_is_close_to_full_decode(self, name: str, size: tuple[int, int]) -> None:
        data = pydicom_data(name)
        old = preprocess(data, size=size, version="1")
        new = preprocess(data, size=size)
        assert new.pixels.shape == size and new.pixels.dtype == np.float32
        assert new.metadata == old.metadata  # same header, same VOI (the file's window)
        difference = np.abs(new.pixels - old.pixels)
        assert 0 < difference.mean() < 0.01  # really reduced, and close (figures: docs)
        assert difference.max() < 0.2

    def test_odd_sizes_decode_at_every_reduction(self) -> None:
        """1955 x 1841 at 1/4 and 1/8: Pillow's own `reduce` rounds the size and fails."""
        import pydicom
        from pydicom.encaps import generate_frames

        from radlens.models.preprocessing import _decode_j2k_reduced

        ds = pydicom.dcmread(io.BytesIO(pydicom_data("RG1_J2KR.dcm")))
        codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
        full = ds.pixel_array.astype(np.float64)
        for reduction, shape in [(1, (978, 921)), (2, (489, 461)), (3, (245, 231))]:
            arr = _decode_j2k_reduced(codestream, reduction, 1955, 1841, 15)
            assert arr.shape == shape
            # stored values (15-bit), not Pillow's 16-bit scaling: same mean as the full image
            assert arr.max() < 2**15
            assert abs(arr.mean() - full.mean()) < 0.01 * full.mean()

    @pytest.mark.parametrize("bits", [8, 10, 12, 16])
    def test_stored_values_are_kept_for_every_bit_depth(self, bits: int) -> None:
        """A flat image of the largest stored value stays that value at 1/4 (Pillow hands a
        12-bit 4095 back as 65520)."""
        from radlens.models.preprocessing import _decode_j2k_reduced

        dtype = np.uint16 if bits > 8 else np.uint8
        flat = np.full((300, 260), 2**bits - 1, dtype)
        arr = _decode_j2k_reduced(j2k(flat, bits, level=0), 2, 300, 260, bits)
        assert arr.shape == (75, 65)
        assert set(np.unique(arr).tolist()) == {2**bits - 1}

    def test_every_eligible_real_file_gives_pydicoms_stored_values_at_full_size(self) -> None:
        """At reduction 0 the reduced path (Pillow, shifted back) returns exactly the array
        pydicom's decoders do, for every real JPEG 2000 file it would reduce: the bit-depth
        handling is exact, so the only change at 1/2**r is the resolution."""
        import warnings

        import pydicom
        from pydicom.data import DATA_ROOT, external_data_sources

        from radlens.models import codecs
        from radlens.models.preprocessing import (
            _codestream_header,
            _decode_frame,
            _decode_j2k_reduced,
            _frame_codestream,
            _reduced_decode,
        )

        roots = [Path(DATA_ROOT) / "test_files"]
        roots += [Path(source.data_path) for source in external_data_sources().values()]
        paths = sorted(p for root in roots for p in root.rglob("*.dcm"))
        paths += sorted(SHARED.glob("*.dcm")) if SHARED.is_dir() else []
        eligible = []
        for path in paths:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path)
                    tsyntax = ds.file_meta.get("TransferSyntaxUID")
                    if tsyntax not in codecs.J2K_SYNTAXES[:2]:
                        continue
                    frames = int(ds.get("NumberOfFrames") or 1)
                    codestream = _frame_codestream(ds, tsyntax, frames // 2, frames)
                    if codestream is None:  # e.g. encapsulation cut short
                        continue
                    rows, columns = int(ds.Rows), int(ds.Columns)
                    # the smallest size asks for the most reduction: is the file eligible?
                    if _reduced_decode(codestream, ds, tsyntax, rows, columns, (1, 1)) is None:
                        continue
                    expected, _ = _decode_frame(
                        ds, tsyntax, frames // 2, rows=rows, columns=columns
                    )
            except Exception:  # not DICOM, or deliberately broken: not this test's business
                continue
            header = _codestream_header(codestream, tsyntax)
            assert header is not None
            got = _decode_j2k_reduced(
                codestream, 0, rows, columns, header.precision, signed=header.signed
            )
            np.testing.assert_array_equal(got, expected, err_msg=path.name)
            eligible.append(path.name)
        # unsigned radiographs and MR, and signed CT (693_J2KR: 14-bit codestream, Bits Stored
        # 16; 693_J2KI is left out: its codestream has 16 bits for a Bits Stored of 14)
        assert {"RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_J2KR.dcm", "MR2_J2KR.dcm"} <= set(eligible)
        assert {"693_J2KR.dcm", "JPEG2000.dcm"} <= set(eligible)
        assert "693_J2KI.dcm" not in eligible

    def test_signed_values_are_kept(self) -> None:
        """A signed 12-bit codestream (CT as GDCM writes it): Pillow offsets it by 2048 and
        scales it to 16 bits; the reduced path returns the signed stored values."""
        from radlens.models.preprocessing import _decode_j2k_reduced

        halves = np.full((300, 260), -2048, np.int16)
        halves[:150] = 2047
        arr = _decode_j2k_reduced(j2k(halves, 12, level=0), 2, 300, 260, 12, signed=True)
        assert arr.shape == (75, 65) and arr.dtype == np.int16
        # away from the edge, where the low-pass mixes the halves
        assert set(np.unique(arr[:30]).tolist()) == {2047}
        assert set(np.unique(arr[45:]).tolist()) == {-2048}

    def test_lossless_gradient_matches_full_decode_closely(self) -> None:
        """12-bit lossless gradient through the whole pipeline (min-max window)."""
        array = gradient(900, 700, 12)
        data = encapsulated_dicom(
            j2k(array, 12, level=0), J2K_LOSSLESS, rows=900, columns=700,
            bits_allocated=16, bits_stored=12,
        )  # fmt: skip
        old = preprocess(data, size=(224, 224), version="1").pixels
        new = preprocess(data, size=(224, 224)).pixels
        difference = np.abs(new - old)
        assert 0 < difference.max() < 0.02

    def test_fewer_levels_than_wanted_limit_the_reduction(self) -> None:
        """A codestream with one decomposition level is decoded at 1/2, not refused."""
        import imagecodecs

        array = gradient(1000, 1000, 8)
        codestream = bytes(
            imagecodecs.jpeg2k_encode(array, codecformat="J2K", level=0, resolutions=2)
        )
        from radlens.models.preprocessing import _j2k_main_header

        assert _j2k_main_header(codestream)[2] == 1
        data = encapsulated_dicom(codestream, J2K_LOSSLESS, rows=1000, columns=1000)
        new = preprocess(data, size=(64, 64)).pixels
        old = preprocess(data, size=(64, 64), version="1").pixels
        assert np.abs(new - old).max() < 0.02

    def test_a_codestream_the_reduced_decoder_refuses_is_decoded_in_full(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pillow's OpenJPEG binding refuses some valid codestreams at every reduction (a
        real 16-bit DX, pylibjpeg-data's JPEG2KLossless_1s_1f_u_16_16, that pydicom, GDCM and
        imagecodecs decode alike): the full decode decides, instead of a refusal saying the
        file disagrees with its own header (QA round 14)."""
        from radlens.models import preprocessing

        codestream = j2k(gradient(600, 600, 8), 8, level=0)
        data = encapsulated_dicom(codestream, J2K_LOSSLESS, rows=600, columns=600)
        full = preprocess(data, size=(64, 64), version="1").pixels

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise CodestreamMismatchError("broken data stream when reading image file")

        monkeypatch.setattr(preprocessing, "_decode_j2k_reduced", refuse)
        assert np.array_equal(preprocess(data, size=(64, 64)).pixels, full)

    def test_truncated_codestream_is_a_named_error(self) -> None:
        codestream = j2k(gradient(600, 600, 8), 8, level=0)
        data = encapsulated_dicom(codestream[: len(codestream) // 2], J2K_LOSSLESS,
                                  rows=600, columns=600)  # fmt: skip
        with pytest.raises((TruncatedDataError, CodestreamMismatchError)) as caught:
            preprocess(data, size=(224, 224))
        assert "JPEG 2000" in str(caught.value) or "truncated" in str(caught.value)


# --- JPEG Baseline at reduced resolution ---------------------------------------------------


class TestJpegBaselineReduced:
    @pytest.mark.parametrize(
        "name", ["rsna_chest_cr_jpeg_baseline.dcm", "rsna_chest_cr_tagged_monochrome1.dcm"]
    )
    def test_real_chest_is_reduced_and_close(self, name: str) -> None:
        data = shared(name)
        old = preprocess(data, size=(224, 224), version="1")
        new = preprocess(data, size=(224, 224))
        assert new.metadata == old.metadata
        difference = np.abs(new.pixels - old.pixels)
        # min-max is taken on the 1/4-scale image, whose extremes are averaged: most of it
        assert 0 < difference.mean() < 0.05
        assert difference.max() < 0.15

    def test_dct_scaling_picks_the_size_and_decodes_8_bit(self) -> None:
        from radlens.models.preprocessing import _decode_jpeg_reduced

        codestream = jpeg_baseline(gradient(1000, 900, 8))
        arr = _decode_jpeg_reduced(codestream, 2, 1000, 900, (224, 224))
        assert arr.shape == (250, 225) and arr.dtype == np.uint8

    def test_scaled_decode_failure_is_a_named_error(self) -> None:
        codestream = jpeg_baseline(np.random.default_rng(0).integers(0, 256, (800, 800), np.uint8))
        data = encapsulated_dicom(codestream[: len(codestream) // 3], JPEG_BASELINE,
                                  rows=800, columns=800)  # fmt: skip
        with pytest.raises(PreprocessingError, match=r"JPEG codestream"):
            preprocess(data, size=(224, 224))


# --- codestream checks: bombs and lying headers --------------------------------------------


def j2k_bomb(side: int) -> bytes:
    """A real JPEG 2000 codestream of side x side zeros: a few hundred bytes."""
    return j2k(np.zeros((side, side), np.uint8), 8, level=0, numthreads=1)


class TestCodestreamChecks:
    @pytest.mark.parametrize(
        ("transfer_syntax", "encode", "kind"),
        [
            (J2K_LOSSLESS, lambda a: j2k(a, 8, level=0), "JPEG 2000"),
            (JPEG_BASELINE, jpeg_baseline, "JPEG"),
            (JPEG_LS, jpeg_ls, "JPEG-LS"),
        ],
    )
    def test_size_disagreeing_with_the_header_is_refused(
        self, transfer_syntax: str, encode: object, kind: str
    ) -> None:
        codestream = encode(gradient(200, 300, 8))  # type: ignore[operator]
        data = encapsulated_dicom(codestream, transfer_syntax, rows=64, columns=48)
        for version in SUPPORTED_PREPROCESSING_VERSIONS:
            with pytest.raises(
                CodestreamMismatchError,
                match=rf"the {kind} codestream declares 300x200 .* Columns=48, Rows=64",
            ):
                preprocess(data, size=(32, 32), version=version)

    def test_components_disagreeing_are_refused(self) -> None:
        codestream = jpeg_ls(gradient(64, 64, 8))
        data = encapsulated_dicom(
            codestream, JPEG_LS, rows=64, columns=64, samples=3, photometric="RGB"
        )
        with pytest.raises(CodestreamMismatchError, match=r"1 component\(s\) of 8 bits"):
            preprocess(data)

    def test_bit_depth_beyond_bits_allocated_is_refused(self) -> None:
        codestream = j2k(gradient(64, 64, 12), 12, level=0)
        data = encapsulated_dicom(codestream, J2K_LOSSLESS, rows=64, columns=64)
        with pytest.raises(CodestreamMismatchError, match=r"of 12 bits.*BitsAllocated=8"):
            preprocess(data)

    def test_jpeg_height_left_to_a_dnl_marker_is_refused(self) -> None:
        """SOF height 0 (ISO/IEC 10918-1 B.2.2: the DNL marker defines it later): the
        decoded size is unknown before decoding, so the stream is refused."""
        codestream = bytearray(jpeg_baseline(gradient(64, 48, 8)))
        sof = codestream.index(b"\xff\xc0")
        codestream[sof + 5 : sof + 7] = b"\x00\x00"  # P (1 byte) after the length, then Y
        data = encapsulated_dicom(bytes(codestream), JPEG_BASELINE, rows=64, columns=48)
        with pytest.raises(CodestreamMismatchError, match=r"declares 48x0 = 0 pixels"):
            preprocess(data)

    def test_sparse_j2k_bomb_behind_a_small_header_is_refused_before_decoding(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The issue's bomb: 8000 x 8000 encoded behind a 716 x 512 header."""
        codestream = j2k_bomb(8000)
        assert len(codestream) < 100_000
        data = encapsulated_dicom(codestream, J2K_LOSSLESS, rows=512, columns=716)
        decodes = record_decodes(monkeypatch)
        with pytest.raises(CodestreamMismatchError, match=r"8000x8000 = 64000000 pixels"):
            preprocess(data, size=(224, 224))
        assert decodes == []  # a header read, not a 64 MP decode (recorded, not timed)

    def test_every_real_compressed_file_passes_the_check(self) -> None:
        """No real file is refused: every JPEG-family file in pydicom's and pydicom-data's
        test files and ../shared/data/dicom that pydicom itself decodes."""
        import warnings

        import pydicom
        from pydicom.data import DATA_ROOT, external_data_sources

        from radlens.models.preprocessing import (
            _check_codestream,
            _codestream_syntaxes,
            _frame_codestream,
        )

        # by directory: get_testdata_files() would try to download pydicom's remote files
        roots = [Path(DATA_ROOT) / "test_files"]
        roots += [Path(source.data_path) for source in external_data_sources().values()]
        paths = sorted(p for root in roots for p in root.rglob("*.dcm"))
        paths += sorted(SHARED.glob("*.dcm")) if SHARED.is_dir() else []
        checked = 0
        for path in paths:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path)
                    tsyntax = ds.file_meta.TransferSyntaxUID
                    if tsyntax not in _codestream_syntaxes():
                        continue
                    frames = int(ds.get("NumberOfFrames") or 1)
                    assert ds.pixel_array.size > 0  # pydicom decodes it: a good file
            except Exception:  # deliberately broken files are not this test's business
                continue
            codestream = _frame_codestream(ds, tsyntax, frames // 2, frames)
            if codestream is None:
                continue
            _check_codestream(codestream, ds, tsyntax, rows=ds.Rows, columns=ds.Columns)
            checked += 1
        assert checked > 30, checked

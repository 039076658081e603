"""models/codecs.py: the imagecodecs decoding plugin gives pydicom's own pixels, and
preprocessing asks for it first and falls back to pydicom's default pick."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import imagecodecs
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import HTJ2KLossless, JPEGLossless, JPEGLosslessSV1, generate_uid

from radlens.models import codecs
from radlens.models.errors import TruncatedDataError
from radlens.models.preprocessing import preprocess
from tests.conftest import real_dicom_paths

SYNTAXES = codecs.SYNTAXES


def _encoded_files() -> list[Path]:
    """Every JPEG 2000 / HTJ2K / JPEG-LS file in pydicom's and pydicom-data's test files and
    in ../shared/data/dicom (when present)."""
    found = []
    for path in real_dicom_paths():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path)
        except Exception:  # not DICOM, or deliberately broken: not this test's business
            continue
        if ds.file_meta.get("TransferSyntaxUID") in SYNTAXES and "PixelData" in ds:
            found.append(path)
    return found


ENCODED = _encoded_files()


def read_testdata_file(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file(name))).read_bytes()


# pydicom's first pick without models/codecs.py: pylibjpeg (OpenJPEG; libjpeg for JPEG-LS)
PYDICOM_DEFAULT = "pylibjpeg"


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    preprocess(_htj2k_dataset_bytes(np.zeros((8, 8), np.uint16)))  # registers the plugin


def test_the_corpus_is_what_it_claims() -> None:
    syntaxes = {dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in ENCODED}
    assert len(ENCODED) >= 20, ENCODED
    assert set(codecs.JPEG_LS_SYNTAXES) <= syntaxes
    assert set(codecs.J2K_SYNTAXES[:2]) <= syntaxes  # JPEG 2000 lossless and lossy
    assert JPEGLosslessSV1 in syntaxes  # process 14 with other predictors: encoded below


@pytest.mark.parametrize("path", ENCODED, ids=[p.name for p in ENCODED])
def test_same_pixels_and_properties_as_pydicoms_own_plugin(path: Path) -> None:
    with warnings.catch_warnings():  # the deliberately short files warn as they are read
        warnings.simplefilter("ignore")
        ds = dcmread(path)
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    assert codecs.PLUGIN in decoder.available_plugins
    try:
        expected, expected_props = decoder.as_array(ds, decoding_plugin=PYDICOM_DEFAULT)
    except Exception:  # a broken file: both must refuse it
        with pytest.raises(Exception, match="imagecodecs"):
            decoder.as_array(ds, decoding_plugin=codecs.PLUGIN)
        return
    got, props = decoder.as_array(ds, decoding_plugin=codecs.PLUGIN)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    for key in ("photometric_interpretation", "bits_allocated", "pixel_representation"):
        assert props.get(key) == expected_props.get(key), key


def _dataset_bytes(tsyntax: Any, frame: bytes, shape: tuple[int, ...], signed: bool) -> bytes:
    """A one-frame 12-bit MONOCHROME2 instance holding ``frame`` as its encapsulated pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = int(signed)
    ds.PixelData = encapsulate([frame])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _htj2k_dataset_bytes(pixels: np.ndarray) -> bytes:
    """HTJ2K Lossless (encoded with OpenJPH)."""
    frame = imagecodecs.htj2k_encode(pixels)
    return _dataset_bytes(HTJ2KLossless, frame, pixels.shape, pixels.dtype.kind == "i")


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_htj2k_lossless_round_trip(dtype: Any) -> None:
    """No HTJ2K file ships with pydicom: encode one (OpenJPH) and decode it both ways."""
    rng = np.random.default_rng(0)
    low, high = (-2048, 2048) if dtype == np.int16 else (0, 4096)
    pixels = rng.integers(low, high, size=(48, 40)).astype(dtype)
    ds = dcmread(io.BytesIO(_htj2k_dataset_bytes(pixels)))
    decoder = get_decoder(HTJ2KLossless)
    got, _ = decoder.as_array(ds, decoding_plugin=codecs.PLUGIN)
    expected, _ = decoder.as_array(ds, decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(got, pixels)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("tsyntax", "predictor"),
    [(JPEGLossless, 1), (JPEGLossless, 4), (JPEGLossless, 7), (JPEGLosslessSV1, 1)],
)
def test_lossless_jpeg_round_trip(tsyntax: Any, predictor: int) -> None:
    """Process 14 with predictors other than 1 (transfer syntax .57) ships with no file at
    hand: encode some (libjpeg-turbo) and decode them both ways."""
    pixels = np.random.default_rng(predictor).integers(0, 4096, size=(40, 48)).astype(np.uint16)
    frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=predictor, bitspersample=12)
    ds = dcmread(io.BytesIO(_dataset_bytes(tsyntax, frame, pixels.shape, signed=False)))
    decoder = get_decoder(tsyntax)
    got, _ = decoder.as_array(ds, decoding_plugin=codecs.PLUGIN)
    expected, _ = decoder.as_array(ds, decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(got, pixels)
    np.testing.assert_array_equal(got, expected)


class TestPreprocessingAsksForIt:
    """preprocess() asks for imagecodecs first and falls back to pydicom's default pick."""

    NAMES = (
        "MR_small_jpeg_ls_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "US1_J2KR.dcm",  # colour: YBR_RCT, returned as RGB
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
        "SC_rgb_jpeg_gdcm.dcm",  # colour lossless JPEG
    )

    @staticmethod
    def plugins_used(monkeypatch: pytest.MonkeyPatch, fail: str | None = None) -> list[str]:
        used: list[str] = []
        real = Decoder.as_array

        def spy(self, src, *args, **kwargs):  # type: ignore[no-untyped-def]
            plugin = kwargs.get("decoding_plugin", "")
            used.append(plugin)
            if plugin == fail:
                raise RuntimeError(f"{plugin} refused this file (test)")
            return real(self, src, *args, **kwargs)

        monkeypatch.setattr(Decoder, "as_array", spy)
        return used

    @pytest.mark.parametrize("name", NAMES)
    def test_imagecodecs_first_and_the_fallback_gives_the_same_result(
        self, name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from pydicom.data import get_testdata_file

        data = Path(str(get_testdata_file(name))).read_bytes()
        used = self.plugins_used(monkeypatch)
        # version "1": the full decode through pydicom's decoders, which this class tests
        # (version 2 decodes MR_small_jp2klossless at 1/2 through Pillow for a 32x32 output)
        first = preprocess(data, size=(32, 32), version="1").pixels
        assert used == [codecs.PLUGIN]
        used = self.plugins_used(monkeypatch, fail=codecs.PLUGIN)
        fallback = preprocess(data, size=(32, 32), version="1").pixels  # imagecodecs "refuses"
        # pydicom's default pick; for JPEG-LS pyjpegls only (codecs.FALLBACK_PLUGINS)
        tsyntax = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert used == [codecs.PLUGIN, codecs.FALLBACK_PLUGINS.get(tsyntax, "")]
        np.testing.assert_array_equal(first, fallback)

    def test_a_cut_jpeg_ls_stream_never_reaches_charls(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """CharLS takes ~4 s to refuse a truncated stream (measured; docs/benchmarks/
        preprocess.md): one without its EOI marker is refused as truncated before any
        decoder sees it (it used to go to pydicom's default pick, whose pylibjpeg-libjpeg
        decoded it without an error: tests/models/test_truncated_codestreams.py)."""
        from pydicom.data import get_testdata_file

        ds = dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        ds.PixelData = encapsulate([frame[: len(frame) // 2]])
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        charls: list[int] = []
        real = imagecodecs.jpegls_decode
        monkeypatch.setattr(
            imagecodecs, "jpegls_decode", lambda src: charls.append(len(src)) or real(src)
        )
        used = self.plugins_used(monkeypatch)
        with pytest.raises(TruncatedDataError):
            preprocess(buf.getvalue(), size=(32, 32))
        assert used == []  # no decoder at all
        assert charls == []
        runner = SimpleNamespace(transfer_syntax=ds.file_meta.TransferSyntaxUID)
        with pytest.raises(codecs.TruncatedCodestreamError):  # nor the plugin on its own
            codecs._decode_frame(frame[: len(frame) // 2], runner)  # type: ignore[arg-type]
        preprocess(read_testdata_file("MR_small_jpeg_ls_lossless.dcm"), size=(32, 32))
        assert len(charls) == 1  # the whole stream still goes to CharLS

    def test_other_syntaxes_do_not_use_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from pydicom.data import get_testdata_file

        used = self.plugins_used(monkeypatch)
        preprocess(Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))).read_bytes())  # JPEG
        assert used == [codecs.LOSSY_JPEG_PLUGIN]  # pylibjpeg-libjpeg, its scan checked


def test_is_available_only_for_its_syntaxes() -> None:
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

    assert all(codecs.is_available(ts) for ts in SYNTAXES)
    assert not any(codecs.is_available(ts) for ts in (JPEGBaseline8Bit, RLELossless))
    assert not codecs.is_available(ExplicitVRLittleEndian)

"""`radlens inspect` and `radlens filter`, through cli.main.main on real files."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from radlens.cli.imaging import to_display
from radlens.cli.main import main
from tests.conftest import REPO_ROOT, shared_data_path

CT_SMALL = str(get_testdata_file("CT_small.dcm"))


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("radlens: error: ")
    assert "Traceback" not in err
    return lines[0]


class TestInspect:
    def test_text_output_on_a_real_ct(self, capsys):
        assert main(["inspect", CT_SMALL]) == 0
        out = capsys.readouterr().out
        assert "modality: CT" in out
        assert "photometric interpretation: MONOCHROME2" in out
        assert "transfer syntax: 1.2.840.10008.1.2.1 (Explicit VR Little Endian)" in out
        assert "rows x columns: 128 x 128" in out
        assert "frames: 1 (using frame 0)" in out
        assert "bits stored: 16" in out
        assert "window: minmax" in out
        assert "preprocessed: shape (128, 128) float32, min 0.0000, max 1.0000" in out

    def test_json_output_parses_and_reflects_the_options(self, capsys):
        path = shared_data_path("dicom", "TOSHIBA_J2K_OpenJPEGv2Regression.dcm")
        assert main(["inspect", str(path), "--json", "--window", "lung", "--size", "64x32"]) == 0
        report = json.loads(capsys.readouterr().out)
        meta = report["metadata"]
        assert meta["transfer_syntax_name"] == "JPEG 2000 Image Compression (Lossless Only)"
        assert meta["window"] == "preset:lung(-600/1500)"
        assert (meta["rows"], meta["columns"]) == (512, 512)
        assert report["pixels"]["shape"] == [64, 32]
        assert 0.0 <= report["pixels"]["min"] <= report["pixels"]["mean"] <= 1.0
        assert report["pixels"]["std"] > 0.0

    def test_monochrome1_and_multiframe_metadata(self, capsys):
        assert main(["inspect", str(get_testdata_file("emri_small.dcm")), "--json"]) == 0
        meta = json.loads(capsys.readouterr().out)["metadata"]
        assert (meta["frames"], meta["frame_index"]) == (10, 5)

    def test_png_is_inspected(self, tmp_path, capsys):
        path = tmp_path / "gray.png"
        Image.fromarray(np.full((6, 9), 255, np.uint8)).save(path)
        assert main(["inspect", str(path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["metadata"]["format"] == "png"
        assert report["pixels"]["max"] == 1.0

    def test_a_turned_or_blank_image_says_so(self, tmp_path, capsys):
        path = tmp_path / "phone.jpg"
        image = Image.fromarray(np.full((6, 9), 255, np.uint8))
        exif = image.getexif()
        exif[0x0112] = 6
        image.save(path, exif=exif)
        assert main(["inspect", str(path)]) == 0
        out = capsys.readouterr().out
        assert "rows x columns: 9 x 6" in out
        assert "EXIF orientation: 6 (turned as a viewer shows it)" in out
        assert "blank: every stored pixel has one value" in out  # and it is all white

    def test_no_patient_identifiers_in_the_output(self, capsys):
        ds = pydicom.dcmread(CT_SMALL)
        name = str(ds.PatientName)
        patient_id = str(ds.PatientID)
        assert name and patient_id
        assert main(["inspect", CT_SMALL, "--json"]) == 0
        out = capsys.readouterr().out
        assert name not in out and patient_id not in out

    def test_a_broken_file_is_one_line_and_exit_2(self, capsys):
        truncated = str(get_testdata_file("MR_truncated.dcm"))
        assert main(["inspect", truncated]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "truncated" in line

    def test_random_bytes_are_one_line_and_exit_2(self, tmp_path, capsys):
        path = tmp_path / "noise.dcm"
        path.write_bytes(bytes(range(7, 250)) * 3)
        assert main(["inspect", str(path)]) == 2
        assert "Not a DICOM, PNG or JPEG" in one_error_line(capsys.readouterr().err)

    def test_missing_file_and_unknown_window_exit_2(self, tmp_path, capsys):
        assert main(["inspect", str(tmp_path / "absent.dcm")]) == 2
        line = one_error_line(capsys.readouterr().err)
        # the path and what to do, not Python's "[Errno 2] No such file or directory: '...'"
        assert (
            line
            == f"radlens: error: {tmp_path / 'absent.dcm'}: no such file or folder; check the path"
        )
        assert main(["inspect", CT_SMALL, "--window", "lungs"]) == 2
        assert "valid presets: lung" in one_error_line(capsys.readouterr().err)

    def test_malformed_rle_prints_nothing_from_native_decoders(self, tmp_path, capfd):
        # RLE segments that decode to more bytes than the frame holds: pylibjpeg-rle
        # panics in Rust (printing to fd 2); radlens decodes RLE with pydicom's decoder.
        ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
        segment = b"\x81\x07" * 40  # 40 runs of 128 bytes > 64 * 64
        header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
        ds.PixelData = encapsulate([header + segment + segment])
        path = tmp_path / "overflow_rle.dcm"
        ds.save_as(path)
        code = main(["inspect", str(path)])
        err = capfd.readouterr().err
        assert "panicked" not in err
        if code == 2:
            one_error_line(err)
        else:
            assert code == 0 and err == ""

    @pytest.mark.parametrize("size", ["0", "abc", "10x10x10", "-4x5", "9000"])
    def test_bad_size_exits_2(self, size, capsys):
        assert main(["inspect", CT_SMALL, "--size", size]) == 2
        assert "--size" in one_error_line(capsys.readouterr().err)

    def test_inspect_does_not_import_tensorflow(self, tmp_path):
        script = (
            "import sys\n"
            "from cli.main import main\n"
            f"code = main(['inspect', {CT_SMALL!r}, '--json'])\n"
            "heavy = sorted(m for m in ('tensorflow', 'keras', 'fastapi') if m in sys.modules)\n"
            "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
            "sys.exit(code)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "HEAVY=\n" in result.stderr + "\n", result.stderr
        json.loads(result.stdout)


class TestFilter:
    @pytest.mark.parametrize("kind", ["sobel_h", "sobel_v", "blur", "outline"])
    def test_writes_a_viewable_png(self, kind, tmp_path, capsys):
        out = tmp_path / f"{kind}.png"
        assert main(["filter", CT_SMALL, "--kind", kind, "--out", str(out), "--size", "64"]) == 0
        assert str(out) in capsys.readouterr().out
        with Image.open(out) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (64, 64)
            pixels = np.asarray(image)
        assert pixels.max() > 128  # something bright to look at
        assert pixels.std() > 5

    def test_sobel_directions_differ_on_a_real_chest_radiograph(self, tmp_path):
        path = shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm")
        outs = {}
        for kind in ("sobel_h", "sobel_v"):
            out = tmp_path / f"{kind}.png"
            args = ["filter", str(path), "--kind", kind, "--out", str(out), "--size", "128"]
            assert main(args) == 0
            with Image.open(out) as image:
                outs[kind] = np.asarray(image).astype(np.float64)
        assert not np.array_equal(outs["sobel_h"], outs["sobel_v"])

    def test_horizontal_edge_shows_in_sobel_output(self, tmp_path):
        # top half dark, bottom half bright: one horizontal edge in the middle rows
        array = np.zeros((32, 32), np.uint8)
        array[16:] = 255
        src = tmp_path / "edge.png"
        Image.fromarray(array).save(src)
        responses = {}
        for kind in ("sobel_h", "sobel_v"):
            out = tmp_path / f"{kind}_out.png"
            assert main(["filter", str(src), "--kind", kind, "--out", str(out)]) == 0
            with Image.open(out) as image:
                responses[kind] = np.asarray(image)
        edge_h = responses["sobel_h"][14:18, 2:30].mean()
        edge_v = responses["sobel_v"][14:18, 2:30].mean()
        assert max(edge_h, edge_v) > 100 and min(edge_h, edge_v) < 20

    def test_unknown_kind_bad_out_and_broken_input_exit_2(self, tmp_path, capsys):
        out = str(tmp_path / "x.png")
        assert main(["filter", CT_SMALL, "--kind", "sharpen", "--out", out]) == 2
        assert "sobel_h" in one_error_line(capsys.readouterr().err)
        assert main(["filter", CT_SMALL, "--kind", "blur", "--out", str(tmp_path / "x.jpg")]) == 2
        one_error_line(capsys.readouterr().err)
        missing_dir = str(tmp_path / "nope" / "x.png")
        assert main(["filter", CT_SMALL, "--kind", "blur", "--out", missing_dir]) == 2
        one_error_line(capsys.readouterr().err)
        broken = str(get_testdata_file("MR_truncated.dcm"))
        assert main(["filter", broken, "--kind", "blur", "--out", out]) == 2
        one_error_line(capsys.readouterr().err)
        assert not Path(out).exists()


class TestToDisplay:
    def test_signed_response_becomes_magnitude(self):
        response = np.array([[-4.0, 0.0], [2.0, 4.0]], dtype=np.float32)
        out = to_display(response, "sobel_h")
        assert out.dtype == np.uint8
        assert out[0, 0] == out[1, 1] == 255 and out[0, 1] == 0

    def test_blur_keeps_the_unit_scale_and_flat_response_is_black(self):
        np.testing.assert_array_equal(to_display(np.full((2, 2), 0.5), "blur"), 128)
        np.testing.assert_array_equal(to_display(np.zeros((3, 3)), "outline"), 0)


def test_png_written_by_filter_round_trips_through_inspect(tmp_path, capsys):
    out = tmp_path / "blur.png"
    assert main(["filter", CT_SMALL, "--kind", "blur", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(io.StringIO(capsys.readouterr().out).read())
    assert report["metadata"]["format"] == "png"
    assert report["pixels"]["shape"] == [128, 128]

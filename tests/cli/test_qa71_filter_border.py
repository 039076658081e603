"""`radlens filter` mirrors the image at its border (no false edge along the frame), checked
against scipy.ndimage on real files; `--border zero` is the models' front-end response.

QA round 71: with zero padding only, a bright image had a bright frame in every edge filter's
PNG, and below ~800 px the frame's values set the 99.5th percentile that scales the picture
(a 64x64 NIH PNG's interior was drawn 2-3 times too dark); a one-pixel image of value 200
blurred to 50.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from radlens.cli.imaging import to_display
from radlens.cli.main import main
from radlens.models.ops import KERNELS
from radlens.models.preprocessing import preprocess
from tests.cli.test_imaging import one_error_line
from tests.conftest import shared_data_path

NIH_PNG = ("nih1000", "test", "0_normal", "00000231_013.png")  # stored as RGB


def written(args: list[str], out: Path) -> np.ndarray:
    assert main([*args, "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "L"
        return np.asarray(image).astype(np.int64)


def reference(path: Path, kind: str, mode: str, size: tuple[int, int] | None = None) -> np.ndarray:
    pixels = preprocess(path.read_bytes(), size=size).pixels.astype(np.float64)
    response = ndimage.correlate(pixels, KERNELS[kind].astype(np.float64), mode=mode)
    return to_display(response, kind).astype(np.int64)


@pytest.mark.parametrize("kind", ["sobel_h", "sobel_v", "outline", "blur"])
def test_real_png_is_mirrored_at_the_border(kind, tmp_path, capsys):
    path = shared_data_path(*NIH_PNG)
    got = written(["filter", str(path), "--kind", kind], tmp_path / f"{kind}.png")
    assert np.abs(got - reference(path, kind, "reflect")).max() <= 1
    assert "border reflect" in capsys.readouterr().out


def test_no_bright_frame_on_a_real_radiograph(tmp_path):
    path = shared_data_path("dicom", "rsna_chest_cr_tagged_monochrome1.dcm")
    got = written(
        ["filter", str(path), "--kind", "sobel_h", "--size", "128"], tmp_path / "edges.png"
    )
    # MONOCHROME1 shown inverted: a white background, which zero padding turned into a white
    # first row (every pixel 255); mirrored, the first row looks like its neighbours
    assert got[0].mean() < 2 * got[1:4].mean() + 10
    assert np.abs(got - reference(path, "sobel_h", "reflect", (128, 128))).max() <= 1


def test_border_zero_is_the_front_ends_response(tmp_path):
    path = shared_data_path(*NIH_PNG)
    got = written(
        ["filter", str(path), "--kind", "outline", "--border", "zero"], tmp_path / "zero.png"
    )
    assert np.abs(got - reference(path, "outline", "constant")).max() <= 1


def test_one_pixel_image_blurs_to_itself(tmp_path):
    src = tmp_path / "one.png"
    Image.fromarray(np.array([[200]], np.uint8)).save(src)
    np.testing.assert_array_equal(
        written(["filter", str(src), "--kind", "blur"], tmp_path / "blur.png"), [[200]]
    )
    np.testing.assert_array_equal(
        written(["filter", str(src), "--kind", "outline"], tmp_path / "outline.png"), [[0]]
    )


def test_bad_border_and_dot_png_are_one_line_exit_2(tmp_path, capsys):
    path = str(shared_data_path("dicom", "ct_image.dcm"))
    out = str(tmp_path / "x.png")
    assert main(["filter", path, "--kind", "blur", "--out", out, "--border", "mirror"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == "radlens: error: --border must be one of reflect, zero; got 'mirror'"
    assert main(["filter", path, "--kind", "blur", "--out", str(tmp_path / ".png")]) == 2
    assert "ending in .png" in one_error_line(capsys.readouterr().err)
    assert not Path(out).exists()

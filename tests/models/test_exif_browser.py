"""The EXIF Orientation turn checked against a real viewer: headless Chromium draws the JPEG
(an <img>, CSS image-orientation's default from-image) and preprocessing must give the image
it shows. Skipped, with the reason, without chromium or playwright."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from radlens.models.preprocessing import preprocess
from tests.app.test_docs_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} absent (Debian: apt-get install chromium)"
    ),
]

# draws the page's <img> onto a canvas at its shown size and returns its gray levels
_READ_BACK = """async () => {
  const img = document.getElementById("x");
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const gray = [];
  for (let i = 0; i < rgba.length; i += 4) gray.push(rgba[i]);
  return {width: canvas.width, height: canvas.height, gray: gray};
}"""


def jpeg(orientation: int) -> bytes:
    """A 40x64 gray JPEG with no symmetry (a gradient and a bright corner block)."""
    arr = np.tile(np.linspace(0, 120, 64), (40, 1)) + np.linspace(0, 60, 40)[:, None]
    arr[:12, :20] = 255
    image = Image.fromarray(arr.astype(np.uint8))
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=100, exif=exif)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shown() -> dict[int, np.ndarray]:
    """Each orientation's JPEG as Chromium shows it, gray levels in [0, 1]."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    out: dict[int, np.ndarray] = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            for orientation in range(1, 9):
                source = base64.b64encode(jpeg(orientation)).decode()
                page.set_content(f'<img id="x" src="data:image/jpeg;base64,{source}">')
                drawn = page.evaluate(_READ_BACK)
                gray = np.asarray(drawn["gray"], np.float32).reshape(
                    drawn["height"], drawn["width"]
                )
                out[orientation] = gray / np.float32(255.0)
        finally:
            browser.close()
    return out


@pytest.mark.parametrize("orientation", range(1, 9))
def test_preprocessing_gives_the_image_chromium_shows(
    shown: dict[int, np.ndarray], orientation: int
) -> None:
    pixels = preprocess(jpeg(orientation)).pixels
    viewer = shown[orientation]
    assert pixels.shape == viewer.shape
    # two JPEG decoders (Chromium's and Pillow's libjpeg-turbo) agree to a few levels
    assert float(np.abs(pixels - viewer).mean()) < 2 / 255
    if orientation != 1:  # and the stored pixels are not what a viewer shows
        stored = preprocess(jpeg(orientation), version="3").pixels
        assert stored.shape != viewer.shape or float(np.abs(stored - viewer).mean()) > 0.05

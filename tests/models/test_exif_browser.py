"""The EXIF Orientation turn checked against a real viewer: headless Chromium draws each image
(an <img>, CSS image-orientation's default from-image) and preprocessing must give the image
it shows: the 8 orientations in a JPEG and a PNG, and the entries and places a viewer passes
over (found by the QA round: a LONG Orientation, a count of 2, a PNG eXIf chunk after the
image data, an ImageMagick text chunk). Skipped, with the reason, without chromium or
playwright."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

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


def stored() -> Image.Image:
    """40x64 gray with no symmetry (a gradient and a bright corner block)."""
    arr = np.tile(np.linspace(0, 120, 64), (40, 1)) + np.linspace(0, 60, 40)[:, None]
    arr[:12, :20] = 255
    return Image.fromarray(arr.astype(np.uint8))


def tiff(kind: int, count: int, value: bytes, order: str = "<") -> bytes:
    """An EXIF block (TIFF header, one IFD) holding only an Orientation entry as given."""
    return tiff_entries([(kind, count, value)], order)


def tiff_entries(entries: list[tuple[int, int, bytes]], order: str = "<") -> bytes:
    """An EXIF block whose one IFD holds these Orientation entries (type, count, value)."""
    head = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8)
    body = struct.pack(order + "H", len(entries))
    for kind, count, value in entries:
        body += struct.pack(order + "HHI", 0x0112, kind, count) + value
    return head + body + struct.pack(order + "I", 0)


def encoded(kind: str, exif: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 100} if kind == "JPEG" else {}
    stored().save(buffer, format=kind, **({"exif": exif} if exif else {}), **options)
    return buffer.getvalue()


def jpeg_with_app1(block: bytes) -> bytes:
    plain = encoded("JPEG")
    payload = b"Exif\x00\x00" + block
    return plain[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + plain[2:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_exif_after_idat(block: bytes) -> bytes:
    plain = encoded("PNG")
    iend = plain.rindex(b"IEND") - 4
    return plain[:iend] + png_chunk(b"eXIf", block) + plain[iend:]


def png_raw_profile(block: bytes) -> bytes:
    """The EXIF block in a "Raw profile type exif" text chunk, as ImageMagick writes it."""
    text = f"\nexif\n{len(block) + 6:8d}\n{(b'Exif' + bytes(2) + block).hex()}\n"
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", text)
    buffer = io.BytesIO()
    stored().save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


SIX = struct.pack("<HH", 6, 0)
CASES: dict[str, tuple[str, bytes]] = {
    **{
        f"jpeg-{o}": ("jpeg", encoded("JPEG", tiff(3, 1, struct.pack("<HH", o, 0))))
        for o in range(1, 9)
    },
    **{
        f"png-{o}": ("png", encoded("PNG", tiff(3, 1, struct.pack("<HH", o, 0)))) for o in (3, 6, 8)
    },
    "jpeg-6-big-endian": ("jpeg", jpeg_with_app1(tiff(3, 1, struct.pack(">HH", 6, 0), ">"))),
    "jpeg-6-as-long": ("jpeg", jpeg_with_app1(tiff(4, 1, struct.pack("<I", 6)))),
    "jpeg-6-count-2": ("jpeg", jpeg_with_app1(tiff(3, 2, struct.pack("<HH", 6, 6)))),
    "png-6-exif-after-idat": ("png", png_exif_after_idat(tiff(3, 1, SIX))),
    # two Orientation entries (found by QA round 3): the first valid SHORT counts
    "jpeg-long-then-6": (
        "jpeg",
        jpeg_with_app1(tiff_entries([(4, 1, b"\x03\0\0\0"), (3, 1, SIX)])),
    ),
    "jpeg-9-then-6": ("jpeg", jpeg_with_app1(tiff_entries([(3, 1, b"\x09\0\0\0"), (3, 1, SIX)]))),
    "jpeg-6-then-3": ("jpeg", jpeg_with_app1(tiff_entries([(3, 1, SIX), (3, 1, b"\x03\0\0\0")]))),
    "png-6-raw-profile-text": ("png", png_raw_profile(tiff(3, 1, SIX))),
}


@pytest.fixture(scope="module")
def shown() -> dict[str, np.ndarray]:
    """Each case as Chromium shows it, gray levels in [0, 1]."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    out: dict[str, np.ndarray] = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            for name, (mime, data) in CASES.items():
                source = base64.b64encode(data).decode()
                page.set_content(f'<img id="x" src="data:image/{mime};base64,{source}">')
                drawn = page.evaluate(_READ_BACK)
                gray = np.asarray(drawn["gray"], np.float32).reshape(
                    drawn["height"], drawn["width"]
                )
                out[name] = gray / np.float32(255.0)
        finally:
            browser.close()
    return out


@pytest.mark.parametrize("name", CASES)
def test_preprocessing_gives_the_image_chromium_shows(
    shown: dict[str, np.ndarray], name: str
) -> None:
    data = CASES[name][1]
    pixels = preprocess(data).pixels
    viewer = shown[name]
    assert pixels.shape == viewer.shape
    # two JPEG decoders (Chromium's and Pillow's libjpeg-turbo) agree to a few levels
    assert float(np.abs(pixels - viewer).mean()) < 2 / 255
    turned = preprocess(data).metadata.exif_orientation is not None
    if turned:  # and the stored pixels are not what the viewer shows
        before = preprocess(data, version="3").pixels
        assert before.shape != viewer.shape or float(np.abs(before - viewer).mean()) > 0.05

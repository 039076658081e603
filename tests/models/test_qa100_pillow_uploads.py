"""PNG/JPEG uploads as real tools write them (QA round 100).

- A JPEG over the pixel limit (a phone's 48/50 MP photo of a film, above the default 36 MP)
  was refused although a viewer shows it and the model sees it at a few hundred pixels a
  side: a DCT JPEG is now decoded at 1/2, 1/4 or 1/8 of its size by libjpeg's DCT scaling,
  the least reduction that fits the limit; one within the limit decodes in full as before,
  and a lossless JPEG or a PNG over it is still refused.
- Files of formats people send by mistake that the refusal did not name (an HTML page saved
  instead of the image, an SVG, an ICO icon, a JPEG XR or PostScript file, a PNG or JPEG as
  base64 text or a data: URL) are named, with what to do; a text format's first bytes are
  not quoted.

The images are made here from the RSNA chest CR in ../shared/data/dicom (skipped when
absent).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from radlens.models.errors import ImageTooLargeError, NotAnImageError
from radlens.models.preprocessing import preprocess
from tests.conftest import shared_data_path


@pytest.fixture(scope="module")
def chest() -> Image.Image:
    """The RSNA chest CR's 1024x1024 8-bit frame, cropped to 1000x800 (not square, so a wrong
    turn shows)."""
    import pydicom

    ds = pydicom.dcmread(shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm"))
    return Image.fromarray(ds.pixel_array.astype(np.uint8)[12:1012, 100:900].copy())


def _jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("L", {}),
        ("RGB", {"progressive": True, "exif": _orientation(6)}),  # a phone's photo, turned
        ("CMYK", {}),
    ],
)
def test_a_jpeg_over_the_pixel_limit_is_decoded_reduced_like_the_full_decode(
    chest: Image.Image, mode: str, options: dict[str, object]
) -> None:
    image = chest if mode != "CMYK" else Image.merge("CMYK", [chest.point(lambda v: 255 - v)] * 4)
    data = _jpeg(image.convert(mode) if mode != "CMYK" else image, **options)
    full = preprocess(data, size=(224, 224), max_pixels=10_000_000)
    # 800x1000 = 800,000 pixels: 1/2 (400x500 = 200,000) does not fit 150,000, 1/4 does
    reduced = preprocess(data, size=(224, 224), max_pixels=150_000)
    turned = options.get("exif") is not None  # rows and columns as the viewer shows them
    shown = (reduced.metadata.rows, reduced.metadata.columns)
    assert shown == ((200, 250) if turned else (250, 200))
    assert (full.metadata.rows, full.metadata.columns) == ((800, 1000) if turned else (1000, 800))
    assert float(np.abs(reduced.pixels - full.pixels).mean()) < 0.01
    assert float(np.corrcoef(reduced.pixels.ravel(), full.pixels.ravel())[0, 1]) > 0.99
    # the least reduction: at 1/2 when it fits
    half = preprocess(data, max_pixels=200_000)
    assert half.pixels.shape == ((400, 500) if turned else (500, 400))
    # beyond 1/8 (100x125 = 12,500): refused as before
    with pytest.raises(ImageTooLargeError, match="declares"):
        preprocess(data, max_pixels=12_000)


def test_a_jpeg_within_the_limit_and_what_cannot_be_scaled_are_unchanged(
    chest: Image.Image,
) -> None:
    import imagecodecs

    data = _jpeg(chest)
    within = preprocess(data, max_pixels=800_000)
    assert within.pixels.shape == (1000, 800)
    reduced = preprocess(data, max_pixels=799_999)  # one pixel less: now decoded at 1/2
    assert reduced.pixels.shape == (500, 400)
    # a lossless JPEG has no DCT to scale, a PNG no reduced decode: refused over the limit
    lossless = imagecodecs.jpeg8_encode(np.asarray(chest), lossless=True)
    assert preprocess(lossless, max_pixels=800_000).pixels.shape == (1000, 800)
    with pytest.raises(ImageTooLargeError):
        preprocess(lossless, max_pixels=799_999)
    buffer = io.BytesIO()
    chest.save(buffer, "PNG")
    with pytest.raises(ImageTooLargeError):
        preprocess(buffer.getvalue(), max_pixels=799_999)


def _made(chest: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    chest.resize((64, 80)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "named", "advice"),
    [
        ("html", "a web page (HTML)", "save the image itself"),
        ("svg", "an SVG drawing", "convert it to PNG"),
        ("ico", "an ICO icon", "convert it to PNG"),
        ("jxr", "a JPEG XR (HD Photo) image", "convert it to PNG"),
        ("eps", "a PostScript (EPS) file", "convert it to PNG"),
        ("base64", "a PNG image as base64 text", "decode the base64 and send"),
        ("data-url", "a JPEG image as base64 text", "decode the base64 and send"),
    ],
)
def test_another_format_sent_by_mistake_is_named_with_what_to_do(
    chest: Image.Image, kind: str, named: str, advice: str
) -> None:
    import base64

    if kind == "html":  # what a browser saves for an image's share or viewer link
        data = b"\xef\xbb\xbf<!DOCTYPE html>\n<html><head><title>chest.png</title></head></html>"
    elif kind == "svg":  # a drawing that embeds the radiograph
        png = base64.b64encode(_made(chest, "PNG"))
        data = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
            b'xmlns:xlink="http://www.w3.org/1999/xlink"><image xlink:href="data:image/png;base64,'
            + png
            + b'"/></svg>'
        )
    elif kind == "base64":  # an API client that sent the encoded string, not the bytes
        data = base64.b64encode(_made(chest, "PNG"))
    elif kind == "data-url":  # a canvas's toDataURL() posted as the file
        data = b"data:image/jpeg;base64," + base64.b64encode(_made(chest, "JPEG"))
    elif kind == "jxr":
        import imagecodecs

        data = imagecodecs.jpegxr_encode(np.asarray(chest.resize((64, 80))))
    else:
        data = _made(chest, kind.upper())
    with pytest.raises(NotAnImageError) as raised:
        preprocess(data)
    assert f"{named}" in str(raised.value) and advice in str(raised.value), raised.value


def test_an_html_page_is_named_without_quoting_its_text() -> None:
    # a report saved as HTML may name the patient in its first bytes: its head is not quoted
    with pytest.raises(NotAnImageError) as raised:
        preprocess(b"<html><body><p>DOE^JANE 1970-01-01</p></body></html>")
    message = str(raised.value)
    assert "a web page (HTML)" in message and "with text (not shown)" in message, message
    assert "44 4f 45" not in message and "DOE" not in message, message

"""QA round 23: EXIF text of a PNG/JPEG upload (a patient's name or MRN in Artist or
ImageDescription) must not reach the logs, RADLENS_LOG_LEVEL=debug included.

Pillow logs every EXIF tag it parses, value and all, at DEBUG (PIL.TiffImagePlugin); with the
service's root logger at DEBUG (``radlens serve`` under RADLENS_LOG_LEVEL=debug) those values
were written to the service log."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from radlens.models.preprocessing import preprocess

NAME = "QADOE^JOHNNY"
MRN = "QA-PID-77123"


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x013B] = NAME  # Artist
    exif[0x010E] = f"MRN {MRN}"  # ImageDescription
    return exif.tobytes()


def _radiograph() -> Image.Image:
    rng = np.random.default_rng(23)
    return Image.fromarray(rng.integers(0, 256, (64, 80), dtype=np.uint8))


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    _radiograph().save(buf, format=fmt, exif=_exif())
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_values_are_not_logged_at_debug(fmt: str, caplog: pytest.LogCaptureFixture) -> None:
    data = _encoded(fmt)
    caplog.set_level(logging.DEBUG)  # the root logger, as `radlens serve` at debug sets it
    image = preprocess(data)
    assert image.metadata.format == fmt.lower()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert NAME not in logged
    assert MRN not in logged
    assert "QADOE" not in logged

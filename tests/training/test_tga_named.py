"""A TGA whose first bytes happen to look like a DICOM tag (an ID field of 2 or 8 bytes: it
starts ``02 00`` or ``08 00``, as a dataset without preamble starts with group 0002 or 0008)
was read as DICOM and refused as "truncated; send the complete file" by the service and as
"DICOM file has no pixel data" by training, neither true. A TGA 2.0 file ends with its own
signature (``TRUEVISION-XFILE.``): it is now named, with what to do, on both paths, and a real
dataset without preamble is still read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radlens.models.errors import NotAnImageError
from radlens.models.preprocessing import preprocess, sniff_format
from radlens.training.data.sources import open_source


def _tga(id_section: bytes, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    pixels = (np.arange(40 * 50).reshape(40, 50) % 251).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(buf, format="TGA", id_section=id_section)
    return buf.getvalue()


@pytest.mark.parametrize("id_section", [b"ab", b"abcdefgh", b""])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_tga_is_named_whatever_its_first_bytes(id_section: bytes, mode: str) -> None:
    data = _tga(id_section, mode)
    with pytest.raises(NotAnImageError, match=r"a TGA image; convert it to PNG") as info:
        preprocess(data)
    assert "truncated" not in str(info.value)
    with pytest.raises(NotAnImageError, match=r"a TGA image"):
        sniff_format(data)


def test_a_dataset_without_preamble_is_still_dicom() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.preamble = None
    del ds.file_meta
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    assert data[:2] == b"\x08\x00"
    assert sniff_format(data) == "dicom"
    assert preprocess(data).metadata.rows == 128


def test_training_names_the_tga_it_skips(tmp_path: Path) -> None:
    for label in ("normal", "abnormal"):
        (tmp_path / label).mkdir()
        for i in range(2):
            pixels = np.full((24, 24), 40 * i + (100 if label == "abnormal" else 0), np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    (tmp_path / "normal" / "scan.tga").write_bytes(_tga(b"ab"))
    source = open_source(tmp_path)
    assert len(source.examples) == 4
    reasons = [s.reason for s in source.skipped if s.path.endswith("scan.tga")]
    assert len(reasons) == 1
    assert "a TGA image; convert it to PNG" in reasons[0]
    assert "no pixel data" not in reasons[0]

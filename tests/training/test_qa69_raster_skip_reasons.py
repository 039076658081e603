"""QA round 69: a class folder holding a JPEG-LS file (the ISO 14495 conformance images that
pyjpegls ships, T8C0E0.JLS ...; a CharLS export named .jpg) or a JPEG cut short inside its
header (scikit-image's truncated.jpg) was skipped by `radlens data-check` and `radlens train`
as "not a readable PNG/JPEG file (UnidentifiedImageError: cannot identify image file
'<path>')": Pillow's words, with nothing on what the file is or what to do. The service
refuses the same bytes saying both ("a 12-bit JPEG-LS image (SOF55) ... convert it to PNG or
send the DICOM"; "The file is truncated; send the complete file"). The scan-time probe now
gives the service's reason where Pillow cannot read the header.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from radlens.training.data.sources import open_source


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_ls_codestream() -> bytes:
    """A 16-bit JPEG-LS codestream (SOI, SOF55, ...): the frame of pydicom's JPEG-LS MR."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _jpeg_cut_in_header() -> bytes:
    """A baseline JPEG cut after 60 bytes: inside its first table, before the frame header."""
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    assert data[20:22] == b"\xff\xdb"  # JFIF's APP0, then the quantisation table cut below
    return data[:60]


def _folder(tmp_path: Path, extra: dict[str, bytes]) -> Path:
    root = tmp_path / "ds"
    for c, cls in enumerate(("normal", "abnormal")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"img{i}.png").write_bytes(_png(10 * c + i))
    for name, data in extra.items():
        (root / "normal" / name).write_bytes(data)
    return root


def _reasons(root: Path) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in open_source(root).skipped}


def test_jpeg_ls_file_is_named_with_what_to_send(tmp_path: Path) -> None:
    reasons = _reasons(_folder(tmp_path, {"export.jpg": _jpeg_ls_codestream()}))
    reason = reasons["export.jpg"]
    assert "JPEG-LS image (SOF55)" in reason, reason
    assert "convert it to PNG" in reason and "send the DICOM" in reason, reason
    assert "UnidentifiedImageError" not in reason and str(tmp_path) not in reason, reason


def test_jpeg_cut_in_its_header_is_called_truncated(tmp_path: Path) -> None:
    reasons = _reasons(_folder(tmp_path, {"cut.jpg": _jpeg_cut_in_header()}))
    reason = reasons["cut.jpg"]
    assert reason.startswith("The file is truncated; send the complete file"), reason


def test_a_jpeg_header_no_decoder_parses_is_named(tmp_path: Path) -> None:
    junk = b"\xff\xd8\xff\xe0" + bytes(200)  # a JPEG signature and nothing a decoder can use
    reason = _reasons(_folder(tmp_path, {"junk.jpg": junk}))["junk.jpg"]
    assert "JPEG header could not be parsed" in reason, reason


def test_the_conformance_images_pyjpegls_ships(tmp_path: Path) -> None:
    jpeg_ls = pytest.importorskip("jpeg_ls", reason="pyjpegls (its JPEG-LS test images) absent")
    folder = Path(jpeg_ls.__file__).parent / "tests" / "jlsimV100"
    files = sorted(folder.glob("*.JLS"))
    if not files:
        pytest.skip(f"no JPEG-LS conformance images in {folder}")
    reasons = _reasons(_folder(tmp_path, {f.name: f.read_bytes() for f in files}))
    for f in files:
        assert "JPEG-LS image (SOF55)" in reasons[f.name], (f.name, reasons[f.name])

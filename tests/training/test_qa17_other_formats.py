"""A file of another image format in a training folder is skipped with a reason that names
the format and says what to do, not only its first bytes (QA round 17)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from radlens.training.data.sources import open_source
from tests.training.data_fixtures import png_folder


def _skipped_tiff(tmp_path: Path, name: str) -> str:
    """The skip reason of a TIFF saved as ``name`` in a folder of PNGs."""
    root = png_folder(tmp_path / "data", n_per_class=3)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, "TIFF")
    (root / "normal" / name).write_bytes(buffer.getvalue())
    [skipped] = open_source(root).skipped
    assert Path(skipped.path).name == name
    return skipped.reason


def test_a_tiff_named_png_is_skipped_as_a_tiff(tmp_path: Path) -> None:
    reason = _skipped_tiff(tmp_path, "exported.png")
    assert "not a DICOM, PNG or JPEG file" in reason
    assert "a TIFF image; convert it to PNG" in reason, reason


def test_a_tiff_named_dcm_is_skipped_as_a_tiff(tmp_path: Path) -> None:
    """A .dcm name makes training read the file as DICOM by force; when nothing of a DICOM
    image is in it, the reason names what it is (QA round 17: a TIFF named .dcm)."""
    reason = _skipped_tiff(tmp_path, "exported.dcm")
    assert reason.startswith("not a DICOM file ("), reason
    assert reason.endswith("): a TIFF image; " + other_advice()), reason


def other_advice() -> str:
    from radlens.models.preprocessing import other_format

    found = other_format(b"II*\x00")
    assert found is not None
    return found[1]

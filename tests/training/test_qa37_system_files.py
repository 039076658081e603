"""QA 37: operating-system and NAS metadata in a folder data set.

Class folders zipped on a Mac and unpacked elsewhere come with ``__MACOSX/`` beside them,
which was taken for a third class (and refused as empty); a Synology NAS keeps JPEG
thumbnails of every image in ``@eaDir/`` folders, which trained as images of their class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from radlens.training.data.sources import open_data
from tests.training.data_fixtures import png_folder, random_gray


def test_macos_resource_forks_beside_the_class_folders_are_not_a_class(tmp_path: Path) -> None:
    png_folder(tmp_path / "data", n_per_class=2)
    fork = tmp_path / "data" / "__MACOSX" / "normal" / "._normal_000.png"
    fork.parent.mkdir(parents=True)
    fork.write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    source = open_data(tmp_path / "data")
    assert source.class_names == ["normal", "abnormal"]


def test_nas_thumbnails_are_not_training_images(tmp_path: Path) -> None:
    png_folder(tmp_path / "data", n_per_class=2)
    thumbs = tmp_path / "data" / "abnormal" / "@eaDir" / "abnormal_000.png"
    thumbs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(random_gray(rng, 8)).save(thumbs / "SYNOFILE_THUMB_S.jpg")
    (tmp_path / "data" / "normal" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    source = open_data(tmp_path / "data")
    assert len(source.examples) == 4
    assert not any("@eaDir" in e.key for e in source.examples)
    assert not source.skipped  # Thumbs.db is not reported as a skipped image either


def test_system_names_in_another_case_are_ignored_too(tmp_path: Path) -> None:
    """NTFS writes the recycle bin as ``$Recycle.Bin`` and Explorer ``thumbs.db``: the names
    are matched whatever their case (QA 39)."""
    png_folder(tmp_path / "data", n_per_class=2)
    recycle = tmp_path / "data" / "$Recycle.Bin" / "S-1-5-21"
    recycle.mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(random_gray(rng, 8)).save(recycle / "$RABC123.png")
    (tmp_path / "data" / "normal" / "thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + b"\0" * 60)
    source = open_data(tmp_path / "data")
    assert source.class_names == ["normal", "abnormal"]
    assert len(source.examples) == 4 and not source.skipped

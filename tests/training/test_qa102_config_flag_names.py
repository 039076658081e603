"""A config file written with `radlens train`'s flag names says which key to write (QA 102).

`arch: simple_cnn` and `epochs: 1` (the flags --arch, --epochs) were refused with the list of
every known key only; the message now names architecture and epochs_head.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.config import TrainConfig


def test_flag_names_and_near_misses_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("arch: simple_cnn\nepochs: 1\nimage-size: 32\npatiense: 2\nbanana: 1\n")
    with pytest.raises(ConfigurationError) as caught:
        TrainConfig.load(path)
    message = str(caught.value)
    assert "unknown option(s) in" in message and "banana" in message
    assert "write architecture: for arch: (the flag --arch)" in message
    assert "write epochs_head: for epochs: (the flag --epochs)" in message
    assert "write image_size: for image-size:" in message
    assert "write early_stopping_patience: for patiense:" in message
    assert "for banana" not in message  # nothing near it: no guess


def test_the_named_keys_load(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("architecture: simple_cnn\nepochs_head: 1\nimage_size: 32\n")
    config = TrainConfig.load(path)
    assert (config.architecture, config.epochs_head, config.image_size) == ("simple_cnn", 1, 32)

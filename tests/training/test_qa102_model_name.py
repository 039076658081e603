"""A run name the model store would refuse is refused before training (QA round 102).

TrainConfig took any name of letters, digits, '-', '_' and '.', non-ASCII letters included;
the store's rule (models.manifest.NAME_PATTERN) also wants ASCII, a letter or digit first and
at most 64 characters. '..', '.hidden', 'chestü' or a 65-character name trained the whole
run, then failed at the export, leaving a (hidden) run directory behind.
"""

from __future__ import annotations

import pytest

from radlens.models.errors import ConfigurationError
from radlens.models.manifest import NAME_PATTERN
from radlens.training.config import TrainConfig


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-chest", "chestü", "c" * 65])
def test_names_the_store_refuses_are_refused_up_front(name: str) -> None:
    assert not NAME_PATTERN.match(name)
    with pytest.raises(ConfigurationError, match="starting with a letter or digit"):
        TrainConfig(name=name)


@pytest.mark.parametrize("name", ["chest", "Chest-1", "chest_v2.1", "c" * 64, "0x"])
def test_names_the_store_takes_are_taken(name: str) -> None:
    assert TrainConfig(name=name).name == name

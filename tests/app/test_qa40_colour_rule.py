"""QA 40: the service's colour rule is the one training applies (models.intended_use).

The gate's decision (app/gate.py ``check_colour``) is ``models.intended_use.colour_violation``
under the RADLENS_GATE policy: for every colour share and intended use they agree, so an image
training leaves out as colour is the image the served model refuses.
"""

from __future__ import annotations

import pytest

from radlens.app import gate
from radlens.app.gate import OutsideIntendedUseError, check_colour
from radlens.models import intended_use
from radlens.models.intended_use import IntendedUse, colour_violation

USES = [
    IntendedUse(),
    IntendedUse(modalities=("CR", "DX")),
    IntendedUse(modalities=("CT",), body_parts=("CHEST",)),
    IntendedUse(modalities=("CR", "US")),
    IntendedUse(modalities=("XC",)),
]
SHARES = [None, 0.0, 0.05, 0.0501, 0.3, 1.0]


def test_the_gate_uses_the_models_constants() -> None:
    assert gate.COLOUR_SHARE is intended_use.COLOUR_SHARE
    assert gate.GRAY_MODALITIES is intended_use.GRAY_MODALITIES


@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("share", SHARES)
def test_gate_and_training_decide_alike(use: IntendedUse, share: float | None) -> None:
    found = colour_violation(share, use)
    assert check_colour(share, use, "off") == []
    if found is None:
        assert check_colour(share, use, "flag") == []
        assert check_colour(share, use, "refuse") == []
        return
    assert check_colour(share, use, "flag") == [found]
    with pytest.raises(OutsideIntendedUseError) as caught:
        check_colour(share, use, "refuse")
    assert caught.value.violations == [found]

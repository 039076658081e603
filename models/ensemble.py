"""An ensemble served as one model: the mean of its members' probabilities.

Why one model: the service, the store and the manifest know one ``model.keras`` with one
input and one output; an ensemble that is a single Keras graph needs no change anywhere
else (one artifact, one sha256, one threshold). The graph is::

    image -> [ShiftView(dy, dx) for each test-time view] -> member_i(view) -> Average

so test-time augmentation (TTA) is the same construction with shifted views of the input
(``models.layers.ShiftView``; the identity view first). Every member is a nested Keras model
named ``member_<i>``; :func:`ensemble_members` finds them again after a save and load, which
is how Grad-CAM (``models.gradcam``) explains an ensemble: the members' maps on the
unshifted image, averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from radlens.models.errors import ConfigurationError
from radlens.models.layers import ShiftView

ENSEMBLE_OUTPUT = "ensemble_mean"
MEMBER_PREFIX = "member_"


def build_ensemble(
    members: Sequence[keras.Model],
    *,
    offsets: Sequence[tuple[int, int]] = ((0, 0),),
    name: str = "ensemble",
) -> keras.Model:
    """One model averaging ``members``' outputs over the input views ``offsets``.

    Args:
        members: trained models with the same input shape and output width (each is wrapped
            as ``member_<i>``, sharing its layers and weights: nothing is copied).
        offsets: ``(dy, dx)`` pixel shifts, one view each; ``(0, 0)`` must come first (the
            view Grad-CAM explains).

    Raises:
        ConfigurationError: no member, members that disagree on input or output shape, or
            views that do not start with the identity.
    """
    if not members:
        raise ConfigurationError("an ensemble needs at least one member; received none")
    shape = tuple(members[0].input_shape[1:])
    width = members[0].output_shape[-1]
    for i, member in enumerate(members):
        if tuple(member.input_shape[1:]) != shape or member.output_shape[-1] != width:
            raise ConfigurationError(
                f"ensemble member {i} takes {member.input_shape} -> {member.output_shape}; "
                f"member 0 takes (None, *{shape}) -> (None, {width})"
            )
    offsets = [(int(dy), int(dx)) for dy, dx in offsets]
    if not offsets or offsets[0] != (0, 0):
        raise ConfigurationError(
            f"the first ensemble view must be the unshifted image (0, 0); received {offsets!r}"
        )
    inputs = keras.Input(shape, name="image")
    views = [inputs] + [
        ShiftView(dy, dx, name=f"view_{dy}_{dx}".replace("-", "m")) for dy, dx in offsets[1:]
    ]
    wrapped = [
        keras.Model(m.input, m.output, name=f"{MEMBER_PREFIX}{i}") for i, m in enumerate(members)
    ]
    outputs: list[Any] = []
    for view in views:
        x = view if view is inputs else view(inputs)
        outputs.extend(member(x) for member in wrapped)
    mean = keras.layers.Average(name=ENSEMBLE_OUTPUT) if len(outputs) > 1 else None
    result = mean(outputs) if mean is not None else outputs[0]
    return keras.Model(inputs, result, name=name)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble built by :func:`build_ensemble` (in order), or [] for
    any other model."""
    members = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)
    ]
    if not members:
        return []
    return sorted(members, key=lambda m: int(m.name[len(MEMBER_PREFIX) :]))

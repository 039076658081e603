"""radlens.training.phases: which phases a run has, and what each one lets train before it fits."""

from __future__ import annotations

from typing import Any

import keras
import pytest

from radlens.training.config import TrainConfig
from radlens.training.phases import (
    Phase,
    build_model_for,
    fine_tune,
    plan_phases,
    train_head,
    train_whole,
)


def _config(**values: Any) -> TrainConfig:
    return TrainConfig.from_dict({"image_size": 32, **values})


class TestPlanPhases:
    def test_pretrained_resnet50_head_then_fine_tune_continuing_the_epochs(self) -> None:
        config = _config(
            architecture="resnet50",
            weights="imagenet",
            epochs_head=2,
            epochs_finetune=3,
            learning_rate_head=1e-3,
            learning_rate_finetune=1e-5,
        )
        assert plan_phases(config) == [
            (Phase(1, 0, 2, 1e-3), train_head),
            (Phase(2, 2, 5, 1e-5), fine_tune),
        ]

    def test_no_fine_tuning_epochs_no_second_phase(self) -> None:
        config = _config(architecture="resnet50", weights="imagenet", epochs_finetune=0)
        assert [step for _, step in plan_phases(config)] == [train_head]

    @pytest.mark.parametrize(
        "values", [{"architecture": "simple_cnn"}, {"architecture": "resnet50", "weights": None}]
    )
    def test_from_scratch_is_one_phase(self, values: dict[str, Any]) -> None:
        config = _config(**values, epochs_head=4, epochs_finetune=3, learning_rate_head=0.01)
        assert plan_phases(config) == [(Phase(1, 0, 4, 0.01), train_whole)]


@pytest.fixture(scope="module")
def resnet() -> keras.Model:
    return build_model_for(_config(architecture="resnet50", weights=None), num_classes=2)


def _trainable(model: keras.Model) -> tuple[int, bool]:
    """(trainable weight tensors in the backbone, whether any BatchNorm is trainable)."""
    backbone = model.get_layer("backbone")
    bn = [
        layer.trainable
        for layer in backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    return len(backbone.trainable_weights), any(bn)


class TestSteps:
    """Each step sets what trains, then hands its phase to ``fit`` once."""

    def run(self, step: Any, model: keras.Model, config: TrainConfig) -> tuple[int, bool]:
        seen: list[tuple[Phase, tuple[int, bool]]] = []
        phase = Phase(1, 0, 1, 1e-3)
        step(model, config, phase, lambda p: seen.append((p, _trainable(model))))
        assert [p for p, _ in seen] == [phase]
        return seen[0][1]

    def test_head_freezes_the_backbone_fine_tune_opens_the_top_blocks(
        self, resnet: keras.Model
    ) -> None:
        config = _config(architecture="resnet50", weights="imagenet", unfreeze_blocks=1)
        assert self.run(train_head, resnet, config) == (0, False)
        top_block, bn_trainable = self.run(fine_tune, resnet, config)
        assert top_block > 0 and not bn_trainable  # BatchNorm stays frozen

    def test_whole_trains_everything_batchnorm_included(self, resnet: keras.Model) -> None:
        config = _config(architecture="resnet50", weights=None)
        weights, bn_trainable = self.run(train_whole, resnet, config)
        backbone = resnet.get_layer("backbone")
        assert weights > 0 and bn_trainable
        assert all(layer.trainable for layer in backbone.layers)
        bn = [
            layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert {layer.momentum for layer in bn} == {0.9}  # statistics follow recent batches

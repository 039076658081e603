"""Grad-CAM overlays in TensorBoard: where the model looks, epoch after epoch.

:class:`GradCamCallback` explains a *fixed* set of validation images at the end of every
epoch (:func:`models.gradcam.gradcam_explain`, the last convolutional layer: ResNet50's
``backbone/conv5_block3_out``, the simple CNN's ``conv4``) and logs each image blended with
its map (:func:`models.overlay.blend`, inferno colour map) under its own tag
``gradcam/<k>_<true class>``, so TensorBoard's step slider shows the same image's map moving
as training proceeds. The images are chosen once, round-robin over the classes, so every class
is shown when the validation set has it.

Which class is explained: for a binary model the positive class (index 1) on every image, so
maps are comparable across images and epochs; for a multi-class model the predicted class.
The description of each image says the true class and the score of the explained class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf


def pick_examples(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` validation examples, round-robin over the classes (deterministic:
    the first examples of each class in order)."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if count < 0:
        raise ValueError(f"count should be >= 0. Received: count={count!r}")
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < min(count, len(labels)):
        for indices in by_class:
            if indices and len(chosen) < count:
                chosen.append(int(indices.pop(0)))
    return np.asarray(chosen, dtype=np.int64)


class GradCamCallback(keras.callbacks.Callback):
    """Logs Grad-CAM overlays of fixed validation images at the end of each epoch.

    Args:
        log_dir: directory of the event files (the run's ``tensorboard/validation``).
        inputs: validation inputs ``(N, H, W, 1)`` float32 in [0, 1].
        labels: their integer labels ``(N,)``.
        class_names: class names in label order.
        count: how many images to explain (chosen with :func:`pick_examples`); 0 = none.
        every: explain every ``every`` epochs (1 = each epoch).
        layer_name: the layer to explain; None = the model's last convolutional layer.
    """

    def __init__(
        self,
        log_dir: Path,
        inputs: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        *,
        count: int = 4,
        every: int = 1,
        layer_name: str | None = None,
    ) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every should be >= 1. Received: every={every!r}")
        self.log_dir = Path(log_dir)
        self.class_names = list(class_names)
        index = pick_examples(labels, count) if len(inputs) else np.zeros(0, np.int64)
        self.inputs = np.asarray(inputs, dtype=np.float32)[index]
        self.labels = np.asarray(labels).astype(np.int64).reshape(-1)[index]
        self.every = every
        self.layer_name = layer_name
        self.logged_epochs: list[int] = []
        self._view: keras.Model | None = None

    def _explained_model(self) -> keras.Model:
        """An uncompiled functional view of the training model: the same layers and weights
        (the maps follow training), without the compiled metrics, which Grad-CAM's graph
        re-tracing (``keras.models.clone_model``) cannot rebuild when they are custom classes."""
        if self._view is None:
            model = self.model
            self._view = keras.Model(model.inputs, model.outputs, name=f"{model.name}_gradcam")
        return self._view

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if len(self.inputs) == 0 or (epoch + 1) % self.every:
            return
        from radlens.models.gradcam import gradcam_explain
        from radlens.models.overlay import blend

        class_index = 1 if len(self.class_names) == 2 else None
        result = gradcam_explain(
            self._explained_model(),
            self.inputs,
            class_index=class_index,
            layer_name=self.layer_name,
        )
        # a writer per epoch, closed at once: an interrupted fit leaves no open event file
        writer = tf.summary.create_file_writer(str(self.log_dir))
        with writer.as_default():
            for k, (image, heatmap) in enumerate(zip(self.inputs, result.heatmaps, strict=True)):
                chosen = int(result.class_indices[k])
                true_name = self.class_names[int(self.labels[k])]
                overlay = blend(image[..., 0], heatmap)
                tf.summary.image(
                    f"gradcam/{k}_{true_name}",
                    overlay[None],
                    step=epoch,
                    description=(
                        f"true class {true_name}; Grad-CAM of {self.class_names[chosen]} "
                        f"(score {result.scores[k, chosen]:.3f}) at {result.layer}"
                    ),
                )
        writer.flush()
        writer.close()
        self.logged_epochs.append(epoch)

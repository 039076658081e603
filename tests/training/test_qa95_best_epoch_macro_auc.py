"""A multi-label run picks, stops on and restores its best epoch by the exact validation macro
AUC that train.log prints (QA round 95).

It picked by Keras' compiled ``val_auc`` (``AUC(multi_label=True)``: 500 thresholds, a finding
without validation positives counted in as 0) while train.log printed the exact macro AUC and
said "restored the best epoch (N) by validation macro AUC": on the NIH sample, epoch 2 had the
better macro AUC (0.4189 against 0.3753) and epoch 1 was restored.

The epochs here are crafted, not trained: ``fit_phase`` is replaced by a loop that drives the
run's own callback list, in its order, as ``model.fit`` does (``keras.callbacks.CallbackList``,
Keras' ``val_auc`` computed by the run's compiled metric on the epoch's scores), while the
model's validation scores are set per epoch. Epoch 2 ranks every positive above every negative
within one of Keras' threshold bins (exact macro AUC 1.0, Keras 0.375); epochs 1 and 3 are
well apart but swap one pair per finding (exact 0.88, Keras 0.66). Pneumothorax has no
validation positive.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from radlens.models.registry import ModelRegistry
from radlens.training import findings
from radlens.training.run import RunResult, train
from tests.training.data_fixtures import multilabel_csv
from tests.training.series_fixtures import read_rows, write_rows

from .conftest import tiny_config

NAMES = ["Effusion", "Infiltration", "Nodule", "Pneumothorax"]


def _data(root: Path) -> Path:
    """The multi-label fixture, with Pneumothorax on its no-finding images outside validation."""
    path = multilabel_csv(root)
    rows = read_rows(path)
    for row in rows:
        if row["findings"] == "No Finding" and row["split"] != "val":
            row["findings"] = "Pneumothorax"
    return write_rows(path, rows)


def _scores(y: np.ndarray, epoch: int) -> np.ndarray:
    """Validation scores of a crafted epoch (1-based), see the module docstring."""
    s = np.full(y.shape, 0.5, dtype=np.float32)
    for j in range(y.shape[1]):
        pos, neg = np.flatnonzero(y[:, j] == 1), np.flatnonzero(y[:, j] == 0)
        if not len(pos) or not len(neg):
            continue  # no validation positive: no exact AUC, Keras counts it as 0
        if epoch == 2:  # 0.4990 < both < 0.5010: one bin of Keras' 500 thresholds
            s[pos, j], s[neg, j] = 0.5009, 0.5003
        else:
            s[pos, j], s[neg, j] = 0.8, 0.2
            s[pos[0], j], s[neg[0], j] = 0.3, 0.4  # one pair the wrong way round
    return s


def _lookup(inputs: np.ndarray, scores: np.ndarray) -> Callable[..., np.ndarray]:
    """``model.predict`` answering the crafted scores of each validation image."""
    row_of = {image.tobytes(): i for i, image in enumerate(inputs)}

    def predict(x: Any, batch_size: Any = None, verbose: Any = 0, **_: Any) -> np.ndarray:
        return scores[[row_of[image.tobytes()] for image in np.asarray(x)]]

    return predict


def _crafted_fit(seen: dict[int, dict[str, float]]) -> Callable[..., None]:
    def fit_phase(
        model: Any,
        train_ds: Any,
        *,
        compile_fn: Callable[[], None],
        loss: Any,
        first_epoch: int,
        last_epoch: int,
        validation: tuple[np.ndarray, np.ndarray],
        callbacks: Any,
        **_: Any,
    ) -> None:
        compile_fn()
        x_val, y_val = validation
        y_val = np.asarray(y_val, dtype=np.float32)
        conv = next(layer for layer in model._flatten_layers() if "conv" in layer.name)
        listed = keras.callbacks.CallbackList(list(callbacks), add_history=True, model=model)
        model.stop_training = False
        listed.on_train_begin()
        logs: dict[str, Any] = {}
        try:
            for epoch in range(first_epoch, last_epoch):
                listed.on_epoch_begin(epoch)
                # the weights say which epoch they are: the exported model shows the restored one
                conv.bias.assign(np.full(conv.bias.shape, epoch + 1, dtype="float32"))
                scores = _scores(y_val, epoch + 1)
                object.__setattr__(model, "predict", _lookup(x_val, scores))
                compiled = findings.keras_metrics(len(NAMES))[0]
                compiled.update_state(y_val, scores)
                exact = findings.auc_summary(y_val, scores, NAMES)["macro_auc"]
                seen[epoch + 1] = {"keras": float(compiled.result()), "exact": exact}
                logs = {
                    "loss": 0.5,
                    "auc": 0.5,
                    "binary_accuracy": 0.5,
                    "val_loss": float(np.mean(np.asarray(loss(y_val, scores)))),
                    "val_auc": float(compiled.result()),  # what model.fit puts there
                    "val_binary_accuracy": float(np.mean((scores >= 0.5) == (y_val == 1))),
                }
                listed.on_epoch_end(epoch, logs)
                if model.stop_training:
                    break
            listed.on_train_end(logs)
        finally:
            if "predict" in vars(model):
                object.__delattr__(model, "predict")

    return fit_phase


@pytest.fixture(scope="module")
def crafted_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[RunResult, dict[int, dict[str, float]]]:
    tmp = tmp_path_factory.mktemp("qa95-run")
    config = tiny_config(
        _data(tmp / "data"),
        tmp,
        multi_label=True,
        label_column="findings",
        epochs_head=3,
        early_stopping_patience=1,
        tensorboard_samples=0,
        histogram_freq=0,
        min_calibration_positives=2,
    )
    seen: dict[int, dict[str, float]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("radlens.training.loop.fit_phase", _crafted_fit(seen))
        result = train(config, verbose=0)
    return result, seen


def _printed_macro(log: str) -> dict[int, float]:
    found = re.findall(r"epoch (\d+) findings: macro AUC ([0-9.]+)", log)
    return {int(epoch): float(value) for epoch, value in found}


def test_the_crafted_epochs_rank_differently(
    crafted_run: tuple[RunResult, dict[int, dict[str, float]]],
) -> None:
    """The premise: Keras' val_auc prefers epoch 1, the exact macro AUC epoch 2."""
    result, seen = crafted_run
    assert result.class_names == NAMES
    assert seen[1]["keras"] > seen[2]["keras"]
    assert seen[2]["exact"] > seen[1]["exact"]
    assert seen[2]["exact"] == 1.0


def test_the_restored_epoch_is_the_best_printed_macro_auc(
    crafted_run: tuple[RunResult, dict[int, dict[str, float]]],
) -> None:
    result, _ = crafted_run
    log = (result.run_dir / "train.log").read_text()
    printed = _printed_macro(log)
    best = max(printed, key=lambda epoch: (printed[epoch], -epoch))
    assert best == 2 and printed[2] == 1.0
    assert result.best_epoch == 2
    assert f"restored the best epoch (2) by validation macro AUC {printed[2]:.4f}" in log
    assert result.val_metrics["best_epoch"] == 2
    # the exported weights are epoch 2's (its first convolution's bias was set to 2)
    loaded = ModelRegistry(result.store).load(result.model_ref)
    conv = next(layer for layer in loaded.model._flatten_layers() if "conv" in layer.name)
    np.testing.assert_array_equal(np.asarray(conv.bias), 2.0)


def test_early_stopping_and_history_follow_the_printed_figure(
    crafted_run: tuple[RunResult, dict[int, dict[str, float]]],
) -> None:
    """Keras' figure falls after epoch 1 (patience 1 stopped the run after epoch 2); the exact
    one rises, so the run goes on, and history.csv's val_auc is the figure train.log printed."""
    result, seen = crafted_run
    printed = _printed_macro((result.run_dir / "train.log").read_text())
    with (result.run_dir / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert result.epochs_run == 3 and len(rows) == 3
    for row in rows:
        epoch = int(row["epoch"]) + 1
        assert float(row["val_auc"]) == pytest.approx(printed[epoch], abs=5e-5)
        assert float(row["val_auc"]) == pytest.approx(seen[epoch]["exact"])


class TestFindingMetricsCallback:
    """The callback itself: it writes the exact macro AUC over Keras' estimate."""

    @staticmethod
    def _callback(scores: np.ndarray, targets: np.ndarray) -> findings.FindingMetricsCallback:
        inputs = np.eye(len(scores), dtype=np.float32)
        layer = keras.layers.Dense(scores.shape[1], use_bias=False)
        model = keras.Sequential([keras.Input((len(scores),)), layer])
        layer.set_weights([scores.astype(np.float32)])  # the model answers these scores
        callback = findings.FindingMetricsCallback(None, inputs, targets, NAMES[:2])
        callback.set_model(model)
        return callback

    def test_val_auc_becomes_the_exact_macro_auc(self) -> None:
        y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
        s = np.array([[0.5009, 0.1], [0.5003, 0.9], [0.5008, 0.2], [0.5001, 0.3]])
        logs = {"val_auc": 0.25}  # Keras: one bin, and the finding without positives as 0
        self._callback(s, y).on_epoch_end(0, logs)
        assert logs["val_auc"] == pytest.approx(1.0)
        assert logs["val_macro_auc"] == pytest.approx(1.0)

    def test_no_macro_auc_leaves_no_estimate_to_select_by(self) -> None:
        y = np.zeros((3, 2), dtype=np.int64)
        logs = {"val_auc": 0.4}
        self._callback(np.full((3, 2), 0.5), y).on_epoch_end(0, logs)
        assert "val_auc" not in logs

"""An ensemble served as one model (models.ensemble), its TTA views (models.layers.ShiftView),
and Grad-CAM on it (models.gradcam): tiny random simple_cnns at 16 px, seconds in all."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from radlens.models.architectures import build_model
from radlens.models.ensemble import build_ensemble, ensemble_members
from radlens.models.errors import ConfigurationError
from radlens.models.gradcam import gradcam, gradcam_explain
from radlens.models.layers import ShiftView


def _member(seed: int, size: int = 16) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_model("simple_cnn", input_shape=(size, size, 1), num_classes=2)


def _images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 1), dtype=np.float32)


class TestShiftView:
    def test_moves_content_and_reflects_the_border(self):
        image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
        down = np.asarray(ShiftView(1, 0)(image))[0, :, :, 0]
        np.testing.assert_array_equal(down[1:], image[0, :4, :, 0])  # row i moved to i + 1
        np.testing.assert_array_equal(down[0], image[0, 1, :, 0])  # reflected, not black
        left = np.asarray(ShiftView(0, -2)(image))[0, :, :, 0]
        np.testing.assert_array_equal(left[:, :3], image[0, :, 2:, 0])

    def test_identity_and_config_round_trip(self):
        image = _images(2, 8)
        np.testing.assert_array_equal(np.asarray(ShiftView(0, 0)(image)), image)
        layer = ShiftView.from_config(ShiftView(2, -1, name="v").get_config())
        assert (layer.dy, layer.dx) == (2, -1)

    def test_refuses_a_shift_as_large_as_the_image(self):
        with pytest.raises(ValueError, match="too large"):
            ShiftView(4, 0)(_images(1, 4))
        with pytest.raises(TypeError, match="dy must be an int"):
            ShiftView(1.5, 0)  # type: ignore[arg-type]


class TestBuildEnsemble:
    def test_output_is_the_mean_of_members_over_views(self):
        members = [_member(1), _member(2)]
        x = _images(3)
        ensemble = build_ensemble(members, offsets=[(0, 0), (1, 0), (0, -1)])
        expected = np.mean(
            [
                np.asarray(m(np.asarray(ShiftView(dy, dx)(x)), training=False))
                for dy, dx in [(0, 0), (1, 0), (0, -1)]
                for m in members
            ],
            axis=0,
        )
        np.testing.assert_allclose(np.asarray(ensemble(x, training=False)), expected, atol=1e-6)
        assert [m.name for m in ensemble_members(ensemble)] == ["member_0", "member_1"]

    def test_saved_model_keras_round_trip(self, tmp_path):
        ensemble = build_ensemble([_member(1), _member(2)], offsets=[(0, 0), (1, 1)])
        path = tmp_path / "model.keras"
        ensemble.save(path)
        loaded = keras.saving.load_model(path, compile=False)
        x = _images(4)
        np.testing.assert_allclose(
            np.asarray(loaded(x, training=False)),
            np.asarray(ensemble(x, training=False)),
            atol=1e-6,
        )
        assert len(ensemble_members(loaded)) == 2

    def test_plain_model_has_no_members(self):
        assert ensemble_members(_member(1)) == []

    def test_bad_members_and_views(self):
        with pytest.raises(ConfigurationError, match="at least one member"):
            build_ensemble([])
        with pytest.raises(ConfigurationError, match="member 1"):
            build_ensemble([_member(1, 16), _member(2, 20)])
        with pytest.raises(ConfigurationError, match="unshifted"):
            build_ensemble([_member(1)], offsets=[(1, 0)])


class TestGradCamOnAnEnsemble:
    def test_map_is_the_mean_of_members_maps_and_scores_the_ensembles(self):
        members = [_member(1), _member(2)]
        ensemble = build_ensemble(members, offsets=[(0, 0), (1, 0)])
        x = _images(3, seed=5)
        result = gradcam_explain(ensemble, x, class_index=1)
        per_member = np.mean([gradcam(m, x, class_index=1) for m in members], axis=0)
        low = per_member.min(axis=(1, 2), keepdims=True)
        high = per_member.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(result.heatmaps, (per_member - low) / (high - low), atol=1e-4)
        np.testing.assert_allclose(result.scores, np.asarray(ensemble(x)), atol=1e-6)
        assert result.layer == "mean of 2 members' conv4"
        assert result.heatmaps.shape == (3, 16, 16)

    def test_default_class_is_the_ensembles_choice(self):
        ensemble = build_ensemble([_member(3), _member(4)])
        x = _images(4, seed=6)
        result = gradcam_explain(ensemble, x)
        np.testing.assert_array_equal(
            result.class_indices, np.argmax(np.asarray(ensemble(x)), axis=1)
        )

    def test_class_out_of_range(self):
        ensemble = build_ensemble([_member(3), _member(4)])
        with pytest.raises(ConfigurationError, match=r"class_index must be in 0\.\.1"):
            gradcam_explain(ensemble, _images(1), class_index=2)

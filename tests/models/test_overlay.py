"""The Grad-CAM overlay at display resolution (models.overlay): the heatmap upsampled onto
the image preprocessed at display size, beside the model input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from radlens.models.errors import ConfigurationError, InvalidImageError
from radlens.models.overlay import display_size, render_overlay, upsample_heatmap


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


class TestDisplaySize:
    def test_keeps_small_images_and_scales_large_ones_keeping_the_aspect(self) -> None:
        assert display_size(128, 96) == (128, 96)
        assert display_size(2140, 1760) == (1024, 842)
        assert display_size(1841, 1955, max_side=512) == (482, 512)

    def test_bad_values(self) -> None:
        with pytest.raises(InvalidImageError, match="at least 1x1"):
            display_size(0, 10)
        with pytest.raises(ConfigurationError, match="max_side"):
            display_size(10, 10, max_side=8)


class TestUpsampleHeatmap:
    def test_smooth_and_in_range(self) -> None:
        heat = np.zeros((4, 4), dtype=np.float32)
        heat[1, 2] = 1.0
        big = upsample_heatmap(heat, (256, 256))
        assert big.shape == (256, 256) and big.dtype == np.float32
        assert big.min() >= 0.0 and big.max() <= 1.0
        # bilinear: a gradual ramp, not 4 flat blocks (nearest would give 2 values)
        assert len(np.unique(np.round(big, 3))) > 50
        # the peak stays where the hot cell is (row 1 of 4, column 2 of 4)
        y, x = np.unravel_index(np.argmax(big), big.shape)
        assert 64 <= y < 128 and 128 <= x < 192

    def test_same_shape_is_unchanged(self) -> None:
        heat = np.random.default_rng(0).random((8, 8), dtype=np.float32)
        np.testing.assert_array_equal(upsample_heatmap(heat, (8, 8)), heat)

    def test_bad_heatmap(self) -> None:
        with pytest.raises(InvalidImageError, match="values in"):
            upsample_heatmap(np.full((4, 4), 2.0), (8, 8))


class TestRenderAtDisplayResolution:
    def test_two_panels_at_the_display_aspect(self) -> None:
        rng = np.random.default_rng(1)
        model_input = rng.random((32, 32), dtype=np.float32)
        heat = np.zeros((32, 32), dtype=np.float32)
        heat[8:16, 8:16] = 1.0
        display = rng.random((200, 400), dtype=np.float32)  # wide source
        wide = _decode(render_overlay(model_input, heat, display=display))
        assert wide.shape[1] == 1024  # two panels by default
        tall = _decode(render_overlay(model_input, heat, display=display.T.copy()))
        # the panels follow the source's aspect ratio, not the square model input's
        assert tall.shape[0] > 2 * wide.shape[0]

    def test_the_map_is_drawn_on_the_display_image(self) -> None:
        model_input = np.full((16, 16), 0.5, dtype=np.float32)
        heat = np.zeros((16, 16), dtype=np.float32)
        heat[:, 8:] = 1.0  # evidence on the right half
        display = np.full((300, 300), 0.5, dtype=np.float32)
        hot = _decode(render_overlay(model_input, heat, display=display))
        cold = _decode(render_overlay(model_input, np.zeros_like(heat), display=display))
        diff = np.abs(hot.astype(int) - cold.astype(int)).sum(axis=2)
        columns = np.flatnonzero(diff.sum(axis=0) > 0)
        width = hot.shape[1]
        # only the right panel differs (the model input panel shows no colour), and only
        # around and right of its middle (bilinear ramps over about one source pixel)
        assert columns.min() > (0.44 + 0.15) * width
        assert columns.max() < 0.87 * width

    def test_display_is_checked(self) -> None:
        with pytest.raises(InvalidImageError, match="display"):
            render_overlay(np.zeros((8, 8)), np.zeros((8, 8)), display=np.full((20, 20), np.nan))

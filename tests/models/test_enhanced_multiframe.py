"""Enhanced multi-frame DICOM and the per-frame API of radlens.models.preprocessing.

The reference values come from highdicom's own per-frame reading (``Image.get_frame``
with the modality and VOI transforms, which walks the per-frame and shared functional
groups), on pydicom-data's real Enhanced CT and on variants of it whose functional groups
differ frame by frame.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from radlens.models.errors import InvalidImageError
from radlens.models.preprocessing import (
    frame_dataset,
    frame_indices,
    modality_values,
    preprocess,
)

ENHANCED_CT = "eCT_Supplemental.dcm"
ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.1"


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(str(path))


def enhanced_ct() -> Dataset:
    return pydicom.dcmread(pydicom_file(ENHANCED_CT))


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def highdicom_frame(ds: Dataset, index: int, *, voi: bool) -> np.ndarray:
    image = hd.Image.from_dataset(copy.deepcopy(ds))
    return np.asarray(
        image.get_frame(
            index + 1,
            apply_modality_transform=True,
            apply_voi_transform=voi,
            voi_output_range=(0.0, 1.0),
        )
    )


def per_frame_variant() -> Dataset:
    """The real Enhanced CT with its rescale and window moved from the shared item into
    per-frame items that differ between its two frames (PS3.3 C.7.6.16: a functional group
    is in the shared or the per-frame sequence, never both)."""
    ds = enhanced_ct()
    shared = ds.SharedFunctionalGroupsSequence[0]
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        rescale = copy.deepcopy(shared.PixelValueTransformationSequence)
        rescale[0].RescaleSlope = [1, 2][index]
        rescale[0].RescaleIntercept = [-1024, -2000][index]
        rescale[0].RescaleType = "HU"
        window = copy.deepcopy(shared.FrameVOILUTSequence)
        window[0].WindowCenter = [40, -600][index]
        window[0].WindowWidth = [400, 1500][index]
        item.PixelValueTransformationSequence = rescale
        item.FrameVOILUTSequence = window
    del shared.PixelValueTransformationSequence
    del shared.FrameVOILUTSequence
    return ds


class TestRealEnhancedCt:
    def test_the_file_is_an_enhanced_ct_with_its_rescale_only_in_functional_groups(self):
        ds = enhanced_ct()
        assert ds.SOPClassUID == ENHANCED_CT_SOP_CLASS
        assert int(ds.NumberOfFrames) == 2
        assert "RescaleIntercept" not in ds and "WindowCenter" not in ds

    def test_frame_dataset_takes_rescale_and_window_from_the_shared_group(self):
        view = frame_dataset(enhanced_ct(), 0)
        assert float(view.RescaleIntercept) == -1024.0
        assert float(view.RescaleSlope) == 1.0
        assert (float(view.WindowCenter), float(view.WindowWidth)) == (49.0, 102.0)
        assert view.Modality == "CT"

    @pytest.mark.parametrize("index", [0, 1])
    def test_hounsfield_units_match_highdicom_per_frame(self, index: int):
        ds = enhanced_ct()
        stored = ds.pixel_array[index]
        hu = modality_values(stored, frame_dataset(ds, index))
        expected = highdicom_frame(ds, index, voi=False)
        np.testing.assert_allclose(hu, expected, atol=1e-9)
        assert hu.min() == -1024.0  # air outside the body, not the stored 0

    @pytest.mark.parametrize("index", [0, 1])
    def test_preprocessed_frame_matches_highdicom_modality_and_voi(self, index: int):
        ds = enhanced_ct()
        image = preprocess(pydicom_file(ENHANCED_CT).read_bytes(), frame=index)
        assert image.metadata.frame_index == index
        assert image.metadata.window == "file:49/102"
        np.testing.assert_allclose(image.pixels, highdicom_frame(ds, index, voi=True), atol=1e-6)

    def test_version_2_models_keep_ignoring_functional_groups(self):
        data = pydicom_file(ENHANCED_CT).read_bytes()
        old = preprocess(data, version="2")
        assert old.metadata.window == "minmax"
        stored = enhanced_ct().pixel_array[1].astype(np.float64)
        np.testing.assert_allclose(old.pixels, stored / stored.max(), atol=1e-6)
        assert not np.allclose(old.pixels, preprocess(data, version="3").pixels)

    def test_a_window_preset_applies_to_the_frame_in_hounsfield_units(self):
        ds = enhanced_ct()
        image = preprocess(to_bytes(ds), window="lung", frame=0)
        hu = highdicom_frame(ds, 0, voi=False)
        expected = np.clip((hu - (-600 - 750)) / 1500, 0, 1)
        np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


class TestPerFrameGroups:
    @pytest.mark.parametrize("index", [0, 1])
    def test_each_frame_uses_its_own_rescale_and_window(self, index: int):
        ds = per_frame_variant()
        view = frame_dataset(ds, index)
        assert float(view.RescaleIntercept) == [-1024, -2000][index]
        assert float(view.WindowCenter) == [40, -600][index]
        image = preprocess(to_bytes(ds), frame=index)
        assert image.metadata.window == ["file:40/400", "file:-600/1500"][index]
        # Hounsfield units from highdicom's per-frame reading, then the LINEAR window of
        # PS3.3 C.11.2.1.2.1 (highdicom's VOI differs from it by up to 1/width once the
        # slope is not 1; pydicom's apply_windowing, which radlens uses, is the formula)
        hu = highdicom_frame(ds, index, voi=False)
        center, width = [(40, 400), (-600, 1500)][index]
        expected = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
        np.testing.assert_allclose(image.pixels, expected, atol=1e-6)

    def test_per_frame_group_without_the_macro_falls_back_to_the_shared_one(self):
        ds = per_frame_variant()
        del ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence
        shared_window = copy.deepcopy(ds.PerFrameFunctionalGroupsSequence[0].FrameVOILUTSequence)
        shared_window[0].WindowCenter = 9000
        ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence = shared_window
        view = frame_dataset(ds, 1)
        assert float(view.RescaleIntercept) == -2000  # per-frame
        assert float(view.WindowCenter) == 9000  # shared

    def test_a_macro_in_both_sequences_is_taken_from_the_frame(self):
        """Not allowed by PS3.3 C.7.6.16, but seen: the more specific per-frame value wins
        (highdicom takes the shared one; radlens documents its choice)."""
        ds = per_frame_variant()
        shared_rescale = copy.deepcopy(ds.PerFrameFunctionalGroupsSequence[0])
        ds.SharedFunctionalGroupsSequence[
            0
        ].PixelValueTransformationSequence = shared_rescale.PixelValueTransformationSequence
        ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[
            0
        ].RescaleIntercept = 5000
        assert float(frame_dataset(ds, 1).RescaleIntercept) == -2000

    def test_a_group_macro_replaces_the_top_level_attributes(self):
        ds = enhanced_ct()
        ds.RescaleSlope, ds.RescaleIntercept = 3, 77
        ds.WindowCenter, ds.WindowWidth = 1, 2
        view = frame_dataset(ds, 0)
        assert (float(view.RescaleSlope), float(view.RescaleIntercept)) == (1.0, -1024.0)
        assert (float(view.WindowCenter), float(view.WindowWidth)) == (49.0, 102.0)
        assert ds.RescaleIntercept == 77  # the file's dataset is left as it was

    def test_without_functional_groups_the_top_level_attributes_are_used(self):
        ds = enhanced_ct()
        macros = ds.SharedFunctionalGroupsSequence[0]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        del macros.PixelValueTransformationSequence
        del macros.FrameVOILUTSequence
        assert frame_dataset(ds, 0) is ds
        image = preprocess(to_bytes(ds), frame=0)
        hu = ds.pixel_array[0].astype(np.float64) - 1024
        np.testing.assert_allclose(image.pixels, (hu - hu.min()) / np.ptp(hu), atol=1e-6)

    def test_classic_multi_frame_files_are_unchanged_by_version_3(self):
        data = pydicom_file("emri_small.dcm").read_bytes()
        np.testing.assert_array_equal(
            preprocess(data, version="2").pixels, preprocess(data, version="3").pixels
        )


class TestFrameOption:
    def test_none_keeps_the_middle_frame(self):
        image = preprocess(pydicom_file("emri_small.dcm").read_bytes())
        assert image.metadata.frame_index == 5

    @pytest.mark.parametrize("index", [0, 3, 9])
    def test_a_chosen_frame_is_the_one_decoded(self, index: int):
        data = pydicom_file("emri_small.dcm").read_bytes()
        stored = pydicom.dcmread(io.BytesIO(data)).pixel_array[index].astype(np.float64)
        image = preprocess(data, frame=index)
        assert image.metadata.frame_index == index
        np.testing.assert_allclose(
            image.pixels, (stored - stored.min()) / np.ptp(stored), atol=1e-6
        )

    def test_compressed_frames_are_chosen_too(self):
        native = preprocess(pydicom_file("emri_small.dcm").read_bytes(), frame=2).pixels
        j2k = pydicom_file("emri_small_jpeg_2k_lossless.dcm").read_bytes()
        np.testing.assert_array_equal(preprocess(j2k, frame=2).pixels, native)

    def test_an_index_beyond_the_frames_is_refused_with_the_count(self):
        data = pydicom_file("emri_small.dcm").read_bytes()
        with pytest.raises(InvalidImageError, match=r"frame index 10 is out of range: .*10 "):
            preprocess(data, frame=10)

    @pytest.mark.parametrize("frame", [-1, 1.5, "2", True])
    def test_a_frame_that_is_not_an_index_is_refused(self, frame: object):
        data = pydicom_file("emri_small.dcm").read_bytes()
        with pytest.raises(InvalidImageError, match=r"frame must be None or a non-negative"):
            preprocess(data, frame=frame)  # type: ignore[arg-type]

    def test_a_png_has_only_frame_0(self):
        buffer = io.BytesIO()
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, "PNG")
        data = buffer.getvalue()
        assert preprocess(data, frame=0).metadata.frame_index == 0
        with pytest.raises(InvalidImageError, match=r"one frame \(index 0\). Received frame=1"):
            preprocess(data, frame=1)


class TestFrameIndices:
    @pytest.mark.parametrize(
        ("frames", "limit", "expected"),
        [
            (1, 1, [0]),
            (5, 10, [0, 1, 2, 3, 4]),
            (5, None, [0, 1, 2, 3, 4]),
            (10, 10, list(range(10))),
            (10, 3, [0, 4, 8]),
            (11, 3, [1, 5, 9]),
            (10, 5, [0, 2, 4, 6, 8]),
            (7, 1, [3]),
        ],
    )
    def test_every_frame_or_every_kth_within_the_limit(
        self, frames: int, limit: int | None, expected: list[int]
    ):
        assert frame_indices(frames, limit) == expected

    @pytest.mark.parametrize("frames", [2, 7, 64, 65, 199, 200, 1000])
    @pytest.mark.parametrize("limit", [1, 3, 64])
    def test_within_limit_evenly_spaced_and_in_range(self, frames: int, limit: int):
        indices = frame_indices(frames, limit)
        assert 1 <= len(indices) <= limit
        assert all(0 <= i < frames for i in indices)
        steps = set(np.diff(indices).tolist())
        assert len(steps) <= 1
        assert indices[0] <= frames - 1 - indices[-1] <= indices[0] + 1  # centred

    @pytest.mark.parametrize(
        ("frames", "limit", "name"),
        [(0, 3, "number_of_frames"), (3, 0, "max_frames"), (2.0, 3, "number_of_frames")],
    )
    def test_bad_arguments_are_refused_by_name(self, frames: object, limit: object, name: str):
        with pytest.raises(InvalidImageError, match=rf"{name} must be a positive integer"):
            frame_indices(frames, limit)  # type: ignore[arg-type]

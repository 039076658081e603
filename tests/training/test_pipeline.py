"""radlens.training.data.pipeline.make_dataset: shapes, modes, determinism, bad files."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.models.preprocessing import preprocess
from radlens.training.data.pipeline import dataset_size, make_dataset
from radlens.training.data.sources import DataSource, SkippedFile, open_source
from tests.training.data_fixtures import png_folder, write_npz


def _batches(ds) -> list[tuple[np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.fixture()
def folder_source(tmp_path: Path) -> DataSource:
    return open_source(png_folder(tmp_path / "ds", n_per_class=5, size=40))


class TestShapesAndModes:
    def test_validation_batches_keep_order_and_match_preprocess(
        self, folder_source: DataSource
    ) -> None:
        examples = folder_source.examples
        ds = make_dataset(folder_source, examples, size=(24, 32), batch_size=4)
        batches = _batches(ds)
        assert [len(y) for _, y in batches] == [4, 4, 2]
        assert dataset_size(examples, 4) == 3
        x0, y0 = batches[0]
        assert x0.shape == (4, 24, 32, 1) and x0.dtype == np.float32
        assert y0.dtype == np.int32
        images = np.concatenate([x for x, _ in batches])
        labels = np.concatenate([y for _, y in batches])
        assert labels.tolist() == [e.label for e in examples]
        for image, ex in zip(images, examples, strict=True):
            want = preprocess(Path(ex.key).read_bytes(), size=(24, 32)).model_input()
            assert np.array_equal(image, want)
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        # a second pass is identical (no shuffling, no augmentation)
        assert all(
            np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            for a, b in zip(batches, _batches(ds), strict=True)
        )

    def test_element_spec(self, folder_source: DataSource) -> None:
        ds = make_dataset(folder_source, folder_source.examples, size=16, batch_size=2)
        x_spec, y_spec = ds.element_spec
        assert tuple(x_spec.shape) == (None, 16, 16, 1) and x_spec.dtype.name == "float32"
        assert tuple(y_spec.shape) == (None,) and y_spec.dtype.name == "int32"

    def test_drop_remainder(self, folder_source: DataSource) -> None:
        ds = make_dataset(
            folder_source, folder_source.examples, size=16, batch_size=4, drop_remainder=True
        )
        assert [len(y) for _, y in _batches(ds)] == [4, 4]

    @pytest.mark.parametrize("cache", [True, False])
    def test_training_shuffles_every_example_once(
        self, folder_source: DataSource, cache: bool
    ) -> None:
        examples = folder_source.examples
        ds = make_dataset(
            folder_source, examples, size=16, batch_size=3, training=True, seed=3, cache=cache
        )
        labels = np.concatenate([y for _, y in _batches(ds)])
        assert Counter(labels.tolist()) == Counter(e.label for e in examples)
        epochs = [np.concatenate([x for x, _ in _batches(ds)]) for _ in range(3)]
        valid = np.concatenate(
            [x for x, _ in _batches(make_dataset(folder_source, examples, size=16))]
        )
        # same images, other order (some epoch differs from the file order)
        for images in epochs:
            assert sorted(map(bytes, images)) == sorted(map(bytes, valid))
        assert any(not np.array_equal(images, valid) for images in epochs)

    def test_npz_source(self, tmp_path: Path) -> None:
        source = open_source(write_npz(tmp_path / "d.npz"), class_names=["normal", "pneumonia"])
        train = [e for e in source.examples if e.split == "train"]
        ds = make_dataset(source, train, size=32, batch_size=5, training=True, seed=0)
        batches = _batches(ds)
        assert [len(y) for _, y in batches] == [5, 5, 2]
        assert batches[0][0].shape == (5, 32, 32, 1)
        val = [e for e in source.examples if e.split == "val"]
        (images, labels), *_ = _batches(make_dataset(source, val, size=32, batch_size=6))
        assert labels.tolist() == [e.label for e in val]
        for image, ex in zip(images, val, strict=True):
            assert np.array_equal(image, source.load_pixels(ex, size=32))


class TestDeterminism:
    def test_same_seed_same_batches_different_seed_differs(self, folder_source: DataSource) -> None:
        def run(seed: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
            ds = make_dataset(
                folder_source,
                folder_source.examples,
                size=24,
                batch_size=4,
                training=True,
                augment=True,
                seed=seed,
                deterministic=True,
            )
            return [_batches(ds) for _ in range(2)]  # two epochs

        first, again, other = run(11), run(11), run(12)
        for epoch_a, epoch_b in zip(first, again, strict=True):
            for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b, strict=True):
                assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert not np.array_equal(first[0][0][0], other[0][0][0])
        assert not np.array_equal(first[0][0][0], first[1][0][0])  # epochs differ


class TestBadInput:
    def test_file_failing_at_decode_is_dropped_and_reported(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=3, size=24)
        bad = root / "abnormal" / "bad.png"
        # a valid PNG header (passes the cheap scan) with the image data cut off
        bad.write_bytes((root / "abnormal" / "abnormal_000.png").read_bytes()[:60])
        source = open_source(root)
        assert any(e.key == str(bad) for e in source.examples)
        skipped: list[SkippedFile] = []
        with caplog.at_level(logging.WARNING, logger="radlens.training.data.pipeline"):
            ds = make_dataset(source, source.examples, size=16, batch_size=10, skipped=skipped)
            ((_, labels),) = _batches(ds)
        assert len(labels) == len(source.examples) - 1
        assert [s.path for s in skipped] == [str(bad)]
        assert "truncated" in skipped[0].reason.lower() or "PNG" in skipped[0].reason
        assert "bad.png" in caplog.text

    def test_no_validation_still_safe(self, tmp_path: Path) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=2, size=24)
        (root / "normal" / "junk.dcm").write_bytes(b"\0" * 300)
        source = open_source(root, validate=False)
        assert len(source.examples) == 5
        skipped: list[SkippedFile] = []
        ds = make_dataset(
            source, source.examples, size=16, batch_size=8, skipped=skipped, cache=False
        )
        for _ in range(3):  # every epoch decodes again (no cache): reported once
            assert sum(len(y) for _, y in _batches(ds)) == 4
        assert [Path(s.path).name for s in skipped] == ["junk.dcm"]

    def test_empty_examples(self, folder_source: DataSource) -> None:
        with pytest.raises(ConfigurationError, match="no examples"):
            make_dataset(folder_source, [], size=16)

    def test_bad_size_and_batch(self, folder_source: DataSource) -> None:
        ex = folder_source.examples
        with pytest.raises(ConfigurationError, match=r"size must be positive; got \(0, 16\)"):
            make_dataset(folder_source, ex, size=(0, 16))
        with pytest.raises(ConfigurationError, match=r"batch_size must be a positive integer"):
            make_dataset(folder_source, ex, size=16, batch_size=0)
        with pytest.raises(ConfigurationError, match=r"needs a size"):
            make_dataset(folder_source, ex, size=None)  # type: ignore[arg-type]


def test_broken_real_dicom_never_stops_scan_or_pipeline(tmp_path: Path) -> None:
    """pydicom's deliberately broken files: each is skipped with a reason, at scan or decode."""
    import shutil

    from pydicom.data import get_testdata_file

    layout = {
        "good": ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"],
        # JPEG2000-embedded-sequence-delimiter.dcm: 4 codestream bytes overwritten (pydicom
        # #1140); JPEG-lossy.dcm, here until QA round 80, decodes now (its scan's Se=0 is
        # mended: tests/models/test_qa80_jpeg_scan_range.py)
        "bad": [
            "MR_small_RLE.dcm",
            "MR_truncated.dcm",
            "rtplan.dcm",
            "JPEG2000-embedded-sequence-delimiter.dcm",
        ],
    }
    for folder, names in layout.items():
        (tmp_path / folder).mkdir()
        for name in names:
            path = get_testdata_file(name)
            assert path is not None, name
            shutil.copy(path, tmp_path / folder / name)
    source = open_source(tmp_path)
    at_scan = {Path(s.path).name: s.reason for s in source.skipped}
    assert at_scan == {"rtplan.dcm": "DICOM file has no pixel data"}
    skipped: list[SkippedFile] = []
    ds = make_dataset(source, source.examples, size=16, batch_size=8, skipped=skipped)
    decoded = sum(len(y) for _, y in _batches(ds))
    at_decode = {Path(s.path).name: s.reason for s in skipped}
    bad_codestream = "JPEG2000-embedded-sequence-delimiter.dcm"
    assert set(at_decode) == {"MR_truncated.dcm", bad_codestream}
    assert "truncated" in at_decode["MR_truncated.dcm"]
    assert "1.2.840.10008.1.2.4.91" in at_decode[bad_codestream]  # names the syntax
    assert decoded == 4

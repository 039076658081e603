"""QA round 24: malformed inputs to training's library entry points are typed refusals
(``ConfigurationError``, one line at the CLI) that leave nothing behind, never a bare
Python exception or a half-written run directory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from radlens.models.errors import ConfigurationError
from radlens.training.config import TrainConfig
from radlens.training.data.demo import write_demo_dataset
from radlens.training.data.sources import open_source
from tests.training.conftest import tiny_config


def test_config_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(b"data: \xc6\xff\xfe binary\n")
    with pytest.raises(ConfigurationError, match="not UTF-8 text"):
        TrainConfig.load(path)


def test_npy_array_saved_under_an_npz_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "images.npz"
    with path.open("wb") as f:  # np.save writes one .npy array, not an npz archive
        np.save(f, np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ConfigurationError, match="not an npz archive"):
        open_source(path)


@pytest.mark.parametrize("content", [b"x\n", b"DICM" * 40, b""])
def test_file_that_is_not_an_npz_gets_no_advice_to_unpickle(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError) as info:
        open_source(path)
    message = str(info.value)
    assert "not an npz archive" in message
    assert "pickle" not in message


def test_npz_archive_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "ok.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(
        path,
        train_images=rng.integers(0, 255, (8, 8, 8), dtype=np.uint8),
        train_labels=np.arange(8) % 2,
    )
    assert len(open_source(path).examples) == 8


def test_demo_data_negative_seed_is_refused_before_the_folder_exists(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with pytest.raises(ConfigurationError, match="seed must be an integer >= 0"):
        write_demo_dataset(out, n_per_class=4, size=32, seed=-1)
    assert not out.exists()


def _runs_written(tmp: Path) -> list[Path]:
    runs = tmp / "runs"
    return sorted(runs.iterdir()) if runs.exists() else []


def test_store_that_is_a_file_stops_the_run_before_it_trains(
    tiny_demo_data: Path, tmp_path: Path
) -> None:
    from radlens.training.run import train

    store = tmp_path / "store.txt"
    store.write_text("not a folder\n")
    config = tiny_config(
        tiny_demo_data,
        tmp_path,
        store=str(store / "sub"),
        epochs_head=1,
        openvino=False,
        ood_method="none",
    )
    with pytest.raises(ConfigurationError, match="is a file"):
        train(config, verbose=0)
    assert _runs_written(tmp_path) == []  # no run directory, no checkpoints
    assert store.read_text() == "not a folder\n"


def test_store_without_write_access_stops_the_run_before_it_trains(
    tiny_demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.training.run import train

    store = tmp_path / "readonly-store"
    store.mkdir()
    real_access = os.access

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)) == store:
            return False  # as for a read-only mount (root passes every permission check)
        return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    config = tiny_config(
        tiny_demo_data, tmp_path, store=str(store), epochs_head=1, openvino=False, ood_method="none"
    )
    with pytest.raises(ConfigurationError, match="not writable"):
        train(config, verbose=0)
    assert _runs_written(tmp_path) == []
    assert list(store.iterdir()) == []


def test_csv_with_a_field_over_the_csv_limit(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("path,label\n" + "x" * 200_000 + ",normal\n")
    with pytest.raises(ConfigurationError, match="cannot be read as CSV"):
        open_source(path)


def test_csv_path_with_a_nul_character(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text('path,label\n"a\x00b.png",normal\nc.png,abnormal\n')
    with pytest.raises(ConfigurationError, match="line 2 holds a NUL character"):
        open_source(path)


@pytest.mark.parametrize("field", ["store", "data", "runs_dir", "name"])
def test_config_string_with_a_nul_character(tmp_path: Path, field: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f'{field}: "x\\0y"\n')  # YAML's escape for NUL
    with pytest.raises(ConfigurationError, match="without NUL characters"):
        TrainConfig.load(path)


def test_csv_whose_files_are_all_missing_says_why(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("path,label\nnope.dcm,normal\nnope2.dcm,abnormal\n")
    with pytest.raises(ConfigurationError) as info:
        open_source(path)
    message = str(info.value)
    # QA 103: not "has only []" and the first skip's reason, but what is wrong and what to do
    assert "none of the 2 path(s) in " in message and "(2 of 2 rows' files are missing)" in message
    assert "paths are read relative to the CSV's folder" in message
    assert "e.g. 'nope.dcm' as " in message


def test_class_folder_without_a_usable_image_says_why(tmp_path: Path) -> None:
    from tests.training.data_fixtures import png_folder

    root = png_folder(tmp_path / "data", n_per_class=2)
    for image in (root / "abnormal").rglob("*.png"):
        image.unlink()
    (root / "abnormal" / "notes.txt").write_text("not an image\n")
    with pytest.raises(ConfigurationError) as info:
        open_source(root)
    message = str(info.value)
    assert "contains no readable DICOM/PNG/JPEG image; 1 file(s) skipped, e.g. " in message
    assert "notes.txt: not a DICOM, PNG or JPEG file" in message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 10**23}, "batch_size must be at most 65536"),
        ({"seed": 10**23}, "seed must be at most 4294967295"),
        ({"seed": 2**32}, "seed must be at most 4294967295"),
        ({"split_seed": 2**32}, "split_seed must be from 0 to 4294967295"),
    ],
)
def test_numbers_beyond_what_tensorflow_takes(values: dict[str, int], message: str) -> None:
    # both used to pass validation, then failed inside TensorFlow after the run folder existed
    with pytest.raises(ConfigurationError, match=message):
        TrainConfig.from_dict({"data": "x", **values})

"""Messy training folders, as an ML engineer's own exports are (found by QA round 8, each
case one that passed or crashed before): a class whose every image is unusable, multi-label
folders of DICOMs, one file on two manifest rows, names that are not UTF-8, linked and stray
files, a named pipe, npz arrays of the wrong kind, and `radlens data-check` splitting
differently from `radlens train`."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import (
    DataSource,
    Example,
    MultiLabelSpec,
    check_decodable,
    drop_undecodable,
    open_data,
    open_source,
)
from tests.conftest import segmentation_of_ct_small
from tests.training.conftest import tiny_config
from tests.training.data_fixtures import png_folder, random_gray, write_csv, write_npz, write_png


def _blank_pngs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (32, 32), color=0).save(folder / f"blank_{i}.png")


def _dicom(path: Path, patient: str, seed: int) -> Path:
    """pydicom's CT_small with its own instance, patient and noise."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientID = patient
    ds.PatientName = f"Messy^{patient}"
    ds.SOPInstanceUID = f"2.25.{10**12 + seed}"
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 1000, (ds.Rows, ds.Columns), dtype=np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


class TestEveryImageOfAClassUnusable:
    """A class of blank images passed the header checks: train exported a model with
    "auc missing" and exit 0, data-check printed `class abnormal: 0` with exit 0."""

    @staticmethod
    def data(tmp_path: Path) -> Path:
        root = png_folder(tmp_path / "ds", n_per_class=8, classes=("normal",))
        _blank_pngs(root / "abnormal", 8)
        return root

    def test_check_decodable_names_the_class_and_a_reason(self, tmp_path: Path) -> None:
        source = open_source(self.data(tmp_path))
        with pytest.raises(ConfigurationError, match=r"class 'abnormal' .* all 8 were skipped"):
            check_decodable(source, drop_undecodable(source))

    def test_data_check_exits_2_after_listing_the_skipped_files(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["data-check", str(self.data(tmp_path))]) == 2
        captured = capsys.readouterr()
        assert captured.out.count("skipped ") == 8 and "blank_0.png" in captured.out
        assert "class 'abnormal'" in captured.err and "Traceback" not in captured.err

    def test_train_refuses_before_writing_a_run(self, tmp_path: Path) -> None:
        from radlens.training.run import train

        config = tiny_config(self.data(tmp_path), tmp_path)
        with pytest.raises(ConfigurationError, match="class 'abnormal'"):
            train(config, verbose=0)
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
        assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())

    def test_a_series_with_no_slice_that_decodes_is_named(self, tmp_path: Path) -> None:
        good = [Example(f"{tmp_path}/{i}.png", i % 2, series=f"s{i}") for i in range(4)]
        lost = [Example(f"{tmp_path}/lost{i}.png", 0, series="labels.csv:9") for i in range(2)]
        before = DataSource(["normal", "abnormal"], good + lost, "csv", tmp_path)
        after = DataSource(["normal", "abnormal"], good, "csv", tmp_path)
        with pytest.raises(ConfigurationError, match=r"series labels.csv:9 has no slice"):
            check_decodable(before, after)


class TestMultiLabelFolder:
    @staticmethod
    def data(tmp_path: Path) -> Path:
        root = tmp_path / "ml"
        seed = 0
        for finding in ("No Finding", "Effusion", "Infiltration"):
            for patient in ("P1", "P2", "P3"):
                seed += 1
                _dicom(root / finding / f"{patient}_{seed}.dcm", patient, seed)
        return root

    def test_dicom_patients_are_read_from_the_headers(self, tmp_path: Path) -> None:
        """They were not: multi-label folders were split image by image, 4 patients in
        train, val and test at once, and the leakage check passed."""
        source = open_source(self.data(tmp_path), multi_label=MultiLabelSpec())
        assert source.patient_source == "PatientID/StudyInstanceUID"
        assert len({e.patient_id for e in source.examples}) == 3
        assert all(e.patient_id and "P1" not in e.patient_id for e in source.examples)

    def test_a_relative_folder_path_finds_its_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """It looked for ml/ml/...: 'file does not exist' for every file."""
        self.data(tmp_path)
        monkeypatch.chdir(tmp_path)
        source = open_source(Path("ml"), multi_label=MultiLabelSpec())
        assert len(source.examples) == 9 and not source.skipped


def test_one_file_on_two_manifest_rows_is_refused(tmp_path: Path) -> None:
    """It went to train labelled 0 and to test labelled 1; the leakage check passed."""
    root = png_folder(tmp_path / "ds", n_per_class=4)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    rows = [{"path": str(f), "label": f.parts[0], "split": ""} for f in files]
    rows.append({"path": str(files[1]), "label": "normal", "split": "test"})
    csv_path = write_csv(root / "labels.csv", rows)
    with pytest.raises(ConfigurationError, match=r"listed twice in labels\.csv \(lines 3 and 10\)"):
        open_data(root)
    rows[-1] = {"path": f"./{files[2]}", "label": "abnormal", "split": ""}  # another spelling
    write_csv(csv_path, rows)
    with pytest.raises(ConfigurationError, match="listed twice"):
        open_data(root)


class TestFolderWalk:
    def test_a_name_that_is_not_utf8_is_skipped_with_its_reason(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """train stopped with 'internal error: UnicodeEncodeError' writing splits.csv."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        source_png = next((root / "normal").glob("*.png"))
        name = os.fsencode(root / "normal") + b"/bad\xe9name.png"
        with open(name, "wb") as fh:
            fh.write(source_png.read_bytes())
        source = open_source(root)
        assert [Path(s.path).name for s in source.skipped] == ["bad\\udce9name.png"]
        assert "not UTF-8" in source.skipped[0].reason
        assert main(["data-check", str(root)]) == 0
        assert "bad\\udce9name.png: its name is not UTF-8" in capsys.readouterr().out

    def test_linked_folders_are_read_once_and_stray_files_are_named(self, tmp_path: Path) -> None:
        """A linked sub-folder was left out without a word, and so were files at the root."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        elsewhere = png_folder(tmp_path / "elsewhere", n_per_class=2, classes=("x",), seed=5)
        (root / "normal" / "linked").symlink_to(elsewhere / "x", target_is_directory=True)
        (root / "normal" / "linked_again").symlink_to(elsewhere / "x", target_is_directory=True)
        (root / "abnormal" / "loop").symlink_to(root / "abnormal", target_is_directory=True)
        (root / "stray.png").write_bytes(next((root / "normal").glob("*.png")).read_bytes())
        source = open_source(root)
        assert source.class_counts() == {"normal": 6, "abnormal": 4}
        assert [(Path(s.path).name, s.reason) for s in source.skipped] == [
            ("stray.png", "not in a class sub-folder (each image must sit in its class's folder)")
        ]

    def test_a_file_linked_into_another_class_is_refused(self, tmp_path: Path) -> None:
        """QA round 9: the same files were read as normal and as abnormal (and split into
        train and test), the per-class walk not knowing the other class's files."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        (root / "abnormal" / "from_normal").symlink_to(root / "normal", target_is_directory=True)
        with pytest.raises(ConfigurationError, match=r"one file \(a link\) in two classes"):
            open_source(root)

    def test_a_linked_file_in_its_own_class_is_read_once(self, tmp_path: Path) -> None:
        """QA round 9: each link was a second image, free to land in another split."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        for png in sorted((root / "abnormal").glob("*.png")):
            (png.parent / f"L_{png.name}").symlink_to(png)
        source = open_source(root)
        assert source.class_counts() == {"normal": 4, "abnormal": 4}
        assert all("reached again through a link" in s.reason for s in source.skipped)
        assert len(source.skipped) == 2  # abnormal_000 and _002 (the others are one deeper)

    def test_a_folder_that_cannot_be_listed_is_named(self, tmp_path: Path) -> None:
        """QA round 9: files 900 folders down (past PATH_MAX) were left out without a word."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        deep = root / "normal"
        os.chdir(deep)
        try:
            for _ in range(300):  # each step relative, so the path can outgrow PATH_MAX
                os.mkdir("d" * 20)
                os.chdir("d" * 20)
        finally:
            os.chdir(tmp_path)
        source = open_source(root)
        assert source.class_counts() == {"normal": 4, "abnormal": 4}
        assert [s.reason.split(" (")[0] for s in source.skipped] == ["folder cannot be read"]

    @pytest.mark.timeout(60)
    def test_a_named_pipe_is_skipped_not_opened(self, tmp_path: Path) -> None:
        """data-check and train waited on it forever."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        os.mkfifo(root / "normal" / "pipe.dcm")
        source = open_source(root)
        assert [Path(s.path).name for s in source.skipped] == ["pipe.dcm"]
        assert "named pipe" in source.skipped[0].reason


class TestNpz:
    def test_an_object_array_is_refused_without_unpickling(self, tmp_path: Path) -> None:
        path = tmp_path / "objects.npz"
        images = np.empty(4, dtype=object)
        images[:] = [np.zeros((8, 8), np.uint8)] * 4
        np.savez(path, train_images=images, train_labels=np.array([0, 1, 0, 1]))
        with pytest.raises(ConfigurationError, match=r"cannot read train_images .*\(Object arrays"):
            open_source(path)

    @pytest.mark.parametrize("dtype", [np.float32, np.int16])
    def test_images_that_are_not_stored_pixels_are_refused_by_name(
        self, tmp_path: Path, dtype: type
    ) -> None:
        """data-check counted them; train failed later with a message naming no array."""
        path = write_npz(tmp_path / "x.npz", n={"train": 8})
        with np.load(path) as data:
            arrays = dict(data)
        arrays["train_images"] = arrays["train_images"].astype(dtype)
        np.savez(path, **arrays)
        with pytest.raises(ConfigurationError, match=f"train_images .* holds {np.dtype(dtype)}"):
            open_source(path)

    def test_fractional_labels_are_refused_whole_float_ones_kept(self, tmp_path: Path) -> None:
        """0.5 and 1.5 were cut to 0 and 1 without a word."""
        path = write_npz(tmp_path / "x.npz", n={"train": 8})
        with np.load(path) as data:
            arrays = dict(data)
        labels = arrays["train_labels"].astype(np.float64)
        np.savez(path, train_images=arrays["train_images"], train_labels=labels + 0.5)
        with pytest.raises(ConfigurationError, match="must be whole class indices"):
            open_source(path)
        np.savez(path, train_images=arrays["train_images"], train_labels=labels)
        assert len(open_source(path).examples) == 8


class TestDataCheckSplitsAsTrainDoes:
    def test_the_default_seed_is_trains(self) -> None:
        """data-check split with seed 0, train with 1234: 10 of 40 files differed."""
        from radlens.cli.data_cmds import DEFAULT_SEED
        from radlens.training.config import TrainConfig

        assert TrainConfig().seed == DEFAULT_SEED

    def test_undecodable_files_leave_before_the_split(self, tmp_path: Path) -> None:
        """train split before dropping them, data-check after: 5 of 42 files differed."""
        from radlens.training.data.sources import split_source
        from radlens.training.run import _RunData

        root = png_folder(tmp_path / "ds", n_per_class=12)
        _blank_pngs(root / "abnormal", 3)
        run = _RunData.open(tiny_config(root, tmp_path, val_fraction=0.25, test_fraction=0.25))
        assert len(run.skipped) == 3 and len(run.source.examples) == 24
        checked = drop_undecodable(open_data(root))
        assert split_source(checked, val_fraction=0.25, test_fraction=0.25, seed=1234) == (
            run.splits
        )

    def test_a_folders_labels_csv_is_read_as_train_reads_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """data-check read the class folders, train the labels.csv beside them."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
        write_csv(
            root / "labels.csv",
            [{"path": str(f), "label": "x" if i < 2 else "y"} for i, f in enumerate(files)],
        )
        assert main(["data-check", str(root)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("csv source") and "class x: 2" in out and "class y: 6" in out


class TestSkipReasons:
    def test_an_rt_dose_grid_is_not_trained_on(self, tmp_path: Path) -> None:
        """It has pixels, so it was trained on (and the manifest said the model knew RTDOSE),
        though the service refuses it for every model of stated use."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        (root / "normal" / "dose.dcm").write_bytes(
            Path(str(get_testdata_file("rtdose.dcm"))).read_bytes()
        )
        skipped = {Path(s.path).name: s.reason for s in open_source(root).skipped}
        assert (
            set(skipped) == {"dose.dcm"} and "1.2.840.10008.5.1.4.1.1.481.2" in skipped["dose.dcm"]
        )

    def test_a_non_conforming_header_value_is_not_quoted_in_the_log(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """pydicom logs a value it cannot validate, quoting it, as training reads headers."""
        import warnings

        root = png_folder(tmp_path / "ds", n_per_class=4)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds.PatientID = "SMITH-19610203"
            ds.PatientName = "Smith^John" + "n" * 70
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.SMITH.19610203"
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.SMITH.19610203.1"
        ds.save_as(root / "normal" / "ct.dcm")
        caplog.clear()
        with caplog.at_level("DEBUG"):
            assert main(["data-check", str(root)]) in (0, 2)
        assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == []

    def test_a_segmentation_is_not_trained_on(self, tmp_path: Path) -> None:
        """A SEG has pixels (a mask) but no picture; its Modality was not known either."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        (root / "normal" / "mask.dcm").write_bytes(segmentation_of_ct_small())
        skipped = {Path(s.path).name: s.reason for s in open_source(root).skipped}
        assert set(skipped) == {"mask.dcm"}
        assert skipped["mask.dcm"].startswith("a segmentation, registration"), skipped

    def test_a_file_cut_before_its_pixels_says_truncated(self, tmp_path: Path) -> None:
        """It said "DICOM file has no pixel data"; `radlens inspect` said truncated."""
        root = png_folder(tmp_path / "ds", n_per_class=4)
        cut = Path(str(get_testdata_file("emri_small_jpeg_2k_lossless_too_short.dcm")))
        (root / "normal" / "cut.dcm").write_bytes(cut.read_bytes())
        (root / "normal" / "plan.dcm").write_bytes(
            Path(str(get_testdata_file("rtplan.dcm"))).read_bytes()
        )
        skipped = {Path(s.path).name: s.reason for s in open_source(root).skipped}
        assert skipped["cut.dcm"].startswith("The file is truncated")
        assert skipped["plan.dcm"] == "DICOM file has no pixel data"


def test_no_finding_spelled_otherwise_is_not_a_finding(tmp_path: Path) -> None:
    """QA round 9: "no finding" became a finding beside the no-finding name "No Finding"."""
    root = png_folder(tmp_path / "ds", n_per_class=3, classes=("Effusion", "Nodule", "x"))
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    cells = ["Effusion", "Nodule", "no finding"]
    rows = [{"path": str(f), "label": cells[i % 3]} for i, f in enumerate(files)]
    path = write_csv(root / "labels.csv", rows)
    with pytest.raises(ConfigurationError, match=r"\['No Finding', 'no finding'\]"):
        open_source(path, multi_label=MultiLabelSpec())


@pytest.mark.parametrize("layout", ["folder", "csv", "findings"])
def test_labels_that_differ_only_in_case_are_refused(tmp_path: Path, layout: str) -> None:
    """ "Normal" and "normal" became two classes without a word."""
    root = png_folder(tmp_path / "ds", n_per_class=4, classes=("normal", "Normal", "abnormal"))
    if layout == "folder":
        path, spec = root, None
    else:
        files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
        rows = [{"path": str(f), "label": f.parts[0]} for f in files]
        path = write_csv(tmp_path / "labels.csv", rows)
        spec = MultiLabelSpec() if layout == "findings" else None
        for row in rows:
            row["path"] = str(root / row["path"])
        write_csv(path, rows)
    with pytest.raises(ConfigurationError, match=r"\['Normal', 'normal'\] .* differ only in case"):
        open_source(path, multi_label=spec)


def test_evaluate_rebuilds_the_split_of_a_run_that_left_files_out(tmp_path: Path) -> None:
    """Training now splits only what decodes; evaluate must split the same way, or its
    "test" split would hold images the model was trained on."""
    from radlens.models.registry import ModelRegistry
    from radlens.training.evaluate import evaluate, select_split
    from radlens.training.run import train

    root = png_folder(tmp_path / "ds", n_per_class=16)
    _blank_pngs(root / "abnormal", 5)
    _blank_pngs(root / "normal" / "more", 4)
    # the split and what evaluate rebuilds are checked: no TensorBoard extras, no OpenVINO
    config = tiny_config(
        root,
        tmp_path,
        epochs_head=1,
        val_fraction=0.25,
        test_fraction=0.25,
        histogram_freq=0,
        tensorboard_samples=0,
        openvino=False,
    )
    run = train(config, verbose=0)
    assert len(run.skipped) == 9 and run.split["decode_checked"] is True
    with (run.run_dir / "splits.csv").open() as fh:
        trained_test = sorted(r["key"] for r in csv.DictReader(fh) if r["split"] == "test")
    manifest = ModelRegistry(run.store).load(run.model_ref).manifest
    rebuilt = select_split(open_data(root), "test", manifest.training_config)
    assert sorted(e.key for e in rebuilt) == trained_test
    test = evaluate(run.model_ref, root, split="test", store=run.store)
    assert test["n"] == run.split_sizes["test"] == len(trained_test)
    assert test["skipped_files"] == 9

    # QA round 9: data changed since training (here: a file added) rebuilt another split
    # without a word, its "test" holding images the model was trained on
    write_png(root / "normal" / "added.png", random_gray(np.random.default_rng(7)))
    with pytest.raises(ConfigurationError, match="is not the training run's"):
        evaluate(run.model_ref, root, split="test", store=run.store)
    assert evaluate(run.model_ref, root, split="all", store=run.store)["n"] == 33


def test_blank_npz_images_are_skipped_and_a_class_of_them_refused(tmp_path: Path) -> None:
    """QA round 9: an npz of all-zero images trained and exported with exit 0."""
    path = write_npz(tmp_path / "x.npz", n={"train": 8, "val": 4})
    with np.load(path) as data:
        arrays = dict(data)
    arrays["train_images"][0] = 0  # one blank image of class 0
    np.savez(path, **arrays)
    source = drop_undecodable(open_source(path))
    assert [s.path for s in source.skipped] == ["npz:train:0"]
    assert "every pixel of the 28x28 array npz:train:0 has the same value" in str(source.skipped[0])
    arrays["train_images"][1::2] = 7  # every class-1 image blank
    arrays["val_images"][1::2] = 7
    np.savez(path, **arrays)
    opened = open_source(path)
    with pytest.raises(ConfigurationError, match=r"class 'class_1' .* all 6 were skipped"):
        check_decodable(opened, drop_undecodable(opened))


def test_a_given_test_split_added_after_training_is_evaluated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read, not rebuilt: a split given whole (npz keys) is not refused for sizes that differ
    from the run's record when the data gained a test split."""
    from radlens.training.evaluate import evaluate
    from radlens.training.run import train

    trainval = write_npz(tmp_path / "trainval.npz", n={"train": 24, "val": 12})
    # what evaluate reads is checked: no TensorBoard extras, no OpenVINO conversion
    config = tiny_config(
        trainval,
        tmp_path,
        epochs_head=1,
        histogram_freq=0,
        tensorboard_samples=0,
        openvino=False,
    )
    run = train(config, verbose=0)
    with np.load(trainval) as data:
        arrays = dict(data)
    with np.load(write_npz(tmp_path / "t.npz", n={"test": 10}, seed=3)) as data:
        arrays.update(data)
    np.savez(tmp_path / "all.npz", **arrays)
    result = evaluate(run.model_ref, tmp_path / "all.npz", split="test", store=run.store)
    assert result["n"] == 10

    # a split holding one class only: AUC is undefined, and evaluate says why (it printed
    # accuracy alone before, without a word)
    normal = arrays["test_labels"].ravel() == 0
    arrays["test_images"], arrays["test_labels"] = (
        arrays["test_images"][normal],
        arrays["test_labels"][normal],
    )
    np.savez(tmp_path / "normals.npz", **arrays)
    command = ["evaluate", "--model", run.model_ref, "--data", str(tmp_path / "normals.npz")]
    assert main([*command, "--split", "test", "--store", str(run.store)]) == 0
    out = capsys.readouterr().out
    assert "n: 5" in out and "auc=" not in out
    assert "note: every scored image is 'class_0', so AUC and the rates of the other" in out

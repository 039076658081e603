"""radlens.training.data.sources: folder / CSV / npz sources, splits and the leakage report."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radlens.models.errors import ConfigurationError
from radlens.models.preprocessing import preprocess, preprocess_array
from radlens.training.data.sources import (
    DataSource,
    Example,
    hash_patient_id,
    leakage_report,
    open_source,
    order_class_names,
    sniff_format,
    split_source,
)
from tests.conftest import shared_data_path
from tests.training.data_fixtures import png_bytes, png_folder, random_gray, write_csv, write_npz

# --- folder -----------------------------------------------------------------------------


class TestFolderSource:
    def test_classes_files_at_any_depth_negative_first(self, tmp_path: Path) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=4)
        source = open_source(root)
        assert source.kind == "folder"
        assert source.class_names == ["normal", "abnormal"]  # class 1 = positive
        assert source.class_counts() == {"normal": 4, "abnormal": 4}
        assert any("/deep/" in e.key for e in source.examples)
        for ex in source.examples:
            assert Path(ex.key).parent.name in ("deep", source.class_names[ex.label])
            assert source.class_names[ex.label] in Path(ex.key).parts
        assert source.skipped == []

    def test_other_names_are_sorted(self, tmp_path: Path) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=2, classes=("b_cat", "a_cat", "c_cat"))
        assert open_source(root).class_names == ["a_cat", "b_cat", "c_cat"]
        assert order_class_names(["1_abnormal", "0_normal"]) == ["0_normal", "1_abnormal"]
        assert order_class_names(["pneumonia", "NORMAL"]) == ["NORMAL", "pneumonia"]

    def test_explicit_class_order(self, tmp_path: Path) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=2)
        source = open_source(root, class_names=["abnormal", "normal"])
        assert source.class_names == ["abnormal", "normal"]
        for ex in source.examples:
            assert source.class_names[ex.label] in Path(ex.key).parts
        with pytest.raises(ConfigurationError, match=r"must name exactly the sub-folders"):
            open_source(root, class_names=["normal", "other"])

    def test_unreadable_files_are_reported_and_skipped(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=3)
        (root / "normal" / "notes.txt").write_text("not an image")
        (root / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
        (root / "abnormal" / "fake.dcm").write_bytes(b"hello, I am not DICOM" * 20)
        (root / "abnormal" / ".DS_Store").write_bytes(b"\0\1\2")  # hidden: ignored
        hidden_dir = root / "abnormal" / ".cache"
        hidden_dir.mkdir()
        (hidden_dir / "x.png").write_bytes(b"junk")
        rng = np.random.default_rng(1)
        (root / "abnormal" / "no_extension").write_bytes(png_bytes(random_gray(rng)))

        with caplog.at_level(logging.WARNING, logger="radlens.training.data.sources"):
            source = open_source(root)

        skipped = {Path(s.path).name: s.reason for s in source.skipped}
        assert set(skipped) == {"notes.txt", "broken.png", "fake.dcm"}
        assert "not a DICOM, PNG or JPEG" in skipped["notes.txt"]
        assert "PNG" in skipped["broken.png"]
        assert "not a DICOM file" in skipped["fake.dcm"]  # read as an empty dataset by force
        assert source.class_counts() == {"normal": 3, "abnormal": 4}  # + no_extension
        assert "3 file(s) skipped" in caplog.text
        assert "notes.txt" in caplog.text

    def test_a_dcm_name_on_an_empty_or_text_file_is_not_a_dicom_file(self, tmp_path: Path) -> None:
        """Found by fuzzing: both were skipped as "DICOM file has no pixel data"."""
        root = png_folder(tmp_path / "ds", n_per_class=2)
        (root / "normal" / "zero.dcm").write_bytes(b"")
        (root / "normal" / "x.dcm").write_bytes(b"this is not dicom")
        skipped = {Path(s.path).name: s.reason for s in open_source(root).skipped}
        assert skipped["zero.dcm"] == (
            "not a DICOM file (0 bytes, empty: a copy or export that did not finish?)"
        )
        # its first bytes are text (a report's first line may name the patient): not shown
        assert skipped["x.dcm"] == "not a DICOM file (17 bytes, starts with text, not shown)"

    def test_dicom_without_pixel_data_is_skipped(self, tmp_path: Path) -> None:
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        root = png_folder(tmp_path / "ds", n_per_class=2)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # basic text SR
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "SR"
        ds.save_as(root / "normal" / "report.dcm", enforce_file_format=True)
        assert pydicom.dcmread(root / "normal" / "report.dcm").Modality == "SR"

        source = open_source(root)
        assert [(Path(s.path).name, s.reason) for s in source.skipped] == [
            ("report.dcm", "DICOM file has no pixel data")
        ]

    def test_empty_class_folder(self, tmp_path: Path) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=2)
        (root / "other").mkdir()
        with pytest.raises(ConfigurationError, match=r"class folder .*other.* no readable"):
            open_source(root)

    def test_class_folder_with_only_junk_counts_as_empty(self, tmp_path: Path) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=2)
        (root / "other").mkdir()
        (root / "other" / "readme.md").write_text("# nothing")
        with pytest.raises(ConfigurationError, match=r"no readable DICOM/PNG/JPEG"):
            open_source(root)

    def test_single_class(self, tmp_path: Path) -> None:
        root = png_folder(tmp_path / "ds", n_per_class=2, classes=("normal",))
        with pytest.raises(ConfigurationError, match=r"at least 2 class sub-folders.*'normal'"):
            open_source(root)

    def test_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigurationError, match=r"does not exist: '.*nowhere'"):
            open_source(tmp_path / "nowhere")

    def test_unsupported_file_kind(self, tmp_path: Path) -> None:
        (tmp_path / "data.json").write_text("{}")
        with pytest.raises(ConfigurationError, match=r"folder, a .csv manifest or a .npz.*json"):
            open_source(tmp_path / "data.json")

    def test_load_pixels_is_preprocess(self, tmp_path: Path) -> None:
        source = open_source(png_folder(tmp_path / "ds", n_per_class=2, size=40))
        ex = source.examples[0]
        got = source.load_pixels(ex, size=24)
        want = preprocess(Path(ex.key).read_bytes(), size=(24, 24)).model_input()
        assert got.shape == (24, 24, 1) and got.dtype == np.float32
        assert np.array_equal(got, want)

    @pytest.mark.parametrize("validate", [True, False])
    def test_preamble_less_dicom_is_found_as_the_service_accepts_it(
        self, tmp_path: Path, validate: bool
    ) -> None:
        import pydicom
        from pydicom.data import get_testdata_file
        from pydicom.dataset import FileMetaDataset

        root = png_folder(tmp_path / "ds", n_per_class=2)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.preamble = None  # no 128-byte preamble, no "DICM", no file meta: the bare dataset
        ds.file_meta = FileMetaDataset()
        bare = root / "abnormal" / "bare_ct"  # no extension: recognised by content only
        ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
        data = bare.read_bytes()
        assert data[128:132] != b"DICM"
        want = preprocess(data, size=(24, 24)).model_input()  # the service accepts it

        source = open_source(root, validate=validate)

        assert source.skipped == []
        found = [e for e in source.examples if Path(e.key).name == "bare_ct"]
        assert [source.class_names[e.label] for e in found] == ["abnormal"]
        assert np.array_equal(source.load_pixels(found[0], size=24), want)


def test_sniff_format() -> None:
    assert sniff_format(b"\0" * 128 + b"DICM") == "dicom"
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"GIF89a") is None
    assert sniff_format(b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO_IR 100") == "dicom"  # no preamble


# --- CSV --------------------------------------------------------------------------------


def _csv_dataset(tmp_path: Path, n: int = 6) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    from tests.training.data_fixtures import write_png

    rows: list[dict[str, object]] = []
    for i in range(n):
        label = "abnormal" if i % 2 else "normal"
        rel = f"img/{i}.png"
        write_png(tmp_path / rel, random_gray(rng, 16, bright=i % 2 == 1))
        rows.append({"path": rel, "label": label, "patient_id": f"P{i // 2}", "split": ""})
    return rows


class TestCsvSource:
    def test_names_patients_and_relative_paths(self, tmp_path: Path) -> None:
        rows = _csv_dataset(tmp_path)
        rows[0]["split"] = "valid"
        source = open_source(write_csv(tmp_path / "labels.csv", rows))
        assert source.kind == "csv"
        assert source.class_names == ["normal", "abnormal"]
        assert [e.label for e in source.examples] == [0, 1, 0, 1, 0, 1]
        # hashed at read time: the raw id never leaves the reader
        assert source.examples[0].patient_id == hash_patient_id("PatientID:P0")
        assert source.examples[0].patient_id != "P0"
        assert source.examples[0].patient_id == source.examples[1].patient_id
        assert source.examples[0].split == "val"
        assert source.examples[1].split is None
        assert all(Path(e.key).is_file() for e in source.examples)

    def test_integer_labels_named_by_label_name(self, tmp_path: Path) -> None:
        rows = _csv_dataset(tmp_path)
        for r in rows:
            r["label_name"] = r["label"]
            r["label"] = 1 if r["label"] == "abnormal" else 0
        source = open_source(write_csv(tmp_path / "labels.csv", rows))
        assert source.class_names == ["normal", "abnormal"]
        assert [e.label for e in source.examples] == [0, 1, 0, 1, 0, 1]

    def test_integer_labels_without_names(self, tmp_path: Path) -> None:
        rows = [{"path": r["path"], "label": i % 2} for i, r in enumerate(_csv_dataset(tmp_path))]
        source = open_source(write_csv(tmp_path / "labels.csv", rows))
        assert source.class_names == ["class_0", "class_1"]

    def test_missing_label_column(self, tmp_path: Path) -> None:
        rows = [{"path": r["path"], "diagnosis": r["label"]} for r in _csv_dataset(tmp_path)]
        with pytest.raises(ConfigurationError, match=r"no 'label' column; columns found: 'path'"):
            open_source(write_csv(tmp_path / "labels.csv", rows))

    def test_unknown_label(self, tmp_path: Path) -> None:
        rows = _csv_dataset(tmp_path)
        rows[3]["label"] = "pneumonia"
        path = write_csv(tmp_path / "labels.csv", rows)
        with pytest.raises(ConfigurationError, match=r"unknown label 'pneumonia' at labels.csv"):
            open_source(path, class_names=["normal", "abnormal"])

    def test_unknown_split(self, tmp_path: Path) -> None:
        rows = _csv_dataset(tmp_path)
        rows[2]["split"] = "holdout"
        with pytest.raises(ConfigurationError, match=r"unknown split 'holdout' at labels.csv"):
            open_source(write_csv(tmp_path / "labels.csv", rows))

    def test_single_class(self, tmp_path: Path) -> None:
        rows = _csv_dataset(tmp_path)
        for r in rows:
            r["label"] = "normal"
        with pytest.raises(ConfigurationError, match=r"at least 2 classes"):
            open_source(write_csv(tmp_path / "labels.csv", rows))

    def test_missing_file_is_skipped(self, tmp_path: Path) -> None:
        rows = _csv_dataset(tmp_path)
        rows.append({"path": "img/gone.png", "label": "normal", "patient_id": "P9", "split": ""})
        source = open_source(write_csv(tmp_path / "labels.csv", rows))
        assert len(source.examples) == 6
        assert [(Path(s.path).name, s.reason) for s in source.skipped] == [
            ("gone.png", "file does not exist")
        ]

    def test_nih_labels(self) -> None:
        source = open_source(shared_data_path("nih1000", "labels.csv"))
        assert source.class_names == ["normal", "abnormal"]
        assert len(source.examples) == 1000 and source.skipped == []
        assert Counter(e.split for e in source.examples) == {"train": 600, "val": 200, "test": 200}
        assert source.class_counts() == {"normal": 500, "abnormal": 500}


# --- npz --------------------------------------------------------------------------------


class TestNpzSource:
    @pytest.mark.parametrize("label_shape_2d", [True, False])
    def test_splits_and_labels(self, tmp_path: Path, label_shape_2d: bool) -> None:
        path = write_npz(tmp_path / "d.npz", label_shape_2d=label_shape_2d)
        source = open_source(path)
        assert source.kind == "npz"
        assert source.class_names == ["class_0", "class_1"]
        assert Counter(e.split for e in source.examples) == {"train": 12, "val": 6}
        assert source.examples[13].key == "npz:val:1" and source.examples[13].label == 1

    def test_class_names_and_pixels(self, tmp_path: Path) -> None:
        source = open_source(write_npz(tmp_path / "d.npz"), class_names=["normal", "pneumonia"])
        assert source.class_names == ["normal", "pneumonia"]
        ex = source.examples[3]
        got = source.load_pixels(ex, size=(20, 24), window="lung")
        raw = source.raw_array(ex)
        assert got.shape == (20, 24, 1)
        assert np.array_equal(got[..., 0], preprocess_array(raw, size=(20, 24)))

    def test_too_few_class_names(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigurationError, match=r"unknown label 1 .* class_names has 1"):
            open_source(write_npz(tmp_path / "d.npz"), class_names=["only"])

    def test_missing_train_keys(self, tmp_path: Path) -> None:
        np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8))
        with pytest.raises(ConfigurationError, match=r"needs images of at least one split"):
            open_source(tmp_path / "d.npz")

    def test_not_an_npz(self, tmp_path: Path) -> None:
        (tmp_path / "d.npz").write_text("nope")
        with pytest.raises(ConfigurationError, match=r"cannot read npz file"):
            open_source(tmp_path / "d.npz")

    def test_pneumoniamnist(self) -> None:
        path = shared_data_path("pneumoniamnist", "pneumoniamnist_28_trainval.npz")
        source = open_source(path, class_names=["normal", "pneumonia"])
        splits = split_source(source)
        assert {k: len(v) for k, v in splits.items()} == {"train": 4708, "val": 524, "test": 0}
        assert source.class_counts(splits["train"]) == {"normal": 1214, "pneumonia": 3494}
        assert source.class_counts(splits["val"]) == {"normal": 135, "pneumonia": 389}


# --- splits -----------------------------------------------------------------------------


def _synthetic(n_patients: int = 200, seed: int = 0) -> DataSource:
    rng = np.random.default_rng(seed)
    examples = []
    for p in range(n_patients):
        label = int(rng.random() < 0.3)
        for k in range(int(rng.integers(1, 4))):
            examples.append(Example(f"/x/{p}_{k}.png", label, f"P{p:04d}"))
    return DataSource(["normal", "abnormal"], examples, "csv", Path("/x"))


class TestSplits:
    def test_patient_level_stratified_deterministic(self) -> None:
        source = _synthetic()
        splits = split_source(source, val_fraction=0.2, test_fraction=0.1, seed=7)
        assert leakage_report(splits) == {}
        assert sum(len(v) for v in splits.values()) == len(source.examples)
        assert {e.key for v in splits.values() for e in v} == {e.key for e in source.examples}
        n = len(source.examples)
        assert abs(len(splits["val"]) / n - 0.2) < 0.03
        assert abs(len(splits["test"]) / n - 0.1) < 0.03
        overall = np.mean([e.label for e in source.examples])
        for name in ("train", "val", "test"):
            assert abs(np.mean([e.label for e in splits[name]]) - overall) < 0.06, name
        assert splits == split_source(source, val_fraction=0.2, test_fraction=0.1, seed=7)
        other = split_source(source, val_fraction=0.2, test_fraction=0.1, seed=8)
        assert other["val"] != splits["val"]

    def test_without_patient_ids_per_image(self) -> None:
        examples = [Example(f"/x/{i}.png", i % 2) for i in range(100)]
        source = DataSource(["a", "b"], examples, "folder", Path("/x"))
        splits = split_source(source, val_fraction=0.1, test_fraction=0.1, seed=0)
        assert {k: len(v) for k, v in splits.items()} == {"train": 80, "val": 10, "test": 10}
        assert source.class_counts(splits["val"]) == {"a": 5, "b": 5}

    def test_given_splits_kept_and_patients_follow_them(self) -> None:
        examples = [
            Example("/x/a.png", 0, "P1", "test"),
            Example("/x/b.png", 1, "P1", None),  # P1 is a test patient: joins test
            Example("/x/c.png", 1, "P2", "train"),
        ] + [Example(f"/x/n{i}.png", i % 2, f"Q{i}") for i in range(40)]
        source = DataSource(["n", "a"], examples, "csv", Path("/x"))
        splits = split_source(source, val_fraction=0.25, test_fraction=0.25, seed=0)
        keys = {name: {e.key for e in items} for name, items in splits.items()}
        assert {"/x/a.png", "/x/b.png"} <= keys["test"]
        assert "/x/c.png" in keys["train"]
        assert leakage_report(splits) == {}

    def test_bad_fractions(self) -> None:
        source = _synthetic(10)
        with pytest.raises(ConfigurationError, match=r"val_fraction must be in \[0, 1\); got 1.5"):
            split_source(source, val_fraction=1.5)
        with pytest.raises(ConfigurationError, match=r"must be < 1; got 0.6 \+ 0.5"):
            split_source(source, val_fraction=0.6, test_fraction=0.5)

    def test_leakage_report(self) -> None:
        splits = {
            "train": [Example("a", 0, "P1"), Example("b", 0, "P2"), Example("e", 1, None)],
            "val": [Example("c", 1, "P1")],
            "test": [Example("d", 1, "P1"), Example("f", 1, None)],
        }
        assert leakage_report(splits) == {"P1": ["train", "val", "test"]}

    def test_nih_has_30_leaking_patients_and_a_resplit_has_none(self) -> None:
        source = open_source(shared_data_path("nih1000", "labels.csv"))
        given = split_source(source, seed=0)
        leaks = leakage_report(given)
        assert len(leaks) == 30
        assert all(len(s) >= 2 for s in leaks.values())
        resplit = split_source(source, seed=0, keep_given=False)
        assert leakage_report(resplit) == {}
        assert sum(len(v) for v in resplit.values()) == 1000


@settings(max_examples=60, deadline=None)
@given(
    patients=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 1), st.sampled_from([None, "train", "test"])),
        min_size=1,
        max_size=80,
    ),
    val_fraction=st.floats(0.0, 0.45),
    test_fraction=st.floats(0.0, 0.45),
    seed=st.integers(0, 2**31),
)
def test_split_properties(
    patients: list[tuple[int, int, str | None]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> None:
    """Every example lands in exactly one split; no unassigned patient leaks; deterministic."""
    examples = [
        Example(f"/x/{i}.png", label, f"P{pid}", split)
        for i, (pid, label, split) in enumerate(patients)
    ]
    source = DataSource(["a", "b"], examples, "csv", Path("/x"))
    splits = split_source(source, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    keys = [e.key for items in splits.values() for e in items]
    assert sorted(keys) == sorted(e.key for e in examples)
    for ex in examples:  # given splits are kept
        if ex.split is not None:
            assert ex in splits[ex.split]
    given: dict[str | None, set[str]] = {}
    for e in examples:
        if e.split is not None:
            given.setdefault(e.patient_id, set()).add(e.split)
    # only a patient the data itself puts in two splits can end up in two splits
    assert set(leakage_report(splits)) <= {pid for pid, s in given.items() if len(s) > 1}
    assert splits == split_source(
        source, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )


# --- what data-check counts is what training trains on --------------------------------------


class TestUndecodableFiles:
    """Found by fuzzing: the header probe passed files whose pixels training then could not
    decode, so `radlens data-check` counted images and splits that `radlens train` did not
    have; and a deflate bomb was inflated whole by the probe."""

    @staticmethod
    def folder(tmp_path: Path) -> Path:
        from tests.models.test_hostile_headers import MIB, dataset, deflated_ct, to_bytes
        from tests.models.test_truncated_codestreams import half, pydicom_file, rewritten

        root = png_folder(tmp_path / "ds", n_per_class=3)
        (root / "abnormal" / "cut.dcm").write_bytes(rewritten(pydicom_file("JPEG-LL.dcm"), half))
        flat = dataset("CT_small.dcm")
        flat.RescaleSlope = "0"
        (root / "abnormal" / "flat.dcm").write_bytes(to_bytes(flat))
        (root / "normal" / "bomb.dcm").write_bytes(deflated_ct(400 * MIB))  # > the 304 MiB bound
        return root

    def test_the_probe_bounds_a_deflate_bomb(self, tmp_path: Path) -> None:
        source = open_source(self.folder(tmp_path))
        skipped = {Path(s.path).name: s.reason for s in source.skipped}
        assert set(skipped) == {"bomb.dcm"} and "inflates to more than" in skipped["bomb.dcm"]
        assert source.class_counts() == {"normal": 3, "abnormal": 5}  # headers only

    def test_drop_undecodable_skips_what_training_skips(self, tmp_path: Path) -> None:
        from radlens.training.data.sources import drop_undecodable

        source = drop_undecodable(open_source(self.folder(tmp_path)))
        skipped = {Path(s.path).name: s.reason for s in source.skipped}
        assert set(skipped) == {"bomb.dcm", "cut.dcm", "flat.dcm"}
        assert "truncated" in skipped["cut.dcm"] and "Rescale" in skipped["flat.dcm"]
        assert source.class_counts() == {"normal": 3, "abnormal": 3}

    def test_a_blank_image_is_skipped_as_the_service_refuses_it(self, tmp_path: Path) -> None:
        from PIL import Image

        from radlens.models.errors import BlankImageError
        from radlens.training.data.sources import drop_undecodable

        root = png_folder(tmp_path / "ds", n_per_class=3)
        Image.new("L", (32, 24), color=0).save(root / "normal" / "black.png")
        source = open_source(root)
        blank = next(e for e in source.examples if e.key.endswith("black.png"))
        with pytest.raises(BlankImageError):
            source.load_pixels(blank, size=32)
        skipped = {Path(s.path).name: s.reason for s in drop_undecodable(source).skipped}
        assert set(skipped) == {"black.png"}
        assert (
            "every stored pixel of the 24x32 PNG image has the same value" in skipped["black.png"]
        )

    def test_data_check_decodes_unless_told_headers_only(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from radlens.cli.main import main

        root = self.folder(tmp_path)
        assert main(["data-check", str(root)]) == 0
        out = capsys.readouterr().out
        assert "class abnormal: 3" in out
        assert "3 file(s) skipped (every image decoded as training decodes it)" in out
        assert main(["data-check", str(root), "--headers-only"]) == 0
        out = capsys.readouterr().out
        assert "class abnormal: 5" in out and "1 file(s) skipped (headers read only)" in out

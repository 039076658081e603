"""training.data.series: series-labelled CSVs -> slices that inherit their series' label."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from radlens.models.errors import ConfigurationError
from radlens.models.preprocessing import preprocess
from radlens.training.data.series import series_counts, split_frame_key
from radlens.training.data.sources import (
    MultiLabelSpec,
    check_leakage,
    leakage_report,
    open_data,
    open_source,
    split_source,
)
from tests.training.series_fixtures import (
    read_rows,
    series_dataset,
    slice_pixels,
    uid,
    write_rows,
    write_series,
    write_slice,
)


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 patients x 2 series (normal, nodule) x 4 slices, by series_path."""
    return series_dataset(tmp_path_factory.mktemp("series") / "ds")


def _by_series(source):  # type: ignore[no-untyped-def]
    groups = defaultdict(list)
    for e in source.examples:
        groups[e.series].append(e)
    return groups


class TestSlicesInheritTheSeriesLabel:
    @pytest.mark.parametrize("by", ["path", "uid", "both"])
    def test_every_slice_is_an_example_with_its_series_label(self, tmp_path: Path, by: str) -> None:
        csv_path = series_dataset(tmp_path / by, by=by)
        source = open_source(csv_path)
        assert source.class_names == ["normal", "nodule"]  # the negative name first
        assert source.has_series and source.kind == "csv"
        assert len(source.examples) == 48  # 12 series x 4 slices
        rows = read_rows(csv_path)
        groups = _by_series(source)
        assert len(groups) == 12
        for line, row in enumerate(rows, start=2):
            slices = groups[f"series.csv:{line}"]
            assert len(slices) == 4
            assert {source.class_names[e.label] for e in slices} == {row["label"]}
            assert len({e.patient_id for e in slices}) == 1
            assert all(Path(e.key).is_file() for e in slices)
            # the slices are the files of that series, and only those
            if "series_path" in row:
                folder = (csv_path.parent / row["series_path"]).resolve()
                assert {Path(e.key).resolve().parent for e in slices} == {folder}
            if "series_uid" in row:
                assert {
                    pydicom.dcmread(e.key, stop_before_pixels=True).SeriesInstanceUID
                    for e in slices
                } == {row["series_uid"]}
        # patient ids are keyed hashes, never the raw ones
        assert all(e.patient_id and e.patient_id.startswith("p-") for e in source.examples)
        assert not any("SYN" in (e.patient_id or "") for e in source.examples)

    def test_pixels_are_the_services_preprocessing(self, series_csv: Path) -> None:
        source = open_source(series_csv)
        example = source.examples[5]
        expected = preprocess(Path(example.key).read_bytes(), size=(32, 32)).model_input()
        np.testing.assert_array_equal(source.load_pixels(example, size=32), expected)

    def test_each_frame_of_a_multi_frame_instance_is_a_slice(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(3)
        csv_rows = []
        for p in range(2):
            for s, label in enumerate(("normal", "nodule")):
                series_uid = uid("mf", p, s)
                folder = tmp_path / f"p{p}s{s}"
                frames = np.stack([slice_pixels(rng, s == 1) for _ in range(3)])
                write_slice(
                    folder / "volume.dcm",
                    frames,
                    patient_id=f"P{p}",
                    series_uid=series_uid,
                    instance=1,
                )
                csv_rows.append({"series_path": folder.name, "label": label, "patient_id": f"P{p}"})
        source = open_source(write_rows(tmp_path / "mf.csv", csv_rows))
        assert len(source.examples) == 12  # 4 instances x 3 frames
        first = [e for e in source.examples if e.series == "mf.csv:2"]
        assert [split_frame_key(e.key)[1] for e in first] == [0, 1, 2]
        data = (tmp_path / "p0s0" / "volume.dcm").read_bytes()
        for e in first:
            expected = preprocess(data, size=(32, 32), frame=split_frame_key(e.key)[1])
            np.testing.assert_array_equal(source.load_pixels(e, size=32), expected.model_input())
        assert not np.array_equal(
            source.load_pixels(first[0], size=32), source.load_pixels(first[1], size=32)
        )
        # the intended-use survey reads the file of a frame's key
        from radlens.training.data.intended import image_header

        header = image_header(source, first[1])
        assert header["Modality"] == "CT" and header["rows"] == 32

    def test_multi_label_series(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(4)
        labels = ["Nodule|Effusion", "No Finding", "Nodule", "Effusion"]
        rows = []
        for i, label in enumerate(labels):
            folder = tmp_path / f"s{i}"
            write_series(
                folder,
                patient_id=f"P{i}",
                series_uid=uid("ml", i),
                positive=False,
                slices=2,
                rng=rng,
            )
            rows.append({"series_path": folder.name, "findings": label, "patient_id": f"P{i}"})
        csv_path = write_rows(tmp_path / "ml.csv", rows)
        source = open_source(csv_path, multi_label=MultiLabelSpec(column="findings"))
        assert source.multi_label and source.class_names == ["Effusion", "Nodule"]
        assert [e.findings for e in source.examples] == [
            (0, 1),
            (0, 1),
            (),
            (),
            (1,),
            (1,),
            (0,),
            (0,),
        ]
        with pytest.raises(ConfigurationError, match=r"finding\(s\) \['Nodule'\] .* not in the"):
            open_source(
                csv_path, multi_label=MultiLabelSpec(column="findings", findings=("Effusion", "X"))
            )


class TestPatientSplits:
    def test_no_patient_in_two_splits_and_reproducible(self, series_csv: Path) -> None:
        source = open_source(series_csv)
        splits = split_source(source, val_fraction=0.34, test_fraction=0.17, seed=7)
        assert leakage_report(splits) == {}
        check_leakage(splits)
        # a series never straddles two splits, since its slices share the patient
        where = {e.series: name for name, items in splits.items() for e in items}
        for name, items in splits.items():
            assert all(where[e.series] == name for e in items)
        again = split_source(open_source(series_csv), val_fraction=0.34, test_fraction=0.17, seed=7)
        assert {k: [e.key for e in v] for k, v in splits.items()} == {
            k: [e.key for e in v] for k, v in again.items()
        }
        counts = {k: series_counts(source, v) for k, v in splits.items()}
        assert counts["val"]["patients"] == 2 and counts["val"]["series"] == 4
        assert sum(c["series"] for c in counts.values()) == 12
        assert counts["val"]["per_class"]["nodule"] == {"series": 2, "slices": 8, "patients": 2}

    def test_given_splits_that_put_a_patient_in_two_are_refused(self, tmp_path: Path) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=4)
        rows = read_rows(csv_path)
        for i, row in enumerate(rows):
            row["split"] = ["train", "test"][i % 2]  # each patient's two series apart
        source = open_source(write_rows(csv_path, rows))
        splits = split_source(source, seed=0)
        assert len(leakage_report(splits)) == 4
        with pytest.raises(ConfigurationError, match=r"4 patient\(s\) have images in more than"):
            check_leakage(splits)
        assert leakage_report(split_source(source, seed=0, keep_given=False)) == {}


class TestBadSeriesCsv:
    def test_unknown_label_for_the_models_classes(self, series_csv: Path) -> None:
        with pytest.raises(ConfigurationError, match=r"unknown label 'nodule' at series.csv line"):
            open_data(series_csv, ["normal", "pneumonia"])

    def test_series_without_readable_slices(self, tmp_path: Path) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2)
        empty = tmp_path / "ds" / "dicom" / "empty"
        empty.mkdir()
        (empty / "notes.txt").write_text("not an image")
        rows = [
            *read_rows(csv_path),
            {"series_path": "dicom/empty", "label": "normal", "patient_id": "X"},
        ]
        with pytest.raises(
            ConfigurationError,
            match=r"the series at series.csv line 6 \(folder 'dicom/empty'\) has no readable "
            r"DICOM slice \(1 file\(s\) skipped\)",
        ):
            open_source(write_rows(csv_path, rows))

    def test_uid_in_two_folders(self, tmp_path: Path) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2, by="uid")
        copy = tmp_path / "ds" / "dicom" / "copy"
        shutil.copytree(tmp_path / "ds" / "dicom" / "SYN000" / "series1", copy)
        with pytest.raises(
            ConfigurationError, match=r"series_uid at series.csv line 3 is found in 2 folders"
        ):
            open_source(csv_path)

    def test_uid_not_found(self, tmp_path: Path) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2, by="uid")
        rows = read_rows(csv_path)
        rows[0]["series_uid"] = "1.2.3.4"
        with pytest.raises(
            ConfigurationError, match=r"series_uid at series.csv line 2 was not found"
        ):
            open_source(write_rows(csv_path, rows))

    def test_dicom_root_elsewhere(self, tmp_path: Path) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2, by="uid")
        moved = tmp_path / "elsewhere" / "series.csv"
        moved.parent.mkdir()
        shutil.move(csv_path, moved)
        with pytest.raises(ConfigurationError, match=r"was found under the DICOM root"):
            open_source(moved)
        assert len(open_source(moved, dicom_root=tmp_path / "ds").examples) == 16

    @pytest.mark.parametrize(
        ("change", "match"),
        [
            (
                {"modality": "MR"},
                r"disagree on Modality \('CT' in slice00.dcm, 'MR' in zz_odd.dcm\)",
            ),
            (
                {"size": 16},
                r"disagree on Rows x Columns \(32x32 in slice00.dcm, 16x16 in zz_odd.dcm\)",
            ),
        ],
    )
    def test_slices_that_disagree(self, tmp_path: Path, change: dict, match: str) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2)
        folder = tmp_path / "ds" / "dicom" / "SYN001" / "series0"
        series_uid = pydicom.dcmread(folder / "slice00.dcm").SeriesInstanceUID
        write_slice(
            folder / "zz_odd.dcm",
            slice_pixels(np.random.default_rng(0), False, size=change.get("size", 32)),
            patient_id="SYN001",
            series_uid=series_uid,
            instance=9,
            modality=change.get("modality", "CT"),
        )
        with pytest.raises(ConfigurationError, match=r"series.csv line 4 " + match):
            open_source(csv_path)

    def test_folder_with_two_series_needs_a_uid(self, tmp_path: Path) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2)
        folder = tmp_path / "ds" / "dicom" / "SYN000" / "series0"
        write_slice(
            folder / "other.dcm",
            slice_pixels(np.random.default_rng(0), False),
            patient_id="SYN000",
            series_uid=uid("another"),
            instance=1,
        )
        with pytest.raises(ConfigurationError, match=r"line 2 holds 2 series .*give series_uid"):
            open_source(csv_path)
        rows = read_rows(csv_path)
        rows[0]["series_uid"] = pydicom.dcmread(folder / "slice00.dcm").SeriesInstanceUID
        for row in rows[1:]:
            row["series_uid"] = ""
        source = open_source(write_rows(csv_path, rows))  # the UID picks one of the two
        assert len([e for e in source.examples if e.series == "series.csv:2"]) == 4

    def test_same_series_twice(self, tmp_path: Path) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2)
        rows = read_rows(csv_path)
        with pytest.raises(
            ConfigurationError, match=r"series at series.csv line 6 is the one of line 2"
        ):
            open_source(write_rows(csv_path, [*rows, rows[0]]))

    @pytest.mark.parametrize(
        ("drop", "match"),
        [
            ("patient_id", r"has no 'patient_id' column"),
            ("label", r"has no 'label' column"),
        ],
    )
    def test_missing_columns(self, tmp_path: Path, drop: str, match: str) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2)
        rows = [{k: v for k, v in r.items() if k != drop} for r in read_rows(csv_path)]
        with pytest.raises(ConfigurationError, match=match):
            open_source(write_rows(csv_path, rows))

    def test_empty_patient_id(self, tmp_path: Path) -> None:
        csv_path = series_dataset(tmp_path / "ds", patients=2)
        rows = read_rows(csv_path)
        rows[2]["patient_id"] = " "
        with pytest.raises(ConfigurationError, match=r"empty patient_id at series.csv line 4"):
            open_source(write_rows(csv_path, rows))


# --- real series: pydicom's DICOMDIR test set (real 16x16 CT and MR series) ---------------


def _dicomdir_tests() -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file("CT_small.dcm")
    root = Path(str(found)).parent / "dicomdirtests" if found else None
    if root is None or not (root / "77654033" / "CT2").is_dir():
        pytest.skip("pydicom's dicomdirtests series are not installed")
    return root


class TestRealSeries:
    def test_real_ct_series_by_folder_and_by_uid(self, tmp_path: Path) -> None:
        root = _dicomdir_tests()
        ct2, ct5n = root / "77654033" / "CT2", root / "98892001" / "CT5N"
        uid_ct2n = pydicom.dcmread(next((root / "98892001" / "CT2N").iterdir())).SeriesInstanceUID
        csv_path = write_rows(
            tmp_path / "real.csv",
            [
                {"series_path": str(ct2), "series_uid": "", "label": "normal", "patient_id": "a"},
                {
                    "series_path": str(ct5n),
                    "series_uid": "",
                    "label": "abnormal",
                    "patient_id": "b",
                },
                {"series_path": "", "series_uid": uid_ct2n, "label": "abnormal", "patient_id": "b"},
            ],
        )
        source = open_source(csv_path, dicom_root=root / "98892001")
        groups = _by_series(source)
        assert [len(groups[f"real.csv:{i}"]) for i in (2, 3, 4)] == [4, 5, 2]
        assert source.skipped == []
        for e in source.examples:  # decoded as the service decodes an upload of the file
            expected = preprocess(Path(e.key).read_bytes(), size=(16, 16)).model_input()
            np.testing.assert_array_equal(source.load_pixels(e, size=16), expected)

    def test_real_mr_folder_holds_three_series(self, tmp_path: Path) -> None:
        mr2 = _dicomdir_tests() / "98892003" / "MR2"
        csv_path = write_rows(
            tmp_path / "mr.csv",
            [{"series_path": str(mr2), "label": "normal", "patient_id": "a"}],
        )
        with pytest.raises(ConfigurationError, match=r"holds 3 series"):
            open_source(csv_path)

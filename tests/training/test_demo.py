"""radlens.training.data.demo and `radlens demo-data`: real DICOM files, balanced, deterministic."""

from __future__ import annotations

import csv
import inspect
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, ExplicitVRLittleEndian

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.models.preprocessing import preprocess
from radlens.training.data.demo import synth_chest_cr, synth_chest_ct, write_demo_dataset
from radlens.training.data.sources import leakage_report, open_source, split_source


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "mixed"
    write_demo_dataset(out, n_per_class=8, size=64, seed=5, modality="mixed")
    return out


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


class TestFiles:
    def test_layout_and_summary(self, tmp_path: Path) -> None:
        summary = write_demo_dataset(tmp_path / "d", n_per_class=6, size=48, seed=1)
        assert summary.n_files == 12 == len(_files(tmp_path / "d"))
        assert summary.class_counts == {"normal": 6, "abnormal": 6}
        assert summary.modality_counts == {"cr": 12}
        assert sum(summary.split_counts.values()) == 12
        assert "wrote 12 DICOM files" in summary.describe()
        assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
            "abnormal",
            "labels.csv",
            "normal",
        ]

    def test_real_dicom_cr_and_ct(self, mixed: Path) -> None:
        kinds = Counter()
        for path in _files(mixed):
            ds = pydicom.dcmread(path)  # strict read: a valid Part 10 file
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.Rows == ds.Columns == 64
            assert ds.PatientID.startswith("DEMO-") and str(ds.PatientName) == "DEMO^PATIENT"
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            pixels = ds.pixel_array
            assert pixels.dtype == np.uint16 and pixels.max() <= 4095
            kinds[ds.Modality] += 1
            if ds.Modality == "CT":
                assert ds.SOPClassUID == CTImageStorage
                assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
                hu = pixels.astype(float) - 1024
                assert hu.min() < -900  # air
                assert hu.max() > 500  # bone (the spine)
                assert (np.abs(hu - 40) < 100).mean() > 0.1  # soft tissue
            else:
                assert ds.SOPClassUID == ComputedRadiographyImageStorage
                assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition == "PA"
                assert pixels.std() > 300  # structure, not a flat image
        assert kinds == {"CR": 8, "CT": 8}

    def test_decoded_by_models_preprocessing(self, mixed: Path) -> None:
        for path in _files(mixed)[:6]:
            image = preprocess(path.read_bytes(), size=(32, 32), window="lung")
            assert image.metadata.format == "dicom"
            assert image.metadata.modality in ("CR", "CT")
            assert image.pixels.shape == (32, 32) and image.pixels.std() > 0.05
            if image.metadata.modality == "CT":
                assert image.metadata.window.startswith("preset:lung")

    def test_unique_uids(self, mixed: Path) -> None:
        uids = [pydicom.dcmread(p).SOPInstanceUID for p in _files(mixed)]
        assert len(set(uids)) == len(uids)


class TestSources:
    def test_folder_and_csv_agree(self, mixed: Path) -> None:
        folder = open_source(mixed)
        table = open_source(mixed / "labels.csv")
        assert folder.class_names == table.class_names == ["normal", "abnormal"]
        assert folder.class_counts() == table.class_counts() == {"normal": 8, "abnormal": 8}
        by_key = {e.key: e.label for e in folder.examples}
        assert {e.key: e.label for e in table.examples} == by_key
        assert folder.skipped == table.skipped == []

    def test_labels_csv_patient_split(self, mixed: Path) -> None:
        with (mixed / "labels.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert set(rows[0]) == {"path", "label", "patient_id", "split", "modality"}
        assert {r["split"] for r in rows} == {"train", "val", "test"}
        source = open_source(mixed / "labels.csv")
        splits = split_source(source)
        assert leakage_report(splits) == {}
        assert all(len(items) > 0 for items in splits.values())
        # some patients have two images, all in one split and one class
        per_patient = Counter(r["patient_id"] for r in rows)
        assert max(per_patient.values()) == 2

    @pytest.mark.parametrize("kind", ["cr", "ct"])
    def test_finding_is_a_local_opacity_in_a_lung(self, kind: str) -> None:
        synth = synth_chest_cr if kind == "cr" else synth_chest_ct
        for seed in range(5):
            normal = synth(np.random.default_rng([seed, 1]), 64, None)
            abnormal = synth(np.random.default_rng([seed, 1]), 64, np.random.default_rng(seed))
            diff = abnormal - normal
            scale = 1.0 if kind == "cr" else 1000.0  # HU for CT
            assert diff.min() >= -1e-3 * scale  # it only adds density
            assert diff.max() > 0.15 * scale  # clearly visible
            changed = diff > 0.03 * scale
            assert 0.003 < changed.mean() < 0.3  # local (within the lung fields), not global
            # inside a lung field: darker than the body on CR, lung HU on CT
            lung_level = np.median(normal[changed])
            if kind == "cr":
                assert lung_level < np.percentile(normal, 60)
            else:
                assert -950 < lung_level < -700


class TestDeterminismAndRefusal:
    def test_same_seed_same_bytes(self, tmp_path: Path) -> None:
        write_demo_dataset(tmp_path / "a", n_per_class=4, size=32, seed=9, modality="mixed")
        write_demo_dataset(tmp_path / "b", n_per_class=4, size=32, seed=9, modality="mixed")
        write_demo_dataset(tmp_path / "c", n_per_class=4, size=32, seed=10, modality="mixed")
        a, b, c = (_files(tmp_path / n) for n in "abc")
        assert [p.relative_to(tmp_path / "a") for p in a] == [
            p.relative_to(tmp_path / "b") for p in b
        ]
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
        assert (tmp_path / "a/labels.csv").read_text() == (tmp_path / "b/labels.csv").read_text()
        assert (
            pydicom.dcmread(a[0]).pixel_array.tolist() != pydicom.dcmread(c[0]).pixel_array.tolist()
        )

    def test_refuses_non_empty_and_overwrites_its_own(self, tmp_path: Path) -> None:
        out = tmp_path / "d"
        write_demo_dataset(out, n_per_class=4, size=32)
        with pytest.raises(ConfigurationError, match=r"not empty .*--overwrite"):
            write_demo_dataset(out, n_per_class=4, size=32)
        summary = write_demo_dataset(out, n_per_class=5, size=32, overwrite=True)
        assert len(_files(out)) == summary.n_files == 10
        (out / "precious.txt").write_text("keep me")
        with pytest.raises(ConfigurationError, match=r"did not write .*precious.txt"):
            write_demo_dataset(out, n_per_class=4, size=32, overwrite=True)
        assert (out / "precious.txt").read_text() == "keep me"

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"n_per_class": 1}, r"n_per_class must be an integer >= 4; got 1"),
            ({"size": 8}, r"size must be an integer in \[32, 1024\]; got 8"),
            ({"modality": "mr"}, r"modality must be one of .*; got 'mr'"),
        ],
    )
    def test_bad_arguments(self, tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ConfigurationError, match=message):
            write_demo_dataset(tmp_path / "d", **kwargs)  # type: ignore[arg-type]
        assert not (tmp_path / "d").exists()


class TestCli:
    def test_demo_data_ok(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / "demo"
        argv = ["demo-data", str(out), "--n-per-class", "4", "--size", "32", "--seed", "3"]
        assert main(argv) == 0
        assert "wrote 8 DICOM files" in capsys.readouterr().out
        assert len(_files(out)) == 8

    def test_demo_data_refuses_non_empty(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "demo"
        out.mkdir()
        (out / "x").write_text("x")
        assert main(["demo-data", str(out), "--n-per-class", "4", "--size", "32"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("radlens: error: ") and "--overwrite" in err
        assert len(err.strip().splitlines()) == 1

    def test_demo_data_overwrite(self, tmp_path: Path) -> None:
        out = tmp_path / "demo"
        assert main(["demo-data", str(out), "--n-per-class", "4", "--size", "32"]) == 0
        args = ["demo-data", str(out), "--n-per-class", "6", "--size", "32", "--overwrite"]
        assert main(args) == 0
        assert len(_files(out)) == 12

    @pytest.mark.parametrize(
        "extra", [["--n-per-class", "2"], ["--size", "4"], ["--modality", "pet"]]
    )
    def test_demo_data_bad_options(self, tmp_path: Path, extra: list[str]) -> None:
        assert main(["demo-data", str(tmp_path / "d"), *extra]) == 2
        assert not (tmp_path / "d").exists()

    def test_data_check(self, mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["data-check", str(mixed / "labels.csv")]) == 0
        out = capsys.readouterr().out
        assert "class normal: 8" in out and "leakage: none" in out
        assert main(["data-check", str(mixed / "missing")]) == 2
        assert "does not exist" in capsys.readouterr().err

    def test_data_check_lists_each_skipped_file_once(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Training's per-file "skipping" warnings reached stderr above the report's own list
        of skipped files: each was on the screen twice (QA round 14)."""
        import pydicom

        out = tmp_path / "set"
        write_demo_dataset(out, n_per_class=8, size=32, seed=5, modality="cr")
        (out / "labels.csv").unlink()  # a folder of class folders, as a site's own scans are
        one = sorted((out / "normal").rglob("*.dcm"))[0]
        ds = pydicom.dcmread(one)
        del ds.PixelData  # skipped while the data set is opened (headers)
        ds.save_as(out / "normal" / "no-pixels.dcm")
        (out / "abnormal" / "cut.dcm").write_bytes(one.read_bytes()[:-200])  # while decoding
        assert main(["data-check", str(out)]) == 0
        captured = capsys.readouterr()
        # (a CLI run has no log handler: Python's last resort prints warnings on stderr)
        both = captured.out + captured.err + "".join(r.getMessage() for r in caplog.records)
        for name in ("no-pixels.dcm", "cut.dcm"):
            assert both.count(name) == 1, both
        assert "2 file(s) skipped" in captured.out


class TestDefaultSize:
    """The default demo set is large enough for the demo model's OOD threshold (issue #17)."""

    def test_default_split_calibrates_the_ood_threshold_below_1_percent(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from radlens.models.ood import DEFAULT_QUANTILE, expected_flag_rate

        # what `radlens demo-data OUT` writes (the size of the images does not change the split)
        assert main(["demo-data", str(tmp_path / "d"), "--size", "32"]) == 0
        capsys.readouterr()
        with (tmp_path / "d" / "labels.csv").open(newline="") as fh:
            split = Counter(row["split"] for row in csv.DictReader(fh))
        # 1/(n+1) <= 1% needs n >= 99 validation images; the former default (36) gave 2.7%
        assert split["val"] >= 100
        assert expected_flag_rate(split["val"], DEFAULT_QUANTILE)["expected"] < 0.01
        # the demo training (make run) sees about as many images as before (168)
        assert 160 <= split["train"] <= 190 and split["test"] >= 30
        assert sum(split.values()) == 2 * 160
        # the split is still by patient
        assert leakage_report(split_source(open_source(tmp_path / "d" / "labels.csv"))) == {}
        # and `radlens demo-data`'s default is the library's
        from radlens.cli.data_cmds import demo_data
        from radlens.training.data.demo import DEMO_N_PER_CLASS

        assert inspect.signature(demo_data).parameters["n_per_class"].default == DEMO_N_PER_CLASS

"""Identical images under two names (copies): one split or fold for all copies of an image, a
copy under another label refused, copies across a given split reported (PneumoniaMNIST's
train+val holds 24 groups of identical images, 8 of them across its train/val split)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radlens.cli.main import main
from radlens.models.errors import ConfigurationError
from radlens.training.data.sources import (
    MultiLabelSpec,
    check_copies,
    copies_report,
    copy_groups,
    drop_undecodable,
    open_source,
    split_source,
)
from radlens.training.recipe import keep_copies_together, make_folds
from tests.training.conftest import tiny_config
from tests.training.data_fixtures import png_folder, random_gray, write_csv, write_npz, write_png


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _with_copies(root: Path, pairs: int = 4) -> list[tuple[Path, Path]]:
    """``pairs`` files of each class copied under another name in the same class folder."""
    made = []
    for name in ("normal", "abnormal"):
        for i in range(pairs):
            src = next((root / name).rglob(f"{name}_{2 * i:03d}.png"))
            made.append((src, _copy(src, root / name / "copies" / f"copy_{i}.png")))
    return made


def _split_of(splits: dict[str, list]) -> dict[str, str]:  # type: ignore[type-arg]
    return {e.key: name for name, items in splits.items() for e in items}


def test_the_same_pixels_under_another_name_or_encoding_are_one_digest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = random_gray(rng)
    write_png(tmp_path / "ds" / "normal" / "a.png", pixels)
    # the same pixels, written otherwise: other file bytes
    Image.fromarray(pixels).save(tmp_path / "ds" / "normal" / "b.png", compress_level=0)
    write_png(tmp_path / "ds" / "normal" / "c.png", random_gray(rng))
    write_png(tmp_path / "ds" / "abnormal" / "d.png", random_gray(rng, bright=True))
    write_png(tmp_path / "ds" / "abnormal" / "e.png", random_gray(rng, bright=True))
    a, b = (tmp_path / "ds" / "normal" / n for n in ("a.png", "b.png"))
    assert a.read_bytes() != b.read_bytes()
    source = drop_undecodable(open_source(tmp_path / "ds"))
    assert len(set(source.digests.values())) == 4
    assert [[e.key for e in g] for g in copy_groups(source)] == [[str(a), str(b)]]
    assert copy_groups(open_source(tmp_path / "ds")) == []  # no pixels read, none known


def test_copies_land_in_one_split_at_every_seed(tmp_path: Path) -> None:
    root = png_folder(tmp_path / "ds", n_per_class=20)
    pairs = _with_copies(root)
    source = drop_undecodable(open_source(root))
    apart = 0
    for seed in range(8):
        together = _split_of(split_source(source, seed=seed))
        assert all(together[str(a)] == together[str(b)] for a, b in pairs)
        old = _split_of(split_source(source, seed=seed, copies_together=False))
        apart += sum(old[str(a)] != old[str(b)] for a, b in pairs)
    assert apart  # dealt one by one, copies did land in two splits
    assert copies_report(source, split_source(source))["groups_across_splits"] == 0


def test_data_without_copies_splits_as_it_did_before(tmp_path: Path) -> None:
    """A model trained before copies were grouped has its split rebuilt from the same data:
    with no copy in it, nothing may move."""
    source = drop_undecodable(open_source(png_folder(tmp_path / "ds", n_per_class=20)))
    assert copy_groups(source) == []
    for seed in range(4):
        assert split_source(source, seed=seed) == split_source(
            source, seed=seed, copies_together=False
        )


def test_a_copy_follows_its_patient_and_the_given_split(tmp_path: Path) -> None:
    """A copy filed under another patient joins the first patient's images, and a copy with
    no split given follows the split its original was given."""
    root = png_folder(tmp_path / "ds", n_per_class=12)
    files = sorted(root.rglob("*.png"))
    rows = [
        {
            "path": str(f.relative_to(root)),
            "label": f.parts[-2] if f.parent.name != "deep" else f.parts[-3],
            "patient_id": f"P{i // 3}",
            "split": "",
        }
        for i, f in enumerate(files)
    ]
    shutil.copyfile(files[0], root / "again.png")  # patient P0's first image, as patient Q
    rows.append({**rows[0], "path": "again.png", "patient_id": "Q"})
    shutil.copyfile(files[4], root / "given.png")
    rows[4]["split"] = "val"  # its original was given val; the copy has no split
    rows.append({**rows[4], "path": "given.png", "patient_id": "R", "split": ""})
    source = drop_undecodable(open_source(write_csv(root / "labels.csv", rows)))
    for seed in range(6):
        split_of = _split_of(split_source(source, seed=seed))
        p0 = {split_of[str(root / r["path"])] for r in rows if r["patient_id"] in ("P0", "Q")}
        assert len(p0) == 1, seed
        assert split_of[str(root / "given.png")] == "val"


def test_a_copy_across_given_splits_leaves_each_patient_in_its_own_split(tmp_path: Path) -> None:
    """QA round 10: patient P given train, patient Q given test, and one of Q's test images a
    copy of P's train image. Joining the two groups made one group seen in two given splits,
    so neither patient's unassigned images followed it any more: Q's landed in train, and
    train refused the run for a leak in a split column that was fine."""
    from radlens.training.data.sources import check_leakage

    root = png_folder(tmp_path / "ds", n_per_class=12, seed=3)
    rows = [
        {
            "path": str(f.relative_to(root)),
            "label": f.relative_to(root).parts[0],
            "patient_id": f"F{i}",
            "split": "",
        }
        for i, f in enumerate(sorted(root.rglob("*.png")))
    ]
    rng = np.random.default_rng(11)
    for name, patient, split in (
        ("p_train", "P", "train"),
        ("p_pend1", "P", ""),
        ("p_pend2", "P", ""),
        ("q_test", "Q", "test"),
        ("q_pend1", "Q", ""),
    ):
        write_png(root / "normal" / f"{name}.png", random_gray(rng))
        rows.append(
            {"path": f"normal/{name}.png", "label": "normal", "patient_id": patient, "split": split}
        )
    _copy(root / "normal" / "p_train.png", root / "normal" / "q_copy.png")
    rows.append(
        {"path": "normal/q_copy.png", "label": "normal", "patient_id": "Q", "split": "test"}
    )
    source = drop_undecodable(open_source(write_csv(root / "labels.csv", rows)))
    assert len(copy_groups(source)) == 1
    for seed in range(8):
        splits = split_source(source, seed=seed)
        split_of = _split_of(splits)
        assert {split_of[str(root / "normal" / f"p_pend{i}.png")] for i in (1, 2)} == {"train"}
        assert split_of[str(root / "normal" / "q_pend1.png")] == "test"
        check_leakage(splits)
        assert copies_report(source, splits)["spanning"] == {"train+test": 1}


def test_a_copy_under_another_label_is_refused_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = png_folder(tmp_path / "ds", n_per_class=8)
    src = root / "normal" / "normal_000.png"
    _copy(src, root / "abnormal" / "mislabelled.png")
    source = drop_undecodable(open_source(root))
    with pytest.raises(ConfigurationError) as caught:
        check_copies(source)
    message = str(caught.value)
    assert message.startswith("Invalid configuration: 1 group(s) of identical images")
    assert "carry different labels" in message
    assert f"{src} (normal) = {root / 'abnormal' / 'mislabelled.png'} (abnormal)" in message

    assert main(["data-check", str(root)]) == 2
    captured = capsys.readouterr()
    assert "copies: 2 image(s) in 1 group(s)" in captured.out
    assert "carry different labels" in captured.err and "Traceback" not in captured.err

    from radlens.training.run import train

    with pytest.raises(ConfigurationError, match="carry different labels"):
        train(tiny_config(root, tmp_path), verbose=0)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_copy_with_other_findings_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ml"
    rng = np.random.default_rng(1)
    for folder in ("No Finding", "Effusion", "Effusion+Nodule"):
        for i in range(4):
            write_png(root / folder / f"{i}.png", random_gray(rng))
    _copy(root / "Effusion" / "0.png", root / "Effusion+Nodule" / "copy.png")
    spec = MultiLabelSpec(separator="+")
    source = drop_undecodable(open_source(root, multi_label=spec))
    with pytest.raises(ConfigurationError, match=r"\(Effusion\) = .*copy.png \(Effusion\+Nodule\)"):
        check_copies(source)
    _copy(root / "Effusion" / "1.png", root / "Effusion" / "same.png")  # same findings: a copy
    (root / "Effusion+Nodule" / "copy.png").unlink()
    check_copies(drop_undecodable(open_source(root, multi_label=spec)))


def test_copies_across_a_given_split_are_trained_on_counted_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """As PneumoniaMNIST's official split: not refused (it is the given split), but the run
    records it, says so, and evaluate counts the val images the model trained on."""
    path = write_npz(tmp_path / "x.npz", n={"train": 24, "val": 12})
    with np.load(path) as data:
        arrays = dict(data)
    arrays["val_images"][0] = arrays["train_images"][4]  # both label 0
    arrays["val_images"][3] = arrays["train_images"][7]  # both label 1
    np.savez(path, **arrays)

    assert main(["data-check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "copies: 4 image(s) in 2 group(s) of identical images; 2 group(s) across given" in out

    from radlens.training.evaluate import evaluate
    from radlens.training.run import train

    with caplog.at_level(logging.WARNING, logger="radlens.training.run"):
        # no TensorBoard extras: the copies' record is checked (the IR is kept: `models ood`
        # below works on a model that has one)
        config = tiny_config(path, tmp_path, epochs_head=1, histogram_freq=0, tensorboard_samples=0)
        run = train(config, verbose=0)
    assert run.split["copies"] == {
        "groups": 2,
        "images": 4,
        "groups_across_splits": 2,
        "spanning": {"train+val": 2},
    }
    assert run.split["copies_together"] is True
    assert "2 group(s) of identical images sit in more than one given split" in caplog.text
    val = evaluate(run.model_ref, path, split="val", store=run.store)
    assert val["copies_in_training"] == 2 and val["n"] == 12
    assert evaluate(run.model_ref, path, split="all", store=run.store)["copies_in_training"] is None
    trained = ["train", "--data", str(path), "--arch", "simple_cnn", "--image-size", "32"]
    options = ["--epochs", "1", "--batch-size", "8", "--min-calibration-positives", "2"]
    places = ["--store", str(tmp_path / "cli-store"), "--runs-dir", str(tmp_path / "cli-runs")]
    assert main([*trained, *options, *places]) == 0
    assert (
        "copies: 2 group(s) of identical images across the given splits" in capsys.readouterr().out
    )
    command = ["evaluate", "--model", run.model_ref, "--data", str(path), "--split", "val"]
    assert main([*command, "--store", str(run.store)]) == 0
    assert "copies of training images: 2 of 12" in capsys.readouterr().out
    assert (
        main(["models", "ood", run.model_ref, "--data", str(path), "--store", str(run.store)]) == 0
    )
    assert "note: 2 of the 12 validation images have an identical copy" in capsys.readouterr().out


def test_a_run_from_before_copies_were_grouped_is_rebuilt_as_it_was_split(tmp_path: Path) -> None:
    """Its record has no ``copies_together``: the split is rebuilt dealing copies one by one,
    so its sizes match the record and its test split is the one it had."""
    from radlens.training.evaluate import select_split

    root = png_folder(tmp_path / "ds", n_per_class=20)
    _with_copies(root, pairs=6)
    source = drop_undecodable(open_source(root))
    seed = next(
        s
        for s in range(20)
        if split_source(source, seed=s) != split_source(source, seed=s, copies_together=False)
    )
    for grouped in (False, True):
        splits = split_source(source, seed=seed, copies_together=grouped)
        record = {"decode_checked": True, "sizes": {k: len(v) for k, v in splits.items()}}
        if grouped:
            record["copies_together"] = True
        config = {"seed": seed, "split": record}
        assert select_split(open_source(root), "test", config) == splits["test"]


def test_copies_share_a_fold() -> None:
    labels = np.array([0] * 30 + [1] * 30)
    keys = [f"image{i}" for i in range(60)]
    pairs = ((0, 1), (2, 40), (31, 32), (50, 59))  # (2, 40): a copy under the other label
    for a, b in pairs:
        keys[b] = keys[a]
    apart = make_folds("random", None, labels, 5, 0)
    together = make_folds("random", None, labels, 5, 0, keys)
    assert all(together[a] == together[b] for a, b in pairs)
    assert any(apart[a] != apart[b] for a, b in pairs)
    moved = np.flatnonzero(apart != together)
    assert set(moved) <= {1, 40, 32, 59}  # only copies move
    with pytest.raises(ConfigurationError, match="3 copy keys for 60 examples"):
        keep_copies_together(apart, keys[:3])


def test_pneumoniamnist_holds_copies_across_its_official_split() -> None:
    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pneumoniamnist"
    npz = path / "pneumoniamnist_28_trainval.npz"
    if not npz.is_file():
        pytest.skip(f"PneumoniaMNIST is not at {npz} (../shared/data is absent)")
    source = drop_undecodable(open_source(npz))
    report = copies_report(source, split_source(source))
    assert report == {
        "groups": 24,
        "images": 50,
        "groups_across_splits": 8,
        "spanning": {"train+val": 8},
    }


def test_real_files_holding_the_same_image_are_copies(tmp_path: Path) -> None:
    """Real copies from the packaged corpus: pydicom's 693 CT stored uncompressed and under the
    JPEG 2000 syntax (its pixels decode identically), and deid-data's two CT brain files (one
    image, other headers). Under two labels they are refused, named one file per label."""
    import deid_data
    from pydicom.data import get_testdata_file

    brains = sorted((Path(deid_data.__file__).parent / "data" / "humans").glob("ctbrain*.dcm"))
    pairs = [
        (Path(get_testdata_file("693_UNCI.dcm")), Path(get_testdata_file("693_J2KI.dcm"))),
        (brains[0], brains[1]),
    ]
    root = tmp_path / "real"
    for i, (a, b) in enumerate(pairs):
        _copy(a, root / "normal" / f"{i}_{a.name}")
        _copy(b, root / "abnormal" / f"{i}_{b.name}")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        _copy(Path(get_testdata_file(name)), root / "normal" / name)
        _copy(Path(get_testdata_file(name)), root / "abnormal" / f"other_{name}")
    source = drop_undecodable(open_source(root))
    groups = sorted(sorted(Path(e.key).name for e in g) for g in copy_groups(source))
    assert groups == [
        ["0_693_J2KI.dcm", "0_693_UNCI.dcm"],
        ["1_ctbrain1.dcm", "1_ctbrain2.dcm"],
        ["CT_small.dcm", "other_CT_small.dcm"],
        ["MR_small.dcm", "other_MR_small.dcm"],
    ]
    with pytest.raises(ConfigurationError, match=r"^Invalid configuration: 4 group\(s\)"):
        check_copies(source)


def test_a_long_group_under_two_labels_is_named_by_one_file_per_label(tmp_path: Path) -> None:
    root = png_folder(tmp_path / "ds", n_per_class=6)
    src = root / "normal" / "normal_000.png"
    _copy(src, root / "normal" / "again.png")
    for i in range(3):
        _copy(src, root / "abnormal" / f"wrong_{i}.png")
    with pytest.raises(ConfigurationError) as caught:
        check_copies(drop_undecodable(open_source(root)))
    message = str(caught.value)
    assert message.count(" (normal)") == 1 and message.count(" (abnormal)") == 1
    assert message.count("wrong_") == 1 and "(abnormal) (and 3 more copies);" in message

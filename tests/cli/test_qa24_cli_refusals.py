"""QA round 24: malformed options end in one line on stderr and exit 2 (never an "internal
error", exit 1, or a silent success), and the refused command changes nothing."""

from __future__ import annotations

import errno
from pathlib import Path

import keras
import numpy as np
import pytest

from radlens.cli.common import report_error
from radlens.cli.main import main
from radlens.models import registry as registry_module
from radlens.models.registry import ModelRegistry


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("radlens: error: "), err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def _patient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADLENS_PATIENT_HASH_KEY", "radlens-tests-patient-key")


def test_demo_data_negative_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--seed", "-1", "--n-per-class", "4"]) == 2
    assert "seed" in one_error_line(capsys)
    assert not out.exists()


def test_train_config_that_is_binary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_bytes(bytes(range(128, 256)) * 4)
    assert main(["train", "--config", str(config)]) == 2
    assert "not UTF-8" in one_error_line(capsys)


def test_train_data_path_too_long_for_the_file_system(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--data", "x" * 5000, "--runs-dir", str(tmp_path / "runs")]) == 2
    line = one_error_line(capsys)
    assert "5000 characters" in line and len(line) < 400
    assert not (tmp_path / "runs").exists()


def test_any_os_error_naming_a_path_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    exc = FileExistsError(errno.EEXIST, "File exists", "out/report")
    assert report_error(exc) == 2
    assert one_error_line(capsys) == (
        "radlens: error: out/report: file exists; check the path and the file system"
    )
    assert report_error(OSError(errno.EROFS, "Read-only file system", "/store/x")) == 2
    assert "read-only file system" in one_error_line(capsys)


def test_data_check_npy_under_an_npz_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "images.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros((4, 8, 8), np.uint8))
    assert main(["data-check", str(path), "--headers-only"]) == 2
    assert "not an npz archive" in one_error_line(capsys)


def test_evaluate_out_that_is_a_file_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.txt"
    out.write_text("keep me\n")
    store = tmp_path / "store"
    store.mkdir()
    args = ["evaluate", "--data", str(tmp_path), "--store", str(store), "--out", str(out)]
    assert main(args) == 2
    assert "--out" in one_error_line(capsys)
    assert out.read_text() == "keep me\n"


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store with one model, tiny:1."""
    root = tmp_path / "store"
    monkeypatch.setattr(registry_module, "_current_preprocessing_version", lambda: "pp-test")
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, "softmax")(x))
    ModelRegistry(root).save(
        model,
        name="tiny",
        architecture="simple_cnn",
        class_names=["normal", "abnormal"],
        threshold=0.5,
        window=None,
        filters=[],
        metrics={},
        training_config={"epochs": 1},
        data_fingerprint="fp",
        description="test model",
    )
    return root


@pytest.mark.parametrize("command", ["seal", "show"])
@pytest.mark.parametrize("ref", ["", "  "])
def test_models_blank_reference_is_not_the_newest_model(
    store: Path, command: str, ref: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = store / "tiny" / "1" / "manifest.json"
    edited = manifest.read_text().replace('"test model"', '"edited, not sealed"')
    manifest.write_text(edited)  # a seal would adopt this edit
    assert main(["models", command, ref, "--store", str(store)]) == 2
    assert "NAME[:VERSION] is empty" in one_error_line(capsys)
    assert capsys.readouterr().out == ""
    assert manifest.read_text() == edited


def test_models_store_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store.txt"
    path.write_text("x\n")
    assert main(["models", "list", "--store", str(path)]) == 2
    assert "is a file" in one_error_line(capsys)


@pytest.mark.parametrize(
    "args", [["db", "upgrade", "--revision", ""], ["db", "downgrade", ""], ["db", "downgrade", " "]]
)
def test_db_blank_revision(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'radlens.db'}"
    assert main([*args, "--database-url", url]) == 2
    assert "revision is empty" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["audit", "drift"])
def test_since_further_back_than_any_date(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'radlens.db'}"
    for since in ("99999999999d", "999999d"):
        assert main([command, "--since", since, "--database-url", url]) == 2
        assert "--since" in one_error_line(capsys)


def test_audit_blank_since_is_refused_not_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'radlens.db'}"
    assert main(["audit", "--since", "", "--database-url", url]) == 2
    assert "--since must be" in one_error_line(capsys)


def test_keys_on_a_read_only_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "radlens.db"
    assert main(["db", "upgrade", "--database-url", f"sqlite:///{path}"]) == 0
    capsys.readouterr()
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"  # as a read-only mount answers
    assert main(["keys", "create", "--name", "ci", "--database-url", read_only]) == 2
    line = one_error_line(capsys)
    assert "readonly database" in line and "nothing was written" in line
    assert "parameters" not in line and "INSERT" not in line
    assert main(["keys", "revoke", "0123456789ab", "--database-url", read_only]) == 2
    capsys.readouterr()
    assert main(["keys", "list", "--json", "--database-url", f"sqlite:///{path}"]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_models_ood_refuses_data_that_is_not_the_training_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.app.conftest import save_tiny_model

    store = tmp_path / "store"
    sizes = {"train": 175, "val": 112, "test": 33}
    save_tiny_model(store, training_config={"seed": 0, "split": {"sizes": sizes}})
    manifest = store / "tiny" / "1" / "manifest.json"
    before = manifest.read_bytes()
    other = tmp_path / "other.npz"  # splits given whole by its keys: read, not rebuilt
    rng = np.random.default_rng(0)
    np.savez(
        other,
        train_images=rng.integers(0, 255, (40, 32, 32), dtype=np.uint8),
        train_labels=np.arange(40) % 2,
        val_images=rng.integers(0, 255, (20, 32, 32), dtype=np.uint8),
        val_labels=np.arange(20) % 2,
    )
    assert main(["models", "ood", "tiny", "--data", str(other), "--store", str(store)]) == 2
    line = one_error_line(capsys)
    assert "is not tiny:1's training data" in line and "'train': 40" in line
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json", "model.keras"]

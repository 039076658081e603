"""QA round 29: `radlens models` on a store as deployments leave it.

`show --verify` checks the OOD detector file too; a stray version folder named with
non-ASCII digits does not crash `list`; a full disk while sealing is one line, exit 2.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from radlens.cli.main import main
from radlens.models import registry as registry_module
from radlens.models.registry import ModelRegistry
from tests.app.conftest import save_tiny_model


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("radlens: error: "), err
    return lines[0]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """chest:1, with an OOD detector file attached."""
    save_tiny_model(tmp_path / "store", name="chest")
    reg = ModelRegistry(tmp_path / "store")
    staged = reg.staging_dir("chest") / "detector.npz"
    np.savez(staged, mean=np.zeros(3))
    reg.add_ood_detector("chest:1", staged, {"method": "test"})
    return reg.root


def test_show_verify_checks_the_ood_detector(store: Path, capsys) -> None:
    assert main(["models", "show", "chest", "--store", str(store), "--verify"]) == 0
    assert "integrity: the OOD detector file matches its sha256" in capsys.readouterr().out
    (detector,) = (store / "chest" / "1").glob("ood-*.npz")
    detector.write_bytes(detector.read_bytes() + b"x")
    assert main(["models", "show", "chest", "--store", str(store), "--verify"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert detector.name in line and "sha256" in line


def test_a_version_folder_of_superscript_digits_does_not_break_the_listing(
    store: Path, capsys
) -> None:
    (store / "chest" / "²").mkdir()
    assert main(["models", "list", "--store", str(store)]) == 0
    assert "chest" in capsys.readouterr().out
    assert main(["models", "show", "chest:²", "--store", str(store)]) == 2
    assert "a model version is an integer" in one_error_line(capsys.readouterr().err)


def test_a_full_disk_while_sealing_is_one_line(store: Path, capsys, monkeypatch) -> None:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(registry_module, "_write_text_synced", no_space)
    assert main(["models", "seal", "chest:1", "--store", str(store)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "could not be written" in line

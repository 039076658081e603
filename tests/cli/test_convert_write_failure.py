"""`radlens models convert` whose OpenVINO files cannot be written (a full store): one line
naming where it wrote and the free space, exit 2, the store as it was. Before: "OpenVINO could
not convert the model: RuntimeError: basic_ios::clear: iostream error" (QA round 33), which
says nothing of the disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radlens.cli.main import main
from tests.cli.test_models_convert import manifest_path, needs_openvino, one_error_line
from tests.cli.test_models_convert import store as store  # a fixture


@needs_openvino
def test_a_failed_write_names_the_folder_and_the_free_space(
    store: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import openvino

    def full_disk(*args: object, **kwargs: object) -> None:
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino, "save_model", full_disk)
    before = manifest_path(store).read_bytes()
    assert main(["models", "convert", "tiny:1", "--store", str(store)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "writing the OpenVINO files to " in line and "/.staging/" in line, line
    assert "MiB are free on that file system: free space there" in line
    assert manifest_path(store).read_bytes() == before
    assert json.loads(before)["runtimes"] == {}
    assert sorted(p.name for p in (store / "tiny" / "1").iterdir()) == [
        "manifest.json",
        "model.keras",
    ]
    assert list((store / ".staging").iterdir()) == []

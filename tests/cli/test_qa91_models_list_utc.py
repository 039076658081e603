"""`radlens models list` gives each version's creation time in UTC and says so (QA 91: it cut
the manifest's time at the seconds, dropping its offset, so a version sealed with a local
time showed that time unlabelled, while the README says radlens gives every time in UTC)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from radlens.cli.main import main
from radlens.models.registry import ModelRegistry


@pytest.fixture(autouse=True)
def clean_env(clean_radlens_env: None) -> None:
    """No RADLENS_ variable of the developer's shell reaches the commands."""


def _store_with_a_local_time(root: Path) -> Path:
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2, "softmax")(keras.layers.Flatten()(inputs))
    ModelRegistry(root).save(
        keras.Model(inputs, outputs),
        name="chest",
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
    manifest = root / "chest" / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["created_at"] = "2026-03-29T03:00:00+02:00"  # 01:00 UTC, sealed as a site wrote it
    manifest.write_text(json.dumps(data, indent=2))
    assert main(["models", "seal", "chest:1", "--store", str(root)]) == 0
    return root


def test_the_listing_gives_the_creation_time_in_utc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _store_with_a_local_time(tmp_path / "store")
    capsys.readouterr()
    assert main(["models", "list", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.startswith("chest")]
    assert "2026-03-29 01:00:00 UTC" in row, out
    assert "03:00:00" not in row

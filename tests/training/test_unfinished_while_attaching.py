"""`radlens train` publishes its version unfinished and finishes it once the OOD detector is
attached: a service started while the detector is fitted serves the version before (before:
the new version, without its detector), and a run that fails there leaves it unfinished."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from radlens.models.errors import ModelUnfinishedError
from radlens.models.registry import ModelRegistry
from tests.training.conftest import tiny_config


def _config(data: Path, tmp_path: Path) -> Any:
    """One epoch, no TensorBoard histograms or sample images, no OpenVINO conversion: the
    version's life in the store is what is checked, not what the run writes beside it."""
    return tiny_config(
        data, tmp_path, epochs_head=1, histogram_freq=0, tensorboard_samples=0, openvino=False
    )


def test_the_new_version_is_nobodys_newest_until_its_detector_is_attached(
    tiny_demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.training import run as run_module

    first = run_module.train(_config(tiny_demo_data, tmp_path), verbose=0)
    store = ModelRegistry(first.store)
    assert store.resolve(None) == ("tiny", 1)

    seen: dict[str, Any] = {}
    attach = run_module._attach_ood

    def watched(config, data, registry, model_ref, network):  # type: ignore[no-untyped-def]
        seen["ref"] = model_ref
        seen["state"] = store.unfinished("tiny", 2)
        seen["newest"] = store.resolve(None)
        seen["by_name"] = store.resolve("tiny")
        attach(config, data, registry, model_ref, network)

    monkeypatch.setattr(run_module, "_attach_ood", watched)
    second = run_module.train(_config(tiny_demo_data, tmp_path), verbose=0)
    assert seen == {
        "ref": "tiny:2",
        "state": "being written",
        "newest": ("tiny", 1),
        "by_name": ("tiny", 1),
    }
    assert second.model_ref == "tiny:2"
    assert store.unfinished("tiny", 2) is None
    assert store.resolve(None) == ("tiny", 2)
    manifest = store.verify("tiny", 2)
    assert manifest.ood is not None  # finished with its detector

    def broken(*args: object) -> None:
        raise RuntimeError("the detector could not be fitted")

    monkeypatch.setattr(run_module, "_attach_ood", broken)
    with pytest.raises(RuntimeError, match="could not be fitted"):
        run_module.train(_config(tiny_demo_data, tmp_path), verbose=0)
    assert store.unfinished("tiny", 3) is not None  # left unfinished, never served as newest
    assert store.resolve(None) == ("tiny", 2)
    with pytest.raises(ModelUnfinishedError, match="tiny:3 is unfinished"):
        store.check_finished("tiny", 3)

"""The container image's requirement list (scripts/image_requirements.py) and what the image's
CPU-only TensorFlow wheel means for a manifest's framework versions."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

from radlens.models import manifest
from scripts.image_requirements import requirements
from tests.conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _tensorflow_pin() -> str:
    pins = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("tensorflow==")]
    assert len(pins) == 1, pins
    return pins[0].split("==")[1]


def test_cpu_image_swaps_tensorflow_for_the_cpu_wheel_of_the_same_version():
    lines = requirements(PYPROJECT, "cpu")
    assert f"tensorflow-cpu=={_tensorflow_pin()}" in lines
    assert not [line for line in lines if line.startswith("tensorflow==")]
    # every other pin is passed through unchanged
    others = [d for d in PYPROJECT["project"]["dependencies"] if not d.startswith("tensorflow==")]
    assert set(others) <= set(lines)


def test_gpu_image_takes_the_cuda_extra_instead_of_the_plain_pin():
    lines = requirements(PYPROJECT, "gpu")
    assert f"tensorflow[and-cuda]=={_tensorflow_pin()}" in lines
    assert not [line for line in lines if line.startswith(("tensorflow==", "tensorflow-cpu"))]


def test_unknown_extras_and_a_missing_pin_are_refused():
    with pytest.raises(ValueError, match="Received: 'tpu'"):
        requirements(PYPROJECT, "tpu")
    no_tf = {"project": {"dependencies": ["numpy==2"], "optional-dependencies": {"cpu": []}}}
    with pytest.raises(ValueError, match="tensorflow-cpu"):
        requirements(no_tf, "cpu")


def test_the_script_prints_one_line_per_pin_and_a_one_line_error():
    script = REPO_ROOT / "scripts" / "image_requirements.py"
    ok = subprocess.run(
        [sys.executable, str(script), "cpu", str(REPO_ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and ok.stdout.splitlines() == requirements(PYPROJECT, "cpu")
    bad = subprocess.run(
        [sys.executable, str(script), "nope", str(REPO_ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'nope'" in bad.stderr


def test_manifest_records_tensorflow_cpu_as_tensorflow(monkeypatch):
    real = metadata.version

    def version(dist: str) -> str:
        if dist == "tensorflow":
            raise metadata.PackageNotFoundError(dist)
        return "9.9.9" if dist == "tensorflow-cpu" else real(dist)

    monkeypatch.setattr(manifest.metadata, "version", version)
    assert manifest.framework_versions()["tensorflow"] == "9.9.9"

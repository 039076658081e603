"""The image built and run for real (scripts/container_check.py).

The full check needs a Docker engine and builds an image with TensorFlow (a cold build
downloads about 0.6 GB of wheels: 6-8 minutes here; with the layer cache, seconds), so it
runs only when RADLENS_CONTAINER_CHECK=1: .ci/run sets it when it can start a Docker engine
on the machine. Without it the test is skipped and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SIZE_TARGET_BYTES = 2.5e9  # issue 22: the CPU image under 2.5 GB


def _check(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "scripts.container_check", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_without_a_docker_engine_the_check_says_it_was_skipped(tmp_path):
    # a PATH with python but no docker client
    (tmp_path / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(tmp_path)}
    done = _check(env=env)
    assert done.returncode == 2
    assert done.stdout.startswith("container check skipped: no Docker engine answers")


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_image_builds_migrates_trains_serves_and_predicts():
    if os.environ.get("RADLENS_CONTAINER_CHECK") != "1":
        pytest.skip(
            "container check not run: set RADLENS_CONTAINER_CHECK=1 with a Docker engine "
            "running (.ci/run does when it can start one); make container-check runs it by hand"
        )
    if shutil.which("docker") is None:
        pytest.fail("RADLENS_CONTAINER_CHECK=1 but there is no docker client")
    volumes_before = _docker_names("volume", "ls", "-q")
    done = _check("--image", "radlens:ci", timeout=2300)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    size = int(re.search(r"image size: [\d.]+ GB \((\d+) bytes\)", done.stdout).group(1))
    assert size < SIZE_TARGET_BYTES, f"CPU image is {size / 1e9:.2f} GB (target < 2.5 GB)"
    ready = float(re.search(r"API ready after: ([\d.]+) s", done.stdout).group(1))
    assert ready <= 60.0
    assert "prediction: " in done.stdout and "training run: " in done.stdout
    # torn down: no container of the check left, no volume more than before
    assert not [n for n in _docker_names("ps", "-a", "--format", "{{.Names}}") if "check" in n]
    assert _docker_names("volume", "ls", "-q") <= volumes_before


def _docker_names(*args: str) -> set[str]:
    listed = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return set(listed.stdout.split())

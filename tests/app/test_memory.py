"""app/memory.py: glibc keeps freed memory for the next upload instead of faulting it in again.

Counted in page faults (ru_minflt), not timed: each check runs in a fresh interpreter, since
mallopt changes the whole process.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from radlens.app.memory import keep_freed_memory
from tests.app.conftest import TestClient, make_settings

glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# What the service does with a JPEG 2000 upload, reduced to its allocations: pydicom reads the
# file, then joins the codestream's fragments (get_frame: 66 fragments, 4.3 MB).
PROBE = """
import json, resource, sys
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import get_frame
from radlens.app.memory import keep_freed_memory

applied = keep_freed_memory(int(sys.argv[1]))
calls = 12
for warm in (True, False):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        ds = dcmread(get_testdata_file("RG1_J2KR.dcm"))
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        del ds, frame
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults_per_upload": faults / calls}))
"""


def probe(keep_mib: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(keep_mib)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_freed_upload_buffers_are_reused_not_faulted_in_again() -> None:
    from pydicom.data import get_testdata_file

    if get_testdata_file("RG1_J2KR.dcm") is None:
        pytest.skip("pydicom-data's RG1_J2KR.dcm is not installed")
    default, kept = probe(0), probe(64)
    assert (default["applied"], kept["applied"]) == (False, True)
    # a 4.3 MB buffer is ~1,050 pages: glibc's defaults fault them in again on every upload
    assert default["faults_per_upload"] > 1000, default
    assert kept["faults_per_upload"] < default["faults_per_upload"] / 4, (default, kept)


def test_zero_leaves_glibc_alone() -> None:
    assert keep_freed_memory(0) is False


@glibc
def test_the_service_applies_it_at_start_up(
    tmp_path: Path, model_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from radlens.app.main import create_app

    settings = make_settings(f"sqlite:///{tmp_path / 'radlens.db'}", model_store)
    assert settings.malloc_keep_mib == 64
    with (
        caplog.at_level(logging.INFO, logger="radlens.app.memory"),
        TestClient(create_app(settings)),
    ):
        pass
    assert "up to 64 MiB of freed memory kept" in caplog.text

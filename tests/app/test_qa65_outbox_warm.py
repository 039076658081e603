"""A service with DICOM destinations imports highdicom at start-up (QA round 65).

A re-post of an instance on another replica waits up to ``app.outbox.CLAIM_WAIT_S`` (5 s) for
the first replica's queue row of its results; the first SR build imported highdicom on first
use (3.3 s of an 8.5 s build on a loaded 2-core node), so the wait ran out and the results
were queued, and sent, twice. Checked in a fresh interpreter: this test process has imported
highdicom long before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

SCRIPT = r"""
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from radlens.app.main import create_app
from radlens.app.migrate import upgrade
from tests.app.conftest import make_settings

tmp, store, destinations = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
url = f"sqlite:///{tmp / 'db.sqlite'}"
upgrade(url)
extra = {"dicom_destinations": destinations, "dicom_outbox_dir": tmp / "spool"}
settings = make_settings(url, store, **(extra if destinations else {}))
before = "highdicom" in sys.modules
with TestClient(create_app(settings)) as client:
    ready = client.get("/healthz").status_code
    after = "highdicom" in sys.modules
print(json.dumps({"before": before, "after": after, "healthz": ready}))
"""


def _started(tmp_path: Path, store: Path, destinations: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(store), destinations],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_service_with_destinations_imports_highdicom_at_start(
    model_store: Path, tmp_path: Path
) -> None:
    # a closed port is fine: nothing is sent before a prediction
    started = _started(tmp_path, model_store, "PACS@127.0.0.1:9")
    assert started == {"before": False, "after": True, "healthz": 200}

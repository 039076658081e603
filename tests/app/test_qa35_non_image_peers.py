"""QA round 35 with real senders: a whole study holding a report, a dose report, a presentation
state, a key object selection, a PDF and an RT plan beside its CT images, sent to radlens'
Storage SCP by Debian's Orthanc ("Send to" of the study: ``POST /modalities/radlens/store``)
and by dcmtk's ``storescu`` of the study's folder. Both failed: the classes that hold no image
were rejected at association negotiation, so Orthanc's job failed as a whole and storescu
exited non-zero. Each test skips when its binary is absent (Debian: ``apt-get install orthanc
dcmtk``; .ci/run installs them)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Databases, new_uid
from tests.app.test_qa35_non_image_dimse import (
    count,
    encoded,
    everything_stored,
    mixed_study,
    rt_object,
    started,
)

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def _study(study: str) -> tuple[list[bytes], list[bytes]]:
    """(images, the rest) of a mixed study, as files."""
    shown, rest = mixed_study(study)
    rest.append(rt_object("rtplan", study))
    return [encoded(ds) for ds in shown], [encoded(ds) for ds in rest]


@pytest.mark.skipif(
    not Path(ORTHANC).is_file(),
    reason="Orthanc is not installed (Debian: apt-get install orthanc; .ci/run installs it)",
)
def test_orthanc_sends_a_whole_mixed_study(
    tmp_path: Path, databases: Databases, model_store: Path
) -> None:
    from tests.app.test_orthanc import Orthanc
    from tests.app.test_outbox import free_port

    radlens_port = free_port()
    orthanc = Orthanc(tmp_path, radlens_port)
    try:
        with started(
            databases, model_store, dimse_port=radlens_port, dimse_allowed_ae_titles="ORTHANC"
        ) as app:
            study = new_uid()
            shown, rest = _study(study)
            for data in [*shown, *rest]:
                orthanc.post("/instances", data=data)
            (orthanc_study,) = orthanc.get("/studies")
            assert len(orthanc.get(f"/studies/{orthanc_study}/instances")) == 8
            # what a user's "Send to" or a routing rule on the study does
            job = orthanc.post(
                "/modalities/radlens/store",
                json={"Resources": [orthanc_study], "Synchronous": True},
            )
            assert (job["InstancesCount"], job["FailedInstancesCount"]) == (8, 0)
            assert count(app, "SELECT count(*) FROM predictions") == len(shown)
            assert "QA35-SYNTH" not in everything_stored(app)
    finally:
        orthanc.stop()


@pytest.mark.skipif(
    not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").is_file(),
    reason="Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc "
    "orthanc-dicomweb; .ci/run installs them)",
)
def test_orthanc_stows_a_whole_mixed_study(tmp_path: Path, model_store: Path) -> None:
    """Orthanc's DICOMweb client failed the whole STOW-RS job (HTTP 500, "only able to receive
    2 instances out of 8") when any instance failed, and each report did."""
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade
    from tests.app.conftest import create_api_key, make_settings
    from tests.app.test_docs_browser import _Server
    from tests.app.test_orthanc import Orthanc
    from tests.app.test_outbox import free_port

    url = f"sqlite:///{tmp_path / 'radlens.db'}"
    upgrade(url)
    key = create_api_key(url)
    app = create_app(make_settings(url, model_store, auth="enabled"))
    with _Server(app) as base:
        orthanc = Orthanc(
            tmp_path,
            free_port(),  # radlens' DIMSE port: unused (radlens receives by STOW-RS here)
            {"Url": f"{base}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {key}"}},
        )
        try:
            shown, rest = _study(new_uid())
            for data in [*shown, *rest]:
                orthanc.post("/instances", data=data)
            (orthanc_study,) = orthanc.get("/studies")
            orthanc.post(  # asserts Orthanc's 200
                "/dicom-web/servers/radlens/stow",
                json={"Resources": [orthanc_study], "Synchronous": True},
            )
        finally:
            orthanc.stop()
        assert count(app, "SELECT count(*) FROM predictions") == len(shown)
        assert "QA35-SYNTH" not in everything_stored(app)


@pytest.fixture()
def scp(databases: Databases, model_store: Path) -> Iterator[Any]:
    with started(databases, model_store) as app:
        yield app


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk (storescu) is not installed")
def test_storescu_sends_the_study_folder(scp: Any, tmp_path: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    shown, rest = _study(new_uid())
    for i, data in enumerate([*shown, *rest]):
        (folder / f"{i:03d}.dcm").write_bytes(data)
    done = subprocess.run(
        [
            *("storescu", "-R", "+sd", "-aet", "STORESCU", "-aec", "RADLENS"),
            *("127.0.0.1", str(scp.state.dimse.port), str(folder)),
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"No presentation context" not in done.stderr
    assert count(scp, "SELECT count(*) FROM predictions") == len(shown)

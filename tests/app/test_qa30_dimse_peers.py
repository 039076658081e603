"""QA round 30: the Storage SCP as a PACS integrator meets it (app/dimse.py).

- radlens's own SR and Secondary Capture, once the outbox has filed them into the source
  study, come back when the PACS forwards that study ("Send to", a routing rule). The SC was
  predicted (a Grad-CAM of the Grad-CAM, sent back in turn: one more generation per forward)
  and the SR was rejected at negotiation, which failed Orthanc's whole store job ("Cannot
  transcode from 1.2.840.10008.1.2.1 to one of [ ]"). Both are now acknowledged, not predicted.
- an SR class a site lists in RADLENS_DIMSE_SOP_CLASSES is refused with 0x0122 (SOP class not
  supported), as docs/pacs-integration.md says; it was 0xC000. (Since QA round 35 only under
  RADLENS_NON_IMAGE_INSTANCES=refuse: by default every report is acknowledged.)
- with RADLENS_DIMSE_ACK=queued a deflated data set was inflated whole (pynetdicom's
  ``event.dataset``) before anything checked its size, and acknowledged: a deflate bomb took
  about two bytes of memory per inflated byte (600 KB on the wire: +1.3 GB). It is refused
  now, as in committed mode.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import Databases, app_client, dicom_bytes, new_uid

pytest.importorskip("pynetdicom")
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
)

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
DEFLATED = "1.2.840.10008.1.2.1.99"


def _count(app: Any, sql: str) -> int:
    from sqlalchemy import text

    with app.state.resources.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


@contextmanager
def _app(databases: Databases, model_store: Path, **overrides: Any) -> Iterator[tuple[Any, Any]]:
    """``app_client`` as a context manager: the app stops even when an assertion fails."""
    started = app_client(databases, model_store, **overrides)
    try:
        yield next(started)
    finally:
        started.close()


def _associate(port: int, *contexts: Any) -> Any:
    ae = AE(ae_title="ORTHANC")
    for context in contexts:
        if isinstance(context, tuple):
            ae.add_requested_context(*context)
        else:
            ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLENS")
    assert assoc.is_established
    return assoc


@pytest.fixture(scope="module", params=[None, "CTImageStorage"], ids=["default", "ct-only"])
def node(
    request: pytest.FixtureRequest, databases: Databases, model_store: Path
) -> Iterator[tuple[Any, Any]]:
    """A committed-mode SCP with the default classes, and one a site restricted to CT."""
    yield from app_client(databases, model_store, dimse_port=0, dimse_sop_classes=request.param)


def _outputs(client: Any) -> tuple[bytes, bytes]:
    """The SR and Secondary Capture radlens makes of a CT instance, as the outbox sends them."""
    response = client.post(
        "/v1/predictions?explain=true",
        files={"file": ("ct.dcm", dicom_bytes(seed=30), "application/dicom")},
    )
    assert response.status_code in (200, 201), response.text
    prediction = response.json()["id"]
    sr = client.get(f"/v1/predictions/{prediction}/dicom/sr")
    sc = client.get(f"/v1/predictions/{prediction}/dicom/secondary-capture")
    assert sr.status_code == sc.status_code == 200
    return sr.content, sc.content


def _send_back(app: Any, *instances: bytes) -> list[int]:
    """C-STORE ``instances`` on one association, as Orthanc's "Send to" of a study does."""
    assoc = _associate(
        app.state.dimse.port, CTImageStorage, COMPREHENSIVE_3D_SR, SecondaryCaptureImageStorage
    )
    statuses = [int(assoc.send_c_store(dcmread(io.BytesIO(data))).Status) for data in instances]
    assoc.release()
    return statuses


def test_a_grad_cam_sent_back_is_acknowledged_and_not_predicted_again(
    node: tuple[Any, Any],
) -> None:
    """The loop: the SC was predicted like any secondary capture, and its own SC sent back."""
    client, app = node
    _sr, sc = _outputs(client)
    before = _count(app, "SELECT count(*) FROM predictions")
    assert _send_back(app, sc) == [0x0000]
    assert _count(app, "SELECT count(*) FROM predictions") == before


def test_a_study_holding_radlens_results_can_be_sent_to_radlens_again(
    node: tuple[Any, Any],
) -> None:
    """The SR was rejected at negotiation, which failed Orthanc's whole store job; now the
    study goes through and only its image is predicted."""
    client, app = node
    sr, sc = _outputs(client)
    before = _count(app, "SELECT count(*) FROM predictions")
    assert _send_back(app, sr, sc, dicom_bytes(seed=31)) == [0x0000, 0x0000, 0x0000]
    assert _count(app, "SELECT count(*) FROM predictions") == before + 1


def test_results_sent_back_are_not_queued_either(
    tmp_path: Path, databases: Databases, model_store: Path
) -> None:
    inbox = tmp_path / "inbox"
    with _app(databases, model_store, dimse_port=0, dimse_ack="queued", dimse_inbox_dir=inbox) as (
        client,
        app,
    ):
        sr, sc = _outputs(client)
        before = _count(app, "SELECT count(*) FROM predictions")
        assert _send_back(app, sr, sc) == [0x0000, 0x0000]
        assert [p.name for p in inbox.iterdir()] == []
        assert _count(app, "SELECT count(*) FROM predictions") == before


def test_another_systems_3d_sr_is_acknowledged_and_not_predicted(node: tuple[Any, Any]) -> None:
    """It was refused per instance with 0x0122, which failed the sender's job as surely; since
    QA round 35 every report is acknowledged (RADLENS_NON_IMAGE_INSTANCES=acknowledge, the
    default; with ``refuse`` it is 0x0122 again: the test below)."""
    client, app = node
    sr, _sc = _outputs(client)
    foreign = dcmread(io.BytesIO(sr))
    foreign.Manufacturer = "OTHER AI"
    foreign.SeriesDescription = "another vendor's report"
    foreign.SeriesNumber = 7
    before = _count(app, "SELECT count(*) FROM predictions")
    assoc = _associate(app.state.dimse.port, COMPREHENSIVE_3D_SR)
    status = assoc.send_c_store(foreign)
    assoc.release()
    assert status.Status == 0x0000
    assert _count(app, "SELECT count(*) FROM predictions") == before


@pytest.mark.parametrize("ack", ["committed", "queued"])
def test_an_sr_class_the_site_lists_is_refused_with_0x0122(
    ack: str, tmp_path: Path, databases: Databases, model_store: Path
) -> None:
    """docs/pacs-integration.md: a class without pixel data may be listed, and each such
    instance is refused with 0x0122. It was 0xC000; a CT without pixel data still is. Under
    RADLENS_NON_IMAGE_INSTANCES=refuse since QA round 35 (by default an SR is acknowledged)."""
    report = dcmread(get_testdata_file("test-SR.dcm"))  # pydicom's Comprehensive SR
    ct = dcmread(io.BytesIO(dicom_bytes(seed=32)))
    del ct.PixelData
    with _app(
        databases,
        model_store,
        dimse_port=0,
        dimse_ack=ack,
        dimse_inbox_dir=tmp_path / "inbox",
        dimse_sop_classes="CTImageStorage,ComprehensiveSRStorage",
        non_image_instances="refuse",
    ) as (client, app):
        assoc = _associate(app.state.dimse.port, CTImageStorage, ComprehensiveSRStorage)
        refused = assoc.send_c_store(report)
        broken = assoc.send_c_store(ct)
        assoc.release()
        assert (refused.Status, refused.ErrorComment) == (
            0x0122,
            "No pixel data: send an image instance",
        )
        assert broken.Status == 0xC000
        assert _count(app, "SELECT count(*) FROM predictions") == 0
        assert client.get("/healthz").status_code == 200


def _deflate_bomb(inflated_mib: int) -> Any:
    """A CT instance under Deflated Explicit VR Little Endian whose data set inflates to
    ``inflated_mib`` MiB (a private OB element of zeros), as a pydicom dataset pynetdicom
    sends deflated."""
    ds = dcmread(io.BytesIO(dicom_bytes(seed=33)))
    ds.add_new(0x00290010, "LO", "QA30")
    ds.add_new(0x00291010, "OB", bytes(inflated_mib * 1024 * 1024))
    ds.file_meta.TransferSyntaxUID = DEFLATED
    return ds


def test_a_deflate_bomb_is_refused_before_it_is_queued(
    tmp_path: Path, databases: Databases, model_store: Path
) -> None:
    inbox = tmp_path / "inbox"
    bomb = _deflate_bomb(64)  # > 8 bytes per pixel of 4 Mpx + 16 MiB (models/dicomread.py)
    on_the_wire = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    wire = on_the_wire.compress(bytes(64 * 1024 * 1024)) + on_the_wire.flush()
    assert len(wire) < 100_000  # what the sender sends: well under RADLENS_MAX_UPLOAD_BYTES
    with _app(
        databases,
        model_store,
        dimse_port=0,
        dimse_ack="queued",
        dimse_inbox_dir=inbox,
        max_pixels=4_000_000,
    ) as (client, app):
        assoc = _associate(app.state.dimse.port, (CTImageStorage, [DEFLATED]))
        status = assoc.send_c_store(bomb)
        assoc.release()
        assert (status.Status, status.ErrorComment) == (
            0xC000,
            "Deflated data set too large: send it uncompressed",
        )
        assert [p.name for p in inbox.iterdir()] == []  # never acknowledged, never queued
        assert _count(app, "SELECT count(*) FROM predictions") == 0
        assert client.get("/healthz").status_code == 200


def test_a_deflated_instance_within_the_limit_is_still_queued_and_predicted(
    tmp_path: Path, databases: Databases, model_store: Path
) -> None:
    from tests.app.test_outbox import wait_for

    ds = dcmread(io.BytesIO(dicom_bytes(seed=34, study=new_uid())))
    ds.file_meta.TransferSyntaxUID = DEFLATED
    with _app(
        databases,
        model_store,
        dimse_port=0,
        dimse_ack="queued",
        dimse_inbox_dir=tmp_path / "inbox",
    ) as (_client, app):
        assoc = _associate(app.state.dimse.port, (CTImageStorage, [DEFLATED]))
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        wait_for(lambda: _count(app, "SELECT count(*) FROM predictions") == 1, 60, "the prediction")


def test_the_orthanc_stow_route_in_the_docs_is_orthancs() -> None:
    """The '### Orthanc' STOW-RS recipe named radlens's own path prefix (``/dicomweb/``) for
    Orthanc's DICOMweb client, whose routes live under ``/dicom-web/`` (as tested against
    Orthanc in tests/app/test_orthanc.py): an integrator's POST answered 404. It also said
    Orthanc reports 202 with the failed instances; Orthanc's job fails as a whole."""
    root = Path(__file__).resolve().parents[2]
    doc = " ".join((root / "docs" / "pacs-integration.md").read_text().split())
    tested = (root / "tests" / "app" / "test_orthanc.py").read_text()
    assert "/dicom-web/servers/radlens/stow" in tested
    assert "/dicomweb/servers/" not in doc
    assert "Orthanc reports 200/202" not in doc
    assert "only able to receive" in doc  # what Orthanc says when an instance failed

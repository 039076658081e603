"""pynetdicom's own log lines hold no UID as received (QA round 31): at DEBUG it logged every
C-STORE's Affected SOP Instance UID, and at WARNING any non-conformant one ("Non-conformant
'Affected SOP Instance UID' value 'ZZPHIUIDQQMRN7431'"), in the log of a site that
pseudonymises UIDs. A real C-STORE to a real radlens SCP, the service's log at DEBUG."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage

from radlens.app.dicomlog import quiet_pynetdicom
from tests.app.conftest import Databases, app_client, dicom_bytes
from tests.app.test_qa30_dimse_peers import _associate

MARK = "ZZPHIUIDQQMRN7431"


@pytest.fixture()
def node(databases: Databases, model_store: Path) -> Iterator[tuple[Any, Any]]:
    yield from app_client(databases, model_store, dimse_port=0)


def test_a_c_store_logs_no_uid_as_received(
    node: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    _client, app = node
    caplog.set_level(logging.DEBUG)
    logging.getLogger("pynetdicom").setLevel(logging.NOTSET)  # as a fresh process has it
    quiet_pynetdicom()
    ds = dcmread(io.BytesIO(dicom_bytes(seed=40)))
    ds.SOPInstanceUID = f"1.2.{MARK}"  # letters: non-conformant, as anonymisers write
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    conformant = dcmread(io.BytesIO(dicom_bytes(seed=41)))
    assoc = _associate(app.state.dimse.port, CTImageStorage)
    assoc.send_c_store(ds)
    status = assoc.send_c_store(conformant)
    assoc.release()
    assert int(status.Status) == 0x0000
    text = caplog.text
    assert MARK not in text, [line for line in text.splitlines() if MARK in line]
    assert str(conformant.SOPInstanceUID) not in text
    assert "Non-conformant 'Affected SOP Instance UID' value (not shown)" in text


def test_an_explicit_pynetdicom_level_is_kept() -> None:
    logger = logging.getLogger("pynetdicom")
    before = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        quiet_pynetdicom()
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)

"""QA round 30: what the outbox says when a PACS will not take radlens' results
(app/outbox.py), the last_error ``GET /v1/dicom/outbox`` shows an integrator.

The two usual set-up mistakes looked like outages: a destination AE title the PACS does not
answer to was "association rejected by PACS@host:port" (the PACS' reason, "Called AE title not
recognised", was dropped), and a PACS that does not know radlens' own AE title (Orthanc accepts
the association and aborts it at the C-STORE) was "no response (timeout or abort)", and every
further object of that pass "not sent: The association with a peer SCP must be established
before sending a C-STORE request".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import dicom_bytes
from tests.app.test_outbox import free_port, make_outbox, outbox_settings

pytest.importorskip("pynetdicom")
from pynetdicom import AE, AllStoragePresentationContexts, evt


class PACS:
    """A pynetdicom Storage SCP called ``PACS`` that answers only to its own title, and
    (``abort_on_store``) aborts the association at the C-STORE, as Orthanc does for a calling
    AE title missing from its DicomModalities."""

    def __init__(self, abort_on_store: bool = False) -> None:
        self.stores = 0
        self.abort_on_store = abort_on_store
        self.port = free_port()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.require_called_aet = True
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> int:
        self.stores += 1
        if self.abort_on_store:
            event.assoc.abort()
        return 0x0000


@pytest.fixture()
def pacs() -> Iterator[PACS]:
    scp = PACS()
    yield scp
    scp.server.shutdown()


@pytest.fixture()
def aborting_pacs() -> Iterator[PACS]:
    scp = PACS(abort_on_store=True)
    yield scp
    scp.server.shutdown()


def test_a_wrong_destination_ae_title_is_named_with_the_pacs_reason(
    tmp_path: Path, model_store: Path, pacs: PACS
) -> None:
    settings = outbox_settings("sqlite://", model_store, tmp_path, f"ARCHIVE@127.0.0.1:{pacs.port}")
    outbox = make_outbox(settings)
    outbox.enqueue("p", "sr", dicom_bytes())
    outbox.deliver_due()
    (entry,) = outbox.entries()
    error = entry.last_error or ""
    assert error.startswith(f"association rejected by ARCHIVE@127.0.0.1:{pacs.port}: "), error
    assert "Called AE title not recognised" in error
    assert "radlens calls as RADLENS" in error
    assert pacs.stores == 0


def test_a_closed_port_says_what_to_check(tmp_path: Path, model_store: Path) -> None:
    port = free_port()  # nothing listens
    settings = outbox_settings("sqlite://", model_store, tmp_path, f"PACS@127.0.0.1:{port}")
    outbox = make_outbox(settings)
    outbox.enqueue("p", "sr", dicom_bytes())
    outbox.deliver_due()
    (entry,) = outbox.entries()
    assert entry.last_error == (
        f"association failed by PACS@127.0.0.1:{port}: no connection, or closed at once "
        "(check its host and port, and that it knows AE title RADLENS)"
    )


def test_a_pacs_that_aborts_at_the_c_store_names_radlens_title_for_every_object(
    tmp_path: Path, model_store: Path, aborting_pacs: PACS
) -> None:
    settings = outbox_settings(
        "sqlite://",
        model_store,
        tmp_path,
        f"PACS@127.0.0.1:{aborting_pacs.port}",
        dimse_ae_title="RADLENS-AI",
    )
    outbox = make_outbox(settings)
    outbox.enqueue("p1", "sr", dicom_bytes(seed=1))
    outbox.enqueue("p2", "sr", dicom_bytes(seed=2))
    outbox.deliver_due()
    entries = outbox.entries()
    assert [e.attempts for e in entries] == [1, 1]  # both retried, none lost
    for entry in entries:
        error = entry.last_error or ""
        assert error.startswith("no response (aborted by the destination"), error
        assert "check that it lets AE title RADLENS-AI store from radlens' address" in error
    assert aborting_pacs.stores == 1  # the second was not tried on the aborted association

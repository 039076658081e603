"""Which storage SOP classes the DICOM Storage SCP accepts (app/dimse.py,
RADLENS_DIMSE_SOP_CLASSES).

Up to QA round 20 the SCP took CR, DX, CT, MR (and their enhanced forms) and secondary
captures only: a mammogram or an ultrasound image that POST /v1/predictions predicts was
rejected at association, so a model trained on them could not be fed from a PACS. The default
is now every acquired radiology image class the preprocessing reads; the setting narrows (or
widens) it, and a wrong entry stops start-up naming it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, dicom_bytes, make_settings

pynetdicom = pytest.importorskip("pynetdicom")
from pydicom import dcmread  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    PositronEmissionTomographyImageStorage,
    SegmentationStorage,
    UltrasoundImageStorage,
    Verification,
)

ASKED = (
    Verification,
    CTImageStorage,
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    UltrasoundImageStorage,
    PositronEmissionTomographyImageStorage,
    SegmentationStorage,
    EncapsulatedPDFStorage,
)


@pytest.fixture()
def start(databases: Databases, model_store: Path) -> Iterator[Any]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    clients: list[TestClient] = []

    def started(**settings: Any) -> tuple[TestClient, int]:
        url = databases.new()
        upgrade(url)
        app = create_app(make_settings(url, model_store, dimse_port=0, **settings))
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client, int(app.state.dimse.port)

    yield started
    for client in clients:
        client.__exit__(None, None, None)


def _accepted(port: int) -> tuple[Any, set[str]]:
    """An association asking for every class in ASKED, and the classes the SCP accepted."""
    ae = AE(ae_title="SENDER")
    for sop_class in ASKED:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLENS")
    assert assoc.is_established
    return assoc, {str(c.abstract_syntax) for c in assoc.accepted_contexts}


def _mammogram() -> Any:
    ds = dcmread(io.BytesIO(dicom_bytes(rows=32, columns=24, seed=9)))
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "MG"
    del ds.RescaleSlope, ds.RescaleIntercept
    return ds


def test_mammography_ultrasound_and_pet_are_accepted_and_a_mammogram_is_predicted(
    start: Any,
) -> None:
    client, port = start()
    assoc, accepted = _accepted(port)
    try:
        # a segmentation and a PDF are not acquired images: not predicted, but accepted and
        # acknowledged since QA round 35 (RADLENS_NON_IMAGE_INSTANCES; rejected before, which
        # failed a PACS's whole-study send; tests/app/test_qa35_non_image_dimse.py)
        assert accepted == {str(c) for c in ASKED}
        ds = _mammogram()
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    listed = client.get("/v1/predictions", params={"limit": 10}).json()["items"]
    assert [(p["sop_instance_uid"], p["modality"]) for p in listed] == [
        (str(ds.SOPInstanceUID), "MG")
    ]


def test_the_setting_replaces_the_list(start: Any) -> None:
    _, port = start(dimse_sop_classes="CTImageStorage, 1.2.840.10008.5.1.4.1.1.1.2")
    assoc, accepted = _accepted(port)
    assoc.release()
    assert accepted == {
        str(Verification),
        str(CTImageStorage),
        str(DigitalMammographyXRayImageStorageForPresentation),  # given by its UID
        # the list is of image classes; those that hold no image are acknowledged whatever
        # it says, unless RADLENS_NON_IMAGE_INSTANCES=refuse (QA round 35)
        str(SegmentationStorage),
        str(EncapsulatedPDFStorage),
    }


NOTHING_GATED = "so every image class the SCP accepts is predicted (30 classes"


def test_a_model_stating_no_intended_use_is_warned_about(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The fixture's model states no intended use: every class of the default list is then
    predicted, which a PACS routing everything should not meet unannounced."""
    import logging

    with caplog.at_level(logging.WARNING, logger="radlens.app.dimse"):
        start()
        start(dimse_sop_classes="CTImageStorage")  # the site chose: no warning
    warned = [r.getMessage() for r in caplog.records if NOTHING_GATED in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("DIMSE: model tiny:1 states no intended use, so every")


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("CTImageStorag", "'CTImageStorag' is not a storage SOP class"),
        ("StudyRootQueryRetrieveInformationModelFind", "is not a storage SOP class"),
        ("1.2.3.4", "'1.2.3.4' is not a storage SOP class"),
        (" , ", "no storage SOP class given"),
    ],
)
def test_a_wrong_entry_is_refused_naming_it(value: str, named: str) -> None:
    from pydantic import ValidationError

    from radlens.app.settings import Settings

    with pytest.raises(ValidationError, match=named):
        Settings(dimse_sop_classes=value)

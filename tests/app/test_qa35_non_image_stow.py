"""QA round 35, STOW-RS (app/routes/dicomweb.py): a study POSTed whole holds a report, a dose
report, a presentation state, a key object selection, a PDF, an RT plan beside its images.
Each such instance was a failure (0x0122, or the gate's 0xC000), so the request was a 202, or
a 409 for a body without images, and Orthanc failed the study's whole STOW-RS job. They are
now listed in the ReferencedSOPSequence with ``(0099,1003)`` "non-image", as radlens' own
outputs are with "radlens-output", and not predicted (RADLENS_NON_IMAGE_INSTANCES=acknowledge,
the default); ``refuse`` keeps the failures. An image without pixel data still fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.app.conftest import Databases, Service, app_client, dicom_bytes, new_uid
from tests.app.test_qa35_non_image_dimse import (
    encoded,
    everything_stored,
    mixed_study,
    rt_object,
)
from tests.app.test_stowrs import multipart_related, parse


def _post(client: Any, instances: list[Dataset | bytes], url: str = "/dicomweb/studies") -> Any:
    body, content_type = multipart_related(
        [i if isinstance(i, bytes) else encoded(i) for i in instances]
    )
    return client.post(url, content=body, headers={"Content-Type": content_type})


def _states(body: Dataset) -> dict[str, str]:
    """SOP Instance UID -> (0099,1003) of each referenced instance."""
    return {
        str(i.ReferencedSOPInstanceUID): i[0x00991003].value for i in body.ReferencedSOPSequence
    }


def test_a_mixed_study_is_a_200_and_only_its_images_are_predicted(service: Service) -> None:
    study = new_uid()
    shown, rest = mixed_study(study)
    rest.append(rt_object("rtplan", study))
    # an image whose header names its report's class: the byte search for a non-image class
    # is only a hint, the SOP Class UID decides
    reference = Dataset()
    reference.ReferencedSOPClassUID = rest[0].SOPClassUID
    reference.ReferencedSOPInstanceUID = rest[0].SOPInstanceUID
    shown[0].ReferencedInstanceSequence = [reference]
    assert str(rest[0].SOPClassUID).encode() in encoded(shown[0])[:4096]
    before = service.count()
    response = _post(service.client, [shown[0], *rest, shown[1]], f"/dicomweb/studies/{study}")
    assert response.status_code == 200, response.text
    body = parse(response)
    assert "FailedSOPSequence" not in body
    states = _states(body)
    assert [states[str(ds.SOPInstanceUID)] for ds in shown] == ["created", "created"]
    assert [states[str(ds.SOPInstanceUID)] for ds in rest] == ["non-image"] * len(rest)
    for item in body.ReferencedSOPSequence:
        if item[0x00991003].value == "non-image":
            assert 0x00991001 not in item and 0x00081190 not in item  # no prediction
            sent = next(ds for ds in rest if ds.SOPInstanceUID == item.ReferencedSOPInstanceUID)
            assert item.ReferencedSOPClassUID == sent.SOPClassUID
    assert service.count() == before + 2
    stored = everything_stored(service.app)
    assert not any(str(ds.SOPInstanceUID) in stored for ds in rest)
    assert "QA35-SYNTH" not in stored


def test_a_body_of_reports_only_is_a_200_not_a_409(service: Service) -> None:
    study = new_uid()
    _shown, rest = mixed_study(study)
    before = service.count()
    response = _post(service.client, rest)
    assert response.status_code == 200, response.text
    assert set(_states(parse(response)).values()) == {"non-image"}
    assert service.count() == before


def test_an_image_without_pixel_data_still_fails_alone(service: Service) -> None:
    study = new_uid()
    shown, rest = mixed_study(study)
    response = _post(service.client, [*shown, *rest, dicom_bytes(study=study, pixels=False)])
    assert response.status_code == 202, response.text
    body = parse(response)
    (failed,) = body.FailedSOPSequence
    assert (failed[0x00991004].value, failed.FailureReason) == ("no-pixel-data", 0x0122)
    assert len(body.ReferencedSOPSequence) == len(shown) + len(rest)


def test_the_model_never_sees_them(service: Service) -> None:
    study = new_uid()
    _shown, rest = mixed_study(study)
    ingestor = service.app.state.resources.ingestor
    prepared: list[int] = []
    real = ingestor.prepare

    async def counting(data: bytes, *args: Any, **kwargs: Any) -> Any:
        prepared.append(len(data))
        return await real(data, *args, **kwargs)

    ingestor.prepare = counting
    try:
        response = _post(service.client, rest)
    finally:
        del ingestor.prepare
    assert response.status_code == 200, response.text
    assert prepared == []


@pytest.fixture(scope="module")
def refusing(databases: Databases, model_store: Path) -> Iterator[Any]:
    for client, _app in app_client(databases, model_store, non_image_instances="refuse"):
        yield client


def test_refuse_keeps_them_failures(service: Service, refusing: Any) -> None:
    """Acknowledged by default; RADLENS_NON_IMAGE_INSTANCES=refuse: failures, as before."""
    _shown, rest = mixed_study(new_uid())
    assert _post(service.client, rest).status_code == 200
    study = new_uid()
    shown, rest = mixed_study(study)
    response = _post(refusing, [*shown, *rest])
    assert response.status_code == 202, response.text
    body = parse(response)
    assert len(body.FailedSOPSequence) == len(rest)
    assert {i.FailureReason for i in body.FailedSOPSequence} == {0x0122}
    assert set(_states(body).values()) == {"created"}

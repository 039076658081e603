"""STOW-RS of a study that holds radlens' own SR and Secondary Capture (filed into it by the
outbox, sent back by a PACS that forwards the study): they are acknowledged as received
(`(0099,1003)` "radlens-output") and not predicted. Before, the SC was predicted (a Grad-CAM
of the Grad-CAM, one generation more each round) and the SR failed, which failed Orthanc's
whole STOW job (QA round 30, as for C-STORE)."""

from __future__ import annotations

import io

from pydicom import dcmread

from tests.app.conftest import Service, dicom_bytes
from tests.app.test_stowrs import multipart_related, parse


def _outputs(service: Service) -> tuple[bytes, bytes]:
    response = service.post(dicom_bytes(seed=31), "ct.dcm", params={"explain": "true"})
    assert response.status_code in (200, 201), response.text
    prediction = response.json()["id"]
    sr = service.client.get(f"/v1/predictions/{prediction}/dicom/sr")
    sc = service.client.get(f"/v1/predictions/{prediction}/dicom/secondary-capture")
    assert sr.status_code == sc.status_code == 200
    return sr.content, sc.content


def _stow(service: Service, *instances: bytes) -> object:
    body, content_type = multipart_related(list(instances))
    return service.client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )


def test_radlens_outputs_sent_back_are_acknowledged_and_not_predicted(service: Service) -> None:
    sr, sc = _outputs(service)
    before = service.count()
    source = dicom_bytes(seed=32)
    response = _stow(service, source, sr, sc)
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    items = parse(response).ReferencedSOPSequence
    assert len(items) == 3
    states = [item[0x00991003].value for item in items]
    assert states == ["created", "radlens-output", "radlens-output"]
    for item, data in zip(items[1:], (sr, sc), strict=True):
        sent = dcmread(io.BytesIO(data))
        assert item.ReferencedSOPInstanceUID == sent.SOPInstanceUID
        assert 0x00991001 not in item and 0x00081190 not in item  # no prediction
    assert service.count() == before + 1  # the source instance only


def test_another_systems_sc_is_still_predicted_and_its_sr_acknowledged_as_a_non_image(
    service: Service,
) -> None:
    """The SR failed (no-pixel-data) until QA round 35; every report is now listed as
    "non-image" and not predicted (RADLENS_NON_IMAGE_INSTANCES, test_qa35_non_image_stow.py)."""
    sr, sc = _outputs(service)
    foreign_sc, foreign_sr = dcmread(io.BytesIO(sc)), dcmread(io.BytesIO(sr))
    for ds in (foreign_sc, foreign_sr):
        ds.Manufacturer = "OTHER AI"
        ds.SeriesDescription = "another vendor's result"
        ds.SeriesNumber = 7
    encoded = []
    for ds in (foreign_sc, foreign_sr):
        out = io.BytesIO()
        ds.save_as(out)
        encoded.append(out.getvalue())
    response = _stow(service, *encoded)
    body = parse(response)
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    states = [i[0x00991003].value for i in body.ReferencedSOPSequence]
    assert states[0] in ("created", "existing") and states[1] == "non-image"


def test_the_model_does_not_run_on_radlens_outputs(service: Service) -> None:
    """It ran on each radlens SC sent back (one model call a slice when a CT study is
    forwarded), then let the result go (QA round 34)."""
    sr, sc = _outputs(service)
    predictor = service.app.state.resources.ingestor.predictor
    calls: list[int] = []
    real = predictor.predict_prepared

    async def counting(prepare: object, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return await real(prepare, *args, **kwargs)

    predictor.predict_prepared = counting
    try:
        response = _stow(service, sr, sc)
    finally:
        predictor.predict_prepared = real
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    assert calls == []

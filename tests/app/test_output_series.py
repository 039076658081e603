"""The SRs and Secondary Captures of a series' predictions share one output series per kind
and model version (app/dicom_outputs.output_series_uid), numbered as their sources: a 300-slice
CT sent to radlens used to come back as 600 new series, one per prediction and kind. The same
UIDs whichever way an output is made: the prediction's own routes, the inline SR, the series
SR, QIDO/WADO-RS and the send-back to a PACS."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from radlens.app.dicom_outputs import output_series_uid, output_uid
from tests.app.conftest import Service, TestClient, dicom_bytes, new_uid
from tests.app.test_outbox import (  # noqa: F401  (storescp: a fixture)
    StoreSCP,
    free_port,
    outbox_settings,
    post_dicom,
    storescp,
    wait_for,
)


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _series(service: Service, numbers: list[int | str | None]) -> tuple[str, str, list[dict]]:
    """Post one series of instances numbered ``numbers``, explained; its study, series and
    the predictions in that order."""
    study, series = new_uid(), new_uid()
    predictions = []
    for seed, number in enumerate(numbers):
        data = dicom_bytes(study=study, series=series, instance=number, seed=seed)
        response = service.post(data, "slice.dcm", params={"explain": "true"})
        assert response.status_code in (200, 201), response.text
        predictions.append(response.json())
    return study, series, predictions


def _outputs(service: Service, prediction: dict[str, Any]) -> tuple[Any, Any]:
    base = f"/v1/predictions/{prediction['id']}/dicom"
    sr = service.client.get(f"{base}/sr")
    sc = service.client.get(f"{base}/secondary-capture")
    assert sr.status_code == 200, sr.text
    assert sc.status_code == 200, sc.text
    return _read(sr.content), _read(sc.content)


def test_a_series_predictions_share_one_sr_series_and_one_sc_series(service: Service) -> None:
    study, series, predictions = _series(service, [3, 1, 2])
    outputs = [_outputs(service, p) for p in predictions]
    sr_series = {sr.SeriesInstanceUID for sr, _ in outputs}
    sc_series = {sc.SeriesInstanceUID for _, sc in outputs}
    assert len(sr_series) == 1 and len(sc_series) == 1  # was one series per prediction
    assert sr_series != sc_series and series not in sr_series | sc_series
    assert len({sr.SOPInstanceUID for sr, _ in outputs}) == 3
    # new objects, not the UIDs of the one-series-per-output objects sent before 0015
    first = uuid.UUID(predictions[0]["id"])
    assert outputs[0][0].SOPInstanceUID != output_uid(first, "sr", with_patient=False)
    assert outputs[0][1].SOPInstanceUID != output_uid(first, "sc", with_patient=False)
    assert len({sc.SOPInstanceUID for _, sc in outputs}) == 3
    # numbered as their sources, so a viewer shows the overlays in the series' order
    assert [int(sr.InstanceNumber) for sr, _ in outputs] == [3, 1, 2]
    assert [int(sc.InstanceNumber) for _, sc in outputs] == [3, 1, 2]
    for sr, sc in outputs:
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == study
        assert (int(sr.SeriesNumber), int(sc.SeriesNumber)) == (9901, 9902)


def test_another_source_series_gets_its_own_output_series(service: Service) -> None:
    _, _, first = _series(service, [1])
    _, _, second = _series(service, [1])
    (sr_a, sc_a), (sr_b, sc_b) = _outputs(service, first[0]), _outputs(service, second[0])
    assert sr_a.SeriesInstanceUID != sr_b.SeriesInstanceUID
    assert sc_a.SeriesInstanceUID != sc_b.SeriesInstanceUID


def test_the_inline_sr_and_the_series_sr_join_the_series_sr_series(service: Service) -> None:
    study, series, predictions = _series(service, [1, 2])
    stored_sr, _ = _outputs(service, predictions[0])
    inline = service.client.post(
        "/v1/predictions/dicom-sr",
        files={
            "file": (
                "a.dcm",
                dicom_bytes(study=study, series=series, instance=7, seed=9),
                "application/dicom",
            )
        },
    )
    assert inline.status_code == 201, inline.text
    inline_sr = _read(inline.content)
    assert inline_sr.SeriesInstanceUID == stored_sr.SeriesInstanceUID
    assert int(inline_sr.InstanceNumber) == 7
    series_sr = service.client.get(f"/v1/series/{series}/dicom/sr")
    assert series_sr.status_code == 200, series_sr.text
    assert _read(series_sr.content).SeriesInstanceUID == stored_sr.SeriesInstanceUID


@pytest.mark.parametrize("number", [None, 0, 2**31, "-4"])
def test_an_unknown_or_unusable_instance_number_is_one(
    service: Service, number: int | str | None
) -> None:
    _, _, predictions = _series(service, [number])
    sr, sc = _outputs(service, predictions[0])
    assert int(sr.InstanceNumber) == int(sc.InstanceNumber) == 1
    from radlens.app.tables import Prediction

    with service.app.state.resources.sessionmaker() as session:
        row = session.get(Prediction, uuid.UUID(predictions[0]["id"]))
        assert row is not None and row.instance_number is None


def test_qido_lists_one_sr_and_one_sc_series_for_the_study(service: Service) -> None:
    study, _, predictions = _series(service, [2, 1, 3])
    listed = service.client.get(f"/dicomweb/studies/{study}/series")
    assert listed.status_code == 200, listed.text
    numbers = sorted(int(s["00200011"]["Value"][0]) for s in listed.json())
    assert numbers == [9901, 9902]  # was six series
    found = service.client.get(f"/dicomweb/studies/{study}/instances", params={"InstanceNumber": 3})
    assert found.status_code == 200, found.text
    assert sorted(i["00080060"]["Value"][0] for i in found.json()) == ["OT", "SR"]
    assert {i["00200013"]["Value"][0] for i in found.json()} == {3}
    sr, _ = _outputs(service, predictions[2])
    assert sr.SeriesInstanceUID in {i["0020000E"]["Value"][0] for i in found.json()}


def test_the_output_series_uid_names_series_model_version_and_kind() -> None:
    base = output_series_uid("1.2.3", "chest", 3, "sr")
    assert base == output_series_uid("1.2.3", "chest", 3, "sr")
    others = {
        output_series_uid("1.2.4", "chest", 3, "sr"),
        output_series_uid("1.2.3", "chest2", 3, "sr"),
        output_series_uid("1.2.3", "chest", 4, "sr"),
        output_series_uid("1.2.3", "chest", 3, "sc"),
    }
    assert base not in others and len(others) == 4
    long = output_series_uid("1." + "9" * 62, "m" * 128, 2**31 - 1, "sc")
    assert len(long) <= 64 and long.startswith("2.25.")


def test_the_send_back_files_a_series_outputs_in_two_series(
    tmp_path: Path,
    model_store: Path,
    migrated_database_url: str,
    storescp: Callable[[int], StoreSCP],  # noqa: F811
) -> None:
    from radlens.app.main import create_app

    pacs = storescp(free_port())
    study, series = new_uid(), new_uid()
    settings = outbox_settings(
        migrated_database_url,
        model_store,
        tmp_path / "spool",
        f"PACS@127.0.0.1:{pacs.port}/sr+sc",
    )
    with TestClient(create_app(settings)) as client:
        ids = [
            post_dicom(client, dicom_bytes(study=study, series=series, instance=n, seed=n))["id"]
            for n in (1, 2, 3)
        ]
        objects = wait_for(lambda: len(pacs.received()) == 6 and pacs.received(), what="3 SR+SC")
        stored_sr = _read(client.get(f"/v1/predictions/{ids[0]}/dicom/sr").content)
    by_modality: dict[str, set[str]] = {}
    for ds in objects:
        by_modality.setdefault(ds.Modality, set()).add(ds.SeriesInstanceUID)
    assert {k: len(v) for k, v in by_modality.items()} == {"SR": 1, "OT": 1}
    assert by_modality["SR"] == {stored_sr.SeriesInstanceUID}  # as the stored route makes it
    assert sorted(int(ds.InstanceNumber) for ds in objects if ds.Modality == "SR") == [1, 2, 3]


def test_the_instance_number_is_in_the_prediction_the_series_and_the_page(
    service: Service,
) -> None:
    from tests.app.test_ui import login

    _, series, predictions = _series(service, [12, 40])
    assert [p["instance_number"] for p in predictions] == [12, 40]
    fetched = service.client.get(f"/v1/predictions/{predictions[1]['id']}").json()
    assert fetched["instance_number"] == 40
    listed = service.client.get(f"/v1/series/{series}")
    assert listed.status_code == 200, listed.text
    (result,) = listed.json()["results"]
    assert {i["instance_number"] for i in result["key_instances"]} <= {12, 40}
    service.client.cookies.clear()
    try:
        login(service.client, service.api_key or "")
        page = service.client.get(f"/ui/predictions/{predictions[0]['id']}")
    finally:
        service.client.cookies.clear()
    assert page.status_code == 200
    assert "<dt>Instance number</dt><dd>12 " in page.text
